"""The multimodal baselines of EI's Table 3 (paper 003), rebuilt on the same vision foundation models (VFMs).

EI compares against six published fusion methods whose visual backbones it replaces by a VFM (CLIP ViT-B/16 or
DINOv2 ViT-B/14), two of them enhanced with MoR, and a single-VFM baseline. None of them is in the EI authors'
repository; each is built here from its own publication's idea (see ``docs/ei_baselines.md``):

* ``coscat`` — concatenated per-modality [CLS] features (CosCatNet); VFMs fully fine-tuned (``fpt``).
* ``dynmm`` — a gate choosing a unimodal expert or the concatenation expert per case (DynMM); ``fpt``.
* ``mm_mil`` — gated MIL attention over every image/slice, weighted sum (MM-MIL); ``fpt``.
* ``sfusion`` — transformer over all modalities' tokens, softmax weights across modalities (SFusion); ``fpt``.
* ``raddiag`` — transformer over one token per modality plus a fusion token (RadDiag); ``fpt``.
* ``mmrad`` — input-conditioned deep prompts, a decoder query cross-attending all tokens (MMRAD); frozen VFMs.
* ``mm_mil_mor``, ``mmrad_mor`` — the same with MoR adapters in every VFM (``mor``).
* ``unimodel`` — one MoR-adapted VFM over the merged patch tokens of all modalities.

Every model takes ``spec`` plus ``vfm`` (default ``dinov2_vitb14_reg``, the VFM of EI's code), ``vfm_peft`` /
``vfm_peft_options`` (the adaptation of each VFM: ``None`` = frozen, ``"fpt"``, ``"mor"``, ...), ``vfm_checkpoint``
(one published weights file loaded into every VFM), ``img_size`` and ``input_norm``. These are model *options*:
``model.peft`` would adapt the whole fusion model instead and is not meant for these models.

Inputs are image modalities only; a ``C = 3*k`` channel stack is read as ``k`` RGB slices, other ``C`` as ``C`` grey
slices repeated to RGB, volumes as their slices (:class:`~mmdiag.models.backbones.vfm.VFMEncoder`). A missing modality (``present``
False) never runs through a VFM and is masked out of every fusion (softmax, attention, gate); the concatenation of
CosCat and DynMM fills it with zeros and appends the presence flags, as ``late_fusion(mode="features")`` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.data.schema import DatasetSpec, TabularModality
from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_multimodal
from mmdiag.models.backbones.vfm import DEFAULT_VFM, VFMEncoder, slice_layout
from mmdiag.models.contract import MultimodalModel
from mmdiag.models.fusion.mil import GatedMILAttention
from mmdiag.models.fusion.prompts import PromptGenerator
from mmdiag.models.fusion.sfusion import SFusionBlock
from mmdiag.models.layers.attention import CrossAttentionBlock
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.input_norm import InputNormMode
from mmdiag.models.layers.presence import masked_softmax, open_empty_rows, presence_groups, presence_matrix
from mmdiag.models.outputs import AUX_LOSS_KEY

__all__ = ["VFMFusion", "CosCat", "DynMM", "MMMIL", "SFusion", "RadDiag", "MMRAD", "UniModel"]


def _image_modalities(spec: DatasetSpec, model: str) -> list[str]:
    other = [n for n, m in spec.modalities.items() if isinstance(m, TabularModality)]
    if other:
        images = [n for n in spec.modalities if n not in other]
        raise ConfigError(f"{model} encodes image modalities with a VFM; dataset {spec.name!r} also has records "
                          f"{other}. Choose image modalities with data.modalities={images}")
    return list(spec.modalities)


def _side(spec: DatasetSpec, modality: str, img_size: int | None) -> int | None:
    """The VFM's image size for a modality: ``img_size`` if given, else the modality's size when square."""
    if img_size is not None:
        return img_size
    h, w = spec.modalities[modality].size[-2:]
    return h if h == w else None


def _rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``fn`` on the rows of ``x`` where ``keep`` only; the other rows of the result are zeros."""
    if bool(keep.all()):
        return fn(x)
    idx = keep.nonzero().squeeze(1)
    out = fn(x[idx])
    return out.new_zeros(x.shape[0], *out.shape[1:]).index_copy(0, idx, out)


class VFMFusion(MultimodalModel):
    """Base of the per-modality-VFM baselines: one :class:`VFMEncoder` per image modality and the presence mask.

    Args:
        spec: the dataset spec (image or volume modalities only).
        vfm: registered ViT name.
        vfm_peft: adaptation of every VFM (``None`` = frozen, ``"fpt"`` = full fine-tuning, ``"mor"``, ...).
        vfm_peft_options: options of that method.
        vfm_checkpoint: weights file loaded into every VFM (by :meth:`load_pretrained`, not by the constructor).
        img_size: VFM image size; default: each modality's (square) size.
        input_norm: ``"clip"`` normalises inputs with the CLIP mean/std as EI's code does for every VFM (default,
            so that the baselines see what EI sees), ``"vfm"`` with the VFM's own statistics, ``"none"`` leaves the
            data spec's normalisation.

    Raises:
        ConfigError: a record modality, or ``input_norm`` other than ``none`` on a spec that normalises.
    """

    model_name = "vfm_fusion"

    def __init__(self, spec: DatasetSpec, vfm: str = DEFAULT_VFM, vfm_peft: str | None = "fpt",
                 vfm_peft_options: dict[str, Any] | None = None, vfm_checkpoint: str | os.PathLike | None = None,
                 img_size: int | None = None, input_norm: InputNormMode = "clip"):
        super().__init__(spec, _image_modalities(spec, self.model_name))
        self._sides = {m: _side(spec, m, img_size) for m in self.modalities}
        self._vfm_args = {"vfm": vfm, "peft": vfm_peft, "peft_options": vfm_peft_options, "input_norm": input_norm}
        self.vfm_checkpoint = vfm_checkpoint
        self.encoders = self.build_encoders()
        self.embed_dim: int = next(iter(self.encoders.values())).num_features

    def build_encoders(self) -> nn.ModuleDict:
        """A fresh :class:`VFMEncoder` per modality, built with this model's VFM options."""
        return nn.ModuleDict({m: VFMEncoder(modality=self.spec.modalities[m], name=m, img_size=self._sides[m],
                                            **self._vfm_args) for m in self.modalities})

    def load_pretrained(self) -> None:
        """Load ``vfm_checkpoint`` into every VFM."""
        if self.vfm_checkpoint is not None:
            for enc in self.vfm_encoders():
                enc.load_base(self.vfm_checkpoint)

    def vfm_encoders(self) -> list[VFMEncoder]:
        """Every VFM of the model."""
        return [m for m in self.modules() if isinstance(m, VFMEncoder)]

    def presence(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """``(B, M)`` bool, modalities in spec order; all True when ``present`` is ``None`` or lacks a modality."""
        return presence_matrix(self.modalities, inputs, present)

    def features(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor,
                 encoders: nn.ModuleDict | None = None) -> torch.Tensor:
        """[CLS] features ``(B, M, C)`` of the present rows of every modality; zeros where missing."""
        encoders = self.encoders if encoders is None else encoders
        return torch.stack([_rows(encoders[m], inputs[m], mask[:, i]) for i, m in enumerate(self.modalities)], 1)


def _concat(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, M*C + M)``: the per-modality features (zeros where missing) and the presence flags."""
    return torch.cat([features.flatten(1), mask.to(features.dtype)], 1)


class CosCat(VFMFusion):
    """CosCatNet-style fusion (Zuo et al. 2025): per-modality VFM [CLS] features concatenated into per-task heads.

    Args:
        spec, vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`.
        drop_rate: dropout before the heads.
    """

    model_name = "coscat"

    def __init__(self, spec: DatasetSpec, drop_rate: float = 0.0, **vfm_options: Any):
        super().__init__(spec, **vfm_options)
        self.num_features = len(self.modalities) * (self.embed_dim + 1)
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        mask = self.presence(inputs, present)
        return _concat(self.features(inputs, mask), mask)


class MMMIL(VFMFusion):
    """MM-MIL (Li et al. 2021): every image of every modality is an instance; a gated MIL attention module weighs
    the instances' VFM [CLS] features and their weighted sum goes to the heads.

    Slices of a stack (``C = 3*k``) are separate instances, as MM-MIL's several OCT B-scans are.

    Args:
        spec, vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`.
        attention_dim: hidden width of the gated attention (1024 reproduces Table 3's extra ~1.6M parameters).
        drop_rate: dropout before the heads.
    """

    model_name = "mm_mil"

    def __init__(self, spec: DatasetSpec, attention_dim: int = 1024, drop_rate: float = 0.0, **vfm_options: Any):
        super().__init__(spec, **vfm_options)
        self.mil = GatedMILAttention(self.embed_dim, attention_dim)
        self.num_features = self.embed_dim
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    def instances(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance features ``(B, N, C)`` (one per slice per modality) and their mask ``(B, N)``."""
        feats, masks = [], []
        for i, m in enumerate(self.modalities):
            f = _rows(lambda x, enc=self.encoders[m]: enc.encode(x)[0][:, :, 0], inputs[m], mask[:, i])
            feats.append(f)
            masks.append(mask[:, i : i + 1].expand(-1, f.shape[1]))
        return torch.cat(feats, 1), torch.cat(masks, 1)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        pooled, _ = self.mil(*self.instances(inputs, self.presence(inputs, present)))
        return pooled


class SFusion(VFMFusion):
    """SFusion on VFM tokens: each modality's [CLS] and patch tokens (registers dropped) are fused by
    :class:`SFusionBlock`; the fused [CLS] and the mean fused patch token (DINOv2's linear-probe feature) go to the
    heads. All modalities must give the same patch grid (same image size).

    Args:
        spec, vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`.
        grid: side of the pooled patch map.
        depth, num_heads, mlp_ratio, dropout: of :class:`SFusionBlock`.
        drop_rate: dropout before the heads.

    Raises:
        ConfigError: the modalities' image sizes differ.
    """

    model_name = "sfusion"

    def __init__(self, spec: DatasetSpec, grid: int = 8, depth: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, drop_rate: float = 0.0, **vfm_options: Any):
        super().__init__(spec, **vfm_options)
        sizes = {m: tuple(spec.modalities[m].size) for m in self.modalities}
        if len(set(sizes.values())) > 1:
            raise ConfigError(f"sfusion fuses patch grids position by position; the image sizes differ: {sizes}. "
                              "Give every modality the same data.modalities size")
        patch = next(iter(self.encoders.values())).vit.patch_size
        side = self._sides[self.modalities[0]] or max(next(iter(sizes.values())))
        self.fusion = SFusionBlock(self.embed_dim, grid, max(1, math.ceil(side / patch) // grid), depth, num_heads,
                                   mlp_ratio, dropout)
        self.num_features = 2 * self.embed_dim
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    def _tokens(self, m: str, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoders[m]
        tokens = enc.tokens(x)
        return torch.cat([tokens[:, :1], tokens[:, enc.num_prefix_tokens:]], 1)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        mask = self.presence(inputs, present)
        z = torch.stack([_rows(lambda x, m=m: self._tokens(m, x), inputs[m], mask[:, i])
                         for i, m in enumerate(self.modalities)], 1)
        x = inputs[self.modalities[0]]
        p = self.encoders[self.modalities[0]].vit.patch_size
        fused = self.fusion(z, mask, (math.ceil(x.shape[-2] / p), math.ceil(x.shape[-1] / p)))
        return torch.cat([fused[:, 0], fused[:, 1:].mean(1)], 1)


class RadDiag(VFMFusion):
    """RadDiag's fusion module (Zheng et al. 2024): one token per scan (the VFM [CLS] plus a learned modality
    embedding) and a learned fusion token go through a transformer encoder; missing scans are padding; the fusion
    token goes to the heads.

    Args:
        spec, vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`.
        depth: transformer layers (2 with ``ff_dim=2048`` gives Table 3's extra ~11M parameters at ViT-B).
        num_heads: attention heads.
        ff_dim: feed-forward width.
        dropout: dropout inside the layers.
        drop_rate: dropout before the heads.
    """

    model_name = "raddiag"

    def __init__(self, spec: DatasetSpec, depth: int = 2, num_heads: int = 8, ff_dim: int = 2048,
                 dropout: float = 0.1, drop_rate: float = 0.0, **vfm_options: Any):
        super().__init__(spec, **vfm_options)
        c = self.embed_dim
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, c))
        self.modality_embed = nn.Parameter(torch.zeros(1, len(self.modalities), c))
        nn.init.trunc_normal_(self.fusion_token, std=0.02)
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(c, num_heads, ff_dim, dropout, batch_first=True)
        self.fusion = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.num_features = c
        self.heads = TaskHeads(c, spec.tasks, drop_rate)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        mask = self.presence(inputs, present)
        tokens = self.features(inputs, mask) + self.modality_embed
        seq = torch.cat([self.fusion_token.expand(tokens.shape[0], -1, -1), tokens], 1)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], 1)
        return self.fusion(seq, src_key_padding_mask=pad)[:, 0]


class DynMM(VFMFusion):
    """Modality-level DynMM (Xue & Marculescu 2023): a gating network picks, per case, one of ``M + 1`` experts —
    each modality's unimodal expert, or the fusion expert (its own VFMs, concatenated features, as CosCat).

    The gate is an MLP on the unimodal experts' [CLS] features and presence flags (DynMM gates on the cheap
    unimodal representation). Its weights are ``softmax(logits / tau)`` over the experts whose inputs are present
    (the fusion expert always is). Training: the soft weights mix the experts' logits (``hard_train=True``: one-hot
    forward with the soft gradient, straight-through); inference: the arg-max expert alone, and the fusion expert
    runs only for the cases that chose it.

    Resource loss: with ``resource_weight > 0`` the output holds ``{"aux_loss": {"resource": (weight, cost)}}``,
    ``cost`` = the mean gate weight of the fusion expert (the extra VFMs it runs), as in the authors' code; the
    training system adds ``weight * cost`` (the ``aux_loss`` contract EI uses, see ``mmdiag.models.nets.ei``).

    Deviation: DynMM pre-trains the experts and then trains the gate; here everything trains jointly in one stage.

    Args:
        spec, vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`.
        gate_hidden: hidden width of the gating MLP.
        tau: softmax temperature of the gate.
        hard_train: straight-through hard gating during training.
        resource_weight: weight of the resource loss (0 = none).
        drop_rate: dropout before the heads.
    """

    model_name = "dynmm"

    def __init__(self, spec: DatasetSpec, gate_hidden: int = 128, tau: float = 1.0, hard_train: bool = False,
                 resource_weight: float = 0.0, drop_rate: float = 0.0, **vfm_options: Any):
        super().__init__(spec, **vfm_options)
        if tau <= 0 or resource_weight < 0:
            raise ConfigError(f"model.options.tau={tau} must be > 0 and resource_weight={resource_weight} >= 0")
        self.tau, self.hard_train, self.resource_weight = tau, hard_train, resource_weight
        self.fusion_encoders = self.build_encoders()
        n, c = len(self.modalities), self.embed_dim
        self.uni_heads = nn.ModuleDict({m: TaskHeads(c, spec.tasks, drop_rate) for m in self.modalities})
        self.fusion_heads = TaskHeads(n * (c + 1), spec.tasks, drop_rate)
        self.gate = nn.Sequential(nn.Linear(n * (c + 1), gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, n + 1))
        self.num_features = n * (c + 1)

    def gate_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Expert weights ``(B, M + 1)`` (unimodal experts in spec order, then fusion): soft when training (unless
        ``hard_train``), one-hot at inference; experts of missing modalities get 0."""
        allowed = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        soft = masked_softmax(self.gate(_concat(features, mask)) / self.tau, allowed, dim=1)
        if self.training and not self.hard_train:
            return soft
        hard = F.one_hot(soft.argmax(1), soft.shape[1]).to(soft.dtype)
        return hard - soft.detach() + soft if self.training else hard

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        """The gate's input: unimodal features and presence flags ``(B, M * (C + 1))``. DynMM mixes expert logits
        by the gate: :meth:`forward` is the model."""
        mask = self.presence(inputs, present)
        return _concat(self.features(inputs, mask), mask)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``pre_logits`` only: DynMM's logits are a gated mixture of experts (``forward``)."""
        if not pre_logits:
            raise NotImplementedError("DynMM mixes expert logits by its gate; call the model (forward)")
        return features

    def forward(self, inputs: dict[str, torch.Tensor], present=None) -> dict[str, torch.Tensor]:
        mask = self.presence(inputs, present)
        uni = self.features(inputs, mask)
        w = self.gate_weights(uni, mask)
        fused_rows = torch.ones_like(mask[:, 0]) if self.training else w[:, -1] > 0
        fused = _concat(self.features(inputs, mask & fused_rows.unsqueeze(1), self.fusion_encoders), mask)
        experts = [self.uni_heads[m](uni[:, i]) for i, m in enumerate(self.modalities)]
        experts.append(self.fusion_heads(fused))
        out: dict[str, Any] = {t: sum(w[:, e : e + 1] * logits[t] for e, logits in enumerate(experts))
                               for t in experts[0]}
        if self.resource_weight > 0 and self.training:
            out[AUX_LOSS_KEY] = {"resource": (self.resource_weight, w[:, -1].mean())}
        return out


class MMRAD(VFMFusion):
    """MMRAD (Li et al. 2025) on a VFM: the VFM stays frozen and is steered by prompts that a shallow network derives
    from each input image (deep prompts, one set per block); a modality-shared decoder fuses the modalities with
    two cross-attention blocks in sequence, in which a learned task query attends to the projected tokens of every
    present modality (tagged with a modality embedding). The query goes to the heads.

    Args:
        spec, vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`
            (``vfm_peft`` defaults to ``None``: frozen VFMs, as MMRAD).
        num_prompts: prompts per block.
        prompt_depth: blocks receiving prompts (default: all).
        decoder_dim, decoder_depth, decoder_heads, decoder_mlp_dim: the decoder (SAM's mask-decoder sizes).
        drop_rate: dropout before the heads.
    """

    model_name = "mmrad"

    def __init__(self, spec: DatasetSpec, num_prompts: int = 5, prompt_depth: int | None = None,
                 decoder_dim: int = 256, decoder_depth: int = 2, decoder_heads: int = 8, decoder_mlp_dim: int = 2048,
                 drop_rate: float = 0.0, vfm_peft: str | None = None, **vfm_options: Any):
        super().__init__(spec, vfm_peft=vfm_peft, **vfm_options)
        depth = len(next(iter(self.encoders.values())).vit.blocks)
        prompt_depth = depth if prompt_depth is None else prompt_depth
        if not 0 < prompt_depth <= depth:
            raise ConfigError(f"model.options.prompt_depth={prompt_depth}; the VFM has {depth} blocks")
        self.prompts = nn.ModuleDict({m: PromptGenerator(self.embed_dim, prompt_depth, num_prompts)
                                      for m in self.modalities})
        self.proj = nn.Linear(self.embed_dim, decoder_dim)
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), 1, decoder_dim))
        self.query = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        nn.init.trunc_normal_(self.query, std=0.02)
        self.decoder = nn.ModuleList([CrossAttentionBlock(decoder_dim, decoder_heads, decoder_mlp_dim)
                                      for _ in range(decoder_depth)])
        self.norm = nn.LayerNorm(decoder_dim)
        self.num_features = decoder_dim
        self.heads = TaskHeads(decoder_dim, spec.tasks, drop_rate)

    def prompted_tokens(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Final tokens ``(B, L, C)`` of modality ``m`` under its input-conditioned prompts (mean over slices)."""
        enc = self.encoders[m]
        s, k = enc.to_slices(x), enc.num_slices
        out = enc.run(enc.vit.embed(s), self.prompts[m](s))
        return out.reshape(-1, k, *out.shape[1:]).mean(1)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        mask = self.presence(inputs, present)
        kv, pad = [], []
        for i, m in enumerate(self.modalities):
            t = _rows(lambda x, m=m: self.prompted_tokens(m, x), inputs[m], mask[:, i])
            kv.append(self.proj(t) + self.modality_embed[i])
            pad.append(~mask[:, i : i + 1].expand(-1, t.shape[1]))
        kv, pad = torch.cat(kv, 1), open_empty_rows(torch.cat(pad, 1))
        q = self.query.expand(kv.shape[0], -1, -1)
        for blk in self.decoder:
            q = blk(q, kv, pad)
        return self.norm(q[:, 0])


class UniModel(MultimodalModel):
    """UniModel (EI paper §4.2): one VFM for all modalities. Each modality's images are embedded by the VFM (patches
    + position embedding) and tagged with a learned modality embedding; the patch tokens of all present modalities
    (every slice of a stack) follow one [CLS] (+ registers) in a single sequence; [CLS] goes to the heads.

    Cases are grouped by their presence pattern so that a missing modality contributes no token at all.

    Args:
        spec: the dataset spec (image modalities only; with a fixed-grid VFM such as CLIP all of one size).
        vfm, vfm_peft, vfm_peft_options, vfm_checkpoint, img_size, input_norm: see :class:`VFMFusion`
            (``vfm_peft`` defaults to ``"mor"``).
        drop_rate: dropout before the heads.
    """

    def __init__(self, spec: DatasetSpec, vfm: str = DEFAULT_VFM, vfm_peft: str | None = "mor",
                 vfm_peft_options: dict[str, Any] | None = None, vfm_checkpoint: str | os.PathLike | None = None,
                 img_size: int | None = None, input_norm: InputNormMode = "clip", drop_rate: float = 0.0):
        super().__init__(spec, _image_modalities(spec, "unimodel"))
        first = self.modalities[0]
        for m in self.modalities[1:]:  # the shared VFM's checks (normalisation, slices) hold for every modality
            slice_layout(m, spec.modalities[m])
            if input_norm != "none" and spec.modalities[m].mean is not None:
                raise ConfigError(f"modality {m!r} is already normalised by the dataset spec; set "
                                  "model.options.input_norm=none or remove the spec's mean/std")
        self.encoder = VFMEncoder(vfm, spec.modalities[first], first, vfm_peft, vfm_peft_options,
                                  img_size=_side(spec, first, img_size), input_norm=input_norm)
        self.layouts = {m: slice_layout(m, spec.modalities[m]) for m in self.modalities}
        self.vfm_checkpoint = vfm_checkpoint
        self.num_features = self.encoder.num_features
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), self.num_features))
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    def load_pretrained(self) -> None:
        """Load ``vfm_checkpoint`` into the VFM."""
        if self.vfm_checkpoint is not None:
            self.encoder.load_base(self.vfm_checkpoint)

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        n = self.encoder.num_prefix_tokens
        b = inputs[self.modalities[0]].shape[0]
        prefix, patches = None, []
        for i, m in enumerate(self.modalities):
            tokens = self.encoder.embed(inputs[m], self.layouts[m])
            tokens = tokens.reshape(b, self.layouts[m].k, *tokens.shape[1:])
            prefix = tokens[:, 0, :n] if prefix is None else prefix
            patches.append(tokens[:, :, n:].flatten(1, 2) + self.modality_embed[i])
        rows, parts = [], []
        for pattern, idx in presence_groups(presence_matrix(self.modalities, inputs, present)):
            seq = torch.cat([prefix[idx]] + [p[idx] for p, keep in zip(patches, pattern.tolist()) if keep], 1)
            parts.append(self.encoder.run(seq)[:, 0])
            rows.append(idx)
        return torch.cat(parts)[torch.cat(rows).argsort()]


@register_multimodal(options=CosCat)
def coscat(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> CosCat:
    """CosCat baseline (EI Table 3): concatenated per-modality VFM [CLS] features, fully fine-tuned VFMs."""
    return CosCat(spec, vfm=vfm, **kwargs)


@register_multimodal(options=MMMIL)
def mm_mil(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> MMMIL:
    """MM-MIL baseline (EI Table 3): gated MIL attention over every image's VFM [CLS] feature, fine-tuned VFMs."""
    return MMMIL(spec, vfm=vfm, **kwargs)


@register_multimodal(options=SFusion)
def sfusion(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> SFusion:
    """SFusion baseline (EI Table 3): self-attention over all VFM tokens, softmax weights across modalities."""
    return SFusion(spec, vfm=vfm, **kwargs)


@register_multimodal(options=RadDiag)
def raddiag(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> RadDiag:
    """RadDiag baseline (EI Table 3): transformer fusion of one VFM token per modality and a fusion token."""
    return RadDiag(spec, vfm=vfm, **kwargs)


@register_multimodal(options=DynMM)
def dynmm(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> DynMM:
    """DynMM baseline (EI Table 3): a gate picks a unimodal or the concatenation expert per case."""
    return DynMM(spec, vfm=vfm, **kwargs)


@register_multimodal(options=MMRAD)
def mmrad(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> MMRAD:
    """MMRAD baseline (EI Table 3): frozen VFMs, input-conditioned prompts, cross-attention decoder."""
    return MMRAD(spec, vfm=vfm, **kwargs)


@register_multimodal(options=UniModel)
def unimodel(spec: DatasetSpec, vfm: str = DEFAULT_VFM, **kwargs: Any) -> UniModel:
    """UniModel baseline (EI Table 3): one MoR-adapted VFM over the merged patch tokens of all modalities."""
    return UniModel(spec, vfm=vfm, **kwargs)


@register_multimodal(options=MMMIL)
def mm_mil_mor(spec: DatasetSpec, vfm: str = DEFAULT_VFM, vfm_peft: str | None = "mor", **kwargs: Any) -> MMMIL:
    """MM-MIL-MoR (EI Table 3): MM-MIL with MoR-adapted VFMs."""
    return MMMIL(spec, vfm=vfm, vfm_peft=vfm_peft, **kwargs)


@register_multimodal(options=MMRAD)
def mmrad_mor(spec: DatasetSpec, vfm: str = DEFAULT_VFM, vfm_peft: str | None = "mor", **kwargs: Any) -> MMRAD:
    """MMRAD-MoR (EI Table 3): MMRAD with MoR adapters in its prompted VFMs."""
    return MMRAD(spec, vfm=vfm, vfm_peft=vfm_peft, **kwargs)
