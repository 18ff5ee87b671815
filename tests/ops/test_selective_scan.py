"""selective_scan: every implementation against the sequential reference (outputs and all gradients), stability,
float64 gradcheck of the hand-written backwards, and impl dispatch / error messages."""

from __future__ import annotations

import importlib
import logging
import sys

import pytest
import torch

from mmdiag.errors import UnknownNameError
from mmdiag.ops import ScanImplError, selective_scan, selective_scan_ref

ss = importlib.import_module("mmdiag.ops.selective_scan")  # the module (mmdiag.ops.selective_scan is the function)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (b, d, l, n, groups or None for (b, n, l) B/C, D, z, delta_bias, softplus)
CASES = {
    "grouped_all": (2, 8, 37, 4, 2, True, True, True, True),
    "ungrouped_all": (2, 6, 37, 3, None, True, True, True, True),
    "bare": (1, 5, 20, 4, None, False, False, False, False),
    "softplus_only": (2, 4, 33, 2, 4, False, False, False, True),
    "D_z_no_bias": (1, 6, 40, 5, 3, True, True, False, False),
    "l1": (2, 4, 1, 2, 2, True, True, True, True),
    "d3_n1": (2, 3, 37, 1, None, True, False, True, True),
    "wide_blocks": (1, 130, 45, 16, 1, True, True, True, True),  # several channel blocks per group, ragged last block
}


def make_inputs(b, d, l, n, groups, with_d, with_z, with_bias, softplus, dtype=torch.float32, seed=0):
    """Inputs shaped like MedMamba's: A = -(1..n) scaled, raw delta around softplus^-1 of small steps."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    inputs = {
        "u": randn(b, d, l),
        "delta": 0.5 * randn(b, d, l) - (1.0 if softplus else -1.5),
        "A": -torch.linspace(0.5, 4.0, d * n, dtype=dtype).view(d, n),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(d) if with_d else None,
        "z": randn(b, d, l) if with_z else None,
        "delta_bias": 0.3 * randn(d) if with_bias else None,
    }
    if not softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.2  # step sizes must stay positive without the softplus
    return inputs


def run_with_grads(inputs, softplus, impl, return_last_state=False):
    """Output (and last state) plus the gradient of a non-trivial loss w.r.t. every given input."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus, return_last_state=return_last_state, impl=impl)
    y, last = out if return_last_state else (out, None)
    loss = (y * torch.cos(y)).sum()
    if last is not None:
        loss = loss + (last * last.sin()).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y.detach(), (None if last is None else last.detach()), grads


def assert_rel_close(actual, expected, name, rtol=1e-4):
    """Max abs difference within ``rtol`` of the reference's max abs (and finite)."""
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    scale = expected.abs().max().clamp_min(1e-6)
    err = (actual - expected).abs().max() / scale
    assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("impl", ["fused", "torch"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_ref_outputs_and_grads(impl, case):
    b, d, l, n, groups, with_d, with_z, with_bias, softplus = CASES[case]
    inputs = make_inputs(b, d, l, n, groups, with_d, with_z, with_bias, softplus)
    y, _, grads = run_with_grads(inputs, softplus, impl)
    y_ref, _, grads_ref = run_with_grads(inputs, softplus, "ref")
    assert y.dtype == torch.float32 and y.shape == (b, d, l)
    assert_rel_close(y, y_ref, "y")
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert grads[name].shape == inputs[name].shape, name
        assert_rel_close(grads[name], grads_ref[name], f"d{name}")


@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_last_state_and_its_gradient(impl):
    inputs = make_inputs(2, 8, 50, 4, 2, True, True, True, True)
    y, last, grads = run_with_grads(inputs, True, impl, return_last_state=True)
    y_ref, last_ref, grads_ref = run_with_grads(inputs, True, "ref", return_last_state=True)
    assert last.shape == (2, 8, 4)
    assert_rel_close(y, y_ref, "y")
    assert_rel_close(last, last_ref, "last_state")
    for name in grads_ref:
        assert_rel_close(grads[name], grads_ref[name], f"d{name}")


@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_gradcheck_float64(impl):
    inputs = make_inputs(1, 4, 6, 2, 2, True, True, True, True, dtype=torch.float64)
    keys = [k for k in NAMES if inputs[k] is not None]
    leaves = [inputs[k].requires_grad_() for k in keys]

    def fn(*args):
        return selective_scan(**dict(zip(keys, args)), delta_softplus=True, impl=impl)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["fused", "torch"])
@pytest.mark.parametrize("stress", ["long_sequence", "strong_decay"])
def test_stable_and_matches_ref_in_float64(impl, stress):
    """L = 4000 (beyond MedMamba's 3136) and decays exp(dt A) that underflow to 0 within one step."""
    inputs = make_inputs(1, 4, 4000 if stress == "long_sequence" else 300, 4, 2, True, True, True, True)
    if stress == "strong_decay":
        inputs["A"] = -torch.exp(torch.linspace(2.0, 12.0, 16)).view(4, 4)  # down to -1.6e5
    inputs64 = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    y64, _, g64 = run_with_grads(inputs64, True, impl)
    y_ref, _, g_ref = run_with_grads(inputs64, True, "ref")
    assert_rel_close(y64, y_ref, "y", rtol=1e-10)
    for name in g_ref:
        assert_rel_close(g64[name], g_ref[name], f"d{name}", rtol=1e-10)
    # float32 stays finite and within tolerance of the float64 reference
    y32, _, g32 = run_with_grads(inputs, True, impl)
    assert_rel_close(y32.double(), y_ref, "y (float32)")
    for name in g_ref:
        assert_rel_close(g32[name].double(), g_ref[name], f"d{name} (float32)")


def test_fused_low_precision_input_keeps_dtype():
    inputs = make_inputs(1, 4, 9, 2, None, True, True, True, True)
    half = {k: (v.bfloat16() if v is not None else None) for k, v in inputs.items()}
    y = selective_scan(**half, delta_softplus=True, impl="fused")
    y_ref = selective_scan_ref(**half, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert_rel_close(y.float(), y_ref.float(), "y", rtol=1e-2)


# ---------------------------------------------------------------------------------------------------------------------
# Dispatch and errors


def tiny():
    return make_inputs(1, 4, 5, 2, None, True, False, False, True)


def test_auto_on_cpu_uses_fused(monkeypatch):
    calls = []
    fused = ss._FNS["fused"]
    monkeypatch.setitem(ss._FNS, "fused", lambda *a: calls.append(1) or fused(*a))
    for impl in ("auto", "fast"):
        selective_scan(**tiny(), delta_softplus=True, impl=impl)
    assert len(calls) == 2


def test_auto_falls_back_to_torch_with_one_notice(monkeypatch, caplog):
    monkeypatch.setattr(ss, "_fused_unavailable_reason", lambda: "the C compiler is broken (simulated)")
    monkeypatch.setattr(ss, "_noticed", set())
    inputs = tiny()
    with caplog.at_level(logging.WARNING, logger="mmdiag.ops.selective_scan"):
        y = selective_scan(**inputs, delta_softplus=True)
        selective_scan(**inputs, delta_softplus=True, impl="fast")
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1
    assert "'torch'" in notices[0] and "the C compiler is broken (simulated)" in notices[0]
    assert_rel_close(y, selective_scan_ref(**inputs, delta_softplus=True), "y")
    with pytest.raises(ScanImplError, match="impl='fused' cannot run: the C compiler is broken"):
        selective_scan(**inputs, delta_softplus=True, impl="fused")


def test_explicit_cuda_without_mamba_ssm_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm` raise ImportError
    with pytest.raises(ScanImplError, match="pip install mamba-ssm"):
        selective_scan(**tiny(), impl="cuda")


def test_fused_rejects_non_cpu_tensors():
    meta = {k: (v.to("meta") if v is not None else None) for k, v in tiny().items()}
    with pytest.raises(ScanImplError, match="CPU tensors only, got device meta"):
        selective_scan(**meta, impl="fused")


def test_unknown_impl_suggests_close_name():
    with pytest.raises(UnknownNameError, match="did you mean 'fused'"):
        selective_scan(**tiny(), impl="fuse")


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("delta", torch.zeros(1, 4, 6), "delta must have u's shape"),
        ("A", torch.zeros(3, 2), r"A must be \(d, n\)"),
        ("B", torch.zeros(1, 3, 2, 5), "B must be"),
        ("D", torch.zeros(5), r"D must be \(d,\)"),
        ("z", torch.zeros(1, 4, 4), "z must have u's shape"),
    ],
)
def test_shape_errors_name_the_argument(name, bad, message):
    inputs = tiny()
    inputs[name] = bad
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)
