"""Running a model over a loader and collecting per-case probabilities (outside Lightning: plain inference)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmdiag.data.schema import DatasetSpec
from mmdiag.data.transforms import BatchTransform
from mmdiag.evaluation.scores import probabilities

__all__ = ["Predictions", "predict_loader"]


@dataclass
class Predictions:
    """Per-case results of one split: ids, true labels and probabilities per task."""

    case_ids: list[str]
    y_true: dict[str, np.ndarray]
    y_prob: dict[str, np.ndarray]


@torch.no_grad()
def predict_loader(model: nn.Module, spec: DatasetSpec, loader: DataLoader, transform: BatchTransform,
                   device: torch.device | str = "cpu", score: str = "probability") -> Predictions:
    """Scores for every case of ``loader``: softmax per single-label task and sigmoid for multi-label ones, or with
    ``score="sigmoid"`` every class's sigmoid (``eval.score``, see :func:`mmdiag.evaluation.scores.probabilities`)."""
    model.eval().to(device)
    transform.to(device)
    ids, truth, probs = [], {t: [] for t in spec.tasks}, {t: [] for t in spec.tasks}
    for batch in loader:
        batch = {**batch, "inputs": {k: v.to(device) for k, v in batch["inputs"].items()},
                 "present": {k: v.to(device) for k, v in batch["present"].items()}}
        batch = transform(batch, train=False)
        out = probabilities(spec, model(batch["inputs"], batch["present"]), score)
        ids += batch["case_id"]
        for t in spec.tasks:
            truth[t].append(batch["labels"][t].numpy())
            probs[t].append(out[t].cpu().numpy())
    return Predictions(ids, {t: np.concatenate(v) for t, v in truth.items()},
                       {t: np.concatenate(v) for t, v in probs.items()})
