"""PENet (Huang et al. 2020, "PENet — a scalable deep-learning model for automated diagnosis of pulmonary embolism
using volumetric CT imaging"), the 3D encoder of MMCAF-Net (paper 002 §2.1), as the MMCAF-Net code uses it.

PENet-50: a stem (7×7×7 conv, stride (1, 2, 2), GroupNorm, LeakyReLU) and three stages of ResNeXt bottlenecks
(cardinality 32, expansion 2) with squeeze-excitation, GroupNorm and stochastic depth, depths (3, 4, 6), widths
256 / 512 / 1024. On ``(B, 1, 12, 192, 192)`` the stages give ``(B, 256, 6, 48, 48)``, ``(B, 512, 3, 24, 24)`` and
``(B, 1024, 2, 12, 12)`` — MMCAF-Net's feature pyramid (:meth:`PENet.forward_intermediates`). Alone (Table 2's
"PENet" row) it classifies with global average pooling and a linear head.

Deviation: the authors expand the single CT channel to 3 identical channels before the stem; a stem with
``in_chans=1`` is the same function with the 3 input kernels summed (:meth:`PENet.checkpoint_filter_fn` does that sum
for a 3-channel stem). The ASPP head and the four decoders the authors build but never use are not built.
Deviation: stochastic depth follows :class:`~mmdiag.models.layers.drop.DropPath` (per sample, kept branches rescaled
by 1/survival, identity in eval); the drop probability of block ``b`` of ``n`` grows linearly, ``rate · b / n``
(authors: 0.5 · b / 13).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mmdiag.models._factory import register_model
from mmdiag.models.layers.drop import DropPath
from mmdiag.models.layers.features import stage_indices

__all__ = ["PENet", "PENetBottleneck", "SqueezeExcite3d", "penet", "tiny_penet"]

_log = logging.getLogger(__name__)


def _gn(channels: int, divisor: int) -> nn.GroupNorm:
    """GroupNorm with ``channels / divisor`` groups (at least one), PENet's normalisation."""
    return nn.GroupNorm(max(1, channels // divisor), channels)


class SqueezeExcite3d(nn.Module):
    """Squeeze-excitation channel gate: global average pool → Linear(C, C/r) → LeakyReLU → Linear → sigmoid.

    Args:
        channels: channels gated.
        reduction: bottleneck ratio ``r``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, channels),
                                nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3, 4)))[:, :, None, None, None]


class PENetBottleneck(nn.Module):
    """PENet's ResNeXt bottleneck: 1×1×1 → grouped 3×3×3 (stride) → 1×1×1 (×2 channels) → SE, plus the skip.

    Args:
        in_chans: input channels.
        planes: inner width; the output has ``2 * planes`` channels.
        stride: stride of the grouped convolution (and of the projected skip).
        cardinality: groups of the 3×3×3 convolution.
        drop_path: probability of skipping the residual branch (training only).
        gn_divisor: channels per GroupNorm group.
    """

    expansion = 2

    def __init__(self, in_chans: int, planes: int, stride: int = 1, cardinality: int = 32, drop_path: float = 0.0,
                 gn_divisor: int = 16):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv3d(in_chans, planes, 1, bias=False)
        self.norm1 = _gn(planes, gn_divisor)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.norm2 = _gn(planes, gn_divisor)
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.norm3 = _gn(out, gn_divisor)
        self.se = SqueezeExcite3d(out)
        self.act = nn.LeakyReLU(0.01)
        self.drop_path = DropPath(drop_path)
        self.downsample = None
        if stride != 1 or in_chans != out:
            self.downsample = nn.Sequential(nn.Conv3d(in_chans, out, 1, stride=stride, bias=False),
                                            _gn(out, gn_divisor))

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.act(self.norm1(self.conv1(x)))
        y = self.act(self.norm2(self.conv2(y)))
        y = self.se(self.norm3(self.conv3(y)))
        return self.act(skip + self.drop_path(y))


class PENet(nn.Module):
    """PENet: 3D ResNeXt-SE encoder with GroupNorm and stochastic depth (timm's classifier API, ``NCDHW``).

    Args:
        num_classes: logits of the head (0: no head, :meth:`forward` returns pooled features).
        in_chans: input channels (CT: 1).
        stem_width: channels of the stem.
        planes: inner width of each stage (its output has twice as many channels).
        depths: bottlenecks per stage.
        cardinality: groups of the grouped convolutions.
        drop_path_rate: stochastic-depth probability of the last block (linear in the block index).
        drop_rate: dropout before the head.
        gn_divisor: channels per GroupNorm group.
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 1, stem_width: int = 64,
                 planes: Sequence[int] = (128, 256, 512), depths: Sequence[int] = (3, 4, 6), cardinality: int = 32,
                 drop_path_rate: float = 0.5, drop_rate: float = 0.0, gn_divisor: int = 16):
        super().__init__()
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.output_fmt = "NCDHW"
        self.classifier_name = "head"
        self.stem = nn.Sequential(nn.Conv3d(in_chans, stem_width, 7, stride=(1, 2, 2), padding=3, bias=False),
                                  nn.GroupNorm(4, stem_width), nn.LeakyReLU(0.01))
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        total, b, c = sum(depths), 0, stem_width
        stages, self.feature_info = [], []
        for i, (p, d) in enumerate(zip(planes, depths, strict=True)):
            blocks = []
            for j in range(d):
                blocks.append(PENetBottleneck(c, p, 2 if (i > 0 and j == 0) else 1, cardinality,
                                              drop_path_rate * b / total, gn_divisor))
                c, b = p * PENetBottleneck.expansion, b + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=c, reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.explain_layer, self.explain_fmt = f"stages.{len(stages) - 1}", "NCDHW"
        self.num_features = c
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise schedules (timm convention)."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one with ``num_classes`` outputs (0: no head)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _check(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"PENet: expected a volume (B, {self.in_chans}, D, H, W), got shape {tuple(x.shape)}")

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Per-stage maps ``(B, C_i, D_i, H_i, W_i)`` (channels first), stages after the last requested not run.

        Args:
            x: volumes ``(B, in_chans, D, H, W)``.
            indices: stage indices, an int ``n`` for the last ``n`` stages, or ``None`` for all.

        Raises:
            ValueError: a stage index is out of range.
        """
        self._check(x)
        wanted = stage_indices(indices, len(self.stages), "PENet")
        x = self.pool(self.stem(x))
        out = []
        for i, stage in enumerate(self.stages[: wanted[-1] + 1]):
            x = stage(x)
            if i in wanted:
                out.append(x)
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map ``(B, num_features, D/8, H/16, W/16)`` (depth stride 1 in the stem)."""
        return self.forward_intermediates(x, 1)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, dropout, then the linear head (skipped with ``pre_logits``)."""
        x = self.head_drop(x.mean((2, 3, 4)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: PENet) -> dict[str, Tensor]:
        """Strip a ``module.`` prefix and fold a 3-channel stem (the authors' expanded input) into ``in_chans=1``.

        Sentinel: ``stem.0.weight`` with 3 input channels while the model has one.
        """
        out = {k.removeprefix("module."): v for k, v in state_dict.items()}
        w = out.get("stem.0.weight")
        if w is not None and w.shape[1] == 3 and model.in_chans == 1:
            _log.info("PENet: summing the 3-channel stem kernel into one input channel")
            out["stem.0.weight"] = w.sum(1, keepdim=True)
        return out


_CONFIGS: dict[str, dict[str, Any]] = {
    "50": dict(stem_width=64, planes=(128, 256, 512), depths=(3, 4, 6), cardinality=32),
    "tiny": dict(stem_width=8, planes=(8, 16, 32), depths=(1, 1, 1), cardinality=4, gn_divisor=4),
}


def _create_penet(config: str, **kwargs: Any) -> PENet:
    return PENet(**{**_CONFIGS[config], **kwargs})


@register_model(options=PENet)
def penet(**kwargs: Any) -> PENet:
    """PENet-50 as MMCAF-Net uses it: stages 256 / 512 / 1024 channels, depths (3, 4, 6), cardinality 32."""
    return _create_penet("50", **kwargs)


@register_model(options=PENet)
def tiny_penet(**kwargs: Any) -> PENet:
    """Test variant: stem 8, stages 16 / 32 / 64 channels, one block each, cardinality 4."""
    return _create_penet("tiny", **kwargs)
