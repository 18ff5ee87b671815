"""EI's intervention token adapter: a reference modality's [CLS] becomes an [INT] token for the target VFM."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["INTAdapter"]


class INTAdapter(nn.Module):
    """[INT] token adapter (EI §3.1, Eq. 1): a two-layer MLP from a reference [CLS] to an intervention token.

    ``LayerNorm(C) -> Linear(C, C/2) -> GELU -> Linear(C/2, C)`` with PyTorch's default init, no dropout.

    Deviation: the paper says only "a two-layer MLP"; the input LayerNorm (eps 1e-6) and the halved hidden width are
    the authors' code.

    Args:
        dim: token width ``C``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, dim // 2)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))

