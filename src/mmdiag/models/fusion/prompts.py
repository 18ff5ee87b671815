"""Input-conditioned deep prompts (MMRAD's steering of a frozen VFM)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PromptGenerator"]


class PromptGenerator(nn.Module):
    """MMRAD's input-conditioned prompts: a shallow CNN summarises the image and a linear layer emits ``num_prompts``
    prompt tokens for each of the first ``depth`` VFM blocks.

    Args:
        dim: token width.
        depth: number of blocks that receive prompts.
        num_prompts: prompts per block.
        in_chans: image channels.
        hidden: width of the CNN summary.
    """

    def __init__(self, dim: int, depth: int, num_prompts: int = 5, in_chans: int = 3, hidden: int = 64):
        super().__init__()
        self.depth, self.num_prompts, self.dim = depth, num_prompts, dim
        self.stem = nn.Sequential(nn.Conv2d(in_chans, hidden // 2, 7, stride=4, padding=3), nn.GELU(),
                                  nn.Conv2d(hidden // 2, hidden, 3, stride=2, padding=1), nn.GELU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(hidden, depth * num_prompts * dim)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, in_chans, H, W)`` → prompts ``(N, depth, num_prompts, dim)``."""
        return self.proj(self.stem(x)).reshape(x.shape[0], self.depth, self.num_prompts, self.dim)
