"""SS2D against a step-by-step reference of the official forward, layouts, the cross variant, scan impls, MACs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdiag.models.layers.ss2d import SS2D, project_and_scan, scan_macs
from mmdiag.models.layers.vss import VSSBlock
from mmdiag.ops import selective_scan_ref

LAYOUTS = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts"


def naive_ss2d(m: SS2D, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """SS2D written out step by step: explicit direction orders, per-token projections, sequential recurrence."""
    Bsz, H, W, _ = x.shape
    d, n, r = m.d_inner, m.d_state, m.dt_rank
    xz = x @ m.in_proj.weight.T
    xi, z = xz.split(d, dim=-1)
    xc = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1, groups=d))
    ctx = None if context is None else context.permute(0, 3, 1, 2)
    rows = [(i, j) for i in range(H) for j in range(W)]
    cols = [(i, j) for j in range(W) for i in range(H)]
    orders = [rows, cols, rows[::-1], cols[::-1]]  # official direction order
    y = torch.zeros(Bsz, d, H, W, dtype=x.dtype)
    for k, order in enumerate(orders):
        A = -torch.exp(m.A_logs[k * d : (k + 1) * d])  # (d, n)
        h = torch.zeros(Bsz, d, n, dtype=x.dtype)
        for i, j in order:
            u = xc[:, :, i, j]  # (B, d)
            proj = u @ m.x_proj_weight[k].T
            dt_raw, rest = proj[:, :r], proj[:, r:]
            if m.context_mats == "none":
                Bt, Ct = rest[:, :n], rest[:, n:]
            else:
                cproj = ctx[:, :, i, j] @ m.context_proj_weight[k].T
                Bt, Ct = (rest, cproj) if m.context_mats == "C" else cproj.split(n, dim=1)
            delta = F.softplus(dt_raw @ m.dt_projs_weight[k].T + m.dt_projs_bias[k])  # (B, d)
            h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * Bt[:, None, :]
            y[:, :, i, j] += (h * Ct[:, None, :]).sum(-1) + m.Ds[k * d : (k + 1) * d] * u
    y = F.layer_norm(y.permute(0, 2, 3, 1), (d,), m.out_norm.weight, m.out_norm.bias, m.out_norm.eps)
    return (y * F.silu(z)) @ m.out_proj.weight.T


def _randomise(m: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (LayerNorm affine included) so a wrong wiring cannot cancel out."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("impl", ["ref", "fused"])
@pytest.mark.parametrize(
    "context_mats,hw",
    [("none", (3, 4)), ("none", (1, 5)), ("C", (3, 4)), ("BC", (4, 3))],
)
def test_ss2d_matches_stepwise_reference(context_mats, hw, impl):
    torch.manual_seed(0)
    kw = dict(context_mats=context_mats, d_context=6) if context_mats != "none" else {}
    m = SS2D(d_model=5, d_state=3, scan_impl=impl, **kw).double()
    _randomise(m)
    x = torch.randn(2, *hw, 5, dtype=torch.float64)
    ctx = torch.randn(2, *hw, 6, dtype=torch.float64) if context_mats != "none" else None
    out = m(x, ctx)
    assert out.shape == x.shape
    torch.testing.assert_close(out, naive_ss2d(m, x, ctx), rtol=1e-10, atol=1e-10)


def test_ss2d_layout_equals_official_medmamba_block():
    """Names, shapes and order of SS2D(d_model=48) = layers.0.blocks.0.self_attention.* of the official T."""
    spec = json.loads((LAYOUTS / "medmamba_t.json").read_text())["state_dict"]
    prefix = "layers.0.blocks.0.self_attention."
    expected = [(k[len(prefix) :], shape) for k, shape in spec if k.startswith(prefix)]
    with torch.device("meta"):
        m = SS2D(d_model=48)
    assert [(k, list(v.shape)) for k, v in m.state_dict().items()] == expected


def test_ss2d_ungated_layout_equals_vmamba_v2_noz():
    """SS2D(96, d_state=1, expand=1, gated=False, conv_bias=False) has VMamba v2 'v05_noz' op's keys and shapes."""
    expected = {
        "x_proj_weight": [4, 8, 96], "A_logs": [384, 1], "Ds": [384], "dt_projs_weight": [4, 96, 6],
        "dt_projs_bias": [4, 96], "out_norm.weight": [96], "out_norm.bias": [96], "in_proj.weight": [96, 96],
        "conv2d.weight": [96, 1, 3, 3], "out_proj.weight": [96, 96],
    }  # fmt: skip
    with torch.device("meta"):
        blk = VSSBlock(96, d_state=1, expand=1.0, gated=False, conv_bias=False)
    assert {k: list(v.shape) for k, v in blk.op.state_dict().items()} == expected
    assert {k for k in blk.state_dict() if not k.startswith("op.")} == {"norm.weight", "norm.bias"}


def test_ss2d_init_matches_official():
    m = SS2D(d_model=32, d_state=8)
    assert torch.equal(m.A_logs, torch.log(torch.arange(1.0, 9.0)).repeat(4 * 64, 1))
    assert torch.equal(m.Ds, torch.ones(256))
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert m.dt_projs_weight.abs().max() <= m.dt_rank**-0.5
    assert m.x_proj_weight.abs().max() <= 64**-0.5


def test_cross_ss2d_context_changes_output_and_gets_gradients():
    torch.manual_seed(0)
    m = SS2D(d_model=6, d_state=4, context_mats="C", scan_impl="ref")
    assert m.x_proj_weight.shape == (4, m.dt_rank + 4, 12)  # own B only
    assert m.context_proj_weight.shape == (4, 4, 12)
    x, ctx = torch.randn(2, 3, 3, 6), torch.randn(2, 3, 3, 12)
    out = m(x, ctx)
    assert not torch.allclose(out, m(x, ctx + 1.0))
    out.square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize(
    "kwargs,context,match",
    [
        (dict(), torch.zeros(1, 2, 2, 8), "context_mats='none'"),
        (dict(context_mats="C"), None, r"context must be \(1, 2, 2, 8\), got None"),
        (dict(context_mats="BC", d_context=3), torch.zeros(1, 2, 2, 8), r"context must be \(1, 2, 2, 3\)"),
    ],
)
def test_ss2d_context_errors(kwargs, context, match):
    m = SS2D(d_model=4, d_state=2, **kwargs)
    with pytest.raises(ValueError, match=match):
        m(torch.zeros(1, 2, 2, 4), context)


def test_ss2d_bad_options_and_input():
    with pytest.raises(ValueError, match="context_mats must be"):
        SS2D(4, context_mats="A")
    with pytest.raises(ValueError, match="d_context is only used"):
        SS2D(4, d_context=3)
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, 4\), got \(1, 4, 2, 2\)"):
        SS2D(4)(torch.zeros(1, 4, 2, 2))


def test_project_and_scan_single_direction_with_given_mats():
    """K = 1 with B and C supplied (a Cross-Modal-Mamba-style use): one row-major scan of the map, equal to the
    selective scan of the flattened tokens; x_proj only yields Δ; wrong row counts raise."""
    torch.manual_seed(0)
    b, d, n, r, H, W = 2, 6, 3, 2, 2, 3
    x = torch.randn(b, H, W, d, dtype=torch.float64)
    Bs, Cs = torch.randn(b, H, W, 1, n, dtype=torch.float64), torch.randn(b, H, W, 1, n, dtype=torch.float64)
    w_x, w_dt, dt_b = torch.randn(1, r, d), torch.randn(1, d, r), torch.randn(1, d)
    A_logs, Ds = torch.randn(d, n), torch.randn(d)
    w_x, w_dt, dt_b, A_logs, Ds = (t.double() for t in (w_x, w_dt, dt_b, A_logs, Ds))
    for impl in ("ref", "auto"):
        ys = project_and_scan(x, w_x, w_dt, dt_b, A_logs, Ds, Bs=Bs, Cs=Cs, impl=impl)
        assert ys.shape == (b, H, W, d) and ys.dtype == torch.float64
        tokens = x.reshape(b, H * W, d)
        delta = tokens @ w_x[0].T @ w_dt[0].T
        expected = selective_scan_ref(
            tokens.transpose(1, 2), delta.transpose(1, 2), -torch.exp(A_logs), Bs.reshape(b, H * W, n).transpose(1, 2),
            Cs.reshape(b, H * W, n).transpose(1, 2), Ds, delta_bias=dt_b[0], delta_softplus=True,
        )  # fmt: skip
        torch.testing.assert_close(ys, expected.transpose(1, 2).reshape(b, H, W, d), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="x_proj_weight has 8 rows, expected dt_rank 2"):
        project_and_scan(x, torch.randn(1, r + 2 * n, d), w_dt, dt_b, A_logs, Ds, Cs=Cs)


def test_ss2d_scan_impl_ref_and_auto_agree():
    torch.manual_seed(0)
    m = SS2D(d_model=8, d_state=4, scan_impl="ref")
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    outs, grads = [], []
    for impl in ("ref", "auto"):
        m.scan_impl = impl
        m.zero_grad()
        x.grad = None
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for g_ref, g_auto in zip(*grads):
        torch.testing.assert_close(g_ref, g_auto, rtol=1e-3, atol=1e-4)


def _ss2d_outputs_and_grads(m: SS2D, x: torch.Tensor, ctx: torch.Tensor | None, impl: str) -> list[torch.Tensor]:
    m.scan_impl = impl
    out = m(x, ctx)
    inputs = [x] + ([ctx] if ctx is not None else []) + list(m.parameters())
    return [out.detach(), *torch.autograd.grad(out.square().sum(), inputs)]


# d_state 16 with B/C from the projections takes the kernels' fixed-shape code (16 states, contiguous B/C rows).
@pytest.mark.parametrize(
    "context_mats,gated,d_state", [("none", True, 3), ("none", False, 3), ("BC", True, 3), ("none", True, 16)]
)
def test_ss2d_fused_gradients_equal_the_unfolding_path(context_mats, gated, d_state):
    """float64: the fused path (map read in place) and the unfold/scan/merge path agree on every gradient."""
    torch.manual_seed(0)
    kw = dict(context_mats=context_mats, d_context=6) if context_mats != "none" else {}
    m = SS2D(d_model=20, d_state=d_state, gated=gated, **kw).double()  # d_inner 40: two 16-channel blocks + 8
    _randomise(m)
    x = torch.randn(2, 5, 7, 20, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, 5, 7, 6, dtype=torch.float64, requires_grad=True) if context_mats != "none" else None
    grads = [_ss2d_outputs_and_grads(m, x, ctx, impl) for impl in ("torch", "fused")]
    for g_torch, g_fused in zip(*grads):
        torch.testing.assert_close(g_fused, g_torch, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("d_state", [3, 16])
def test_ss2d_fused_float32_agrees_with_float64(d_state):
    """float32 kernels (16 lanes, polynomial exp) within 1e-4 of the float64 unfolding path, output and gradients,
    on a map long enough for several chunks per direction."""
    torch.manual_seed(0)
    m = SS2D(d_model=24, d_state=d_state)
    _randomise(m)
    x = torch.randn(2, 9, 11, 24)
    ref = _ss2d_outputs_and_grads(m.double(), x.double().requires_grad_(), None, "torch")
    got = _ss2d_outputs_and_grads(m.float(), x.requires_grad_(), None, "fused")
    for name, g, r in zip(["out", "x", *(n for n, _ in m.named_parameters())], got, ref):
        err = (g.double() - r).abs().max() / r.abs().max()
        assert err < 1e-4, f"{name}: relative error {err:.1e}"


def _official_scan_flops(B: int, L: int, D: int, N: int) -> float:
    """The official flops_selective_scan_ref (grouped, with D, without z), re-derived with numpy's einsum_path."""

    def einsum_macs(shapes, eq):
        info = np.einsum_path(eq, *[np.zeros(s) for s in shapes], optimize="optimal")[1]
        line = next(ln for ln in info.split("\n") if "optimized flop" in ln.lower())
        return float(np.floor(float(line.split(":")[-1]) / 2))

    flops = einsum_macs([[B, D, L], [D, N]], "bdl,dn->bdln")
    flops += einsum_macs([[B, D, L], [B, N, L], [B, D, L]], "bdl,bnl,bdl->bdln")
    flops += L * (B * D * N + einsum_macs([[B, D, N], [B, D, N]], "bdn,bdn->bd"))
    return flops + B * D * L


@pytest.mark.parametrize("D,L,N", [(384, 3136, 16), (3072, 49, 16), (96, 64, 1)])
def test_scan_macs_follows_official_convention(D, L, N):
    assert scan_macs(D, L, N) == pytest.approx(_official_scan_flops(1, L, D, N), rel=5e-4)


def test_ss2d_macs_counts_projections():
    m = SS2D(d_model=48)  # MedMamba-T stage 1: d_inner 96, dt_rank 3
    proj, scan = m.macs(56, 56)
    assert proj == 4 * 3136 * (35 * 96 + 96 * 3)
    assert scan == scan_macs(384, 3136, 16)
