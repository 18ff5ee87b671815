"""Window partitioning helpers of window attention (Liu et al. 2021, Swin Transformer, Sec. 3.2).

Maps are channels-last ``(B, H, W, C)``; windows are ``(B * nW, ws * ws, C)`` in row-major window order, tokens
row-major inside each window.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["window_partition", "window_reverse", "relative_position_index", "padded_windows", "window_attention_mask"]


def window_partition(x: Tensor, ws: int) -> Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``ws`` -> ``(B * H/ws * W/ws, ws * ws, C)``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws * ws, C)`` -> ``(B, h, w, C)``."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> Tensor:
    """``(ws*ws, ws*ws)`` index into a ``((2 ws - 1)^2, heads)`` relative-position bias table (Swin's layout:
    ``(dy + ws - 1) * (2 ws - 1) + (dx + ws - 1)`` for query minus key offsets)."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]) + (ws - 1)
    return rel[0] * (2 * ws - 1) + rel[1]


def padded_windows(h: int, w: int, hp: int, wp: int, ws: int, shift: int,
                   device: torch.device | None = None) -> Tensor:
    """Bool ``(nW, ws*ws)``: which window tokens are padding, for a ``(h, w)`` map padded right/bottom to ``(hp, wp)``
    and rolled by ``-shift`` before partitioning."""
    pad = torch.zeros(hp, wp, device=device)
    pad[h:, :] = 1.0
    pad[:, w:] = 1.0
    if shift:
        pad = torch.roll(pad, (-shift, -shift), (0, 1))
    return window_partition(pad[None, :, :, None], ws)[..., 0].bool()


def window_attention_mask(h: int, w: int, hp: int, wp: int, ws: int, shift: int,
                          device: torch.device | None = None) -> Tensor:
    """Additive mask ``(nW, ws*ws, ws*ws)`` of window attention on a ``(hp, wp)`` grid padded from ``(h, w)``.

    * Shifted windows (``shift > 0``): a query and a key from different regions of the cyclically shifted map get
      ``-100`` (the value of the official Swin code, so shifted blocks match it bit for bit).
    * Padding (``hp > h`` or ``wp > w``): a key on a padded position gets ``-inf`` for every real query, so padded
      tokens receive exactly zero attention. Padded queries are left unmasked (their outputs are cropped away) so no
      softmax row is empty.

    The mask is computed in the shifted frame (the map is rolled by ``-shift`` before partitioning).
    """
    region = torch.zeros(hp, wp, device=device)
    if shift:
        cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
        n = 0
        for hs in cuts:
            for wsl in cuts:
                region[hs, wsl] = n
                n += 1
    pad_w = padded_windows(h, w, hp, wp, ws, shift, device)
    region_w = window_partition(region[None, :, :, None], ws)[..., 0]  # (nW, N)
    mask = torch.zeros(region_w.shape[0], ws * ws, ws * ws, device=device)
    mask = mask.masked_fill(region_w[:, :, None] != region_w[:, None, :], -100.0)
    return mask.masked_fill(pad_w[:, None, :] & ~pad_w[:, :, None], float("-inf"))
