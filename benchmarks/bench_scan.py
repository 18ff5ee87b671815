"""Selective-scan benchmark: time and peak memory of each implementation at MedMamba-T scan sizes, plus this
machine's peak rates and the scan's arithmetic bound (see docs/scan.md for the derivation).

``run()`` returns one dict per row; ``python benchmarks/bench_scan.py`` prints them as a markdown table. Each
(size, impl) cell runs in its own subprocess, with its kernels loaded on a tiny problem before anything is measured;
peak memory is measured as described in :class:`PeakRSS`. Times are the best of a few repetitions: on a shared
machine the best is the least disturbed figure (the median is a few times noisier there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import os
import resource
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
IMPLS = ("fused", "torch", "ref", "mamba_style_ref")


def reps(impl: str, size: str) -> tuple[int, int]:
    """(forward, forward+backward) repetitions of a cell; 0 = not run, to keep the whole run near 2-3 minutes.

    mamba_style_ref materialises (b, d, l, n) tensors (3 GB at stage1_b8) and its backward goes through a time-axis
    index per step, which autograd makes quadratic (minutes at stage 1): it runs at batch 2 only, with a backward
    at stage 3 only, for the ratios the goals are stated against.
    """
    stage1 = size.startswith("stage1")
    if impl == "fused":
        return 15, 10  # milliseconds each: enough repetitions for the best to be an undisturbed one
    if impl == "torch":
        return (2, 1) if stage1 else (3, 2)
    if impl == "ref":
        return (1, 0) if size == "stage1_b8" else (2, 1)
    if size.endswith("_b8"):
        return 0, 0
    return 1, int(not stage1)


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


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


class PeakRSS:
    """Peak resident memory of a code block above the level before it, in MB.

    Freed heap memory is first returned to the OS (``malloc_trim``) so that the block's allocations show up as RSS
    growth, then the kernel's high-water mark is reset (``/proc/self/clear_refs`` = 5, Linux >= 4.0) and read back
    from ``VmHWM``. Where that is not possible the rise of ``ru_maxrss`` is used instead (an underestimate when the
    block reuses memory freed earlier).
    """

    def __enter__(self) -> PeakRSS:
        try:
            ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base, self.exact = _status_mb("VmRSS"), True
        except (OSError, AttributeError):
            self.base, self.exact = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, False
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_mb("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.mb = round(peak - self.base, 1)


def _times_ms(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure_cell(size: str, impl: str) -> dict:
    """Time and peak memory (of the first call of each mode, see :class:`PeakRSS`) of one (size, impl)."""
    b, d, l = SIZES[size]
    fwd_reps, fb_reps = reps(impl, size)
    scan = _scan_fn(impl)
    with torch.no_grad():  # load/compile kernels on a tiny problem first, outside the measured peak
        scan(make_inputs(1, d, 8, False))
    inputs = make_inputs(b, d, l, requires_grad=fb_reps > 0)
    grad_out = torch.randn(b, d, l)
    row = {"size": size, "impl": impl, "reps": f"{fwd_reps}/{fb_reps}"}
    with torch.no_grad():
        with PeakRSS() as peak:
            first = _times_ms(lambda: scan(inputs), 1)
        row["fwd_peak_mb"] = peak.mb
        row["fwd_ms"] = round(min(first + _times_ms(lambda: scan(inputs), fwd_reps - 1)), 1)
    if fb_reps:

        def fwd_bwd():
            scan(inputs).backward(grad_out)
            for v in inputs.values():
                v.grad = None

        with PeakRSS() as peak:
            first = _times_ms(fwd_bwd, 1)
        row["fwdbwd_peak_mb"] = peak.mb
        row["fwdbwd_ms"] = round(min(first + _times_ms(fwd_bwd, fb_reps - 1)), 1)
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
    per_channel, per_group = (3 + 5, 2 + 4) if backward else (3, 2)
    bytes_moved = 4 * (b * d * l * per_channel + b * GROUPS * N_STATE * l * per_group)
    return max(flops / (rates["gflops"] * 1e9), bytes_moved / (rates["copy_gbs"] * 1e9)) * 1e3


def run() -> list[dict]:
    """Measure every (size, impl) cell in a subprocess; return the rows (one per cell) and bound rows."""
    rates = machine_rates()
    rows = []
    for size in SIZES:
        for impl in (i for i in IMPLS if reps(i, size)[0]):
            cmd = [sys.executable, os.path.abspath(__file__), "--cell", size, impl]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except (subprocess.SubprocessError, ValueError, IndexError) as err:
                log.warning("bench_scan: cell %s/%s failed: %s", size, impl, err)
                rows.append({"size": size, "impl": impl, "error": type(err).__name__})
        bound = {"fwd_ms": bound_ms(size, rates, backward=False), "fwdbwd_ms": bound_ms(size, rates, backward=True)}
        by_impl = {r["impl"]: r for r in rows if r["size"] == size}
        fused = by_impl.get("fused", {})
        for r in by_impl.values():
            for key in ("fwd_ms", "fwdbwd_ms"):
                if key in r and key in fused:
                    r[f"fused_speedup_{key[:-3]}"] = round(r[key] / fused[key], 1)
                if key in r and r is fused:
                    r[f"x_bound_{key[:-3]}"] = round(r[key] / bound[key], 1)
        rows.append({"size": size, "impl": "bound (fused kernel)", **{k: round(v, 2) for k, v in bound.items()}})
    rows.append({"size": "machine", "impl": "rates", **{k: round(v, 2) for k, v in rates.items()}})
    return rows


COLUMNS = [
    "size", "impl", "reps", "fwd_ms", "fwd_peak_mb", "fwdbwd_ms", "fwdbwd_peak_mb",
    "fused_speedup_fwd", "fused_speedup_fwdbwd", "x_bound_fwd", "x_bound_fwdbwd", "error",
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
        "\n".join(lines) + f"\n\nMachine: {machine}. Times: best of `reps` (forward/forward+backward) in ms; "
        "peak: resident-memory high-water mark above the level before the first call, in MB, one subprocess per "
        "cell; fused_speedup: this row's time / the fused time; x_bound: fused time / the bound (docs/scan.md).\n"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--cell":
        print(json.dumps(measure_cell(sys.argv[2], sys.argv[3])))
    else:
        logging.basicConfig(level=logging.INFO)
        print(to_markdown(run()))
