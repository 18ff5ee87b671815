"""SFusion's block: self-attention over all modalities' tokens with softmax weights across modalities."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.models.layers.presence import masked_softmax, open_empty_rows

__all__ = ["SFusionBlock", "DUpsampling"]


def _sinusoid(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed sine/cosine position table ``(length, dim)`` of the original Transformer."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


class DUpsampling(nn.Module):
    """Data-dependent upsampling (Tian et al. 2019), SFusion's way back to the feature resolution: a bias-free 1x1
    convolution to ``dim * scale**2`` channels rearranged into a ``scale`` times larger map.

    Args:
        dim: channels.
        scale: upsampling factor.
    """

    def __init__(self, dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.proj = nn.Conv2d(dim, dim * scale * scale, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, dim, h, w)`` → ``(N, dim, h*scale, w*scale)``."""
        return F.pixel_shuffle(self.proj(x), self.scale)


class SFusionBlock(nn.Module):
    """SFusion's N-to-one block (Liu et al. 2023) on [CLS] + patch-grid tokens.

    Each available modality's patch map is average-pooled to ``grid x grid`` (SFusion pools every feature map to one
    fixed size); with its [CLS] token and a sine position table over the whole sequence, the tokens of all
    modalities go through transformer layers (missing modalities are padding). The output, split back per modality
    and brought back to the patch resolution by :class:`DUpsampling` (then resized if the grid is not a multiple),
    is softmax-normalised across the present modalities per token and channel, and weighs the modalities' input
    tokens into one fused sequence.

    Args:
        dim: token width.
        grid: side of the pooled patch map.
        scale: :class:`DUpsampling` factor (``patch grid // grid`` in SFusion).
        depth: transformer layers.
        num_heads: attention heads.
        mlp_ratio: feed-forward width / ``dim``.
        dropout: dropout of the layers and of the input tokens.
    """

    def __init__(self, dim: int, grid: int = 8, scale: int = 1, depth: int = 8, num_heads: int = 8,
                 mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.grid = grid
        layer = nn.TransformerEncoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.drop = nn.Dropout(dropout)
        self.upsample = DUpsampling(dim, scale)

    def forward(self, z: torch.Tensor, mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens ``(B, M, 1 + h*w, C)`` ([CLS], patches row-major) of M modalities, presence ``(B, M)`` and the
        patch grid ``hw`` → fused tokens ``(B, 1 + h*w, C)``."""
        b, m, n, c = z.shape
        g = self.grid
        maps = z[:, :, 1:].reshape(b * m, *hw, c).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(maps, g).flatten(2).transpose(1, 2).reshape(b, m, g * g, c)
        tokens = torch.cat([z[:, :, :1], pooled], 2).reshape(b, m * (1 + g * g), c)
        tokens = tokens + _sinusoid(tokens.shape[1], c, z.device, z.dtype)
        pad = open_empty_rows(~mask.repeat_interleave(1 + g * g, 1))
        out = self.encoder(self.drop(tokens), src_key_padding_mask=pad).reshape(b * m, 1 + g * g, c)
        att = self.upsample(out[:, 1:].transpose(1, 2).reshape(b * m, c, g, g))
        if tuple(att.shape[-2:]) != tuple(hw):
            att = F.interpolate(att, size=hw, mode="bilinear", align_corners=False)
        att = torch.cat([out[:, :1], att.flatten(2).transpose(1, 2)], 1).reshape(b, m, n, c)
        weights = masked_softmax(att, mask[:, :, None, None].expand_as(att), dim=1)
        return (weights * z).sum(1)
