"""Multi-head attention over token sequences ``(B, L, C)`` with a fused ``qkv`` projection: self-attention, and
cross-attention (queries from one sequence, keys/values from another) with the same weights layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models.layers.mlp import Mlp
from mmdiag.models.layers.presence import open_empty_rows

__all__ = ["Attention", "CrossAttentionBlock", "key_padding_to_mask"]


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
        proj: build the output projection ``proj``; ``False`` returns the heads' concatenated values unprojected
            (MMCAF-Net's MSCA).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.

    Raises:
        ConfigError: ``dim`` is not a multiple of ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, proj: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"Attention: dim={dim} is not divisible by num_heads={num_heads}; choose num_heads "
                              f"among the divisors of {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias) if proj else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Attend every token of ``x`` to every token of ``x`` (or of ``context``).

        Args:
            x: query tokens ``(B, L, C)``.
            attn_mask: optional boolean (``True`` = may attend) or additive mask broadcastable to ``(B, H, L, S)``.
            context: key/value tokens ``(B, S, C)`` for cross-attention; ``None`` = self-attention. The projection
                is the same ``qkv`` module (so PEFT wrappers apply), its ``q`` rows on ``x`` and ``k, v`` rows on
                ``context``.

        Returns:
            ``(B, L, C)``.
        """
        b, n, c = x.shape
        if context is None:
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            s = context.shape[1]
            q = self.qkv(x)[..., :c].reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            kv = self.qkv(context)[..., c:].reshape(b, s, 2, self.num_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))

    @staticmethod
    def convert_separate_qkv_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Fuse separate ``q``/``k``/``v`` Linears at ``prefix`` (earlier mmdiag versions' cross-attention) into
        ``qkv`` (rows ``[q; k; v]``); other keys, and an incomplete triple, are left as they are."""
        out = dict(state)
        for t in ("weight", "bias"):
            names = [f"{prefix}{p}.{t}" for p in "qkv"]
            if all(n in out for n in names):
                out[f"{prefix}qkv.{t}"] = torch.cat([out.pop(n) for n in names])
        return out

    @staticmethod
    def convert_multihead_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename every ``nn.MultiheadAttention`` in ``state`` (a prefix holding ``in_proj_weight``; earlier mmdiag
        versions) to :class:`Attention` names: ``in_proj_*`` → ``qkv.*``, ``out_proj.*`` → ``proj.*`` (the same
        ``[q; k; v]`` packing)."""
        names = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias", "out_proj.weight": "proj.weight",
                 "out_proj.bias": "proj.bias"}
        prefixes = [k[:-len("in_proj_weight")] for k in state if k.endswith("in_proj_weight")]
        out = {}
        for k, v in state.items():
            prefix = next((p for p in prefixes if k.startswith(p) and k[len(p):] in names), None)
            out[k if prefix is None else prefix + names[k[len(prefix):]]] = v
        return out


def key_padding_to_mask(pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A key-padding mask ``(B, S)`` (``True`` = ignore) as an attention mask ``(B, 1, 1, S)`` (``True`` = may attend)
    and the ``(B,)`` rows that have no key at all (their attention is opened to keep it finite; zero their update)."""
    return ~open_empty_rows(pad)[:, None, None, :], pad.all(1)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention of query tokens to context tokens, then an MLP, both residual (the fusion block of
    ``middle_fusion`` and MMRAD's decoder).

    A query row whose context is entirely padded (no other modality present) gets no attention update.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_dim: MLP hidden width.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Queries ``(B, Q, D)`` attend to ``kv`` ``(B, L, D)`` (``pad`` ``(B, L)`` True = ignore) → ``(B, Q, D)``."""
        mask, empty = (None, None) if pad is None else key_padding_to_mask(pad)
        update = self.attn(self.norm_q(q), mask, context=self.norm_kv(kv))
        if empty is not None:
            update = update * (~empty).to(update.dtype)[:, None, None]
        q = q + update
        return q + self.mlp(self.norm2(q))

