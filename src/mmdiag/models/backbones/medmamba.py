"""MedMamba (Yue & Li 2024, "MedMamba: Vision Mamba for Medical Image Classification"), as the official code builds it.

A 4-stage hierarchical backbone: patch embedding (4x4 conv + LayerNorm) → stages of SS-Conv-SSM blocks with 2x2
patch merging between them → global average pooling → linear head. Parameter and state-dict layouts equal the
authors' ``VSSM`` in ``MedMamba.py`` (YubiaoYue/MedMamba), so their published weights load strictly with
``create_model("medmamba_t", num_classes=..., checkpoint=PATH)``.

Parameter counts at 1000 classes (equal to the official code): T 15,221,608, S 19,389,544, B 40,883,688. The paper's
Table 1 gives T 15.2M but S 23.5M and B 48.1M: those two figures (and its S/B FLOPs, 3.5G/7.4G) are what depths
[2,2,12,2]/96 (23,557,480) and [2,2,16,2]/128 (48,144,872) give, four stage-3 blocks more than the [2,2,8,2] and
[2,2,12,2] of Table 1 and of the code. We follow Table 1's depths and the code, whose configuration the published
weights have. The paper's FLOPs count conv + Linear multiply-accumulates only (see :func:`count_macs`).

Deviations from the paper, following the official code:
    - Discretisation B̄ = Δ·B (Mamba's Euler form) instead of the zero-order hold of Eq. 2 (see :class:`SS2D`).
    - The classifier returns logits (Table 1 lists a Softmax) and there is no norm before pooling.
    - The "grouped convolution" is only the channel split: the conv branch uses dense 3x3/3x3/1x1 convolutions over
      C/2 channels. DropPath acts on the SSM branch only; the residual is added after the channel shuffle.
    - Every LayerNorm uses eps 1e-5; d_state 16, d_conv 3, expand 2 (the paper gives none of these).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_model
from mmdiag.models.layers.drop import DropPath
from mmdiag.models.layers.features import stage_indices
from mmdiag.models.layers.patch_embed import PatchEmbed, PatchMerging
from mmdiag.models.layers.recompute import recompute
from mmdiag.models.layers.ss2d import SS2D
from mmdiag.models.layers.vss import VSSBlock
from mmdiag.models.layers.weight_init import init_vssm_weights

__all__ = [
    "BlockVariant",
    "MacCount",
    "MedMamba",
    "MedMambaStage",
    "SSConvSSM",
    "channel_shuffle",
    "count_macs",
    "medmamba",
    "medmamba_b",
    "medmamba_s",
    "medmamba_t",
    "tiny_medmamba",
]

BlockVariant = Literal["ssm", "ssm_conv", "ssm_conv_split", "full"]
BLOCK_VARIANTS: tuple[str, ...] = ("ssm", "ssm_conv", "ssm_conv_split", "full")


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle on a channels-last tensor: input channel ``g * C/groups + j`` → ``j * groups + g``.

    With 2 groups, output channel 2j is input channel j and 2j+1 is input channel C/2 + j.
    """
    *lead, c = x.shape
    return x.reshape(*lead, groups, c // groups).transpose(-1, -2).reshape(*lead, c)


class SSConvSSM(nn.Module):
    """SS-Conv-SSM block (MedMamba Sec. 3.2.3, Fig. 2): split → Conv-branch ‖ SSM-branch → concat → shuffle → residual.

    Channels-last ``(B, H, W, C)`` in and out. With ``split`` the first C/2 channels go through the conv branch
    (BN → [Conv3x3 → BN → ReLU] x2 → Conv1x1 → ReLU) and the last C/2 through LayerNorm → :class:`SS2D` → DropPath;
    the two are concatenated (conv first), shuffled with 2 groups, and the unshuffled input is added.

    Without ``split`` (Table 7, Base Model-II) both branches see all C channels and are added element-wise:
    ``x + conv(x) + DropPath(SS2D(LN(x)))``.

    Deviation: DropPath covers only the SSM branch, and the residual is added after the shuffle (official code).

    Args:
        dim: Channels C (even when ``split``).
        drop_path: Stochastic-depth rate of the SSM branch.
        norm_layer: Norm before SS2D (official: ``nn.LayerNorm``, eps 1e-5).
        attn_drop_rate: Dropout on SS2D's output (the official ``attn_drop_rate``).
        d_state: SSM state size.
        split: Channel split (Table 7 "SP").
        shuffle: Channel shuffle after the concat (Table 7 "SF"); requires ``split``.
        scan_impl: Selective-scan implementation passed to :class:`SS2D`.

    Raises:
        ConfigError: ``shuffle`` without ``split``, or an odd ``dim`` with ``split``.
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attn_drop_rate: float = 0.0,
        d_state: int = 16,
        split: bool = True,
        shuffle: bool = True,
        scan_impl: str = "auto",
    ):
        super().__init__()
        if shuffle and not split:
            raise ConfigError("SSConvSSM: shuffle=True needs split=True (channel shuffle mixes the two split groups)")
        if split and dim % 2:
            raise ConfigError(f"SSConvSSM: dim must be even to split channels in two, got {dim}")
        self.split, self.shuffle = split, shuffle
        width = dim // 2 if split else dim
        # Child names and order are the official ones (state-dict keys ln_1, self_attention, conv33conv33conv11).
        self.ln_1 = norm_layer(width)
        self.self_attention = SS2D(d_model=width, d_state=d_state, dropout=attn_drop_rate, scan_impl=scan_impl)
        self.drop_path = DropPath(drop_path)
        self.conv33conv33conv11 = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1),
            nn.ReLU(inplace=True),
        ).to(memory_format=torch.channels_last)  # weights in the layout the branch runs in: no per-call reorder

    def forward(self, x: Tensor) -> Tensor:
        conv_in, ssm_in = x.chunk(2, dim=-1) if self.split else (x, x)
        ssm = self.drop_path(self.self_attention(self.ln_1(ssm_in)))
        # The conv branch runs channels-last (oneDNN's fast layout on CPU); its output permutes back for free.
        conv_in = conv_in.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        conv = self.conv33conv33conv11(conv_in).permute(0, 2, 3, 1)
        if not self.split:
            return x + conv + ssm
        if self.shuffle:  # channel_shuffle(cat([conv, ssm]), 2), in one copy: channels 2j, 2j+1 = conv j, ssm j
            return torch.stack([conv, ssm], dim=-1).flatten(-2) + x
        return torch.cat([conv, ssm], dim=-1) + x


class MedMambaStage(nn.Module):
    """One stage (official ``VSSLayer``): ``depth`` blocks, then optional :class:`PatchMerging` to ``out_dim``.

    Args:
        dim: Channels of the stage.
        depth: Number of blocks.
        drop_path: Stochastic-depth rate of every block, or one rate per block.
        block_variant: Block kind, see :class:`MedMamba`.
        out_dim: Channels after patch merging; None for no downsampling (last stage).
        norm_layer: Norm constructor for blocks and merging.
        use_checkpoint: Gradient checkpointing per block while training.
        **block_kwargs: ``d_state``, ``attn_drop_rate``, ``scan_impl``.

    Raises:
        ConfigError: ``drop_path`` lists another number of rates than ``depth``.
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: float | Sequence[float] = 0.0,
        block_variant: BlockVariant = "full",
        out_dim: int | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        use_checkpoint: bool = False,
        **block_kwargs: Any,
    ):
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else list(drop_path)
        if len(rates) != depth:
            raise ConfigError(f"MedMambaStage: got {len(rates)} drop_path rates for depth {depth}; give one per block")
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.Sequential(*[_make_block(block_variant, dim, dp, norm_layer, **block_kwargs) for dp in rates])
        self.downsample = PatchMerging(dim, out_dim, norm_layer=norm_layer) if out_dim is not None else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        """Run the blocks only (the stage's feature map before downsampling)."""
        for blk in self.blocks:
            x = recompute(blk, x) if self.use_checkpoint and self.training else blk(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return self.downsample(x) if self.downsample is not None else x


def _make_block(variant: str, dim: int, drop_path: float, norm_layer: Callable[[int], nn.Module], *, d_state: int,
                attn_drop_rate: float, scan_impl: str) -> nn.Module:
    if variant == "ssm":
        return VSSBlock(dim, drop_path, norm_layer, d_state=d_state, dropout=attn_drop_rate, scan_impl=scan_impl)
    split, shuffle = {"ssm_conv": (False, False), "ssm_conv_split": (True, False), "full": (True, True)}[variant]
    return SSConvSSM(dim, drop_path, norm_layer, attn_drop_rate, d_state, split=split, shuffle=shuffle,
                     scan_impl=scan_impl)


class MedMamba(nn.Module):
    """MedMamba (Sec. 3.2, Fig. 1, Table 1): patch embed → 4 stages of SS-Conv-SSM → avg pool → linear head.

    Keyword arguments are the official ``VSSM``'s (``patch_size``, ``in_chans``, ``num_classes``, ``depths``,
    ``dims``, ``d_state``, ``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``, ``norm_layer``, ``patch_norm``,
    ``use_checkpoint``; its unused decoder arguments are not accepted) plus ``block_variant`` and ``scan_impl``.
    Stages run channels-last inside; every public output is channels-first.

    ``block_variant`` selects the Table 7 ablation rows (MedMamba-T columns SSM / Conv / SP / SF):

    ========================  ===================================================================================
    ``"ssm"``                 Base Model-I, SSM only: VSS blocks ``x + DP(SS2D(LN(x)))`` on all C channels.
    ``"ssm_conv"``            Base Model-II, SSM + Conv: both branches on all C channels, added element-wise.
    ``"ssm_conv_split"``      + channel split: conv on C/2, SSM on C/2, concatenated, no shuffle.
    ``"full"``                + channel shuffle: the published SS-Conv-SSM (default; the only layout with weights).
    ========================  ===================================================================================

    With the T configuration the four rows have 16.15M / 51.55M / 14.45M / 14.45M parameters at 3 classes and
    1.95G / 7.44G / 2.01G / 2.01G conv + Linear MACs at 224² and 1000 classes (Table 7: 16.2 / 51.6 / 14.5 /
    14.5M, 2.0 / 7.4 / 2.0 / 2.0G). In ``"ssm_conv"`` DropPath acts on the SSM branch only, as in the full block.

    Args:
        patch_size: Patch embedding stride; H and W must be multiples of it.
        in_chans: Input channels.
        num_classes: Classes of the linear head; 0 for no head (``forward`` returns pooled features).
        depths: Blocks per stage.
        dims: Channels per stage, or an int C giving ``C * 2**i``.
        d_state: SSM state size N.
        drop_rate: Dropout after the patch embedding.
        attn_drop_rate: Dropout on each SS2D output.
        drop_path_rate: Stochastic depth, rising linearly from 0 over all blocks.
        norm_layer: Norm constructor (official: ``nn.LayerNorm``, eps 1e-5).
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: Gradient checkpointing per block while training.
        block_variant: Table 7 ablation variant (see above).
        scan_impl: Selective-scan implementation for every SS2D (:func:`mmdiag.ops.selective_scan`).

    Raises:
        ConfigError: ``depths`` and ``dims`` disagree in length, or ``block_variant`` is unknown.
    """

    classifier_name = "head"
    output_fmt = "NCHW"
    explain_fmt = "NHWC"

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 2, 4, 2),
        dims: int | Sequence[int] = (96, 192, 384, 768),
        d_state: int = 16,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        block_variant: BlockVariant = "full",
        scan_impl: str = "auto",
    ):
        super().__init__()
        depths = list(depths)
        dims = [dims * 2**i for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths):
            raise ConfigError(f"MedMamba: depths {depths} and dims {dims} must have the same length (one per stage)")
        if block_variant not in BLOCK_VARIANTS:
            raise ConfigError(f"MedMamba: block_variant must be one of {BLOCK_VARIANTS}, got {block_variant!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.dims = dims
        self.block_variant = block_variant
        self.num_features = dims[-1]
        self.feature_info = [dict(num_chs=d, reduction=patch_size * 2**i, module=f"layers.{i}")
                             for i, d in enumerate(dims)]

        self.patch_embed = PatchEmbed(patch_size, in_chans, dims[0], norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            MedMambaStage(
                dims[i],
                depths[i],
                rates[sum(depths[:i]) : sum(depths[: i + 1])],
                block_variant,
                out_dim=dims[i + 1] if i + 1 < len(dims) else None,
                norm_layer=norm_layer,
                use_checkpoint=use_checkpoint,
                d_state=d_state,
                attn_drop_rate=attn_drop_rate,
                scan_impl=scan_impl,
            )
            for i in range(len(depths))
        )
        self.explain_layer = f"layers.{len(depths) - 1}"
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_vssm_weights)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn per-block gradient checkpointing on or off."""
        for stage in self.layers:
            stage.use_checkpoint = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise schedules (timm convention): stem, then stages or blocks."""
        if coarse:
            return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)")
        return dict(stem=r"^patch_embed", blocks=[(r"^layers\.(\d+)\.downsample", (0,)),
                                                  (r"^layers\.(\d+)\.blocks\.(\d+)", None)])

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: no head)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_vssm_weights)

    def _embed(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MedMamba: expected input (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        smallest = self.feature_info[-1]["reduction"]
        if min(x.shape[2:]) < smallest:
            raise ConfigError(f"MedMamba: input {x.shape[2]}x{x.shape[3]} is smaller than its total stride {smallest}; "
                              f"resize images to at least {smallest}x{smallest} (e.g. data.options.image_size)")
        return self.pos_drop(self.patch_embed(x))

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Per-stage feature maps (each stage's blocks' output, before its patch merging), channels-first.

        Args:
            x: Images ``(B, in_chans, H, W)``.
            indices: Stages to return: a list of stage indices, an int n for the last n stages, or None for all.
                Stages after the last requested one are not run.

        Returns:
            List of ``(B, dims[i], H / (patch_size * 2**i), W / (patch_size * 2**i))`` tensors, in stage order.

        Raises:
            ValueError: a stage index is out of range.
        """
        wanted = stage_indices(indices, len(self.layers), "MedMamba")
        x = self._embed(x)
        out = []
        for i, stage in enumerate(self.layers[: wanted[-1] + 1]):
            x = stage.forward_blocks(x)
            if i in wanted:
                out.append(x.permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """Final feature map ``(B, num_features, H/32, W/32)`` (channels-first, not pooled)."""
        x = self._embed(x)
        for stage in self.layers:
            x = stage(x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool of a ``forward_features`` map, then the head (skipped with ``pre_logits``)."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` (pooled features ``(B, num_features)`` when ``num_classes == 0``)."""
        return self.forward_head(self.forward_features(x))



@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass, by operation kind.

    Attributes:
        conv: Conv2d MACs (patch embedding, depthwise convs, conv branch).
        linear: nn.Linear MACs (in/out projections, patch merging, head).
        ssm_proj: SS2D's per-direction x/dt projections (einsums).
        scan: Selective scans, by the official ``flops_selective_scan_ref`` convention.
    """

    conv: int
    linear: int
    ssm_proj: int
    scan: int

    @property
    def conv_linear(self) -> int:
        """Conv + Linear only: the convention of MedMamba's reported FLOPs (thop-style)."""
        return self.conv + self.linear

    @property
    def total(self) -> int:
        """Everything counted, including the SSM projections and scans."""
        return self.conv + self.linear + self.ssm_proj + self.scan


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3) -> MacCount:
    """Count a model's MACs for one image by running it once with forward hooks.

    Conv2d and Linear modules count ``output elements x (in_channels/groups x kernel area)`` and
    ``output elements x in_features`` (biases, norms and element-wise ops are not counted); every :class:`SS2D`
    adds its projection and scan MACs (:meth:`SS2D.macs`). ``MacCount.conv_linear`` is the paper's convention
    (MedMamba-T: 2.0G at 224²), ``MacCount.total`` adds the SSM part.

    The model runs in eval mode on its own device; build it on the meta device to count without computing.

    Args:
        model: Any module (typically a :class:`MedMamba`).
        img_size: Input side, or (H, W).
        in_chans: Input channels.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    counts = dict(conv=0, linear=0, ssm_proj=0, scan=0)

    def on_conv(m: nn.Conv2d, inp: tuple[Tensor, ...], out: Tensor) -> None:
        counts["conv"] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def on_linear(m: nn.Linear, inp: tuple[Tensor, ...], out: Tensor) -> None:
        counts["linear"] += out.numel() * m.in_features

    def on_ss2d(m: SS2D, inp: tuple[Tensor, ...], out: Tensor) -> None:
        b, hh, ww, _ = inp[0].shape
        proj, scan = m.macs(hh, ww)
        counts["ssm_proj"] += b * proj
        counts["scan"] += b * scan

    hooks = {nn.Conv2d: on_conv, nn.Linear: on_linear, SS2D: on_ss2d}
    handles = [m.register_forward_hook(fn) for m in model.modules() for cls, fn in hooks.items() if isinstance(m, cls)]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, in_chans, h, w, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return MacCount(**counts)


_CONFIGS: dict[str, dict[str, Any]] = {
    "t": dict(depths=(2, 2, 4, 2), dims=(96, 192, 384, 768)),
    "s": dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768)),
    "b": dict(depths=(2, 2, 12, 2), dims=(128, 256, 512, 1024)),
    "tiny": dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), d_state=4),
}


def _create_medmamba(config: str | None = None, **kwargs: Any) -> MedMamba:
    """Build a :class:`MedMamba` from a named configuration overridden by ``kwargs``."""
    return MedMamba(**{**(_CONFIGS[config] if config else {}), **kwargs})


@register_model(options=MedMamba, paper="medmamba")
def medmamba(**kwargs: Any) -> MedMamba:
    """MedMamba with the official ``VSSM`` constructor arguments (defaults: the T configuration)."""
    return _create_medmamba(None, **kwargs)


@register_model(options=MedMamba, paper="medmamba")
def medmamba_t(**kwargs: Any) -> MedMamba:
    """MedMamba-T: depths [2,2,4,2], dims 96-768 (15,221,608 parameters at 1000 classes)."""
    return _create_medmamba("t", **kwargs)


@register_model(options=MedMamba, paper="medmamba")
def medmamba_s(**kwargs: Any) -> MedMamba:
    """MedMamba-S: depths [2,2,8,2], dims 96-768 (19,389,544 parameters at 1000 classes; paper: 23.5M, see above)."""
    return _create_medmamba("s", **kwargs)


@register_model(options=MedMamba, paper="medmamba")
def medmamba_b(**kwargs: Any) -> MedMamba:
    """MedMamba-B: depths [2,2,12,2], dims 128-1024 (40,883,688 parameters at 1000 classes; paper: 48.1M)."""
    return _create_medmamba("b", **kwargs)


@register_model(options=MedMamba, paper="medmamba")
def tiny_medmamba(**kwargs: Any) -> MedMamba:
    """Test variant: depths [1,1,2,1], dims 16-128, d_state 4."""
    return _create_medmamba("tiny", **kwargs)
