"""The baseline families the papers compare against: unimodal, early, late and middle fusion, tabular MLP.

Every model here is built from a :class:`~mmdiag.data.schema.DatasetSpec` and has the multimodal contract::

    forward(inputs: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> dict[str, Tensor]

returning logits per task. ``present`` (bool (B,) per modality) is always honoured: a missing modality never enters
a fusion as if it were a real all-zero image.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.data.schema import DatasetSpec, TabularModality
from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_multimodal
from mmdiag.models.contract import MultimodalModel
from mmdiag.models.fusion.encoders import build_encoder
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.presence import presence_mask

__all__ = ["Unimodal", "EarlyFusion", "LateFusion", "MiddleFusion"]


_ENCODER_ARGS = """
        backbone: image/volume encoder (``small_cnn``, a MONAI CNN, or a registered image model).
        backbone_options: options of that encoder.
        tabular_hidden: hidden widths of the record MLP; tabular_dropout: its dropout.
        drop_rate: dropout before the heads."""


class Unimodal(MultimodalModel):
    __doc__ = """One modality's encoder and per-task heads (the unimodal baseline; with a record: the tabular MLP).

    Args:
        modality: the modality read.""" + _ENCODER_ARGS

    def __init__(self, spec: DatasetSpec, modality: str, backbone: str = "small_cnn",
                 backbone_options: dict | None = None, tabular_hidden: tuple[int, ...] = (64, 64),
                 tabular_dropout: float = 0.1, drop_rate: float = 0.0):
        if modality not in spec.modalities:
            raise ConfigError(f"model.options.modality={modality!r}; the dataset has {list(spec.modalities)}")
        super().__init__(spec, [modality])
        self.modality = modality
        self.encoder = build_encoder(spec.modalities[modality], backbone, backbone_options, tabular_hidden,
                                     tabular_dropout)
        self.num_features = self.encoder.num_features
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        return self.encoder(inputs[self.modality])


class EarlyFusion(MultimodalModel):
    __doc__ = """Early fusion: every image (or every volume) modality stacked on the channel axis into one backbone.

    Each modality also contributes a constant presence channel, and a record is tiled as constant channels, so the
    single network sees everything at its input. Inputs are resized to the first modality's size.

    Args:""" + _ENCODER_ARGS

    def __init__(self, spec: DatasetSpec, backbone: str = "small_cnn", backbone_options: dict | None = None,
                 tabular_hidden: tuple[int, ...] = (64, 64), tabular_dropout: float = 0.1, drop_rate: float = 0.0):
        kinds = {m.kind for m in spec.modalities.values() if m.kind != "tabular"}
        if len(kinds) != 1:
            raise ConfigError(f"early_fusion stacks modalities of one kind; dataset {spec.name!r} has {sorted(kinds)}"
                              " (use data.modalities to choose)")
        super().__init__(spec, list(spec.modalities))
        self.spatial = [n for n, m in spec.modalities.items() if m.kind != "tabular"]
        self.tabular = spec.of_kind("tabular")
        first = spec.modalities[self.spatial[0]]
        self.size = first.size
        chans = sum(spec.modalities[n].channels + 1 for n in self.spatial)
        chans += sum(spec.modalities[n].width + 1 for n in self.tabular)
        stacked = first.model_copy(update={"channels": chans})
        self.encoder = build_encoder(stacked, backbone, backbone_options)
        self.num_features = self.encoder.num_features
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        planes = []
        ref = inputs[self.spatial[0]]
        shape = (ref.shape[0], 1, *self.size)
        mode = "bilinear" if len(self.size) == 2 else "trilinear"
        for n in self.spatial:
            x = inputs[n]
            if tuple(x.shape[2:]) != tuple(self.size):
                x = F.interpolate(x, size=self.size, mode=mode, align_corners=False)
            p = presence_mask(present, n, x).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            planes += [x * p, p.expand(shape)]
        for n in self.tabular:
            v = inputs[n]
            p = presence_mask(present, n, v).to(v.dtype).unsqueeze(1)
            v = torch.cat([v * p, p], 1)
            planes.append(v.view(*v.shape, *([1] * len(self.size))).expand(-1, -1, *self.size))
        return self.encoder(torch.cat(planes, 1))


class LateFusion(MultimodalModel):
    __doc__ = """Late fusion: an encoder per modality, then either averaged per-modality logits or concatenated features.

    Args:
        mode: ``logits`` — each modality has its own heads and the logits are averaged over the *present*
            modalities; ``features`` — pooled features (zeroed where missing) and the presence flags are
            concatenated into shared heads.""" + _ENCODER_ARGS

    def __init__(self, spec: DatasetSpec, backbone: str = "small_cnn", mode: Literal["logits", "features"] = "logits",
                 backbone_options: dict | None = None, tabular_hidden: tuple[int, ...] = (64, 64),
                 tabular_dropout: float = 0.1, drop_rate: float = 0.0):
        super().__init__(spec, list(spec.modalities))
        self.mode = mode
        self.encoders = nn.ModuleDict({n: build_encoder(m, backbone, backbone_options, tabular_hidden,
                                                        tabular_dropout)
                                       for n, m in spec.modalities.items()})
        if mode == "logits":
            self.heads = nn.ModuleDict({n: TaskHeads(e.num_features, spec.tasks, drop_rate)
                                        for n, e in self.encoders.items()})
            self.num_features = max(e.num_features for e in self.encoders.values())
        elif mode == "features":
            self.num_features = sum(e.num_features for e in self.encoders.values()) + len(self.encoders)
            self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)
        else:
            raise ConfigError(f"model.options.mode={mode!r}; choose 'logits' or 'features'")

    def forward(self, inputs: dict[str, torch.Tensor], present=None) -> dict[str, torch.Tensor]:
        if self.mode == "features":
            parts, flags = [], []
            for n, enc in self.encoders.items():
                p = presence_mask(present, n, inputs[n]).float().unsqueeze(1)
                parts.append(enc(inputs[n]) * p)
                flags.append(p)
            return self.heads(torch.cat(parts + flags, 1))
        total, weight = {}, 0.0
        for n, enc in self.encoders.items():
            p = presence_mask(present, n, inputs[n]).float().unsqueeze(1)
            for t, logit in self.heads[n](enc(inputs[n])).items():
                total[t] = total.get(t, 0.0) + logit * p
            weight = weight + p
        return {t: v / weight.clamp_min(1.0) for t, v in total.items()}


class MiddleFusion(MultimodalModel):
    """Middle fusion: per-modality encoders give token sequences; each modality cross-attends to the others.

    Tokens are projected to ``dim`` and tagged with a learned modality embedding. For each modality, its tokens are
    the queries and the other modalities' tokens (missing ones masked out) the keys/values of a multi-head
    cross-attention with a residual and an MLP; the pooled outputs are averaged over the present modalities.
    """

    def __init__(self, spec: DatasetSpec, backbone: str = "small_cnn", dim: int = 128, num_heads: int = 4,
                 backbone_options: dict | None = None, tabular_hidden: tuple[int, ...] = (64, 64),
                 tabular_dropout: float = 0.1, drop_rate: float = 0.0):
        if len(spec.modalities) < 2:
            raise ConfigError("middle_fusion needs at least two modalities")
        super().__init__(spec, list(spec.modalities))
        self.encoders = nn.ModuleDict({n: build_encoder(m, backbone, backbone_options, tabular_hidden,
                                                        tabular_dropout)
                                       for n, m in spec.modalities.items()})
        self.proj = nn.ModuleDict({n: nn.Linear(e.num_features, dim) for n, e in self.encoders.items()})
        self.modality_embed = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, 1, dim)) for n in self.encoders})
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.num_features = dim
        self.heads = TaskHeads(dim, spec.tasks, drop_rate)

    def forward(self, inputs: dict[str, torch.Tensor], present=None) -> dict[str, torch.Tensor]:
        toks, masks = {}, {}
        for n, enc in self.encoders.items():
            t = self.proj[n](enc.tokens(inputs[n])) + self.modality_embed[n]
            p = presence_mask(present, n, inputs[n])
            toks[n], masks[n] = t, p.unsqueeze(1).expand(-1, t.shape[1])
        pooled, weight = 0.0, 0.0
        for n, q in toks.items():
            others = [m for m in toks if m != n]
            kv = torch.cat([toks[m] for m in others], 1)
            pad = ~torch.cat([masks[m] for m in others], 1)
            pad_all = pad.all(1, keepdim=True)  # no other modality present: attend to nothing (zero update)
            out, _ = self.attn(self.norm_q(q), self.norm_kv(kv), self.norm_kv(kv), key_padding_mask=pad & ~pad_all)
            h = q + out * (~pad_all).unsqueeze(-1)
            h = h + self.mlp(h)
            p = masks[n][:, :1].float()
            pooled = pooled + h.mean(1) * p
            weight = weight + p
        return self.heads(pooled / weight.clamp_min(1.0))


@register_multimodal(options=Unimodal)
def unimodal(spec: DatasetSpec, modality: str, backbone: str = "small_cnn", **kwargs) -> Unimodal:
    """Unimodal baseline: one modality's encoder (small CNN, MONAI ResNet/DenseNet/EfficientNet, or a registered
    image model) with per-task heads."""
    return Unimodal(spec, modality, backbone, **kwargs)


@register_multimodal(options=Unimodal)
def tabular_mlp(spec: DatasetSpec, modality: str | None = None, **kwargs) -> Unimodal:
    """Tabular baseline: an MLP on the encoded record (the first tabular modality unless ``modality`` is given)."""
    tab = [n for n, m in spec.modalities.items() if isinstance(m, TabularModality)]
    if modality is None and not tab:
        raise ConfigError(f"tabular_mlp needs a tabular modality; dataset {spec.name!r} has none")
    return Unimodal(spec, modality or tab[0], **kwargs)


@register_multimodal(options=EarlyFusion)
def early_fusion(spec: DatasetSpec, backbone: str = "small_cnn", **kwargs) -> EarlyFusion:
    """Early fusion baseline: modalities stacked on the channel axis into one backbone."""
    return EarlyFusion(spec, backbone, **kwargs)


@register_multimodal(options=LateFusion)
def late_fusion(spec: DatasetSpec, backbone: str = "small_cnn", mode: str = "logits", **kwargs) -> LateFusion:
    """Late fusion baseline: per-modality encoders, averaged logits (``mode=logits``) or concatenated features."""
    return LateFusion(spec, backbone, mode, **kwargs)


@register_multimodal(options=MiddleFusion)
def middle_fusion(spec: DatasetSpec, backbone: str = "small_cnn", **kwargs) -> MiddleFusion:
    """Middle fusion baseline: per-modality token encoders joined by cross-attention."""
    return MiddleFusion(spec, backbone, **kwargs)
