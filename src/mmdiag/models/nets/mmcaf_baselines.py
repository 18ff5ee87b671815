"""Baselines of MMCAF-Net's Table 1 on a CT window + clinical record: DAFT and MMTM (late fusion is
:class:`~mmdiag.models.nets.baselines.LateFusion`; the single-scale cross-attention and CLIP-style fusions are
``mmcaf_cross_attention`` / ``mmcaf_clip`` in :mod:`mmdiag.models.nets.mmcaf_net`).

Both read the record's values without the missing-value flags (:func:`~mmdiag.models.nets.mmcaf_net.record_columns`)
and zero a missing record (``present``), so its tensor never changes the output.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.data.schema import DatasetSpec
from mmdiag.models._factory import register_multimodal
from mmdiag.models.contract import Inputs, MultimodalModel, Present
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.presence import presence_mask
from mmdiag.models.nets.mmcaf_net import record_columns, resolve_modality

__all__ = ["DAFT", "DAFTBlock", "MMTM", "MMTMNet", "ResBlock3d", "daft", "mmtm"]


class ResBlock3d(nn.Module):
    """3D residual block: conv3 (stride) → BN → ReLU → conv3 → BN, plus a projected skip when the shape changes."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_chans)
        self.conv2 = nn.Conv3d(out_chans, out_chans, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_chans)
        self.skip = (nn.Sequential(nn.Conv3d(in_chans, out_chans, 1, stride, bias=False), nn.BatchNorm3d(out_chans))
                     if stride != 1 or in_chans != out_chans else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.skip(x))


class DAFTBlock(nn.Module):
    """Dynamic Affine Feature map Transform (Pölsterl et al. 2021, §3): a residual block whose input is scaled and
    shifted per channel by an MLP of [GAP(x), record] (location 0, linear scale activation, as the authors' copy).

    Args:
        in_chans, out_chans, stride: the residual block's.
        record_dim: width of the record.
        bottleneck: hidden width of the MLP (the MMCAF-Net authors' copy: 7).
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int, record_dim: int, bottleneck: int = 7):
        super().__init__()
        self.aux = nn.Sequential(nn.Linear(in_chans + record_dim, bottleneck, bias=False), nn.ReLU(),
                                 nn.Linear(bottleneck, 2 * in_chans, bias=False))
        self.block = ResBlock3d(in_chans, out_chans, stride)

    def forward(self, x: Tensor, record: Tensor) -> Tensor:
        scale, shift = self.aux(torch.cat([x.mean((2, 3, 4)), record], 1)).chunk(2, 1)
        return self.block(x * scale[..., None, None, None] + shift[..., None, None, None])


class DAFT(MultimodalModel):
    """DAFT (Pölsterl et al. 2021) as in the MMCAF-Net authors' copy: ConvBnReLU(→w0) → MaxPool 2 → ResBlock(w0, w0)
    → ResBlock(w0, w1, s2) → ResBlock(w1, w2, s2) → DAFTBlock(w2, w3, s2) → GAP → heads.

    Args:
        spec: the dataset (one volume, one record).
        volume, record: the modalities (default: the only ones of their kind).
        widths: the four widths (4, 8, 16, 32).
        bottleneck: the DAFT MLP's hidden width.
    """

    def __init__(self, spec: DatasetSpec, volume: str | None = None, record: str | None = None,
                 widths: tuple[int, int, int, int] = (4, 8, 16, 32), bottleneck: int = 7):
        vol = resolve_modality(spec, volume, "volume", "volume")
        rec = resolve_modality(spec, record, "tabular", "record")
        super().__init__(spec, [vol, rec])
        self.volume, self.record = vol, rec
        cols = record_columns(spec.modalities[rec], False)
        self.register_buffer("record_cols", torch.tensor(cols), persistent=False)
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv3d(spec.modalities[vol].channels, w0, 3, padding=1, bias=False),
                                  nn.BatchNorm3d(w0), nn.ReLU(), nn.MaxPool3d(2, ceil_mode=True))
        self.blocks = nn.Sequential(ResBlock3d(w0, w0), ResBlock3d(w0, w1, 2), ResBlock3d(w1, w2, 2))
        self.daft = DAFTBlock(w2, w3, 2, len(cols), bottleneck)
        self.num_features = w3
        self.heads = TaskHeads(w3, spec.tasks)
        self.explain_layers = {vol: "daft"}

    def forward_features(self, inputs: Inputs, present: Present = None) -> Tensor:
        r = inputs[self.record]
        rec = r[:, self.record_cols] * presence_mask(present, self.record, r)[:, None].to(r.dtype)
        return self.daft(self.blocks(self.stem(inputs[self.volume])), rec).mean((2, 3, 4))


class MMTM(nn.Module):
    """Multimodal Transfer Module (Joze et al. 2020, Eqs. 1-4): squeeze both modalities (GAP of a map; a vector as
    is), a joint ReLU layer, and per-modality channel gates ``2·σ(W z)``.

    Args:
        dim_a, dim_b: channels of the two modalities.
        ratio: joint width = (dim_a + dim_b) / ratio.
    """

    def __init__(self, dim_a: int, dim_b: int, ratio: int = 4):
        super().__init__()
        joint = max(1, (dim_a + dim_b) // ratio)
        self.squeeze = nn.Sequential(nn.Linear(dim_a + dim_b, joint), nn.ReLU())
        self.gate_a = nn.Linear(joint, dim_a)
        self.gate_b = nn.Linear(joint, dim_b)

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """``a`` ``(B, C_a, ...)``, ``b`` ``(B, C_b, ...)`` → both recalibrated."""
        sa = a.flatten(2).mean(-1) if a.dim() > 2 else a
        sb = b.flatten(2).mean(-1) if b.dim() > 2 else b
        z = self.squeeze(torch.cat([sa, sb], 1))
        ea, eb = 2 * torch.sigmoid(self.gate_a(z)), 2 * torch.sigmoid(self.gate_b(z))
        return a * ea.view(*ea.shape, *[1] * (a.dim() - 2)), b * eb.view(*eb.shape, *[1] * (b.dim() - 2))


class MMTMNet(MultimodalModel):
    """MMTM baseline: a 3D backbone's last stage and a record MLP exchange information through one :class:`MMTM`;
    pooled image features and the record features are concatenated into the heads.

    Choice: one MMTM after the last backbone stage (the record has no intermediate maps to pair with earlier ones).

    Args:
        spec: the dataset (one volume, one record).
        volume, record: the modalities.
        backbone: a registered 3D model with ``forward_intermediates`` (``penet``; ``tiny_penet`` in tests).
        record_dim: width of the record MLP.
        drop_rate: dropout before the heads.
    """

    def __init__(self, spec: DatasetSpec, volume: str | None = None, record: str | None = None,
                 backbone: str = "penet", record_dim: int = 24, drop_rate: float = 0.0,
                 pool: Literal["avg", "max"] = "avg"):
        from mmdiag.models._factory import create_model

        vol = resolve_modality(spec, volume, "volume", "volume")
        rec = resolve_modality(spec, record, "tabular", "record")
        super().__init__(spec, [vol, rec])
        self.volume, self.record, self.pool = vol, rec, pool
        cols = record_columns(spec.modalities[rec], False)
        self.register_buffer("record_cols", torch.tensor(cols), persistent=False)
        self.backbone = create_model(backbone, num_classes=0, in_chans=spec.modalities[vol].channels)
        c = self.backbone.num_features
        self.record_in = nn.Sequential(nn.Linear(len(cols), record_dim), nn.ReLU())
        self.mmtm = MMTM(c, record_dim)
        self.record_out = nn.Sequential(nn.Linear(record_dim, record_dim), nn.ReLU())
        self.num_features = c + record_dim
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)
        self.explain_layers = {vol: f"backbone.stages.{len(self.backbone.feature_info) - 1}"}

    def forward_features(self, inputs: Inputs, present: Present = None) -> Tensor:
        r = inputs[self.record]
        p = presence_mask(present, self.record, r)[:, None].to(r.dtype)
        rec = self.record_in(r[:, self.record_cols] * p) * p
        img, rec = self.mmtm(self.backbone.forward_features(inputs[self.volume]), rec)
        pooled = img.flatten(2).amax(-1) if self.pool == "max" else img.flatten(2).mean(-1)
        return torch.cat([pooled, self.record_out(rec) * p], 1)


@register_multimodal(options=DAFT)
def daft(spec: DatasetSpec, **kwargs) -> DAFT:
    """DAFT (Pölsterl et al. 2021): a small 3D ResNet whose last block is conditioned on the record."""
    return DAFT(spec, **kwargs)


@register_multimodal(options=MMTMNet)
def mmtm(spec: DatasetSpec, **kwargs) -> MMTMNet:
    """MMTM (Joze et al. 2020) between a 3D backbone (PENet) and a record MLP."""
    return MMTMNet(spec, **kwargs)
