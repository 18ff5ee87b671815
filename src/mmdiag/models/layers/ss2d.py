"""2D selective scan (SS2D; VMamba, Liu et al. 2024; MedMamba Sec. 3.2.2, Fig. 2, Alg. 1).

SS2D unfolds a feature map along four directions, runs a selective scan (Mamba's S6) over each sequence with
direction-specific projections, and sums the four results back onto the grid (:func:`mmdiag.ops.cross_selective_scan`,
which on CPU reads and writes the map in place instead of unfolding it). Parameter names and shapes follow the official MedMamba / VMamba code, so their
checkpoints load without renaming: ``x_proj_weight (K, R+2N, D)``, ``dt_projs_weight (K, D, R)``,
``dt_projs_bias (K, D)``, ``A_logs (K*D, N)``, ``Ds (K*D,)``, ``in_proj``, ``conv2d``, ``out_norm``, ``out_proj``
(K = 4 directions, D = d_inner, R = dt_rank, N = d_state).

The same module has a cross-sequence form (``context_mats="C"`` or ``"BC"``): the output matrix C (and optionally
the input matrix B) of the scan over ``x`` is projected from a second feature map, so ``x``'s states are read out
by the other sequence. :func:`project_and_scan` is the shared core and also works with one direction (K = 1), for
modules such as IIMGF-Net's Cross-Modal Mamba that scan a single sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.ops import cross_selective_scan

__all__ = ["SS2D", "project_and_scan", "scan_macs"]

ContextMats = Literal["none", "C", "BC"]
NUM_DIRECTIONS = 4


def project_and_scan(
    x: Tensor,
    x_proj_weight: Tensor,
    dt_projs_weight: Tensor,
    dt_projs_bias: Tensor,
    A_logs: Tensor,
    Ds: Tensor,
    *,
    Bs: Tensor | None = None,
    Cs: Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    """Project a map to (Δ, B, C) per direction and run SS2D's scan over K = 4 directions (or 1, row-major) at once
    (VMamba ``forward_corev0``, with the projections done per grid position before unfolding).

    Each direction k has its own projections: ``x_proj_weight[k]`` maps a token to ``[Δ_raw (R), B (N), C (N)]``
    (B and/or C rows are absent when given through ``Bs`` / ``Cs``), and ``Δ = dt_projs_weight[k] @ Δ_raw``; the
    bias and softplus are applied inside the scan. The projections are per token, so they are computed on the map
    (one matmul for all directions) and :func:`mmdiag.ops.cross_selective_scan` reads each direction's order; it
    also applies ``dt_projs_weight`` (inside the fused CPU kernels, so Δ is never stored). The
    scan runs in at least float32 with ``A = -exp(A_logs)`` and skip ``Ds``.

    Args:
        x: Channels-last map ``(b, H, W, D)``.
        x_proj_weight: ``(K, R + m*N, D)`` with m = number of B/C not supplied (2, 1 or 0).
        dt_projs_weight: ``(K, D, R)``.
        dt_projs_bias: ``(K, D)``.
        A_logs: ``(K*D, N)``.
        Ds: ``(K*D,)``.
        Bs: Optional input matrices ``(b, H, W, K, N)`` computed elsewhere (e.g. from another map).
        Cs: Optional output matrices ``(b, H, W, K, N)`` computed elsewhere.
        impl: :func:`mmdiag.ops.selective_scan` implementation.

    Returns:
        The directions' outputs summed on the grid, ``(b, H, W, D)``, in float32 (float64 for float64 inputs).

    Raises:
        ValueError: ``x_proj_weight`` has the wrong number of rows for the supplied ``Bs`` / ``Cs``.
    """
    k, n, r = x_proj_weight.shape[0], A_logs.shape[1], dt_projs_weight.shape[2]
    sizes = [r] + [n] * ((Bs is None) + (Cs is None))
    if x_proj_weight.shape[1] != sum(sizes):
        raise ValueError(
            f"project_and_scan: x_proj_weight has {x_proj_weight.shape[1]} rows, expected dt_rank {r} + {n} per "
            f"matrix not supplied (Bs given: {Bs is not None}, Cs given: {Cs is not None}) = {sum(sizes)}"
        )
    dt_raw, *parts = F.linear(x, x_proj_weight.flatten(0, 1)).unflatten(-1, (k, -1)).split(sizes, dim=-1)
    Bs = parts.pop(0) if Bs is None else Bs
    Cs = parts.pop(0) if Cs is None else Cs
    f = torch.promote_types(x.dtype, torch.float32)
    return cross_selective_scan(
        x, dt_raw, dt_projs_weight, -torch.exp(A_logs.to(f)), Bs, Cs, Ds.to(f), dt_projs_bias.to(f).reshape(-1),
        impl=impl,
    )  # fmt: skip


def scan_macs(channels: int, length: int, d_state: int) -> int:
    """Multiply-accumulates of one selective scan, by the official ``flops_selective_scan_ref`` convention.

    That convention (VMamba / MedMamba code, grouped B/C, with D, without z) counts ``3.5·N + 1`` MACs per channel
    and time step: ½·N for ``exp(ΔA)``, N for ``Δ·B·u``, 2·N for the state update and read-out, and 1 for ``D·u``.
    The official helper derives the same figure from numpy's ``einsum_path`` (within 0.02%).

    Args:
        channels: Scanned channels, all directions together (K * d_inner for SS2D).
        length: Sequence length L.
        d_state: State size N.
    """
    return channels * length * (7 * d_state + 2) // 2


class SS2D(nn.Module):
    """2D-Selective-Scan (SS2D; MedMamba Sec. 3.2.2 / VMamba): in_proj → DWConv → SiLU → 4-way S6 → norm → gate → out.

    Input and output are channels-last ``(B, H, W, d_model)``.

    Deviation: the scan discretises B̄ = Δ·B (Mamba's Euler form, as the official code and kernels do), not the
    zero-order hold of MedMamba's Eq. 2 / Alg. 1 line 3; A̅ = exp(ΔA) as in the paper.

    Args:
        d_model: Input/output channels.
        d_state: SSM state size N (MedMamba and VMamba v0: 16; VMamba v2 "0230s": 1).
        d_conv: Depthwise convolution kernel size.
        expand: d_inner = expand * d_model (MedMamba: 2; VMamba v2: ``ssm_ratio`` 1).
        dt_rank: Rank R of the Δ projection; ``"auto"`` = ceil(d_model / 16).
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        dt_init_floor: Floor applied to the initial step sizes.
        bias: Bias in ``in_proj`` / ``out_proj``.
        conv_bias: Bias in the depthwise convolution.
        gated: Split ``in_proj`` into (x, z) and multiply the output by SiLU(z) (MedMamba); False gives VMamba v2's
            ``*_noz`` form (``in_proj`` d_model → d_inner).
        dropout: Dropout on the output.
        norm_layer: Constructor of ``out_norm`` (over d_inner channels).
        context_mats: ``"none"`` for plain SS2D. ``"C"``: the output matrix C comes from a second feature map
            passed to :meth:`forward` as ``context``; ``"BC"``: B as well. The context is cross-scanned like ``x``
            and projected per direction by ``context_proj_weight (K, m*N, d_context)``.
        d_context: Channels of the context map (default d_inner); only with ``context_mats`` set.
        scan_impl: :func:`mmdiag.ops.selective_scan` implementation (``"auto"``, ``"ref"``, ...).

    Raises:
        ValueError: an option is out of range.
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: float = 2.0,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        gated: bool = True,
        dropout: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        context_mats: ContextMats = "none",
        d_context: int | None = None,
        scan_impl: str = "auto",
    ):
        super().__init__()
        if context_mats not in ("none", "C", "BC"):
            raise ValueError(f"SS2D: context_mats must be 'none', 'C' or 'BC', got {context_mats!r}")
        if d_context is not None and context_mats == "none":
            raise ValueError("SS2D: d_context is only used with context_mats='C' or 'BC'")
        if d_conv < 1 or d_conv % 2 == 0:
            raise ValueError(f"SS2D: d_conv must be a positive odd kernel size, got {d_conv}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.gated = gated
        self.context_mats = context_mats
        self.d_context = (d_context or d_inner) if context_mats != "none" else None
        self.scan_impl = scan_impl
        k, n, r = NUM_DIRECTIONS, d_state, self.dt_rank
        own_mats = 2 - (0 if context_mats == "none" else len(context_mats))

        # Parameters before child modules: reproduces the official state_dict order.
        self.x_proj_weight = nn.Parameter(_uniform((k, r + own_mats * n, d_inner), d_inner**-0.5))
        self.dt_projs_weight = nn.Parameter(_uniform((k, d_inner, r), r**-0.5))
        self.dt_projs_bias = nn.Parameter(_dt_bias_init((k, d_inner), dt_min, dt_max, dt_init_floor))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        if self.d_context is not None:
            rows = len(context_mats) * n
            self.context_proj_weight = nn.Parameter(_uniform((k, rows, self.d_context), self.d_context**-0.5))

        self.in_proj = nn.Linear(d_model, d_inner * (2 if gated else 1), bias=bias)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=d_conv // 2, groups=d_inner, bias=conv_bias)
        self.act = nn.SiLU()
        self.out_norm = norm_layer(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Apply SS2D to a channels-last map.

        Args:
            x: ``(B, H, W, d_model)``.
            context: ``(B, H, W, d_context)``; required with ``context_mats`` "C"/"BC", refused otherwise.

        Returns:
            ``(B, H, W, d_model)``.

        Raises:
            ValueError: ``x`` or ``context`` has the wrong shape, or ``context`` is missing/unexpected.
        """
        if x.dim() != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SS2D: x must be channels-last (B, H, W, {self.d_model}), got {tuple(x.shape)}")
        Bsz, H, W, _ = x.shape
        xz = self.in_proj(x)
        x, z = xz.chunk(2, dim=-1) if self.gated else (xz, None)
        # The depthwise conv runs channels-last (oneDNN's fast layout), so its output is already the token-major
        # map that the projections and the scan read.
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)))
        x = x.permute(0, 2, 3, 1)
        Bs, Cs = self._context_mats(context, (Bsz, H, W))
        y = project_and_scan(
            x,
            self.x_proj_weight,
            self.dt_projs_weight,
            self.dt_projs_bias,
            self.A_logs,
            self.Ds,
            Bs=Bs,
            Cs=Cs,
            impl=self.scan_impl,
        )
        y = self.out_norm(y.to(x.dtype))
        if z is not None:
            y = y * F.silu(z)
        return self.dropout(self.out_proj(y))

    def _context_mats(self, context: Tensor | None, bhw: tuple[int, int, int]) -> tuple[Tensor | None, Tensor | None]:
        """(Bs, Cs) projected from the cross-scanned context, or (None, None) for plain SS2D."""
        if self.d_context is None:
            if context is not None:
                raise ValueError("SS2D: got a context map, but this SS2D was built with context_mats='none'")
            return None, None
        expected = (*bhw, self.d_context)
        if context is None or tuple(context.shape) != expected:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"SS2D(context_mats={self.context_mats!r}): context must be {expected}, got {got}")
        k = self.context_proj_weight.shape[0]
        mats = F.linear(context, self.context_proj_weight.flatten(0, 1)).unflatten(-1, (k, -1))  # (B, H, W, K, m*N)
        if self.context_mats == "BC":
            Bs, Cs = mats.split(self.d_state, dim=-1)
            return Bs, Cs
        return None, mats

    def macs(self, H: int, W: int) -> tuple[int, int]:
        """MACs of the x/dt projections and of the scan for one ``H x W`` input (batch 1).

        Conv/Linear submodules (in_proj, conv2d, out_proj) are not included: they are counted as modules.

        Returns:
            ``(projection_macs, scan_macs)``; the scan follows :func:`scan_macs`.
        """
        L, k = H * W, NUM_DIRECTIONS
        proj = k * L * self.d_inner * (self.x_proj_weight.shape[1] + self.dt_rank)
        if self.d_context is not None:
            proj += k * L * self.d_context * self.context_proj_weight.shape[1]
        return proj, scan_macs(k * self.d_inner, L, self.d_state)

    def extra_repr(self) -> str:
        ctx = f", context_mats={self.context_mats!r}, d_context={self.d_context}" if self.d_context else ""
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
            f"gated={self.gated}{ctx}, scan_impl={self.scan_impl!r}"
        )


def _uniform(shape: tuple[int, ...], bound: float) -> Tensor:
    return torch.empty(shape).uniform_(-bound, bound)


def _dt_bias_init(shape: tuple[int, ...], dt_min: float, dt_max: float, floor: float) -> Tensor:
    """softplus⁻¹ of step sizes drawn log-uniformly in [dt_min, dt_max] (Mamba's dt initialisation)."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
