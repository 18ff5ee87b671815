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
from mmdiag.models.backbones.encoders import build_encoder, explain_entries
from mmdiag.models.layers.attention import Attention, CrossAttentionBlock
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
        self.explain_layers, self.output_fmts = explain_entries({modality: self.encoder}, "encoder")
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
        self.explain_layers, self.output_fmts = explain_entries({n: self.encoder for n in self.spatial}, "encoder")
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
        self.explain_layers, self.output_fmts = explain_entries(dict(self.encoders), "encoders.")
        if mode == "logits":
            self.heads = nn.ModuleDict({n: TaskHeads(e.num_features, spec.tasks, drop_rate)
                                        for n, e in self.encoders.items()})
            self.num_features = max(e.num_features for e in self.encoders.values())
        elif mode == "features":
            self.num_features = sum(e.num_features for e in self.encoders.values()) + len(self.encoders)
            self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)
        else:
            raise ConfigError(f"model.options.mode={mode!r}; choose 'logits' or 'features'")

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        """``features`` mode: the concatenated features and presence flags; ``logits`` mode: the mean of the
        present modalities' features (zero-padded to ``num_features``), the vector t-SNE shows."""
        parts, flags = [], []
        for n, enc in self.encoders.items():
            p = presence_mask(present, n, inputs[n]).float().unsqueeze(1)
            f = enc(inputs[n]) * p
            parts.append(f if self.mode == "features" else F.pad(f, (0, self.num_features - f.shape[1])))
            flags.append(p)
        if self.mode == "features":
            return torch.cat(parts + flags, 1)
        return sum(parts) / sum(flags).clamp_min(1.0)

    def forward(self, inputs: dict[str, torch.Tensor], present=None) -> dict[str, torch.Tensor]:
        if self.mode == "features":
            return self.heads(self.forward_features(inputs, present))
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
        self.explain_layers, self.output_fmts = explain_entries(dict(self.encoders), "encoders.")
        self.proj = nn.ModuleDict({n: nn.Linear(e.num_features, dim) for n, e in self.encoders.items()})
        self.modality_embed = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, 1, dim)) for n in self.encoders})
        self.block = CrossAttentionBlock(dim, num_heads, 2 * dim)
        self.num_features = dim
        self.heads = TaskHeads(dim, spec.tasks, drop_rate)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        toks, masks = {}, {}
        for n, enc in self.encoders.items():
            t = self.proj[n](enc.tokens(inputs[n])) + self.modality_embed[n]
            p = presence_mask(present, n, inputs[n])
            toks[n], masks[n] = t, p.unsqueeze(1).expand(-1, t.shape[1])
        pooled, weight = 0.0, 0.0
        for n, q in toks.items():
            others = [m for m in toks if m != n]
            kv = torch.cat([toks[m] for m in others], 1)
            h = self.block(q, kv, ~torch.cat([masks[m] for m in others], 1))
            p = masks[n][:, :1].float()
            pooled = pooled + h.mean(1) * p
            weight = weight + p
        return pooled / weight.clamp_min(1.0)

    @staticmethod
    def checkpoint_filter_fn(state_dict, model):
        """Runs written before the cross-attention block was shared (``nn.MultiheadAttention`` and a sequential MLP
        at the top level) are renamed to the shared block's names."""
        moves = {"norm_q.": "block.norm_q.", "norm_kv.": "block.norm_kv.", "attn.": "block.attn.",
                 "mlp.0.": "block.norm2.", "mlp.1.": "block.mlp.fc1.", "mlp.3.": "block.mlp.fc2."}
        if not any(k.startswith("attn.in_proj") for k in state_dict):
            return dict(state_dict)
        out = {}
        for k, v in state_dict.items():
            old = next((o for o in moves if k.startswith(o)), None)
            out[moves[old] + k[len(old):] if old else k] = v
        return Attention.convert_multihead_state(out)


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
