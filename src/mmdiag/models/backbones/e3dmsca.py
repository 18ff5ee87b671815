"""MMCAF-Net's 3D feature pyramid (paper 002 §2.1, Eqs. 1-2): E3D-MSCA top-down, then BFPU bottom-up.

Each pyramid level ``P_i`` (PENet stage maps, shallow → deep) goes through BatchNorm → ReLU → Dropout (the "+drop"
variant's dropout), then, from the deepest level up::

    d_L = E3DMSCA_L(P_L);   d_i = E3DMSCA_i(P_i + resize(UCB_i(d_{i+1})))      E3DMSCA(x) = DCFB(SAB(CAB(x)))

with one :class:`SAB3D` shared by every level. BFPU then fuses bottom-up: ``b_1 = d_1``,
``b_i = BFPU_i(x=d_i, y=b_{i-1})``; the pyramid's output is the deepest ``b_L``.

Module parameter counts at PENet-50 widths (256 / 512 / 1024), equal to the authors' code (notes §2.3-2.4):
CAB 8,192 / 32,768 / 131,072; DCFB 345,088 / 1,214,464 / 4,526,080 (the notes' 0.35M / 1.21M / 4.53M); UCB
(1024→512) 554,496, (512→256) 146,176; SAB 686; BFPU (gated) 14,398,980 at 512 and 57,371,652 at 1024.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.errors import ConfigError

__all__ = ["BFPU", "CAB3D", "DCFB", "E3DMSCA", "SAB3D", "UCB", "channel_shuffle_3d", "Pyramid3D"]


def channel_shuffle_3d(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle on ``(B, C, D, H, W)``: channel ``g * C/groups + j`` moves to ``j * groups + g``."""
    b, c = x.shape[:2]
    return x.reshape(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def _init_emcad(module: nn.Module) -> None:
    """The authors' (EMCAD) initialisation: convolutions N(0, 0.02), norms weight 1 / bias 0, conv biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CAB3D(nn.Module):
    """Channel Attention Block, 3D (paper 002 §2.1, Eq. 1): sigmoid(MLP(avg-pool) + MLP(max-pool)), ``(B, C, 1, 1, 1)``.

    Args:
        channels: channels attended.
        reduction: hidden ratio of the shared 1×1×1 MLP (no biases).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1, bias=False), nn.ReLU(),
                                 nn.Conv3d(hidden, channels, 1, bias=False))
        _init_emcad(self)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp(F.adaptive_avg_pool3d(x, 1)) + self.mlp(F.adaptive_max_pool3d(x, 1)))


class SAB3D(nn.Module):
    """Spatial Attention Block, 3D (paper 002 §2.1, Eq. 1): sigmoid(conv7([mean_c x, max_c x])) → ``(B, 1, D, H, W)``.

    Args:
        kernel_size: side of the cubic kernel.
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class DCFB(nn.Module):
    """Depth-wise Convolution Fusion Block (paper 002 §2.1, Eq. 1; EMCAD's MSCB in 3D, as the authors' code builds it).

    Pointwise expansion ×``expansion`` → BN → ReLU6; parallel depth-wise convolutions (one per kernel size), each
    → BN → ReLU6, summed; channel shuffle (groups of ``expansion`` channels); pointwise projection → BN; residual.

    Args:
        channels: input = output channels.
        kernel_sizes: depth-wise kernel sides.
        expansion: width multiplier of the inner layers.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5), expansion: int = 2):
        super().__init__()
        inner = channels * expansion
        self.shuffle_groups = channels  # gcd(inner, channels), as the code computes it
        self.expand = nn.Sequential(nn.Conv3d(channels, inner, 1, bias=False), nn.BatchNorm3d(inner), nn.ReLU6())
        self.dw = nn.ModuleList(
            nn.Sequential(nn.Conv3d(inner, inner, k, padding=k // 2, groups=inner, bias=False), nn.BatchNorm3d(inner),
                          nn.ReLU6()) for k in kernel_sizes)
        self.project = nn.Sequential(nn.Conv3d(inner, channels, 1, bias=False), nn.BatchNorm3d(channels))
        _init_emcad(self)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x)
        y = sum(dw(y) for dw in self.dw)
        return x + self.project(channel_shuffle_3d(y, self.shuffle_groups))


class UCB(nn.Module):
    """Up-Convolution Block (paper 002 §2.1; EMCAD's EUCB in 3D): ×2 trilinear upsampling → depth-wise 3×3×3 → BN →
    ReLU → pointwise projection (with bias).

    Deviation: the code's channel shuffle with ``groups = in_chans`` is the identity and is left out.

    Args:
        in_chans: input channels.
        out_chans: output channels (the code's ``UCB(C, C)`` outputs ``C/2``; here the output width is explicit).
    """

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv3d(in_chans, in_chans, 3, padding=1, groups=in_chans, bias=False),
                                nn.BatchNorm3d(in_chans), nn.ReLU())
        self.pw = nn.Conv3d(in_chans, out_chans, 1)
        _init_emcad(self)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """Upsample ``x`` ×2, convolve, and resize to ``size`` (D, H, W) when ×2 does not land on it (2 → 3 slices).

        Choice: the final resize is trilinear with ``align_corners=True`` like the ×2 step (the code does not say).
        """
        x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        x = self.pw(self.dw(x))
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)
        return x


class E3DMSCA(nn.Module):
    """Enhanced 3D Multi-Scale Convolutional Attention of one level (paper 002 §2.1, Eq. 1): DCFB(SAB(CAB(x))).

    The attention maps multiply their input (``c = CAB(x)·x``, ``s = SAB(c)·c``). The spatial attention is passed in
    so that one :class:`SAB3D` serves every level (as in the code).

    Args:
        channels: channels of the level.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.cab = CAB3D(channels)
        self.dcfb = DCFB(channels)

    def forward(self, x: Tensor, sab: SAB3D) -> Tensor:
        x = self.cab(x) * x
        return self.dcfb(sab(x) * x)


class BFPU(nn.Module):
    """Bidirectional Feature Pyramid Unit (paper 002 §2.1, Eq. 2): fuses a deeper map ``x`` (C channels) with the
    previous, finer fused map ``y`` (C/2 channels).

    ``y`` is resized to ``x``'s grid and projected to C channels; ``A = σ(conv(x) ⊙ conv(y))``; then

    * ``mode="gated"`` (default, the authors' code): ``g_x = conv([x, A·x])``, ``g_y = conv([y, A·y])`` (2 maps each)
      and ``out = x·g_x0 + A·x·g_x1 + y·g_y0 + A·y·g_y1``.
    * ``mode="concat"`` (the paper's Eq. 2): ``out = conv1x1([x + A·x, y + A·y])``.

    Deviation: Eq. 2 concatenates without learned gates; the code's gated sum is the default (it is what the
    reported model ran). Choice: in ``concat`` mode a 1×1×1 convolution brings the 2C channels back to C so that the
    next unit and the head keep their widths (the paper does not say how).

    Args:
        channels: channels of ``x`` and of the output.
        y_chans: channels of ``y`` (default ``channels // 2``).
        mode: ``gated`` or ``concat``.
    """

    def __init__(self, channels: int, y_chans: int | None = None, mode: Literal["gated", "concat"] = "gated"):
        super().__init__()
        if mode not in ("gated", "concat"):
            raise ConfigError(f"BFPU: mode={mode!r}; choose 'gated' (the code) or 'concat' (the paper's Eq. 2)")
        self.mode = mode
        self.align = nn.Conv3d(y_chans or channels // 2, channels, 1)
        self.conv_x = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv_y = nn.Conv3d(channels, channels, 3, padding=1)
        if mode == "gated":
            self.gate_x = nn.Conv3d(2 * channels, 2, 3, padding=1)
            self.gate_y = nn.Conv3d(2 * channels, 2, 3, padding=1)
        else:
            self.merge = nn.Conv3d(2 * channels, channels, 1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if y.shape[2:] != x.shape[2:]:
            y = F.interpolate(y, size=x.shape[2:], mode="trilinear", align_corners=True)
        y = self.align(y)
        a = torch.sigmoid(self.conv_x(x) * self.conv_y(y))
        ax, ay = x * a, y * a
        if self.mode == "concat":
            return self.merge(torch.cat([x + ax, y + ay], 1))
        gx = self.gate_x(torch.cat([x, ax], 1))
        gy = self.gate_y(torch.cat([y, ay], 1))
        return x * gx[:, :1] + ax * gx[:, 1:] + y * gy[:, :1] + ay * gy[:, 1:]


class Pyramid3D(nn.Module):
    """Pre-norm per level, E3D-MSCA top-down with up-convolutions, then BFPU bottom-up (see the module docstring).

    Args:
        widths: channels of the levels, shallow → deep (each twice the previous).
        level_drop: dropout after each level's BN + ReLU (the "+drop" variant: 0.3).
        bfpu_mode: ``gated`` (code) or ``concat`` (paper).
    """

    def __init__(self, widths: Sequence[int], level_drop: float = 0.3, bfpu_mode: Literal["gated", "concat"] = "gated"):
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2:
            raise ConfigError(f"Pyramid3D: needs at least two levels, got widths {widths}")
        self.pre = nn.ModuleList(nn.Sequential(nn.BatchNorm3d(c), nn.ReLU(), nn.Dropout(level_drop)) for c in widths)
        self.msca = nn.ModuleList(E3DMSCA(c) for c in widths)
        self.sab = SAB3D()
        self.ucb = nn.ModuleList(UCB(widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.bfpu = nn.ModuleList(BFPU(widths[i + 1], widths[i], bfpu_mode) for i in range(len(widths) - 1))
        self.num_features = widths[-1]

    def top_down(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """E3D-MSCA outputs per level, shallow → deep."""
        feats = [pre(f) for pre, f in zip(self.pre, feats, strict=True)]
        out = [self.msca[-1](feats[-1], self.sab)]
        for i in range(len(feats) - 2, -1, -1):
            up = self.ucb[i](out[0], feats[i].shape[2:])
            out.insert(0, self.msca[i](feats[i] + up, self.sab))
        return out

    def bottom_up(self, levels: Sequence[Tensor]) -> Tensor:
        """BFPU fusion of the E3D-MSCA outputs (shallow → deep) into the deepest level's grid."""
        fused = levels[0]
        for i, bfpu in enumerate(self.bfpu):
            fused = bfpu(levels[i + 1], fused)
        return fused

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """The fused deepest map ``(B, widths[-1], D_L, H_L, W_L)`` from the backbone's levels (shallow → deep)."""
        return self.bottom_up(self.top_down(feats))
