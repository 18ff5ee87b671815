"""Fused CPU selective scan: C kernels (``_scan_kernels.c``) built at first use, called through ctypes.

The kernels (forward recurrence and reverse-time adjoint, float32 and float64) are compiled once per machine with
the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) at ``-O3 -march=native -fopenmp`` and cached as
shared libraries under ``$MMDIAG_CACHE_DIR/kernels`` (default ``~/.cache/mmdiag/kernels``), keyed by the source,
the flags, the compiler and the CPU. A build takes about half a second per dtype. Without a working compiler,
:func:`unavailable_reason` says why and ``selective_scan(impl="auto")`` falls back to the torch path.

Work is split into tasks of channel blocks that run on ``torch.get_num_threads()`` threads of torch's own OpenMP
runtime (a Python thread pool for builds without OpenMP; ctypes releases the GIL during each call). With grad, the
forward keeps the state at each chunk start (``b * ceil(l / lanes) * n * d`` values); the backward recomputes each
chunk from there. docs/scan.md has the layout, the arithmetic bound and the measured costs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["fused_grouped_scan", "fused_scan", "unavailable_reason"]

_SOURCE = Path(__file__).with_name("_scan_kernels.c")
_FLAGS = ("-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
# Tried in this order: the first set the compiler accepts is used (no -march=native: slower but portable code;
# no -fopenmp: a Python thread pool shares the tasks instead of torch's OpenMP threads).
_OPTIONAL_FLAGS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())
_POOL: ThreadPoolExecutor | None = None


class KernelBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded on this machine."""


class _Layout(ctypes.Structure):
    """Mirror of ``layout``: strides of a (b, g, r, l) view in elements."""

    _fields_ = [(name, ctypes.c_int64) for name in ("sb", "sg", "sc", "sl")]


_VIEWS = ("u", "delta", "z", "y", "dy", "du", "ddelta", "dz", "B", "C", "dB", "dC")  # tensors passed with strides


class _Args(ctypes.Structure):
    """Mirror of ``scan_args`` in ``_scan_kernels.c``."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in ("b", "d", "l", "n", "g", "nblk", "per", "softplus", "has_z", "keep", "merge")),
        *((name, ctypes.c_void_p) for name in ("u", "delta", "bias", "A", "B", "C", "D", "z", "y", "ckpt", "last")),
        *((name, ctypes.c_void_p) for name in ("dy", "dlast", "du", "ddelta", "dz", "dA", "dD", "dbias", "dB", "dC")),
        ("pos", ctypes.c_void_p),
        ("rank", ctypes.c_int64),
        ("dtw", ctypes.c_void_p),
        ("ddtw", ctypes.c_void_p),
        *((f"l{name}", _Layout) for name in _VIEWS),
    ]


def cache_dir() -> Path:
    """Where built kernels are kept: ``$MMDIAG_CACHE_DIR/kernels``, else ``~/.cache/mmdiag/kernels``."""
    root = os.environ.get("MMDIAG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(root) / ("kernels" if os.environ.get("MMDIAG_CACHE_DIR") else "mmdiag/kernels")


@functools.cache
def _private_dir() -> Path:
    """This process' own directory for kernels when the cache directory is not writable (rebuilt per process)."""
    return Path(tempfile.mkdtemp(prefix="mmdiag-kernels-"))


def _kernel_dir() -> Path:
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return _private_dir()


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or None
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu_tag() -> str:
    """Identifies the instruction set ``-march=native`` compiles for (a shared cache may serve several CPUs)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        lines = []
    return platform.machine() + platform.processor() + "".join(lines)


def _compile(cc: str, double: bool, out: Path) -> None:
    """Compile the kernels for one dtype into ``out`` (atomically) with the first flags the compiler accepts."""
    errors = []
    for extra in _OPTIONAL_FLAGS:
        fd, tmp = tempfile.mkstemp(suffix=out.suffix, dir=out.parent)
        os.close(fd)
        cmd = [cc, *_FLAGS, *extra, f"-DSCAN_DOUBLE={int(double)}", str(_SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)
            return
        os.unlink(tmp)
        errors.append(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
    raise KernelBuildError("; ".join(errors))


def _library(double: bool) -> ctypes.CDLL:
    """The kernels for float64 (``double``) or float32 inputs, built on first use; raises KernelBuildError."""
    lib = _load(double)
    if isinstance(lib, KernelBuildError):
        raise lib
    return lib


@functools.cache
def _load(double: bool) -> ctypes.CDLL | KernelBuildError:
    """Build (or find in the cache) and load the kernels once per process; a failure is kept, not retried on
    every scan call."""
    try:
        return _build_and_load(double)
    except OSError as err:
        return KernelBuildError(f"the fused CPU kernels could not be built: {err}")
    except KernelBuildError as err:
        return err


def _build_and_load(double: bool) -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise KernelBuildError("no C compiler found (set $CC or install gcc/clang) to build the fused CPU kernels")
    version = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join([_SOURCE.read_text(), repr((_FLAGS, _OPTIONAL_FLAGS)), cc, version, _cpu_tag()]).encode()
    ).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    path = _kernel_dir() / f"scan_{'f64' if double else 'f32'}_{key}{suffix}"
    if not path.exists():
        _compile(cc, double, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise KernelBuildError(f"built kernels {path} could not be loaded: {err}") from err
    lib.scan_run.argtypes = [ctypes.POINTER(_Args), ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.scan_run.restype = ctypes.c_int
    lib.scan_lanes.restype = lib.scan_openmp.restype = ctypes.c_int
    return lib


def unavailable_reason() -> str | None:
    """Why the fused kernels cannot run here (building the float32 ones on first call), or ``None`` if they can."""
    lib = _load(False)
    return str(lib) if isinstance(lib, KernelBuildError) else None


def _run(lib: ctypes.CDLL, args: _Args, backward: bool) -> None:
    """Run every task of the forward or backward kernel on ``torch.get_num_threads()`` threads."""
    global _POOL
    nthreads = torch.get_num_threads()
    ref = ctypes.byref(args)
    if lib.scan_openmp() or nthreads == 1:
        codes = [lib.scan_run(ref, backward, 0, 1, nthreads)]
    else:
        if _POOL is None or _POOL._max_workers < nthreads - 1:
            _POOL = ThreadPoolExecutor(nthreads - 1, thread_name_prefix="mmdiag-scan")
        futures = [_POOL.submit(lib.scan_run, ref, backward, i, nthreads, 1) for i in range(1, nthreads)]
        codes = [lib.scan_run(ref, backward, 0, nthreads, 1), *(f.result() for f in futures)]
    if any(codes):
        raise MemoryError("selective_scan: the fused kernel could not allocate its work buffers")


_INPUTS = ("u", "delta", "bias", "A", "B", "C", "D", "z", "dtw")


def _args(inputs: tuple, ckpts: list[Tensor], pos: Tensor | None, **fields) -> tuple[_Args, object]:
    """Kernel arguments: the (converted) inputs in ``_INPUTS`` order, the per-batch checkpoint tensors, the position
    table, and sizes, flags and output tensors by field name; tensors in ``_VIEWS`` pass their 4-D strides too.
    Also returns what must stay alive while the kernel runs."""
    uc, _, _, Ac, Bg = inputs[:5]
    (b, _, r, l), g = uc.shape, Bg.shape[1]
    ckpt = (ctypes.c_void_p * b)(*(t.data_ptr() for t in ckpts))
    args = _Args(b=b, d=g * r, l=l, n=Ac.shape[1], g=g, ckpt=ctypes.cast(ckpt, ctypes.c_void_p))
    args.pos = None if pos is None else pos.data_ptr()
    for name, value in [*zip(_INPUTS, inputs), *fields.items()]:
        setattr(args, name, value.data_ptr() if isinstance(value, Tensor) else value)
        if name in _VIEWS and value is not None:
            setattr(args, f"l{name}", _Layout(*value.stride()))
    return args, ckpt


def _blocks_per_task(nblk: int, b: int, g: int) -> tuple[int, int]:
    """(channel blocks per task, tasks per (batch, group)). A task runs its blocks of a (batch, group) in step, chunk
    by chunk: all of them (one part per group) when there are tasks enough for two per thread, so that each step's
    channels are read together and the backward's dB/dC partial sums need no buffer of their own."""
    wanted_parts = min(nblk, -(-2 * torch.get_num_threads() // (b * g)))
    per = -(-nblk // wanted_parts)
    return per, -(-nblk // per)  # parts: the C kernel's nparts()


def _like(t: Tensor) -> Tensor:
    """An uninitialised tensor of ``t``'s shape, with its strides when those are dense (e.g. a token-major map),
    else contiguous."""
    return torch.empty_like(t, memory_format=torch.preserve_format)


class _FusedScan(torch.autograd.Function):
    """The kernels on grouped views: ``u, delta, z: (b, g, r, l)``, ``B, C: (b, g, n, l)``, any strides (the
    kernels read and write through them); ``pos: (g, l)`` maps group gi's step t to position ``pos[gi, t]`` of the
    time axis, or is None. ``y`` and the gradients of ``u``/``delta`` take ``delta``'s layout when it is dense.

    Merged form (``u: (b, 1, r, l)`` with g > 1, no ``z``): every group scans the same ``u`` and ``y: (b, 1, r, l)``
    is the sum of the groups' outputs, added up by the kernels in ``u``'s layout (no per-group copies).

    Low-rank step sizes (``dt_weight: (g*r, R)``): ``delta: (b, g, R, l)`` holds factors, and channel c's step size
    is ``dt_weight[c] @ delta[:, group, :, t]``, computed by the kernels and never stored; ``y`` and ``du`` then take
    ``u``'s layout."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, pos, delta_softplus, return_last_state, keep_states,
                dt_weight):
        ctype = torch.float64 if u.dtype == torch.float64 else torch.float32
        lib = _library(ctype == torch.float64)
        lanes = lib.scan_lanes()

        def prep(t: Tensor | None, dense: bool = False) -> Tensor | None:
            return None if t is None else t.to(ctype).contiguous() if dense else t.to(ctype)

        inputs = (prep(u), prep(delta), prep(delta_bias, True), prep(A, True), prep(B), prep(C), prep(D, True),
                  prep(z), prep(dt_weight, True))  # in _INPUTS order; fmt: skip
        uc = inputs[0]
        (b, _, r, l), g, n = uc.shape, B.shape[1], A.shape[1]
        merge, rank = uc.shape[1] != g, 0 if dt_weight is None else dt_weight.shape[1]
        nblk = -(-r // lanes)
        per, _ = _blocks_per_task(nblk, b, 1 if merge else g)
        # Chunk-start states, one tensor per batch element: each stays under glibc's 32 MB mmap threshold, so its
        # memory is reused from the heap instead of page-faulted in afresh on every call at large batch sizes.
        ckpts = [uc.new_empty(-(-l // lanes) if keep_states else 0, n, g * r) for _ in range(b)]
        y, last = _like(uc if merge or rank else inputs[1]), uc.new_empty(b, g * r, n)
        shared = (lambda t: t.expand(b, g, r, l)) if merge else (lambda t: t)  # the kernels' view: sg = 0
        args, _ckpt_array = _args(
            (shared(uc), *inputs[1:]), ckpts, pos, nblk=nblk, per=per, softplus=bool(delta_softplus),
            has_z=z is not None, keep=bool(keep_states), merge=merge, rank=rank, y=shared(y), last=last,
        )  # fmt: skip
        _run(lib, args, backward=False)
        ctx.save_for_backward(*(t for t in inputs if t is not None), *ckpts)
        ctx.given = [t is not None for t in inputs]
        ctx.pos, ctx.softplus, ctx.nblk, ctx.merge = pos, bool(delta_softplus), nblk, merge
        ctx.like = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias, dt_weight)]
        y = y.to(u.dtype)
        return (y, last) if return_last_state else y

    @staticmethod
    def backward(ctx, dy, dlast=None):
        saved = iter(ctx.saved_tensors)
        inputs = tuple(next(saved) if given else None for given in ctx.given)
        ckpts = list(saved)
        uc, deltac, _, Ac, Bc, _, _, zc, dtwc = inputs  # in _INPUTS order
        lib = _library(uc.dtype == torch.float64)
        (b, _, r, l), g, n, nblk, merge = uc.shape, Bc.shape[1], Ac.shape[1], ctx.nblk, ctx.merge
        rank = 0 if dtwc is None else dtwc.shape[1]
        shared = (lambda t: t.expand(b, g, r, l)) if merge else (lambda t: t)  # the kernels' view: sg = 0
        glast = uc.new_zeros(b, g * r, n) if dlast is None else dlast.to(uc.dtype).contiguous()
        du = _like(uc if merge or rank else deltac)
        dz = None if zc is None else _like(zc)
        dA, dD, dbias = uc.new_empty(b, g * r, n), uc.new_empty(b, g * r), uc.new_empty(b, g * r)
        per, parts = _blocks_per_task(nblk, b, 1 if merge else g)
        dB, dC = _row_sums_like(Bc, parts), _row_sums_like(Bc, parts)
        ddelta = _row_sums_like(deltac, parts) if rank else _like(deltac)
        ddtw = uc.new_empty(b, g * r, rank) if rank else None
        args, _ckpt_array = _args(
            (shared(uc), *inputs[1:]), ckpts, ctx.pos, nblk=nblk, per=per, softplus=ctx.softplus,
            has_z=zc is not None, keep=1, merge=merge, rank=rank, dy=shared(dy.to(uc.dtype)), dlast=glast,
            du=shared(du), ddelta=ddelta, dz=dz, dA=dA, dD=dD, dbias=dbias, dB=dB, dC=dC, ddtw=ddtw,
        )  # fmt: skip

        def rows(t: Tensor) -> Tensor:  # (b, g * parts, ., l) partial sums -> (b, g, ., l)
            return t if parts == 1 else t.unflatten(1, (g, parts)).sum(2)

        _run(lib, args, backward=True)
        grads = (
            du,
            rows(ddelta) if rank else ddelta,
            dA.sum(0),
            rows(dB),
            rows(dC),
            dD.sum(0),
            dz,
            dbias.sum(0),
            None if ddtw is None else ddtw.sum(0),
        )
        grads = [None if dt is None else gr.to(dt) for gr, dt in zip(grads, ctx.like)]
        return *grads[:8], None, None, None, None, grads[8]


def _row_sums_like(t: Tensor, parts: int) -> Tensor:
    """Rows ``(b, g * parts, m, l)`` for the kernels' per-part sums of a ``(b, g, m, l)`` input's gradient (dB, dC,
    step-size factors): time-major when ``t`` is, else token-major ``(b, l, g * parts, m)`` permuted."""
    b, g, m, l = t.shape
    if t.stride(-1) == 1:
        return t.new_empty(b, g * parts, m, l)
    return t.new_empty(b, l, g * parts, m).permute(0, 2, 3, 1)


def _keep_states(*inputs: Tensor | None) -> bool:
    """Chunk-start states are kept only when a backward can follow (needs_input_grad ignores torch.no_grad())."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def fused_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """Selective scan on CPU tensors with the C kernels; arguments as in ``selective_scan`` (already checked)."""
    b, d, l = u.shape
    grouped = B.dim() == 4
    g = B.shape[1] if grouped else 1
    u4, delta4, z4 = (None if t is None else t.reshape(b, g, d // g, l) for t in (u, delta, z))
    B4, C4 = (B, C) if grouped else (B[:, None], C[:, None])
    keep = _keep_states(u, delta, A, B, C, D, z, delta_bias)
    out = _FusedScan.apply(u4, delta4, A, B4, C4, D, z4, delta_bias, None, delta_softplus, return_last_state, keep,
                           None)
    y, last = out if return_last_state else (out, None)
    y = y.reshape(b, d, l)
    return (y, last) if return_last_state else y


def fused_grouped_scan(u, delta, A, B, C, D, delta_bias, pos, delta_softplus, dt_weight=None):
    """The kernels on grouped strided views with a position table (see ``_FusedScan``, also for the merged form
    ``u: (b, 1, r, l)``, which SS2D's four directions use to read one token-major map in four orders and sum their
    outputs on it, and for low-rank step sizes). Returns y ``(b, g, r, l)``, or ``(b, 1, r, l)`` merged."""
    keep = _keep_states(u, delta, A, B, C, D, delta_bias, dt_weight)
    return _FusedScan.apply(u, delta, A, B, C, D, None, delta_bias, pos, delta_softplus, False, keep, dt_weight)
