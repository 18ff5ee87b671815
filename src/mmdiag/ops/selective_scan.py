"""Selective scan (Mamba S6, Gu & Dao 2023, Alg. 2) behind one call with several implementations.

Shapes follow mamba_ssm's ``selective_scan_fn`` so its CUDA kernel is a drop-in: ``u, delta, z: (b, d, l)``,
``A: (d, n)``, ``B, C: (b, n, l)`` or grouped ``(b, g, n, l)`` (channel ``c`` uses group ``c // (d // g)``),
``D, delta_bias: (d,)``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdiag.errors import MmdiagError, UnknownNameError

__all__ = ["selective_scan", "selective_scan_ref", "ScanImplError", "Impl", "IMPLS"]

log = logging.getLogger(__name__)

Impl = Literal["auto", "fast", "ref", "torch", "fused", "cuda"]
IMPLS: tuple[str, ...] = ("auto", "fast", "ref", "torch", "fused", "cuda")


class ScanImplError(MmdiagError, RuntimeError):
    """An explicitly requested scan implementation cannot run here; the message says why and how to fix it."""


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D, z, delta_bias) -> None:
    """Raise ``ValueError`` naming the argument whose shape does not fit ``u: (b, d, l)``."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (b, d, l), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if A.is_complex() or B.is_complex() or C.is_complex():
        raise ValueError("selective_scan: complex A/B/C are not supported (real A only); pass real tensors")
    if tuple(delta.shape) != (b, d, l):
        raise ValueError(f"selective_scan: delta must have u's shape {(b, d, l)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (d, n) = ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 3 and tuple(t.shape) == (b, n, l)) or (
            t.dim() == 4 and t.shape[0] == b and t.shape[2:] == (n, l) and t.shape[1] > 0 and d % t.shape[1] == 0
        )
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (b, n, l) = {(b, n, l)} or grouped (b, g, n, l) with g dividing "
                f"d = {d}, got {tuple(t.shape)}"
            )
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"selective_scan: B and C must share a layout, got {tuple(B.shape)} and {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (d,):
            raise ValueError(f"selective_scan: {name} must be (d,) = ({d},), got {tuple(t.shape)}")
    if z is not None and tuple(z.shape) != (b, d, l):
        raise ValueError(f"selective_scan: z must have u's shape {(b, d, l)}, got {tuple(z.shape)}")


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Plain sequential recurrence, one Python step per time step (the reference the fast paths are tested against).

    Computes ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = <C_t, h_t> + D u_t``, ``y *= silu(z)``
    in float32 (float64 if ``u`` is float64); autograd gives the gradients.

    Args:
        u: Input ``(b, d, l)``.
        delta: Step sizes ``(b, d, l)``.
        A: State matrix diagonal ``(d, n)``, real.
        B: Input projection ``(b, n, l)`` or grouped ``(b, g, n, l)``.
        C: Output projection, same layout as ``B``.
        D: Skip weight ``(d,)``.
        z: Gate ``(b, d, l)``; the output is multiplied by ``silu(z)``.
        delta_bias: Added to ``delta`` per channel ``(d,)`` before the softplus.
        delta_softplus: Apply softplus to ``delta`` (after the bias).
        return_last_state: Also return the final state ``(b, d, n)``.

    Returns:
        ``y`` of shape ``(b, d, l)`` in ``u``'s dtype, and the last state (float32/64) if requested.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    n = A.shape[1]
    g = B.shape[1] if B.dim() == 4 else 1
    ctype = torch.promote_types(u.dtype, torch.float32)
    dt = _prepare_delta(delta, delta_bias, delta_softplus, ctype)
    uc = u.to(ctype)
    # Channels as (g, r): the state is (b, g, r, n) and B_t/C_t broadcast over r. unbind once: indexing the time
    # axis inside the loop would make autograd's backward quadratic in l.
    dts = dt.reshape(b, g, d // g, l).unbind(-1)
    dus = (dt * uc).reshape(b, g, d // g, l).unbind(-1)
    Bs = B.to(ctype).reshape(b, g, 1, n, l).unbind(-1)
    Cs = C.to(ctype).reshape(b, g, 1, n, l).unbind(-1)
    A3 = A.to(ctype).reshape(g, d // g, n)
    h = uc.new_zeros(b, g, d // g, n)
    ys = []
    for dt_t, du_t, B_t, C_t in zip(dts, dus, Bs, Cs):
        h = torch.exp(dt_t[..., None] * A3) * h + du_t[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, -1).view(b, d, l)
    if D is not None:
        y = y + D.to(ctype)[:, None] * uc
    if z is not None:
        y = y * F.silu(z.to(ctype))
    y = y.to(u.dtype)
    return (y, h.reshape(b, d, n)) if return_last_state else y


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    return_last_state: bool = False,
    impl: Impl = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics; see :func:`selective_scan_ref` for arguments.

    ``return_last_state`` and ``impl`` are keyword-only, so a positional call written for ``selective_scan_fn``
    cannot pass an ``impl`` string as ``return_last_state`` silently.

    Args:
        impl: ``"ref"`` (sequential loop), ``"torch"`` (chunked pure PyTorch, any device), ``"fused"`` (C CPU
            kernels with their own backward, built on first use), ``"cuda"`` (mamba_ssm kernels), ``"fast"``/``"auto"`` (fastest available
            for the tensors' device; falls back to ``"torch"`` with one logged notice).

    Raises:
        ValueError: A shape does not fit ``u: (b, d, l)``.
        UnknownNameError: ``impl`` is not one of :data:`IMPLS`.
        ScanImplError: The explicitly requested ``impl`` cannot run here.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    fn = _FNS[resolve_impl(impl, u)]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, ctype: torch.dtype) -> Tensor:
    dt = delta.to(ctype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ctype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


class _ChunkedScan(torch.autograd.Function):
    """Core recurrence ``ys_t = <C_t, h_t>`` in time chunks, with a reverse-time backward.

    Inputs are time-major and contiguous: ``u, dt: (l, b, g, r)``, ``A: (g, r, n)``, ``B, C: (l, b, g, n)``. Per
    chunk of ``T`` steps the decays ``a = exp(dt A)`` and inputs ``dt u B`` are written into reused
    ``(T, b, g, r, n)`` buffers (fresh large tensors cost page faults on every op) and the recurrence is one in-place
    ``addcmul_`` per step. Only chunk-start states are saved; the backward recomputes a chunk's states before running
    the adjoint recurrence through it.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, chunk):
        l, b, g, r = u.shape
        bufs = u.new_empty(2, min(chunk, l), b, g, r, A.shape[-1])
        du = dt * u
        ys = u.new_empty(l, b, g, r)
        h = u.new_zeros(b, g, r, A.shape[-1])
        ckpt = []
        for t0 in range(0, l, chunk):
            ckpt.append(h)
            t1 = min(t0 + chunk, l)
            hs = _ChunkedScan._states(dt[t0:t1], du[t0:t1], A, B[t0:t1], h, bufs)[1]
            torch.matmul(hs, C[t0:t1, ..., None], out=ys[t0:t1, ..., None])
            h = hs[-1].clone()
        ctx.save_for_backward(u, dt, A, B, C, torch.stack(ckpt))
        ctx.chunk = chunk
        return ys, h

    @staticmethod
    def _states(dt, du, A, B, h, bufs):
        """Decays ``a`` and states ``hs`` (both ``(T, b, g, r, n)``, in ``bufs``) of a chunk starting at state ``h``."""
        a = torch.mul(dt[..., None], A, out=bufs[0, : dt.shape[0]]).exp_()
        hs = torch.mul(du[..., None], B[:, :, :, None], out=bufs[1, : dt.shape[0]])
        hs[0].addcmul_(a[0], h)
        for t in range(1, hs.shape[0]):
            hs[t].addcmul_(a[t], hs[t - 1])
        return a, hs

    @staticmethod
    def backward(ctx, dys, dlast):
        u, dt, A, B, C, ckpt = ctx.saved_tensors
        l = u.shape[0]
        bufs = u.new_empty(4, *ckpt.shape[1:]).unsqueeze(1).expand(4, min(ctx.chunk, l), *ckpt.shape[1:]).clone()
        dys = dys.contiguous()
        du_in = dt * u
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.zeros_like(A)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        carry = dlast  # gradient reaching the chunk's last state from later steps
        for i, t0 in reversed(list(enumerate(range(0, l, ctx.chunk)))):
            t1 = min(t0 + ctx.chunk, l)
            uc, dtc, Bc, dy = u[t0:t1], dt[t0:t1], B[t0:t1], dys[t0:t1]
            a, hs = _ChunkedScan._states(dtc, du_in[t0:t1], A, Bc, ckpt[i], bufs)
            G = torch.mul(dy[..., None], C[t0:t1, :, :, None], out=bufs[2, : t1 - t0])  # adjoint state
            G[-1] += carry
            for t in range(G.shape[0] - 2, -1, -1):
                G[t].addcmul_(a[t + 1], G[t + 1])
            carry = a[0] * G[0]
            torch.matmul(dy[..., None, :], hs, out=dC[t0:t1, :, :, None])
            torch.matmul(du_in[t0:t1, ..., None, :], G, out=dB[t0:t1, :, :, None])
            d_du = torch.matmul(G, Bc[..., None]).squeeze(-1)
            q = G.mul_(a)  # gradient w.r.t. dt * A once multiplied by the previous state
            q[0] *= ckpt[i]
            q[1:] *= hs[:-1]
            ddt[t0:t1] = torch.mul(q, A, out=bufs[3, : t1 - t0]).sum(-1) + d_du * uc
            dA += q.mul_(dtc[..., None]).sum((0, 1))
            du[t0:t1] = d_du * dtc
        return du, ddt, dA, dB, dC, None


def _selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk: int = 32):
    """Chunked pure-PyTorch scan for any device (``impl="torch"``); D, z, bias and softplus go through autograd."""
    b, d, l = u.shape
    n = A.shape[1]
    g = B.shape[1] if B.dim() == 4 else 1
    ctype = torch.promote_types(u.dtype, torch.float32)
    dt = _prepare_delta(delta, delta_bias, delta_softplus, ctype)
    uc = u.to(ctype)

    def time_major(t: Tensor, inner: int) -> Tensor:
        return t.to(ctype).reshape(b, g, inner, l).permute(3, 0, 1, 2).contiguous()

    ys, last = _ChunkedScan.apply(
        time_major(uc, d // g),
        time_major(dt, d // g),
        A.to(ctype).reshape(g, d // g, n),
        time_major(B, n),
        time_major(C, n),
        chunk,
    )
    y = ys.permute(1, 2, 3, 0).reshape(b, d, l)
    if D is not None:
        y = y + D.to(ctype)[:, None] * uc
    if z is not None:
        y = y * F.silu(z.to(ctype))
    y = y.to(u.dtype)
    return (y, last.reshape(b, d, n)) if return_last_state else y


def _fused(*args):
    from mmdiag.ops._scan_cpu import fused_scan

    return fused_scan(*args)


def _cuda(*args):
    from mmdiag.ops._scan_cuda import cuda_scan

    return cuda_scan(*args)


_FNS = {"ref": selective_scan_ref, "torch": _selective_scan_torch, "fused": _fused, "cuda": _cuda}
_FAST = {"cpu": "fused", "cuda": "cuda"}  # fastest implementation per device type
_noticed: set[str] = set()


def _fused_unavailable_reason() -> str | None:
    from mmdiag.ops import _scan_cpu

    return _scan_cpu.unavailable_reason()


def _cuda_unavailable_reason() -> str | None:
    from mmdiag.ops import _scan_cuda

    return _scan_cuda.unavailable_reason()


def _unavailable_reason(impl: str, u: Tensor) -> str | None:
    """Why ``impl`` cannot run on ``u``'s device, or ``None``."""
    if impl == "fused":
        if u.device.type != "cpu":
            return f"it runs on CPU tensors only, got device {u.device}; use impl='torch' or 'cuda'"
        return _fused_unavailable_reason()
    if impl == "cuda":
        reason = _cuda_unavailable_reason()
        if reason is None and u.device.type != "cuda":
            reason = f"it needs CUDA tensors, got device {u.device}"
        return reason
    return None


def resolve_impl(impl: str, u: Tensor) -> str:
    """The implementation (``"ref"``, ``"torch"``, ``"fused"`` or ``"cuda"``) that ``impl`` runs on ``u``'s device;
    see :func:`selective_scan` for the errors."""
    if impl not in IMPLS:
        raise UnknownNameError("selective_scan impl", impl, IMPLS)
    if impl in ("auto", "fast"):
        preferred = _FAST.get(u.device.type)
        if preferred is None:
            return "torch"
        reason = _unavailable_reason(preferred, u)
        if reason is None:
            return preferred
        if preferred not in _noticed:
            _noticed.add(preferred)
            log.warning("selective_scan: impl=%r falls back from %r to 'torch': %s", impl, preferred, reason)
        return "torch"
    reason = _unavailable_reason(impl, u)
    if reason is not None:
        raise ScanImplError(f"selective_scan impl={impl!r} cannot run: {reason}")
    return impl
