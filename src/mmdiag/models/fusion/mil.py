"""Gated attention multiple-instance pooling (the fusion of the MM-MIL baseline)."""

from __future__ import annotations

import torch
from torch import nn

from mmdiag.models.layers.presence import masked_softmax, open_empty_rows

__all__ = ["GatedMILAttention"]


class GatedMILAttention(nn.Module):
    """Gated attention MIL pooling (Ilse et al. 2018): ``a_i ∝ exp(w^T (tanh(V h_i) ⊙ sigmoid(U h_i)))``.

    Args:
        dim: instance feature width.
        hidden: width of ``V`` and ``U``.
    """

    def __init__(self, dim: int, hidden: int = 1024):
        super().__init__()
        self.attention_v = nn.Linear(dim, hidden)
        self.attention_u = nn.Linear(dim, hidden)
        self.attention_w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instances ``(B, N, C)`` and their mask ``(B, N)`` → pooled ``(B, C)`` and weights ``(B, N)``."""
        score = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        weights = masked_softmax(score, mask, dim=1)
        return (weights.unsqueeze(-1) * h).sum(1), weights
