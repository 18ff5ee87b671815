"""IIMGF-Net fusion blocks (Wang et al., paper 000): Cross-Modal Mamba (CMM), the Cross-Modal Interaction-Guided
Fusion block (CMIGF, Sec. 3.2) and Multi-Granularity Collaboration (MGC, Sec. 3.3).

Module and parameter names follow the authors' code (``in_proj``, ``in_proj_modalx``, ``conv2d``, ``CMA_ssm``,
``x_proj_1``...), so their trained state dict maps onto these modules by prefix only
(:meth:`mmdiag.models.nets.iimgf_net.IIMGFNet.checkpoint_filter_fn`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.models.layers.ss2d import _dt_bias_init
from mmdiag.ops import selective_scan

__all__ = ["CMM", "CMIGF", "CMIGFBlock", "MGC", "MgcPooling"]

MgcPooling = Literal["1d", "2d"]


class _TokenPool(nn.Module):
    """Max-pool a row-major token sequence ``(B, C, N)`` by 4: 1x4 runs (``"1d"``) or 2x2 windows of the square grid
    (``"2d"``)."""

    def __init__(self, mode: MgcPooling):
        super().__init__()
        self.mode = mode

    def forward(self, k: Tensor) -> Tensor:
        if self.mode == "1d":
            return F.max_pool1d(k, 4, 4)
        side = math.isqrt(k.shape[-1])
        return F.max_pool2d(k.unflatten(-1, (side, side)), 2).flatten(2)


class CMM(nn.Module):
    """Cross-Modal Mamba (CMM; paper Sec. 3.2, Eq. 2-3): a selective scan of one modality read out by the other.

    For each modality m, ``x_proj_m`` maps a token to ``[Δ_raw (R), B_m (N), C_m (N)]`` and
    ``Δ_m = dt_proj_m(Δ_raw)`` (bias and softplus inside the scan). The x output scans x with x's Δ, A, B, D and the
    output matrix ``C_y`` projected from y's token at the same position; the y output is the mirror image. Each output
    passes through a LayerNorm. One direction (row-major token order), no z gating; B and C are shared by all
    channels. The scan is :func:`mmdiag.ops.selective_scan` (fused kernel when available).

    Deviation: the output LayerNorm, per-channel D and S4D-real initialisation of A follow the authors' code; the
    paper writes neither. Discretisation B̄ = Δ·B as in the code (paper: zero-order hold).

    Args:
        d_model: Channels d of both sequences.
        d_state: State size N (authors: 16 in CMIGF, 4 in MGC).
        dt_rank: Rank R of Δ; ``"auto"`` = ceil(d_model / 16).
        both_outputs: Build the y branch (Δ_y rank-up, A_y, D_y, its norm). False when only the x output is used
            (MGC): y then contributes only C_y through ``x_proj_2``.
        scan_impl: :func:`mmdiag.ops.selective_scan` implementation.
    """

    def __init__(self, d_model: int, d_state: int = 16, dt_rank: int | Literal["auto"] = "auto",
                 both_outputs: bool = True, scan_impl: str = "auto"):
        super().__init__()
        self.d_model, self.d_state, self.both_outputs, self.scan_impl = d_model, d_state, both_outputs, scan_impl
        self.dt_rank = r = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        n_br = 2 if both_outputs else 1
        a_init = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_model, 1)
        for i in range(1, n_br + 1):
            setattr(self, f"A_log_{i}", nn.Parameter(a_init.clone()))
            setattr(self, f"D_{i}", nn.Parameter(torch.ones(d_model)))
        self.x_proj_1 = nn.Linear(d_model, r + 2 * d_state, bias=False)
        self.x_proj_2 = nn.Linear(d_model, r + 2 * d_state, bias=False)
        for i in range(1, n_br + 1):
            dt = nn.Linear(r, d_model)
            nn.init.uniform_(dt.weight, -(r**-0.5), r**-0.5)
            with torch.no_grad():
                dt.bias.copy_(_dt_bias_init((d_model,), 1e-3, 0.1, 1e-4))
            setattr(self, f"dt_proj_{i}", dt)
        for i in range(1, n_br + 1):
            setattr(self, f"out_norm_{i}", nn.LayerNorm(d_model))

    def _scan(self, u: Tensor, proj: Tensor, C_other: Tensor, i: int) -> Tensor:
        dt_raw, B = proj[..., : self.dt_rank], proj[..., self.dt_rank : self.dt_rank + self.d_state]
        dt_proj: nn.Linear = getattr(self, f"dt_proj_{i}")
        f = torch.promote_types(u.dtype, torch.float32)
        y = selective_scan(
            u.transpose(1, 2).to(f),
            (dt_raw @ dt_proj.weight.T).transpose(1, 2).to(f),
            -torch.exp(getattr(self, f"A_log_{i}").to(f)),
            B.transpose(1, 2).to(f),
            C_other.transpose(1, 2).to(f),
            getattr(self, f"D_{i}").to(f),
            delta_bias=dt_proj.bias.to(f),
            delta_softplus=True,
            impl=self.scan_impl,
        )
        return getattr(self, f"out_norm_{i}")(y.transpose(1, 2).to(u.dtype))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scan both token sequences ``(B, L, d)`` with the other's C.

        Returns:
            ``(out_x, out_y)``, each ``(B, L, d)``; ``out_y`` is None without ``both_outputs``.

        Raises:
            ValueError: the sequences' shapes differ or the width is not ``d_model``.
        """
        if x.shape != y.shape or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"CMM: x and y must both be (B, L, {self.d_model}), got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        px, py = self.x_proj_1(x), self.x_proj_2(y)
        c = slice(self.dt_rank + self.d_state, None)
        out_x = self._scan(x, px, py[..., c], 1)
        out_y = self._scan(y, py, px[..., c], 2) if self.both_outputs else None
        return out_x, out_y

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, dt_rank={self.dt_rank}, both={self.both_outputs}"


class CMIGFBlock(nn.Module):
    """One CMIGF block (Sec. 3.2, Fig. 3): per-modality input projection → shared depthwise 3x3 conv → SiLU → CMM →
    per-modality output projection + residual. Channels-last ``(B, H, W, C)`` in and out.

    Deviation: the depthwise convolution is one module shared by both modalities (authors' code).
    """

    def __init__(self, dim: int, d_state: int = 16, scan_impl: str = "auto"):
        super().__init__()
        self.in_proj = nn.Linear(dim, dim, bias=False)
        self.in_proj_modalx = nn.Linear(dim, dim, bias=False)
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.out_proj_rgb = nn.Linear(dim, dim, bias=False)
        self.out_proj_e = nn.Linear(dim, dim, bias=False)
        self.CMA_ssm = CMM(dim, d_state, scan_impl=scan_impl)

    def _local(self, t: Tensor) -> Tensor:
        return F.silu(self.conv2d(t.permute(0, 3, 1, 2))).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.CMA_ssm(self._local(self.in_proj(x)), self._local(self.in_proj_modalx(y)))
        return x + self.out_proj_rgb(a).view_as(x), y + self.out_proj_e(b).view_as(y)


class CMIGF(nn.Module):
    """Cross-Modal Interaction-Guided Fusion at one level (Sec. 3.2): ``depth`` :class:`CMIGFBlock` s in sequence
    (authors: depth 1/1/2 at the three levels)."""

    def __init__(self, dim: int, depth: int = 1, d_state: int = 16, scan_impl: str = "auto"):
        super().__init__()
        self.cross_mamba = nn.ModuleList(CMIGFBlock(dim, d_state, scan_impl) for _ in range(depth))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        for blk in self.cross_mamba:
            x, y = blk(x, y)
        return x, y


class MGC(nn.Module):
    """Multi-Granularity Collaboration (Sec. 3.3, Eq. 4-6): coarse-to-fine then fine-to-coarse over the fused maps
    ``Z_l = [f_x; f_y]`` of three levels, ``(B, 2C_l, N_l)`` with ``N_l = H_l W_l`` (row-major tokens).

    Coarse-to-fine: ``Ẑ_{l+1} = Conv1x1(ReLU(Linear_{N_{l+1}→N_l}(Z_{l+1})))`` (ReLU after the conv at level 1),
    ``K_l = CMM(Z_l, Ẑ_{l+1})_x`` (l = 1, 2), ``K_3 = Z_3``. Fine-to-coarse: ``K̂_l = Conv1x1(MaxPool(K_l))`` (ReLU at
    level 1), ``R_2 = CMM(K_2, K̂_1)_x + K_2``, ``R_3 = CMM(Z_3, K̂_2)_x + Z_3``. Returns R_3 ``(B, 2C_3, N_3)``.

    Deviation (authors' code): the "enlarging Linear" is a learned dense map over the token axis; the fine-to-coarse
    pooling is MaxPool1d(4) over the row-major token sequence (1x4 horizontal runs); the C2F outputs have no residual,
    the F2C outputs have one; CMMs use d_state 4 and keep only their x output. ``pooling="2d"`` gives the paper's
    2x2 spatial max-pooling instead of the 1x4 runs.

    Args:
        dims: Fused widths 2C_l of the three levels.
        tokens: Token counts N_l of the three levels (each a square grid; N_l = 4 N_{l+1}).
        d_state: State size of the MGC CMMs.
        pooling: ``"1d"`` (authors' code) or ``"2d"`` (paper).
        scan_impl: Scan implementation.

    Raises:
        ConfigError: unknown ``pooling`` or token counts that do not shrink 4x per level.
    """

    def __init__(self, dims: tuple[int, int, int], tokens: tuple[int, int, int], d_state: int = 4,
                 pooling: MgcPooling = "1d", scan_impl: str = "auto"):
        super().__init__()
        if pooling not in ("1d", "2d"):
            raise ConfigError(f"MGC: mgc_pooling must be '1d' or '2d', got {pooling!r}")
        if tokens[0] != 4 * tokens[1] or tokens[1] != 4 * tokens[2]:
            raise ConfigError(f"MGC: token counts must shrink 4x per level, got {tokens}")
        self.pooling, self.tokens = pooling, tokens
        relu = (nn.ReLU(), None)
        self.C2F = nn.ModuleList(
            nn.Sequential(*[m for m in (nn.Linear(tokens[l + 1], tokens[l]), nn.ReLU(),
                                        nn.Conv1d(dims[l + 1], dims[l], 1), relu[l]) if m is not None])
            for l in range(2)
        )
        self.C2F_cross = nn.ModuleList(CMM(dims[l], d_state, both_outputs=False, scan_impl=scan_impl)
                                       for l in range(2))
        self.F2C = nn.ModuleList(
            nn.Sequential(*[m for m in (_TokenPool(pooling), nn.Conv1d(dims[l], dims[l + 1], 1), relu[l]) if m is not None])
            for l in range(2)
        )
        self.F2C_cross = nn.ModuleList(CMM(dims[l + 1], d_state, both_outputs=False, scan_impl=scan_impl)
                                       for l in range(2))

    @staticmethod
    def _cmm(cmm: CMM, a: Tensor, b: Tensor) -> Tensor:
        return cmm(a.transpose(1, 2), b.transpose(1, 2))[0].transpose(1, 2)

    def forward(self, z1: Tensor, z2: Tensor, z3: Tensor) -> Tensor:
        k1 = self._cmm(self.C2F_cross[0], z1, self.C2F[0](z2))
        k2 = self._cmm(self.C2F_cross[1], z2, self.C2F[1](z3))
        r2 = self._cmm(self.F2C_cross[0], k2, self.F2C[0](k1)) + k2
        return self._cmm(self.F2C_cross[1], z3, self.F2C[1](r2)) + z3
