"""Selective-scan benchmark: time and peak memory of each implementation at MedMamba-T scan sizes, plus this
machine's peak rates and the scan's arithmetic bound (see docs/scan.md for the derivation).

``run()`` returns one dict per row; ``python benchmarks/bench_scan.py`` prints them as a markdown table. Each
(size, impl) cell runs in its own subprocess so that its peak-memory figure (rise of ``ru_maxrss`` over the level
after the inputs are built and the kernels are loaded) is not masked by an earlier cell.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

log = logging.getLogger(__name__)

N_STATE = 16
GROUPS = 4  # SS2D's four scan directions, each with its own B/C
# name: (batch, channels d = 4 directions x d_inner, sequence length)
SIZES = {
    "stage1_b2": (2, 4 * 96, 56 * 56),
    "stage1_b8": (8, 4 * 96, 56 * 56),
    "stage3_b2": (2, 4 * 384, 14 * 14),
    "stage3_b8": (8, 4 * 384, 14 * 14),
}
# impl: (forward repetitions, forward+backward repetitions); 0 = not run (too slow for the time budget)
PLAN = {
    "fused": (7, 5),
    "torch": (2, 1),
    "ref": (1, 1),
    "mamba_style_ref": (1, 0),  # its backward indexes the time axis in the loop: minutes at stage 1
}
SKIP_FWDBWD = {("ref", "stage1_b8")}  # tens of seconds; stage1_b2 gives the ratio
TIMEOUT_S = 150


def make_inputs(b: int, d: int, l: int, requires_grad: bool) -> dict:
    """MedMamba-like inputs: A = -(1..16), delta_bias = softplus^-1(dt) with dt log-uniform in [1e-3, 0.1]."""
    gen = torch.Generator().manual_seed(0)
    dt0 = torch.exp(torch.empty(d).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
    inputs = {
        "u": torch.randn(b, d, l, generator=gen),
        "delta": 0.5 * torch.randn(b, d, l, generator=gen),
        "A": -torch.arange(1, N_STATE + 1, dtype=torch.float32).repeat(d, 1),
        "B": torch.randn(b, GROUPS, N_STATE, l, generator=gen),
        "C": torch.randn(b, GROUPS, N_STATE, l, generator=gen),
        "D": torch.ones(d),
        "delta_bias": dt0 + torch.log(-torch.expm1(-dt0)),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def mamba_style_ref(u, delta, A, B, C, D, delta_bias):
    """The algorithm of mamba_ssm's ``selective_scan_ref`` (our own code): materialise exp(delta A) and delta B u as
    (b, d, l, n) tensors, then index the time axis inside the Python loop. The spec's ~1.7 s baseline."""
    b, d, l = u.shape
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    Bd = B.repeat_interleave(d // B.shape[1], dim=1)  # (b, d, n, l)
    Cd = C.repeat_interleave(d // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, Bd, u)
    x = u.new_zeros(b, d, A.shape[1])
    ys = []
    for i in range(l):
        x = decay[:, :, i] * x + drive[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, Cd[:, :, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def _scan_fn(impl: str):
    from mmdiag.ops import selective_scan

    if impl == "mamba_style_ref":
        return lambda inp: mamba_style_ref(**inp)
    return lambda inp: selective_scan(**inp, delta_softplus=True, impl=impl)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _times_ms(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_cell(size: str, impl: str) -> dict:
    """Time and peak memory of one (size, impl) in this process (meant to be a fresh one).

    The first measured call of each mode also sets its peak: ``ru_maxrss`` is a high-water mark, so the
    forward+backward figure (taken after the forward ones) is the larger of the two phases.
    """
    b, d, l = SIZES[size]
    fwd_reps, fb_reps = PLAN[impl]
    if (impl, size) in SKIP_FWDBWD:
        fb_reps = 0
    scan = _scan_fn(impl)
    with torch.no_grad():  # load/compile kernels on a tiny problem first, outside the measured peak
        scan(make_inputs(1, d, 8, False))
    inputs = make_inputs(b, d, l, requires_grad=fb_reps > 0)
    base = _maxrss_mb()
    row = {"size": size, "impl": impl, "threads": torch.get_num_threads()}
    with torch.no_grad():
        first = _times_ms(lambda: scan(inputs), 1)
        row["fwd_peak_mb"] = round(_maxrss_mb() - base, 1)
        row["fwd_ms"] = round(statistics.median(first + _times_ms(lambda: scan(inputs), fwd_reps - 1)), 1)
    if fb_reps:

        def fwd_bwd():
            scan(inputs).sum().backward()

        first = _times_ms(fwd_bwd, 1)
        row["fwdbwd_peak_mb"] = round(_maxrss_mb() - base, 1)
        row["fwdbwd_ms"] = round(statistics.median(first + _times_ms(fwd_bwd, fb_reps - 1)), 1)
    return row


def _best_s(fn, reps: int = 5) -> float:
    fn()
    return min(_times_ms(fn, reps)) / 1e3


def machine_rates() -> dict:
    """Peak rates measured here: sgemm FLOP/s, streaming copy bytes/s and torch.exp elements/s (preallocated)."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    gemm_s = _best_s(lambda: torch.matmul(a, b, out=out))
    src = torch.randn(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    copy_s = _best_s(lambda: dst.copy_(src))
    x = -torch.rand(16 * 2**20)
    y = torch.empty_like(x)
    exp_s = _best_s(lambda: torch.exp(x, out=y))
    return {
        "gflops": 2 * n**3 / gemm_s / 1e9,
        "copy_gbs": 2 * src.numel() * 4 / copy_s / 1e9,  # read + write
        "exp_gelems": x.numel() / exp_s / 1e9,
        "threads": torch.get_num_threads(),
        "loadavg_1min": os.getloadavg()[0],
    }


def bound_ms(size: str, rates: dict, backward: bool) -> float:
    """Lower bound for a fused kernel: max(compute, memory). Per (b, d, l, n) element the forward does 6 flops
    plus one exp (~15 flops as a vectorised polynomial); the backward recomputes the forward and adds ~20 flops
    and no second exp (decays kept from the recompute). Bytes: the (b, d, l) and (b, g, n, l) tensors read and
    written once (forward: u, delta in, y out, B, C in; backward adds dy in, du, ddelta out, dB, dC out)."""
    b, d, l = SIZES[size]
    elems = b * d * l * N_STATE
    flops = elems * ((6 + 15) + ((6 + 15) + 20 if backward else 0))
    bytes_moved = 4 * (b * d * l * (3 + (5 if backward else 0)) + b * GROUPS * N_STATE * l * (2 + (4 if backward else 0)))
    return max(flops / (rates["gflops"] * 1e9), bytes_moved / (rates["copy_gbs"] * 1e9)) * 1e3


def run() -> list[dict]:
    """Measure every (size, impl) cell in a subprocess; return the rows (one per cell) and bound rows."""
    rates = machine_rates()
    rows = []
    for size in SIZES:
        for impl in PLAN:
            cmd = [sys.executable, os.path.abspath(__file__), "--cell", size, impl]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (subprocess.SubprocessError, ValueError, IndexError) as err:
                log.warning("bench_scan: cell %s/%s failed: %s", size, impl, err)
                rows.append({"size": size, "impl": impl, "error": type(err).__name__})
        by_impl = {r["impl"]: r for r in rows if r["size"] == size}
        fused = by_impl.get("fused", {})
        for r in (by_impl[i] for i in PLAN if i in by_impl):
            for key in ("fwd_ms", "fwdbwd_ms"):
                if key in r and key in fused:
                    r[f"fused_speedup_{key[:-3]}"] = round(r[key] / fused[key], 1)
        rows.append(
            {
                "size": size,
                "impl": "bound (fused kernel)",
                "fwd_ms": round(bound_ms(size, rates, backward=False), 2),
                "fwdbwd_ms": round(bound_ms(size, rates, backward=True), 2),
            }
        )
    rows.append({"size": "machine", "impl": "rates", **{k: round(v, 2) for k, v in rates.items()}})
    return rows


COLUMNS = [
    "size", "impl", "fwd_ms", "fwd_peak_mb", "fwdbwd_ms", "fwdbwd_peak_mb", "fused_speedup_fwd", "fused_speedup_fwdbwd",
]  # fmt: skip


def to_markdown(rows: list[dict]) -> str:
    """Markdown table of the scan rows, then one line with the machine rates."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    machine = ""
    for r in rows:
        if r["size"] == "machine":
            machine = ", ".join(f"{k} = {v}" for k, v in r.items() if k not in ("size", "impl"))
            continue
        lines.append("| " + " | ".join(str(r.get(c, "–")) for c in COLUMNS) + " |")
    return (
        "\n".join(lines) + f"\n\nMachine: {machine}. Times are medians in ms; peak = rise of ru_maxrss in MB "
        "(one subprocess per cell); fused_speedup = this row's time / fused time.\n"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--cell":
        print(json.dumps(measure_cell(sys.argv[2], sys.argv[3])))
    else:
        logging.basicConfig(level=logging.INFO)
        print(to_markdown(run()))
