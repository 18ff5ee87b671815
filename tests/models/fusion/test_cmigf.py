"""Cross-Modal Mamba against a direct sequential recurrence; MGC shapes and pooling variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmdiag.errors import ConfigError
from mmdiag.models.fusion.cmigf import CMM, MGC, CMIGF


def recurrence(u, proj, c_other, A_log, D, dt_w, dt_b, norm, r, n):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ; y_t = C_t · h_t + D u_t, one step at a time, per batch and channel."""
    b, L, d = u.shape
    A = -A_log.exp()
    out = torch.zeros(b, L, d, dtype=torch.float64)
    for i in range(b):
        h = torch.zeros(d, n, dtype=torch.float64)
        for t in range(L):
            delta = F.softplus(dt_w @ proj[i, t, :r] + dt_b)  # (d,)
            Bt, Ct = proj[i, t, r:r + n], c_other[i, t]
            h = torch.exp(delta[:, None] * A) * h + (delta * u[i, t])[:, None] * Bt[None, :]
            out[i, t] = h @ Ct + D * u[i, t]
    return F.layer_norm(out, (d,), norm.weight.double(), norm.bias.double())


def test_cmm_equals_sequential_recurrence_with_other_modality_c():
    torch.manual_seed(0)
    cmm = CMM(8, d_state=3).double()
    with torch.no_grad():
        for p in cmm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    out_x, out_y = cmm(x, y)
    r, n = cmm.dt_rank, cmm.d_state
    px, py = cmm.x_proj_1(x), cmm.x_proj_2(y)
    want_x = recurrence(x, px, py[..., r + n:], cmm.A_log_1, cmm.D_1, cmm.dt_proj_1.weight, cmm.dt_proj_1.bias,
                        cmm.out_norm_1, r, n)
    want_y = recurrence(y, py, px[..., r + n:], cmm.A_log_2, cmm.D_2, cmm.dt_proj_2.weight, cmm.dt_proj_2.bias,
                        cmm.out_norm_2, r, n)
    assert torch.allclose(out_x, want_x, atol=1e-8) and torch.allclose(out_y, want_y, atol=1e-8)


def test_cmm_reads_the_other_sequence_only_through_c():
    """Changing y changes x's output (through C) but a y-only CMM output is not built without both_outputs."""
    torch.manual_seed(1)
    cmm = CMM(8, d_state=4, both_outputs=False)
    x, y = torch.randn(1, 6, 8), torch.randn(1, 6, 8)
    a, none = cmm(x, y)
    assert none is None and not hasattr(cmm, "A_log_2") and not hasattr(cmm, "dt_proj_2")
    assert not torch.allclose(a, cmm(x, y + 1)[0])
    y2 = y.clone()
    y2[:, 3:] += 1.0  # causal scan: positions before 3 do not see later C's
    assert torch.allclose(a[:, :3], cmm(x, y2)[0][:, :3], atol=1e-6)


@pytest.mark.parametrize("pooling", ["1d", "2d"])
def test_mgc_shapes_and_pooling(pooling):
    torch.manual_seed(0)
    mgc = MGC((8, 16, 32), (64, 16, 4), pooling=pooling)
    z1, z2, z3 = torch.randn(2, 8, 64), torch.randn(2, 16, 16), torch.randn(2, 32, 4)
    assert mgc(z1, z2, z3).shape == (2, 32, 4)
    k = torch.arange(16.0).view(1, 1, 16)
    pooled = mgc.F2C[0][0](k)
    assert pooled.flatten().tolist() == ([3.0, 7.0, 11.0, 15.0] if pooling == "1d" else [5.0, 7.0, 13.0, 15.0])


def test_mgc_rejects_bad_options():
    with pytest.raises(ConfigError, match="mgc_pooling"):
        MGC((8, 16, 32), (64, 16, 4), pooling="3d")
    with pytest.raises(ConfigError, match="shrink 4x"):
        MGC((8, 16, 32), (64, 32, 4))


def test_cmigf_residual_and_depth():
    blk = CMIGF(8, depth=2)
    x, y = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8)
    fx, fy = blk(x, y)
    assert fx.shape == x.shape and fy.shape == y.shape and len(blk.cross_mamba) == 2
    for b in blk.cross_mamba:
        torch.nn.init.zeros_(b.out_proj_rgb.weight)
        torch.nn.init.zeros_(b.out_proj_e.weight)
    fx, fy = blk(x, y)
    assert torch.equal(fx, x) and torch.equal(fy, y)
