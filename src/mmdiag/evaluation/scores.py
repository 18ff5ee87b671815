"""Turning a model's logits into the per-class scores the metrics and reports read."""

from __future__ import annotations

import torch

from mmdiag.data.schema import DatasetSpec

__all__ = ["probabilities"]


def probabilities(spec: DatasetSpec, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Softmax for single-label tasks, sigmoid for multi-label ones (entries that are not tasks are dropped)."""
    return {t: (z.float().sigmoid() if spec.tasks[t].type == "multilabel" else z.float().softmax(-1))
            for t, z in logits.items() if t in spec.tasks}
