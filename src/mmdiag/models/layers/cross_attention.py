"""Multi-head cross-attention between two token sequences ``(B, N, C)`` and ``(B, M, C)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.errors import ConfigError

__all__ = ["CrossAttention"]


class CrossAttention(nn.Module):
    """Queries from one sequence attend to keys/values of another: ``softmax(q kᵀ / √d_h) v`` per head.

    ``q``, ``k``, ``v`` are separate ``nn.Linear`` layers (the two sequences differ); an optional output projection
    and an optional residual on the *unprojected* query input (MMCAF-Net's MSCA uses the residual and no projection).

    Args:
        dim: token width ``C`` of both sequences.
        num_heads: heads; must divide ``dim``.
        qkv_bias: biases on ``q``/``k``/``v``.
        proj: add an output projection ``Linear(dim, dim)``.
        residual: add the query input to the output.

    Raises:
        ConfigError: ``dim`` is not a multiple of ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 1, qkv_bias: bool = True, proj: bool = False,
                 residual: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"CrossAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.residual = num_heads, dim // num_heads, residual
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim) if proj else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend ``x`` to ``context``.

        Args:
            x: queries ``(B, N, C)``.
            context: keys/values ``(B, M, C)``.
            key_mask: optional bool ``(B, M)``, ``True`` where a key may be attended (each row needs one).

        Returns:
            ``(B, N, C)``.
        """
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(self._heads(self.q(x)), self._heads(self.k(context)),
                                             self._heads(self.v(context)), attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(x.shape))
        return out + x if self.residual else out
