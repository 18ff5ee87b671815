"""KANLayer against pykan's KANLayer (shared parameters) and an independent B-spline evaluation (scipy)."""

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from mmdiag.errors import ConfigError
from mmdiag.models.tabular.kan import KANLayer, bspline_basis


def test_parameter_count_is_1680():
    assert sum(p.numel() for p in KANLayer(7, 24).parameters()) == 1680


def test_basis_matches_scipy():
    layer = KANLayer(2, 3)
    x = torch.linspace(-1.2, 1.2, 41, dtype=torch.float64)[:, None].repeat(1, 2)
    ours = bspline_basis(x, layer.grid.double(), 3)
    knots = layer.grid[0].double().numpy()
    for c in range(ours.shape[-1]):
        ref = BSpline.basis_element(knots[c: c + 5], extrapolate=False)(x[:, 0].numpy())
        np.testing.assert_allclose(ours[:, 0, c].numpy(), np.nan_to_num(ref), atol=1e-12)


def test_equals_pykan_on_shared_parameters():
    kan_layer = pytest.importorskip("kan.KANLayer")
    torch.manual_seed(0)
    ref = kan_layer.KANLayer(in_dim=7, out_dim=24, num=5, k=3)
    ours = KANLayer(7, 24)
    with torch.no_grad():
        ours.coef.copy_(ref.coef)
        ours.scale_base.copy_(ref.scale_base)
        ours.scale_sp.copy_(ref.scale_sp)
    torch.testing.assert_close(ours.grid, ref.grid.data)
    x = torch.rand(16, 7) * 2.2 - 1.1
    torch.testing.assert_close(ours(x), ref(x)[0], rtol=1e-5, atol=1e-6)


def test_initial_splines_are_small_noise_and_layer_learns():
    torch.manual_seed(0)
    layer = KANLayer(1, 1, noise_scale=0.5)
    x = torch.linspace(-1, 1, 64)[:, None]
    spline = torch.einsum("bic,ioc->bio", bspline_basis(x, layer.grid, 3), layer.coef)
    assert spline.abs().max() < 0.1  # noise of amplitude 0.05 at the grid points
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    target = torch.sin(3 * x)
    for _ in range(300):
        opt.zero_grad()
        loss = (layer(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_bad_grid_is_named():
    with pytest.raises(ConfigError, match="grid_range"):
        KANLayer(3, 2, grid_range=(1.0, -1.0))
