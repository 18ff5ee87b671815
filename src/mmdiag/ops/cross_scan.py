"""SS2D's four-direction cross-scan and cross-merge (VMamba, Liu et al. 2024, Sec. 3.2 / Fig. 2).

The four directions are, in order: row-major, column-major, reversed row-major, reversed column-major. The two
operations are adjoint linear maps, so each one's backward is the other one's forward; the autograd Functions below
use that instead of recording flips and transposes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cross_scan", "cross_merge", "cross_scan_ref", "cross_merge_ref"]


def _check_scan_input(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"cross_scan: x must be (B, C, H, W), got shape {tuple(x.shape)}")


def _check_merge_input(y: Tensor, H: int, W: int) -> None:
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[3] != H * W:
        raise ValueError(f"cross_merge: y must be (B, 4, C, H*W) with H*W = {H * W}, got shape {tuple(y.shape)}")


def _scan(x: Tensor) -> Tensor:
    B, C, H, W = x.shape
    out = x.new_empty(B, 4, C, H * W)
    out[:, 0].copy_(x.reshape(B, C, H * W))
    out[:, 1].view(B, C, W, H).copy_(x.transpose(2, 3))
    out[:, 2:].copy_(out[:, :2].flip(-1))
    return out


def _merge(y: Tensor, H: int, W: int) -> Tensor:
    B, _, C, L = y.shape
    y = y[:, :2] + y[:, 2:].flip(-1)
    return y[:, 0].reshape(B, C, H, W) + y[:, 1].reshape(B, C, W, H).transpose(2, 3)


class _CrossScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.hw = x.shape[2:]
        return _scan(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _merge(grad, *ctx.hw)


class _CrossMerge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, H: int, W: int) -> Tensor:
        return _merge(y, H, W)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return _scan(grad.contiguous()), None, None


def cross_scan(x: Tensor) -> Tensor:
    """Unfold a feature map along four directions.

    Args:
        x: Feature map ``(B, C, H, W)``.

    Returns:
        ``(B, 4, C, H*W)``: row-major, column-major, and the two reversed.

    Raises:
        ValueError: ``x`` is not 4-D.
    """
    _check_scan_input(x)
    return _CrossScan.apply(x)


def cross_merge(y: Tensor, H: int, W: int) -> Tensor:
    """Map four direction sequences back onto the grid and sum them (the adjoint of :func:`cross_scan`).

    Args:
        y: Sequences ``(B, 4, C, H*W)`` in :func:`cross_scan`'s direction order.
        H: Grid height.
        W: Grid width.

    Returns:
        ``(B, C, H, W)``.

    Raises:
        ValueError: ``y`` is not ``(B, 4, C, H*W)``.
    """
    _check_merge_input(y, H, W)
    return _CrossMerge.apply(y, H, W)


def cross_scan_ref(x: Tensor) -> Tensor:
    """Naive :func:`cross_scan` from stacked flips and transposes (autograd records every op)."""
    _check_scan_input(x)
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge_ref(y: Tensor, H: int, W: int) -> Tensor:
    """Naive :func:`cross_merge`: undo each direction separately, then sum."""
    _check_merge_input(y, H, W)
    B, _, C, _ = y.shape
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    return rows.view(B, C, H, W) + cols.view(B, C, W, H).transpose(2, 3)
