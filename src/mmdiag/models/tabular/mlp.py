"""The tabular encoder: an MLP over the encoded record (standardised numerics, one-hot categoricals)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TabularMLP"]


class TabularMLP(nn.Module):
    """Linear → LayerNorm → GELU → Dropout blocks; ``num_features`` is the last width.

    Args:
        in_features: width of the encoded record.
        hidden: widths of the hidden layers.
        drop_rate: dropout after each block.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (64, 64), drop_rate: float = 0.1):
        super().__init__()
        layers, c = [], in_features
        for h in hidden:
            layers += [nn.Linear(c, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(drop_rate)]
            c = h
        self.body = nn.Sequential(*layers)
        self.num_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
