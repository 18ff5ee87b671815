"""Per-task losses summed with weights: cross-entropy for single-label tasks, BCE for multi-label ones.

Unknown labels (-1, or NaN in a multi-label vector) are masked out. With ``focal_gamma > 0`` single-label tasks use
the focal loss (Lin et al. 2017) ``(1 - p_t)^γ · CE``, averaged over known labels (for a binary task's two logits it
is the binary focal loss of their difference, MMCAF-Net's code).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.data.schema import TaskSpec

__all__ = ["MultiTaskLoss", "balanced_class_weights"]


def balanced_class_weights(task: TaskSpec, labels: np.ndarray) -> torch.Tensor:
    """``n / (C * n_c)`` per class (multi-label: the positive weight ``n_neg / n_pos`` per label); unknowns ignored."""
    if task.type == "multilabel":
        known = ~np.isnan(labels)
        pos = np.nansum(labels, 0)
        neg = known.sum(0) - pos
        return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)
    y = labels[labels >= 0].astype(int)
    counts = np.bincount(y, minlength=task.num_outputs).astype(float)
    w = np.where(counts > 0, len(y) / (task.num_outputs * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class MultiTaskLoss(nn.Module):
    """Weighted sum of per-task losses.

    Args:
        tasks: the dataset's tasks.
        task_weights: weight per task (default 1).
        class_weights: optional per-task class weights (multi-label: positive weights).
        label_smoothing: cross-entropy label smoothing.
        focal_gamma: focal exponent for single-label tasks (0: plain cross-entropy).
    """

    def __init__(self, tasks: Mapping[str, TaskSpec], task_weights: Mapping[str, float] | None = None,
                 class_weights: Mapping[str, torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 focal_gamma: float = 0.0):
        super().__init__()
        self.tasks = dict(tasks)
        self.task_weights = {t: float((task_weights or {}).get(t, 1.0)) for t in tasks}
        for t, w in (class_weights or {}).items():
            self.register_buffer(f"cw_{t}", w)
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma

    def forward(self, logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {}
        for t, task in self.tasks.items():
            z, y = logits[t].float(), labels[t]
            cw = getattr(self, f"cw_{t}", None)
            if task.type == "multilabel":
                known = ~torch.isnan(y)
                per = F.binary_cross_entropy_with_logits(z, torch.nan_to_num(y), pos_weight=cw, reduction="none")
                parts[t] = (per * known).sum() / known.sum().clamp_min(1)
            elif self.focal_gamma > 0:
                known, yk = y >= 0, y.clamp_min(0)
                ce = F.cross_entropy(z, yk, weight=cw, reduction="none", label_smoothing=self.label_smoothing)
                pt = torch.exp(-F.cross_entropy(z, yk, reduction="none"))
                parts[t] = ((1 - pt) ** self.focal_gamma * ce * known).sum() / known.sum().clamp_min(1)
            else:
                if (y >= 0).any():
                    parts[t] = F.cross_entropy(z, y, weight=cw, ignore_index=-1, label_smoothing=self.label_smoothing)
                else:
                    parts[t] = z.sum() * 0.0
        total = sum(self.task_weights[t] * v for t, v in parts.items())
        return total, parts
