"""Turning a model's logits into the per-class scores the metrics and reports read."""

from __future__ import annotations

import torch

from mmdiag.data.schema import DatasetSpec

__all__ = ["probabilities"]


def probabilities(spec: DatasetSpec, logits: dict[str, torch.Tensor], score: str = "probability"
                  ) -> dict[str, torch.Tensor]:
    """Per-class scores in [0, 1] (``eval.score``); entries that are not tasks are dropped.

    ``probability``: softmax for single-label tasks, sigmoid for multi-label ones. ``sigmoid``: every class's own
    sigmoid in float64 (ranks cases as the raw logits do, without float32's saturation at |logit| > 17).
    """
    if score == "sigmoid":
        return {t: z.double().sigmoid() for t, z in logits.items() if t in spec.tasks}
    return {t: (z.float().sigmoid() if spec.tasks[t].type == "multilabel" else z.float().softmax(-1))
            for t, z in logits.items() if t in spec.tasks}
