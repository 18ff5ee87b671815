"""SS2D's four-direction cross-scan and cross-merge (VMamba, Liu et al. 2024, Sec. 3.2 / Fig. 2).

The four directions are, in order: row-major, column-major, reversed row-major, reversed column-major. The two
operations are adjoint linear maps, so each one's backward is the other one's forward; the autograd Functions below
use that instead of recording flips and transposes.

:func:`cross_selective_scan` is the whole of SS2D's scan (unfold, selective scan per direction, merge) on a
channels-last map. On CPU the fused kernels read the map in each direction's order and write each direction's
output in grid order, so nothing is unfolded or transposed in memory; other implementations run the three steps.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mmdiag.ops.selective_scan import resolve_impl, selective_scan

__all__ = [
    "cross_scan",
    "cross_merge",
    "cross_scan_ref",
    "cross_merge_ref",
    "cross_selective_scan",
    "direction_positions",
]


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


@functools.lru_cache(maxsize=32)
def direction_positions(H: int, W: int, K: int = 4) -> Tensor:
    """Where each scan direction reads: ``(K, H*W)`` row-major grid indices, step by step.

    Args:
        H: Grid height.
        W: Grid width.
        K: 4 for :func:`cross_scan`'s directions, 1 for the row-major one only.

    Returns:
        An int64 CPU tensor (cached; do not modify it).
    """
    rows = torch.arange(H * W)
    cols = rows.view(H, W).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])[:K].contiguous()


def cross_selective_scan(
    x: Tensor,
    dt_raw: Tensor,
    dt_weight: Tensor,
    A: Tensor,
    Bs: Tensor,
    Cs: Tensor,
    Ds: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    *,
    impl: str = "auto",
) -> Tensor:
    """SS2D's scan on a channels-last map: a selective scan along each direction, mapped back and summed.

    Equals ``cross_merge(selective_scan(cross_scan(x), unfolded deltas, A, unfolded Bs, Cs, Ds, ...))`` for K = 4
    (one plain row-major scan for K = 1), with the step sizes of direction k ``deltas[k] = dt_raw[..., k, :] @
    dt_weight[k].T`` (SS2D's low-rank Δ projection). Step sizes and B/C are given per grid position, as per-token
    projections produce them: direction k reads position ``direction_positions(H, W, K)[k, t]`` at step t. On CPU
    the fused kernels read the map and the Δ factors in place and form the step sizes themselves, so neither the
    unfolded sequences nor the ``(K, b, H, W, d)`` step sizes are ever stored.

    Args:
        x: Scan input ``(b, H, W, d)``, shared by the directions.
        dt_raw: Step-size factors ``(b, H, W, K, R)`` (any strides, e.g. a view of a projection's output).
        dt_weight: Step-size projections ``(K, d, R)``.
        A: ``(K*d, n)``, real.
        Bs: Input matrices ``(b, H, W, K, n)`` (any strides).
        Cs: Output matrices, like ``Bs``.
        Ds: Skip weights ``(K*d,)``.
        delta_bias: ``(K*d,)``, added to the step sizes before the softplus.
        delta_softplus: Apply softplus to the step sizes.
        impl: :func:`mmdiag.ops.selective_scan` implementation; on CPU the fused one reads the map in place.

    Returns:
        ``(b, H, W, d)`` in float32 (float64 for float64 ``x``).

    Raises:
        ValueError: A shape does not fit ``x`` and ``dt_weight``, or K is not 1 or 4.
    """
    if x.dim() != 4 or dt_weight.dim() != 3 or dt_weight.shape[1] != x.shape[-1] or dt_weight.shape[0] not in (1, 4):
        raise ValueError(
            f"cross_selective_scan: x must be (b, H, W, d) and dt_weight (K, d, R) with K 1 or 4, got "
            f"{tuple(x.shape)} and {tuple(dt_weight.shape)}"
        )
    (b, H, W, d), (K, _, R) = x.shape, dt_weight.shape
    n, L = A.shape[-1], H * W
    for name, t, last in (("dt_raw", dt_raw, R), ("Bs", Bs, n), ("Cs", Cs, n)):
        if tuple(t.shape) != (b, H, W, K, last):
            raise ValueError(f"cross_selective_scan: {name} must be (b, H, W, K, {last}) = {(b, H, W, K, last)}, "
                             f"got {tuple(t.shape)}")  # fmt: skip
    f = torch.promote_types(x.dtype, torch.float32)
    pos = direction_positions(H, W, K)
    # (b, K, m, L) views in grid order
    Fseq, Bseq, Cseq = (t.to(f).flatten(1, 2).permute(0, 2, 3, 1) for t in (dt_raw, Bs, Cs))
    if resolve_impl(impl, x) == "fused":
        from mmdiag.ops._scan_cpu import fused_grouped_scan

        u = x.to(f).reshape(b, 1, L, d).transpose(2, 3)  # (b, 1, d, L): every direction reads the map
        y = fused_grouped_scan(
            u, Fseq, A, Bseq, Cseq, Ds, delta_bias, pos, delta_softplus, dt_weight.to(f).reshape(K * d, R)
        )
        return y.transpose(2, 3).reshape(b, H, W, d)  # the directions' sum, in x's layout: no copy
    pos = pos.to(x.device)
    u = cross_scan(x.permute(0, 3, 1, 2)) if K == 4 else x.reshape(b, 1, L, d).transpose(2, 3)
    dts = torch.einsum("bkrl,kdr->bkdl", Fseq, dt_weight.to(f))  # (b, K, d, L), grid order
    dts, Bseq, Cseq = (torch.stack([t[:, k][..., pos[k]] for k in range(K)], 1) for t in (dts, Bseq, Cseq))
    ys = selective_scan(
        u.reshape(b, K * d, L), dts.reshape(b, K * d, L), A, Bseq, Cseq, Ds, delta_bias=delta_bias,
        delta_softplus=delta_softplus, impl=impl,
    ).view(b, K, d, L)  # fmt: skip
    y = cross_merge(ys, H, W) if K == 4 else ys.view(b, d, H, W)
    return y.permute(0, 2, 3, 1).to(f)
