"""Multi-head self-attention over token sequences ``(B, L, C)`` with a fused ``qkv`` projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.errors import ConfigError

__all__ = ["Attention"]


class Attention(nn.Module):
    """Multi-head self-attention computed with :func:`torch.nn.functional.scaled_dot_product_attention`.

    ``qkv`` is one ``nn.Linear(dim, 3 * dim)`` whose output rows are packed as ``[q; k; v]`` (each ``dim`` rows,
    heads contiguous inside each), the packing of DINOv2, timm and PyTorch's ``nn.MultiheadAttention``
    (``in_proj_weight``). ``qkv`` and ``proj`` are plain ``nn.Linear`` so that PEFT methods can wrap them by name.

    Args:
        dim: token width ``C``.
        num_heads: number of heads; must divide ``dim``.
        qkv_bias: bias on the ``qkv`` projection.
        proj_bias: bias on the output projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Raises:
        ConfigError: ``dim`` is not a multiple of ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}; choose num_heads "
                              f"among the divisors of {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend every token to every token.

        Args:
            x: tokens ``(B, L, C)``.
            attn_mask: optional boolean (``True`` = may attend) or additive mask broadcastable to ``(B, H, L, L)``.

        Returns:
            ``(B, L, C)``.
        """
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))
