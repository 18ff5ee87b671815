"""VMamba v2 (Liu et al. 2024, "VMamba: Visual State Space Model"), the "vssm1_tiny_0230s" family IIMGF-Net uses.

A 4-stage hierarchy: patch embedding v2 (two 3x3 stride-2 convs) → stages of VSS blocks
``x + DP(SS2D(LN(x)))``, ``x + DP(MLP(LN(x)))`` with a 3x3 stride-2 conv downsample (v3) at the end of each stage but
the last → LayerNorm → global average pool → linear head. The SS2D is the shared :class:`~mmdiag.models.layers.SS2D`
in its ``v05_noz`` form: no z gating (``gated=False``), d_state 1, ssm_ratio 1 (d_inner = dim), depthwise 3x3
without bias. VMamba computes the per-direction x/dt projections as grouped 1-D convolutions; SS2D's per-direction
einsums are the same linear maps with the same ``(K, R+2N, D)`` / ``(K, D, R)`` parameters.

State-dict names and shapes equal the official ``vmamba_tiny_s1l8(channel_first=True)`` (276 tensors,
30,249,064 parameters at 1000 classes), so ``vssm1_tiny_0230s_ckpt_epoch_264.pth`` loads strictly with
``create_model("vmamba_tiny_s1l8", checkpoint=PATH)`` (the file's ``model`` wrapper is removed by the loader).

Choice: the official channels-first LayerNorm2d is run as a channels-last LayerNorm (the same function and
parameters): every stage computes on ``(B, H, W, C)`` maps; the permutes sit where the official ``Sequential``\\ s
have their (parameter-free) permute/identity slots, so the numbered keys (``patch_embed.5``, ``downsample.1``) match.
Public outputs (``forward_features``, ``forward_intermediates``) are channels-first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_model
from mmdiag.models.layers.features import stage_indices
from mmdiag.models.layers.mlp import Mlp
from mmdiag.models.layers.recompute import recompute
from mmdiag.models.layers.vss import VSSBlock
from mmdiag.models.layers.weight_init import init_vssm_weights

__all__ = ["Permute", "VMamba", "VMambaBlock", "VMambaStage", "tiny_vmamba", "vmamba_tiny_s1l8"]

_SENTINEL = "patch_embed.5.weight"  # VMamba v2 patch-embed v2: second 3x3 conv


class Permute(nn.Module):
    """Permute the dimensions of a tensor (parameter-free layout switch inside ``nn.Sequential``)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


_TO_CL, _TO_CF = (0, 2, 3, 1), (0, 3, 1, 2)


class VMambaBlock(VSSBlock):
    """VMamba v2 VSS block: ``x + DP(SS2D(norm(x)))`` then ``x + DP(MLP(norm2(x)))``, channels-last maps.

    Args:
        dim: Channels.
        drop_path: Stochastic-depth rate of both branches.
        mlp_ratio: MLP hidden width / dim (0: no MLP half).
        d_state: SSM state size (0230s: 1).
        ssm_ratio: d_inner / dim (0230s: 1).
        scan_impl: Selective-scan implementation.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, d_state: int = 1,
                 ssm_ratio: float = 1.0, scan_impl: str = "auto"):
        super().__init__(dim, drop_path, nn.LayerNorm, d_state=d_state, expand=ssm_ratio, gated=False,
                         conv_bias=False, scan_impl=scan_impl)
        self.norm2 = nn.LayerNorm(dim) if mlp_ratio > 0 else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio)) if mlp_ratio > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return x if self.mlp is None else x + self.drop_path(self.mlp(self.norm2(x)))


class VMambaStage(nn.Module):
    """One stage (official ``layers[i]``): ``blocks`` then ``downsample`` (v3: 3x3 s2 conv + LN; none in the last).

    Input channels-last ``(B, H, W, dim)``; output ``(B, H/2, W/2, out_dim)`` (or unchanged without downsample).
    """

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], out_dim: int | None, **block_kwargs: Any):
        super().__init__()
        self.use_checkpoint = False
        self.blocks = nn.Sequential(*[VMambaBlock(dim, dp, **block_kwargs) for dp in drop_path[:depth]])
        self.downsample = (
            nn.Sequential(Permute(*_TO_CF), nn.Conv2d(dim, out_dim, 3, 2, 1), Permute(*_TO_CL), nn.LayerNorm(out_dim))
            if out_dim is not None else nn.Identity()
        )

    def forward_blocks(self, x: Tensor) -> Tensor:
        """The blocks only (the stage's map before downsampling)."""
        for blk in self.blocks:
            x = recompute(blk, x) if self.use_checkpoint and self.training else blk(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.forward_blocks(x))


class _Classifier(nn.Module):
    """Official ``classifier``: LayerNorm on the last map, then (after pooling) the linear head."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


class VMamba(nn.Module):
    """VMamba v2 backbone / classifier (v05_noz SS2D, patch-embed v2, downsample v3).

    Args:
        in_chans: Input channels.
        num_classes: Classes of the head (0: ``forward`` returns pooled, normed features).
        depths: Blocks per stage.
        dims: Channels per stage, or an int C giving ``C * 2**i``.
        d_state: SSM state size N.
        ssm_ratio: d_inner / dim.
        mlp_ratio: MLP width ratio of every block.
        drop_path_rate: Stochastic depth, rising linearly from 0 over all blocks (official tiny: 0.2).
        scan_impl: Selective-scan implementation for every SS2D.
        num_stages: Build only the first ``num_stages`` stages (each ending with its downsample) and no classifier:
            a feature trunk for models that tap the stage outputs (IIMGF-Net uses 3). None: the whole network.

    Raises:
        ConfigError: ``depths`` and ``dims`` disagree in length, or ``num_stages`` is out of range.
    """

    classifier_name = "classifier.head"
    output_fmt = "NCHW"
    explain_fmt = "NHWC"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 2, 8, 2),
        dims: int | Sequence[int] = (96, 192, 384, 768),
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        scan_impl: str = "auto",
        num_stages: int | None = None,
    ):
        super().__init__()
        depths = list(depths)
        dims = [dims * 2**i for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths):
            raise ConfigError(f"VMamba: depths {depths} and dims {dims} must have the same length (one per stage)")
        if num_stages is not None and not 1 <= num_stages < len(depths):
            raise ConfigError(f"VMamba: num_stages must be in 1..{len(depths) - 1} (or None), got {num_stages}")
        built = num_stages or len(depths)
        self.num_classes, self.in_chans, self.dims = num_classes, in_chans, dims
        self.num_features = dims[built] if num_stages else dims[-1]
        self.feature_info = [dict(num_chs=d, reduction=4 * 2**i, module=f"layers.{i}") for i, d in enumerate(dims)]
        half = dims[0] // 2
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1), Permute(*_TO_CL), nn.LayerNorm(half), Permute(*_TO_CF), nn.GELU(),
            nn.Conv2d(half, dims[0], 3, 2, 1), Permute(*_TO_CL), nn.LayerNorm(dims[0]),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            VMambaStage(dims[i], depths[i], rates[sum(depths[:i]):], dims[i + 1] if i + 1 < len(dims) else None,
                        mlp_ratio=mlp_ratio, d_state=d_state, ssm_ratio=ssm_ratio, scan_impl=scan_impl)
            for i in range(built)
        )
        self.classifier = None if num_stages else _Classifier(self.num_features, num_classes)
        self.explain_layer = f"layers.{built - 1}"
        self.apply(init_vssm_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn per-block gradient checkpointing on or off."""
        for stage in self.layers:
            stage.use_checkpoint = enable

    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: no head)."""
        self.num_classes = num_classes
        self.classifier.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.classifier.head.apply(init_vssm_weights)

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding v2: ``(B, in_chans, H, W)`` → channels-last ``(B, H/4, W/4, dims[0])``.

        Raises:
            ValueError: wrong input layout.
            ConfigError: an image smaller than the total stride.
        """
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"VMamba: expected input (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        smallest = self.feature_info[-1]["reduction"]
        if min(x.shape[2:]) < smallest:
            raise ConfigError(f"VMamba: input {x.shape[2]}x{x.shape[3]} is smaller than its total stride {smallest}; "
                              f"resize images to at least {smallest}x{smallest} (e.g. data.options.image_size)")
        return self.patch_embed(x)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Per-stage maps (each stage's blocks' output, before its downsample), channels-first.

        Args:
            x: Images ``(B, in_chans, H, W)``.
            indices: Stage indices, an int n for the last n stages, or None for all. Later stages are not run.

        Raises:
            ValueError: a stage index is out of range.
        """
        wanted = stage_indices(indices, len(self.layers), "VMamba")
        x, out = self.embed(x), []
        for i, stage in enumerate(self.layers[: wanted[-1] + 1]):
            x = stage.forward_blocks(x)
            if i in wanted:
                out.append(x.permute(*_TO_CF).contiguous())
            x = stage.downsample(x)
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """Final map ``(B, num_features, H/32, W/32)``, channels-first, before the classifier norm."""
        x = self.embed(x)
        for stage in self.layers:
            x = stage(x)
        return x.permute(*_TO_CF)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Classifier norm → global average pool → head (skipped with ``pre_logits``).

        Raises:
            ConfigError: the model was built as a trunk (``num_stages``), without classifier.
        """
        if self.classifier is None:
            raise ConfigError(f"VMamba built with num_stages={len(self.layers)} has no classifier")
        x = self.classifier.norm(x.permute(*_TO_CL)).mean(dim=(1, 2))
        return x if pre_logits else self.classifier.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Official VMamba v2 layout (sentinel ``patch_embed.5.weight``): names already match; the head is dropped
        when the model has none (``num_classes=0``). Other layouts pass through unchanged."""
        state = dict(state_dict)
        if _SENTINEL in state and getattr(model, "num_classes", 1) == 0:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.head.")}
        return state



@register_model(options=VMamba)
def vmamba_tiny_s1l8(**kwargs: Any) -> VMamba:
    """VMamba v2 tiny "vssm1_tiny_0230s": depths [2,2,8,2], dims 96-768, d_state 1 (30,249,064 params at 1000)."""
    return VMamba(**kwargs)


@register_model(options=VMamba)
def tiny_vmamba(**kwargs: Any) -> VMamba:
    """Test variant: depths [1,1,1,1], dims 16-128, MLP ratio 2."""
    return VMamba(**{**dict(depths=(1, 1, 1, 1), dims=16, mlp_ratio=2.0), **kwargs})
