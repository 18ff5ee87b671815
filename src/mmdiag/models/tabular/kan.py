"""Kolmogorov-Arnold Network layer (Liu et al. 2024, "KAN: Kolmogorov-Arnold Networks"), MMCAF-Net's tabular
encoder (paper 002 §2.2), equal to the original library's ``KANLayer`` on shared parameters.

Every input ``i`` and output ``j`` has its own learnable function
``φ_ij(x) = scale_base_ij · SiLU(x) + scale_sp_ij · Σ_c coef_ijc B_c(x)``, and ``y_j = Σ_i φ_ij(x_i)``. The
``B_c`` are B-splines of order ``k`` on a uniform grid of ``grid_size`` intervals over ``grid_range``, extended by
``k`` knots on each side (``grid_size + k`` basis functions); outside the extended grid every basis is zero, so
inputs should be scaled to ``grid_range`` (``data.options`` min-max scaling fitted on training cases).

Initialisation as the authors' vendored library: ``coef`` least-squares fitted to uniform noise of amplitude
``noise_scale / grid_size`` at the ``grid_size + 1`` grid points, ``scale_base ~ U(-1, 1) / √in``, ``scale_sp = 1``.
Deviation: pykan ≥ 0.2.1 initialises ``scale_sp`` to ``1/√in``; the authors' copy used 1 (``scale_sp`` option).
The grid is fixed (the authors never call grid updates); the layer's fixed ``mask`` of ones is left out.
At 7 inputs and 24 outputs the layer has 7·24·8 + 2·7·24 = 1,680 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.errors import ConfigError

__all__ = ["KANLayer", "bspline_basis"]


def bspline_basis(x: Tensor, knots: Tensor, k: int) -> Tensor:
    """B-spline basis values by the Cox-de Boor recursion.

    Args:
        x: points ``(B, I)``.
        knots: increasing knots per input ``(I, T)``.
        k: spline order (3: cubic).

    Returns:
        ``(B, I, T - k - 1)`` basis values; order 0 uses half-open intervals ``[t_m, t_{m+1})``.
    """
    x = x.unsqueeze(-1)
    t = knots.unsqueeze(0)
    basis = ((x >= t[..., :-1]) & (x < t[..., 1:])).to(x.dtype)
    for p in range(1, k + 1):
        left = (x - t[..., : -(p + 1)]) / (t[..., p:-1] - t[..., : -(p + 1)]) * basis[..., :-1]
        right = (t[..., p + 1:] - x) / (t[..., p + 1:] - t[..., 1:-p]) * basis[..., 1:]
        basis = left + right
    return basis


class KANLayer(nn.Module):
    """One KAN layer ``in_features → out_features`` (see the module docstring).

    Args:
        in_features: inputs (MMCAF-Net: 7 clinical variables).
        out_features: outputs (MMCAF-Net: 24).
        grid_size: spline intervals ``G`` on ``grid_range``.
        spline_order: ``k``.
        grid_range: ``(low, high)`` of the grid.
        noise_scale: amplitude of the initial spline noise (times ``1 / G``).
        scale_sp: initial value of the spline scales.

    Raises:
        ConfigError: an empty grid range, ``grid_size < 1`` or ``spline_order < 0``.
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0), noise_scale: float = 0.5, scale_sp: float = 1.0):
        super().__init__()
        lo, hi = grid_range
        if not hi > lo or grid_size < 1 or spline_order < 0:
            raise ConfigError(f"KANLayer: grid_range={grid_range}, grid_size={grid_size}, spline_order={spline_order};"
                              " need low < high, grid_size >= 1 and spline_order >= 0")
        self.in_features, self.out_features, self.k = in_features, out_features, spline_order
        h = (hi - lo) / grid_size
        steps = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32, device="cpu")
        grid = (lo + h * steps).expand(in_features, -1).contiguous()
        coef = self._noise_coef(grid, noise_scale / grid_size, grid_size)
        self.register_buffer("grid", grid.to(torch.get_default_device()), persistent=False)
        self.coef = nn.Parameter(coef.to(torch.get_default_device()))
        self.scale_base = nn.Parameter((torch.rand(in_features, out_features) * 2 - 1) / in_features**0.5)
        self.scale_sp = nn.Parameter(torch.full((in_features, out_features), float(scale_sp)))
        self.num_features = out_features

    def _noise_coef(self, grid: Tensor, amplitude: float, grid_size: int) -> Tensor:
        """Coefficients (CPU) whose splines least-squares fit uniform noise at the ``G + 1`` grid points."""
        pts = grid[:, self.k: self.k + grid_size + 1].T  # (G+1, I)
        noise = (torch.rand(grid_size + 1, self.in_features, self.out_features, device="cpu") - 0.5) * amplitude
        basis = bspline_basis(pts, grid, self.k).permute(1, 0, 2)  # (I, G+1, C)
        sol = torch.linalg.lstsq(basis, noise.permute(1, 0, 2), driver="gelsd").solution  # (I, C, O)
        return sol.permute(0, 2, 1)  # (I, O, C)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_features)`` → ``(B, out_features)``."""
        spline = torch.einsum("bic,ioc->bio", bspline_basis(x, self.grid.to(x.dtype), self.k), self.coef)
        phi = self.scale_base * F.silu(x).unsqueeze(-1) + self.scale_sp * spline
        return phi.sum(1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}"
