"""cross_scan / cross_merge: against an explicit per-pixel construction and the flip/transpose reference, adjointness,
and float64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from mmdiag.ops import cross_merge, cross_merge_ref, cross_scan, cross_scan_ref

SHAPES = [(2, 3, 4, 5), (1, 2, 1, 7), (1, 1, 6, 1), (2, 4, 3, 3)]


def scan_by_loops(x: torch.Tensor) -> torch.Tensor:
    """Direction k visits pixel (i, j) at position: row-major i*W+j, column-major j*H+i, then both reversed."""
    B, C, H, W = x.shape
    L = H * W
    out = torch.empty(B, 4, C, L, dtype=x.dtype)
    for i in range(H):
        for j in range(W):
            out[:, 0, :, i * W + j] = x[:, :, i, j]
            out[:, 1, :, j * H + i] = x[:, :, i, j]
            out[:, 2, :, L - 1 - (i * W + j)] = x[:, :, i, j]
            out[:, 3, :, L - 1 - (j * H + i)] = x[:, :, i, j]
    return out


def merge_by_loops(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    B, _, C, L = y.shape
    out = torch.zeros(B, C, H, W, dtype=y.dtype)
    for i in range(H):
        for j in range(W):
            out[:, :, i, j] = (
                y[:, 0, :, i * W + j]
                + y[:, 1, :, j * H + i]
                + y[:, 2, :, L - 1 - (i * W + j)]
                + y[:, 3, :, L - 1 - (j * H + i)]
            )
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_cross_scan_matches_loops_and_ref(shape):
    x = torch.randn(shape)
    expected = scan_by_loops(x)
    assert torch.equal(cross_scan(x), expected)
    assert torch.equal(cross_scan_ref(x), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_cross_merge_matches_loops_and_ref(shape):
    B, C, H, W = shape
    y = torch.randn(B, 4, C, H * W)
    expected = merge_by_loops(y, H, W)
    torch.testing.assert_close(cross_merge(y, H, W), expected)
    torch.testing.assert_close(cross_merge_ref(y, H, W), expected)


def test_merge_is_adjoint_of_scan():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = torch.randn(2, 4, 3, 20, dtype=torch.float64)
    torch.testing.assert_close((cross_scan(x) * y).sum(), (x * cross_merge(y, 4, 5)).sum())


def test_merge_of_scan_is_four_times_identity():
    x = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(cross_merge(cross_scan(x), 3, 4), 4 * x)


def test_gradcheck_float64():
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cross_scan, (x,))
    assert torch.autograd.gradcheck(lambda t: cross_merge(t, 3, 4), (y,))
    # second order: the backward of each is the other, so double backward must work too
    assert torch.autograd.gradgradcheck(cross_scan, (x,))


def test_non_contiguous_input():
    x = torch.randn(2, 5, 4, 3).permute(0, 3, 2, 1)  # (2, 3, 4, 5), channels-last memory
    assert torch.equal(cross_scan(x), scan_by_loops(x.contiguous()))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"cross_scan: x must be \(B, C, H, W\)"):
        cross_scan(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"H\*W = 12, got shape \(1, 4, 2, 10\)"):
        cross_merge(torch.zeros(1, 4, 2, 10), 3, 4)
