"""Fused CPU selective scan: numba kernels for the forward recurrence and its reverse-time adjoint.

Layout (see docs/scan.md for the reasoning and the measured costs):

- Work is split into tasks of (batch, group, block of ``w`` channels), run by ``torch.get_num_threads()`` threads
  calling ``nogil`` kernels (numba's ``parallel=True`` compiled 4x slower for no run-time gain). The ``w`` channels
  of a block share ``B_t`` and ``C_t``, so the innermost loop runs over channels ("lanes") with contiguous,
  independent state ``h[k, :]``: it vectorises (AVX2/AVX-512) with no cross-lane work in the forward pass.
- ``exp`` in float32 is a Cody-Waite range reduction plus a degree-6 polynomial written in numba so LLVM vectorises
  it (numba's ``math.exp`` is a scalar libm call without Intel SVML). float64 uses ``math.exp``.
- Time is processed in chunks of ``_CHUNK`` steps, copied into small time-major buffers. With grad, the forward
  keeps only the state at each chunk start (``b * ceil(l / T) * n * d`` values); the backward recomputes each
  chunk's states and decay factors into cache-sized buffers and runs the adjoint recurrence backwards through it.
- Only ``fastmath={"contract"}`` (FMA) is used in the forward; the backward adds ``"reassoc"`` so the sums over
  lanes for ``dB``/``dC`` vectorise. Agreement with the reference is tested.

Compilation is lazy (first call: ~18 s for float32 forward + backward, ~13 s for float64) and cached on disk
(``cache=True``; later processes load it in under a second).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload
from torch import Tensor

__all__ = ["fused_scan", "unavailable_reason"]

_CHUNK = 32  # time steps per chunk = checkpoint interval of the backward
_MAX_LANES = 96  # channels per task (measured best of 32-96); a multiple of 16 keeps AVX-512 / AVX2 vectors full
_FWD_FLAGS = {"contract"}
_BWD_FLAGS = {"contract", "reassoc"}
_JIT = dict(cache=True, error_model="numpy", boundscheck=False)
_POOL: ThreadPoolExecutor | None = None


def unavailable_reason() -> str | None:
    """Why the fused kernels cannot run here, or ``None`` if they can."""
    if numba.config.DISABLE_JIT:
        return "NUMBA_DISABLE_JIT is set, so the numba kernels would run as slow Python"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Vectorisable exp


@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _expf(x):
    # exp(x) = 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2) / 2; Cephes expf coefficients (max error ~1 ulp).
    # Below -87.3 the result would be denormal: return 0 (denormals are slow and the reference rounds them to ~0
    # within tolerance). Above 88.7 the scaling 2^k overflows to inf, as torch.exp does.
    small = x < np.float32(-87.33)
    x = min(max(x, np.float32(-87.33)), np.float32(88.8))
    kf = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - kf * np.float32(0.693359375)
    r = r + kf * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return np.float32(0) if small else p * _i32_as_f32((np.int32(kf) + np.int32(127)) << np.int32(23))


def _exp(x):
    """exp in the precision of ``x``; only called from compiled code (see the overload below)."""
    return math.exp(x)


@overload(_exp)
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _expf
    return lambda x: math.exp(x)


def _softplus(x):
    """torch's softplus (``x`` above 20 passes through) in the precision of ``x``; compiled code only."""
    return x if x > 20 else math.log1p(math.exp(x))


@overload(_softplus)
def _softplus_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _softplusf
    return lambda x: x if x > 20 else math.log1p(math.exp(x))


def _softplusf(x):
    # max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3, series to s^13.
    e = _exp(-abs(x))
    s = e / (np.float32(2) + e)
    s2 = s * s
    p = np.float32(1 / 13)
    p = p * s2 + np.float32(1 / 11)
    p = p * s2 + np.float32(1 / 9)
    p = p * s2 + np.float32(1 / 7)
    p = p * s2 + np.float32(1 / 5)
    p = p * s2 + np.float32(1 / 3)
    p = p * s2 + np.float32(1)
    return max(x, np.float32(0)) + np.float32(2) * s * p


def _one(a):
    """1 in the dtype of array ``a`` (a bare ``1.0`` would promote float32 code to float64); compiled code only."""
    return a.dtype.type(1)


@overload(_one)
def _one_overload(a):
    if a.dtype == types.float32:
        return lambda a: np.float32(1)
    return lambda a: np.float64(1)


# ---------------------------------------------------------------------------------------------------------------------
# Per-task building blocks


@njit(fastmath=_FWD_FLAGS, **_JIT)
def _load_rows(src, c0, t0, tn, dst):
    """Transposing copy: ``dst[t, j] = src[c0 + j, t0 + t]`` for a (T, w) time-major buffer.

    Time-outer order (gathered loads, contiguous stores) measured fastest for these copies.
    """
    for t in range(tn):
        for j in range(dst.shape[1]):
            dst[t, j] = src[c0 + j, t0 + t]


@njit(fastmath=_FWD_FLAGS, **_JIT)
def _store_rows(src, dst, c0, t0, tn):
    """Transposing copy back: ``dst[c0 + j, t0 + t] = src[t, j]`` (scattered stores measured faster than gathers)."""
    for t in range(tn):
        for j in range(src.shape[1]):
            dst[c0 + j, t0 + t] = src[t, j]


@njit(fastmath=_FWD_FLAGS, **_JIT)
def _load_chunk(u, delta, bias, softplus, c0, t0, tn, uc, xc, dtc, duc):
    """Time-major chunk inputs: ``uc = u``, ``xc = delta + bias``, ``dtc = softplus(xc)`` (or ``xc``), ``duc = dt u``.

    The elementwise work runs on the time-major buffers, where it vectorises over the lanes.
    """
    _load_rows(u, c0, t0, tn, uc)
    _load_rows(delta, c0, t0, tn, xc)
    w = dtc.shape[1]
    for t in range(tn):
        for j in range(w):
            xc[t, j] += bias[c0 + j]
    if softplus:  # branches stay outside the loops: a select inside would evaluate both sides for every element
        for t in range(tn):
            for j in range(w):
                dtc[t, j] = _softplus(xc[t, j])
    else:
        dtc[:tn] = xc[:tn]
    for t in range(tn):
        for j in range(w):
            duc[t, j] = dtc[t, j] * uc[t, j]


@njit(fastmath=_FWD_FLAGS, **_JIT)
def _scan_chunk(dtc, duc, Ab, Bm, Cm, t0, h, yc, tn, Hs, As, keep):
    """Run the recurrence over one chunk: ``h <- exp(dt A) h + du B``, ``yc[t] = sum_k C h``.

    With ``keep``, also store the states (``Hs[t + 1]``; ``Hs[0]`` = state before the chunk) and decay factors.
    """
    n, w = h.shape
    if keep:
        for k in range(n):
            for j in range(w):
                Hs[0, k, j] = h[k, j]
    for t in range(tn):
        for j in range(w):
            yc[t, j] = 0.0
        for k in range(n):
            bk = Bm[k, t0 + t]  # B and C enter as scalars: read in place, no transposing copy
            ck = Cm[k, t0 + t]
            if keep:
                for j in range(w):
                    a = _exp(dtc[t, j] * Ab[k, j])
                    hn = a * h[k, j] + duc[t, j] * bk
                    h[k, j] = hn
                    As[t, k, j] = a
                    Hs[t + 1, k, j] = hn
                    yc[t, j] += ck * hn
            else:
                for j in range(w):
                    hn = _exp(dtc[t, j] * Ab[k, j]) * h[k, j] + duc[t, j] * bk
                    h[k, j] = hn
                    yc[t, j] += ck * hn


@njit(fastmath=_BWD_FLAGS, **_JIT)
def _adjoint_chunk(dtc, duc, dyc, Ab, Bm, Cm, Hs, As, G, dA, dB, dC, t0, ddtc, dduc, tn):
    """Reverse-time adjoint over one chunk.

    ``G`` enters as ``exp(dt_{t+1} A) G_{t+1}`` of the step after the chunk and leaves the same for the chunk start.
    Accumulates ``dA``; writes ``dB``/``dC`` (this block's (n, l) rows, summed over the lanes) at steps ``t0 + t``
    and, per lane, ``ddtc`` (through the decay) and ``dduc`` (the gradient w.r.t. ``dt * u``).
    """
    n, w = G.shape
    for t in range(tn - 1, -1, -1):
        for j in range(w):
            ddtc[t, j] = 0.0
            dduc[t, j] = 0.0
        for k in range(n):
            bk = Bm[k, t0 + t]  # B and C enter as scalars: read in place, no transposing copy
            ck = Cm[k, t0 + t]
            acc_b = _one(G) - _one(G)
            acc_c = acc_b
            for j in range(w):
                gk = G[k, j] + ck * dyc[t, j]
                acc_c += dyc[t, j] * Hs[t + 1, k, j]
                acc_b += gk * duc[t, j]
                dduc[t, j] += gk * bk
                a = As[t, k, j]
                q = gk * a * Hs[t, k, j]
                dA[k, j] += q * dtc[t, j]
                ddtc[t, j] += q * Ab[k, j]
                G[k, j] = a * gk
            dB[k, t0 + t] = acc_b
            dC[k, t0 + t] = acc_c


# ---------------------------------------------------------------------------------------------------------------------
# Task kernels


@njit(**_JIT)
def _ntask(u, B, w):
    """Number of (batch, group, channel block) tasks."""
    return u.shape[0] * B.shape[1] * ((u.shape[1] // B.shape[1] + w - 1) // w)


@njit(fastmath=_FWD_FLAGS, **_JIT)
def _task(task, g, nblk, r, w):
    """(batch, group, first channel, lanes) of a task index."""
    bi = task // (g * nblk)
    gi = (task // nblk) % g
    blk = task % nblk
    c0 = gi * r + blk * w
    return bi, gi, blk, c0, min(w, gi * r + r - c0)


@njit(fastmath=_FWD_FLAGS, **_JIT)
def _fwd_task(task, u, delta, bias, softplus, A, B, C, D, z, y, ckpt, last, w):
    """Forward of one task. ``z``/``ckpt`` with a zero-sized dim 1 mean "no gate" / "keep no checkpoints"."""
    d, l = u.shape[1:]
    g = B.shape[1]
    n = A.shape[1]
    bi, gi, _, c0, nv = _task(task, g, (d // g + w - 1) // w, d // g, w)
    one = _one(u)
    has_z = z.shape[1] > 0
    Ab = np.empty((n, nv), u.dtype)
    for k in range(n):
        for j in range(nv):
            Ab[k, j] = A[c0 + j, k]
    h = np.zeros((n, nv), u.dtype)
    bufs = np.empty((6, _CHUNK, nv), u.dtype)
    uc, xc, dtc, duc, yc, zc = bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], bufs[5]
    unused = np.empty((1, 1, 1), u.dtype)
    for t0 in range(0, l, _CHUNK):
        tn = min(_CHUNK, l - t0)
        if ckpt.shape[1] > 0:
            for k in range(n):
                for j in range(nv):
                    ckpt[bi, t0 // _CHUNK, k, c0 + j] = h[k, j]
        _load_chunk(u[bi], delta[bi], bias, softplus, c0, t0, tn, uc, xc, dtc, duc)
        _scan_chunk(dtc, duc, Ab, B[bi, gi], C[bi, gi], t0, h, yc, tn, unused, unused, False)
        for t in range(tn):
            for j in range(nv):
                yc[t, j] += D[c0 + j] * uc[t, j]
        if has_z:
            _load_rows(z[bi], c0, t0, tn, zc)
            for t in range(tn):
                for j in range(nv):
                    yc[t, j] *= zc[t, j] / (one + _exp(-zc[t, j]))
        _store_rows(yc, y[bi], c0, t0, tn)
    for j in range(nv):
        for k in range(n):
            last[bi, c0 + j, k] = h[k, j]


@njit(fastmath=_BWD_FLAGS, **_JIT)
def _bwd_task(task, u, delta, bias, softplus, A, B, C, D, z, ckpt, dy, dlast, w, du, ddelta, dz, dA, dD, dbias, dB, dC):
    """Backward of one task. ``dB``/``dC`` are (b, g * nblk, n, l) per-task partial sums, ``dA``/``dD`` per batch."""
    d, l = u.shape[1:]
    g = B.shape[1]
    n = A.shape[1]
    nblk = (d // g + w - 1) // w
    bi, gi, blk, c0, nv = _task(task, g, nblk, d // g, w)
    one = _one(u)
    has_z = z.shape[1] > 0
    Ab = np.empty((n, nv), u.dtype)
    G = np.empty((n, nv), u.dtype)
    for k in range(n):
        for j in range(nv):
            Ab[k, j] = A[c0 + j, k]
            G[k, j] = dlast[bi, c0 + j, k]
    h = np.empty((n, nv), u.dtype)
    dA_task = np.zeros((n, nv), u.dtype)
    dD_task = np.zeros(nv, u.dtype)
    dbias_task = np.zeros(nv, u.dtype)
    Hs = np.empty((_CHUNK + 1, n, nv), u.dtype)
    As = np.empty((_CHUNK, n, nv), u.dtype)
    bufs = np.empty((9, _CHUNK, nv), u.dtype)
    uc, xc, dtc, duc, yc, zc = bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], bufs[5]
    dyc, ddtc, dduc = bufs[6], bufs[7], bufs[8]
    dB_blk = dB[bi, gi * nblk + blk]
    dC_blk = dC[bi, gi * nblk + blk]
    for ci in range(ckpt.shape[1] - 1, -1, -1):
        t0 = ci * _CHUNK
        tn = min(_CHUNK, l - t0)
        for k in range(n):
            for j in range(nv):
                h[k, j] = ckpt[bi, ci, k, c0 + j]
        _load_chunk(u[bi], delta[bi], bias, softplus, c0, t0, tn, uc, xc, dtc, duc)
        _scan_chunk(dtc, duc, Ab, B[bi, gi], C[bi, gi], t0, h, yc, tn, Hs, As, True)
        # Output gate: dy -> gradient of the scan output (dyc), dz and dD; D's direct path into du is added below.
        _load_rows(dy[bi], c0, t0, tn, dyc)
        if has_z:
            _load_rows(z[bi], c0, t0, tn, zc)
            for t in range(tn):
                for j in range(nv):
                    zt = zc[t, j]
                    sig = one / (one + _exp(-zt))
                    zc[t, j] = dyc[t, j] * (yc[t, j] + D[c0 + j] * uc[t, j]) * sig * (one + zt * (one - sig))  # dz
                    dyc[t, j] *= zt * sig
            _store_rows(zc, dz[bi], c0, t0, tn)
        for t in range(tn):
            for j in range(nv):
                dD_task[j] += dyc[t, j] * uc[t, j]
        _adjoint_chunk(dtc, duc, dyc, Ab, B[bi, gi], C[bi, gi], Hs, As, G, dA_task, dB_blk, dC_blk, t0, ddtc, dduc, tn)
        for t in range(tn):
            for j in range(nv):
                ddtc[t, j] += dduc[t, j] * uc[t, j]
                dduc[t, j] = dduc[t, j] * dtc[t, j] + dyc[t, j] * D[c0 + j]
        if softplus:  # softplus' = sigmoid
            for t in range(tn):
                for j in range(nv):
                    ddtc[t, j] /= one + _exp(-xc[t, j])
        for t in range(tn):
            for j in range(nv):
                dbias_task[j] += ddtc[t, j]
        _store_rows(dduc, du[bi], c0, t0, tn)
        _store_rows(ddtc, ddelta[bi], c0, t0, tn)
    for j in range(nv):
        dD[bi, c0 + j] = dD_task[j]
        dbias[bi, c0 + j] = dbias_task[j]
        for k in range(n):
            dA[bi, c0 + j, k] = dA_task[k, j]


@njit(nogil=True, fastmath=_FWD_FLAGS, **_JIT)
def _fwd_kernel(first, step, u, delta, bias, softplus, A, B, C, D, z, y, ckpt, last, w):
    """Forward of tasks ``first, first + step, ...``; releases the GIL so threads can run it side by side."""
    for task in range(first, _ntask(u, B, w), step):
        _fwd_task(task, u, delta, bias, softplus, A, B, C, D, z, y, ckpt, last, w)


@njit(nogil=True, fastmath=_BWD_FLAGS, **_JIT)
def _bwd_kernel(
    first, step, u, delta, bias, softplus, A, B, C, D, z, ckpt, dy, dlast, w, du, ddelta, dz, dA, dD, dbias, dB, dC
):
    """Backward of tasks ``first, first + step, ...``; see :func:`_bwd_task`."""
    for task in range(first, _ntask(u, B, w), step):
        _bwd_task(
            task, u, delta, bias, softplus, A, B, C, D, z, ckpt, dy, dlast, w, du, ddelta, dz, dA, dD, dbias, dB, dC
        )


# ---------------------------------------------------------------------------------------------------------------------
# torch front end


def _lanes(b: int, g: int, r: int) -> int:
    """Channels per task: blocks of at most ``_MAX_LANES`` that tile a group evenly, with >= 2 tasks per thread."""
    nblk = -(-r // _MAX_LANES)
    while b * g * nblk < 2 * torch.get_num_threads() and -(-r // (nblk + 1)) >= 16:
        nblk += 1
    return -(-r // nblk)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep_states):
        ctype = torch.float64 if u.dtype == torch.float64 else torch.float32
        b, d, l = u.shape
        n = A.shape[1]

        def prep(t: Tensor | None, empty: tuple[int, ...]) -> Tensor:
            return u.new_zeros(empty, dtype=ctype) if t is None else t.to(ctype).contiguous()

        uc, dc, Ac = prep(u, ()), prep(delta, ()), prep(A, ())
        Bg, Cg = prep(B if B.dim() == 4 else B[:, None], ()), prep(C if C.dim() == 4 else C[:, None], ())
        Dc, biasc, zc = prep(D, (d,)), prep(delta_bias, (d,)), prep(z, (b, 0, 0))
        ckpt = u.new_empty(b, -(-l // _CHUNK) if keep_states else 0, n, d, dtype=ctype)
        y = u.new_empty(b, d, l, dtype=ctype)
        last = u.new_empty(b, d, n, dtype=ctype)
        g = Bg.shape[1]
        w = _lanes(b, g, d // g)
        ntask = b * g * -(-(d // g) // w)
        _run(_fwd_kernel, ntask, uc, dc, biasc, delta_softplus, Ac, Bg, Cg, Dc, zc, y, ckpt, last, w)
        ctx.save_for_backward(uc, dc, biasc, Ac, Bg, Cg, Dc, zc, ckpt)
        ctx.w, ctx.softplus = w, delta_softplus
        # dtype and shape of each input's gradient
        ctx.like = [None if t is None else (t.dtype, t.shape) for t in (u, delta, A, B, C, D, z, delta_bias)]
        y = y.to(u.dtype)
        return (y, last) if return_last_state else y

    @staticmethod
    def backward(ctx, dy, dlast=None):
        uc, dc, biasc, Ac, Bg, Cg, Dc, zc, ckpt = ctx.saved_tensors
        b, d, l = uc.shape
        g, n = Bg.shape[1], Ac.shape[1]
        nblk = -(-(d // g) // ctx.w)
        dyc = dy.to(uc.dtype).contiguous()
        glast = uc.new_zeros(b, d, n) if dlast is None else dlast.to(uc.dtype).contiguous()
        du, ddelta, dz = torch.empty_like(uc), torch.empty_like(uc), torch.empty_like(zc)
        dA, dD, dbias = uc.new_empty(b, d, n), uc.new_empty(b, d), uc.new_empty(b, d)
        dB, dC = uc.new_empty(b, g * nblk, n, l), uc.new_empty(b, g * nblk, n, l)
        _run(
            _bwd_kernel, b * g * nblk, uc, dc, biasc, ctx.softplus, Ac, Bg, Cg, Dc, zc, ckpt, dyc, glast, ctx.w,
            du, ddelta, dz, dA, dD, dbias, dB, dC,
        )  # fmt: skip
        grads = (
            du,
            ddelta,
            dA.sum(0),
            dB.view(b, g, nblk, n, l).sum(2),
            dC.view(b, g, nblk, n, l).sum(2),
            dD.sum(0),
            dz,
            dbias.sum(0),
        )
        return *(None if m is None else gr.to(m[0]).view(m[1]) for gr, m in zip(grads, ctx.like)), None, None, None


def _run(kernel, ntask: int, *args) -> None:
    """Run ``kernel(first, step, *args)`` for ``ntask`` tasks on up to ``torch.get_num_threads()`` threads."""
    global _POOL
    args = tuple(_np(a) if isinstance(a, Tensor) else a for a in args)
    nthreads = max(1, min(torch.get_num_threads(), ntask))
    if _POOL is None or _POOL._max_workers < nthreads - 1:
        _POOL = ThreadPoolExecutor(max(1, nthreads - 1), thread_name_prefix="mmdiag-scan")
    futures = [_POOL.submit(kernel, i, nthreads, *args) for i in range(1, nthreads)]
    kernel(0, nthreads, *args)
    for f in futures:
        f.result()


def fused_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """Selective scan on CPU tensors with the numba kernels; arguments as in ``selective_scan`` (already checked)."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    # Chunk-start states are kept only when a backward can follow (needs_input_grad ignores torch.no_grad()).
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _FusedScan.apply(*inputs, delta_softplus, return_last_state, keep)
