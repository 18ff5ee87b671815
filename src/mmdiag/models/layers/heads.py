"""Per-task classification heads: one linear layer per task, logits keyed by task name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmdiag.data.schema import TaskSpec

__all__ = ["TaskHeads"]


class TaskHeads(nn.Module):
    """A linear head per task (``num_outputs`` logits each).

    Args:
        in_features: width of the pooled feature vector.
        tasks: the dataset's tasks.
        drop_rate: dropout before the heads.
    """

    def __init__(self, in_features: int, tasks: Mapping[str, TaskSpec], drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.heads = nn.ModuleDict({t: nn.Linear(in_features, spec.num_outputs) for t, spec in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.drop(x)
        return {t: head(x) for t, head in self.heads.items()}
