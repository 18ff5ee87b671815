"""MMCAF-Net (paper 002, "Small Lesions-aware Bidirectional Multimodal Multiscale Fusion Network for Lung Disease
Classification"): a CT window and the clinical record, fused by multi-scale cross-attention.

* Image encoder (§2.1, :class:`MMCAFImageEncoder`): PENet-50 → E3D-MSCA top-down / BFPU bottom-up pyramid → max
  pool → Linear(1024, 24) → ReLU → Dropout → ``f_img`` (24).
* Tabular encoder (§2.2): a KAN layer record → 24 (``tabular="mlp"``: the ablation's MLP).
* Fusion (§2.3): :class:`~mmdiag.models.fusion.msca.MSCA` + BSF → 24; a linear classifier per task on that vector.

Training is staged (``recipe: mmcaf_three_stage``), one model with ``stage``:

* ``"penet"``: PENet alone with a linear head on its pooled 1024 features (Table 2 "PENet").
* ``"image"``: PENet (frozen, from ``init_run``) + pyramid + image head, classifier on ``f_img`` (Table 2
  "PENet + E3D-MSCA"; ``level_drop=0.3, head_drop=0.5`` is its "+drop" row, the default).
* ``"fusion"``: the whole model with the image encoder frozen (from ``init_run``); trainable: tabular encoder,
  fusion, classifier.

Frozen parts stay in eval mode (no stochastic depth, dropout or BatchNorm statistic updates) while the rest trains;
``frozen_mode="train"`` reproduces the authors' code, where a frozen encoder keeps training-mode behaviour.

Deviation: the code's classifier ``Linear(48, 1)`` cannot run on the 24-d fused vector (notes §5); the classifier
reads the fused 24-d vector (the paper's Fig. 1 and §2.3: the fused feature is classified). Binary tasks have two
logits and softmax cross-entropy, which equals the paper's BCE on the logit difference (Eq. 11).
Choice: a missing record (``present``) enters the fusion as a zero feature vector, so its tensor never changes the
output; a missing CT window does the same on the image side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.data.schema import DatasetSpec, TabularModality, TaskSpec, VolumeModality
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._factory import register_multimodal
from mmdiag.models.backbones.e3dmsca import Pyramid3D
from mmdiag.models.contract import Inputs, ModelOutput, MultimodalModel, Present
from mmdiag.models.fusion.msca import MSCA, AlignedFusion, CrossAttentionFusion
from mmdiag.models.layers.attention import Attention
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.presence import presence_mask
from mmdiag.models.outputs import AUX_LOSS_KEY
from mmdiag.models.tabular.kan import KANLayer
from mmdiag.models.tabular.mlp import TabularMLP

__all__ = ["MMCAFImageEncoder", "MMCAFNet", "mmcaf_net", "mmcaf_cross_attention", "mmcaf_clip", "tiny_mmcaf_net",
           "record_columns", "resolve_modality", "STAGES"]

_log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("penet", "image", "fusion")
Stage = Literal["penet", "image", "fusion"]


class MMCAFImageEncoder(nn.Module):
    """MMCAF-Net's image encoder ("Img_new"): backbone pyramid levels → :class:`Pyramid3D` → max pool → 24-d.

    Args:
        backbone: a registered 3D image model with ``forward_intermediates`` (``penet``, ``tiny_penet``).
        in_chans: channels of the volume.
        embed_dim: width of ``f_img``.
        level_drop: dropout on each pyramid level (the "+drop" variant: 0.3).
        head_drop: dropout after the head's ReLU (the "+drop" variant: 0.5).
        bfpu_mode: ``gated`` (code) or ``concat`` (paper Eq. 2).
        with_pyramid: build the pyramid and head (``False``: the backbone alone, stage ``penet``).
        drop_path_rate: the backbone's stochastic depth.
    """

    def __init__(self, backbone: str = "penet", in_chans: int = 1, embed_dim: int = 24, level_drop: float = 0.3,
                 head_drop: float = 0.5, bfpu_mode: Literal["gated", "concat"] = "gated", with_pyramid: bool = True,
                 drop_path_rate: float = 0.5):
        super().__init__()
        from mmdiag.models._factory import create_model

        self.backbone = create_model(backbone, num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate)
        if not hasattr(self.backbone, "forward_intermediates"):
            raise ConfigError(f"model.options.backbone={backbone!r} has no forward_intermediates; use penet")
        self.widths = tuple(f["num_chs"] for f in self.backbone.feature_info)
        self.pyramid = Pyramid3D(self.widths, level_drop, bfpu_mode) if with_pyramid else None
        self.head = nn.Sequential(nn.Linear(self.widths[-1], embed_dim), nn.ReLU(),
                                  nn.Dropout(head_drop)) if with_pyramid else None
        self.num_features = embed_dim if with_pyramid else self.backbone.num_features

    def forward_levels(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``f_img`` ``(B, embed_dim)`` and the E3D-MSCA outputs per level, shallow → deep (pyramid only)."""
        levels = self.pyramid.top_down(self.backbone.forward_intermediates(x))
        return self.head(F.adaptive_max_pool3d(self.pyramid.bottom_up(levels), 1).flatten(1)), levels

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, D, H, W)`` → ``(B, num_features)``."""
        if self.pyramid is None:
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        return self.forward_levels(x)[0]


def record_columns(record: TabularModality, flags: bool) -> list[int]:
    """Columns of the encoded record (:class:`~mmdiag.data.tabular.TabularEncoder` layout: a numeric field is
    ``[value, missing]``, a categorical one its one-hot) kept for the tabular encoder; ``flags=False`` drops the
    missing flags."""
    cols, i = [], 0
    for f in record.fields.values():
        if f.type == "numeric":
            cols += [i, i + 1] if flags else [i]
            i += 2
        else:
            cols += list(range(i, i + len(f.values)))
            i += len(f.values)
    return cols


def resolve_modality(spec: DatasetSpec, name: str | None, kind: str, option: str) -> str:
    """The modality ``name`` of ``kind`` (default: the dataset's only one of that kind).

    Raises:
        ConfigError: none or several of that kind and no name, or a name of another kind.
    """
    found = spec.of_kind(kind)
    if name is None:
        if len(found) != 1:
            raise ConfigError(f"model.options.{option}: dataset {spec.name!r} has {kind} modalities {found}; name one")
        return found[0]
    if name not in found:
        raise ConfigError(f"model.options.{option}={name!r} is not a {kind} modality of {spec.name!r}: {found}")
    return name


class MMCAFNet(MultimodalModel):
    """MMCAF-Net (see the module docstring).

    Args:
        spec: the dataset (one volume modality, one record).
        stage: ``penet``, ``image`` or ``fusion`` (which parts exist and train).
        init_run: a run folder (its ``model.safetensors``) or weights file of the previous stage; stage ``image``
            reads its PENet, stage ``fusion`` its whole image encoder. Read by :meth:`load_pretrained`.
        volume: the CT modality (default: the only volume). record: the clinical record (default: the only one).
        backbone: the 3D backbone (``penet``; ``tiny_penet`` in tests).
        embed_dim: width of ``f_img``, ``f_tab`` and the fusion (24).
        level_drop, head_drop: the "+drop" variant's dropouts (0.3, 0.5); 0 for the variant without.
        bfpu_mode: ``gated`` (code) or ``concat`` (paper).
        drop_path_rate: PENet's stochastic depth (0.5 at its last block).
        record_flags: feed the record's missing-value flags to the tabular encoder too (default: only the values, the
            paper's 7 inputs for Lung-PET-CT-Dx; a missing value then encodes as 0, the grid's centre).
        tabular: ``kan`` (paper) or ``mlp`` (ablation: Linear → LayerNorm → GELU → Dropout, twice, width 24).
        kan_grid_size: KAN intervals on [-1, 1] (5).
        fusion_heads: MSCA heads per scale (4, 2, 2).
        fusion_drop: dropout of MSCA's projections (0.5).
        fusion: ``msca`` (paper), ``cross_attention`` (Table 3: single-scale, the code's ``Simple_Fuse``) or ``clip``
            (Table 3: CLIP-style aligned fusion with a contrastive term of weight ``clip_weight``).
        clip_weight: weight of the contrastive term (``fusion="clip"``).
        fusion_tokens: ``single`` (paper: one token per modality) or ``pyramid`` (image tokens: ``f_img`` and each
            pyramid level max-pooled and projected to ``embed_dim``, so the record attends over several tokens).
        frozen_mode: ``eval`` (frozen parts in eval mode) or ``train`` (the authors' code).
    """

    def __init__(self, spec: DatasetSpec, stage: Stage = "fusion", init_run: str | None = None,
                 volume: str | None = None, record: str | None = None, backbone: str = "penet", embed_dim: int = 24,
                 level_drop: float = 0.3, head_drop: float = 0.5, bfpu_mode: Literal["gated", "concat"] = "gated",
                 drop_path_rate: float = 0.5, record_flags: bool = False, tabular: Literal["kan", "mlp"] = "kan",
                 kan_grid_size: int = 5,
                 fusion_heads: tuple[int, ...] = (4, 2, 2), fusion_drop: float = 0.5,
                 fusion: Literal["msca", "cross_attention", "clip"] = "msca", clip_weight: float = 0.5,
                 fusion_tokens: Literal["single", "pyramid"] = "single",
                 frozen_mode: Literal["eval", "train"] = "eval"):
        if stage not in STAGES:
            raise ConfigError(f"model.options.stage={stage!r}; choose one of {list(STAGES)}")
        choices = (("tabular", tabular, ("kan", "mlp")), ("fusion_tokens", fusion_tokens, ("single", "pyramid")),
                   ("fusion", fusion, ("msca", "cross_attention", "clip")),
                   ("frozen_mode", frozen_mode, ("eval", "train")))
        for key, value, valid in choices:
            if value not in valid:
                raise ConfigError(f"model.options.{key}={value!r}; choose one of {list(valid)}")
        vol = resolve_modality(spec, volume, "volume", "volume")
        rec = resolve_modality(spec, record, "tabular", "record") if stage == "fusion" else None
        super().__init__(spec, [vol] if rec is None else [vol, rec])
        self.stage, self.init_run, self.frozen_mode = stage, init_run, frozen_mode
        self.volume, self.record, self.fusion_tokens = vol, rec, fusion_tokens
        self.image = MMCAFImageEncoder(backbone, spec.modalities[vol].channels, embed_dim, level_drop, head_drop,
                                       bfpu_mode, stage != "penet", drop_path_rate)
        self.explain_layers = {vol: "image.pyramid.bfpu." + str(len(self.image.widths) - 2) if stage != "penet"
                               else "image.backbone.stages." + str(len(self.image.widths) - 1)}
        if rec is not None:
            cols = record_columns(spec.modalities[rec], record_flags)
            self.register_buffer("record_cols", torch.tensor(cols), persistent=False)
            width = len(cols)
            self.tabular = (KANLayer(width, embed_dim, grid_size=kan_grid_size) if tabular == "kan"
                            else TabularMLP(width, (embed_dim, embed_dim), drop_rate=0.2))
            self.fusion = {"msca": lambda: MSCA(embed_dim, fusion_heads, fusion_drop),
                           "cross_attention": lambda: CrossAttentionFusion(embed_dim, fusion_heads[0]),
                           "clip": lambda: AlignedFusion(embed_dim)}[fusion]()
            self.fusion_mode, self.clip_weight = fusion, clip_weight
            self.level_proj = (nn.ModuleList(nn.Linear(c, embed_dim) for c in self.image.widths)
                               if fusion_tokens == "pyramid" else None)
        self.frozen: tuple[str, ...] = {"penet": (), "image": ("image.backbone",), "fusion": ("image",)}[stage]
        for name in self.frozen:
            self.get_submodule(name).requires_grad_(False)
        self.num_features = self.image.num_features if rec is None else embed_dim
        self.heads = TaskHeads(self.num_features, spec.tasks)
        self.train()  # frozen parts start in eval mode (trainers may never call train())

    def train(self, mode: bool = True) -> MMCAFNet:
        """Set train/eval mode; frozen parts stay in eval mode unless ``frozen_mode="train"``."""
        super().train(mode)
        if mode and self.frozen_mode == "eval":
            for name in self.frozen:
                self.get_submodule(name).eval()
        return self

    def load_pretrained(self) -> None:
        """Initialise the frozen part from ``init_run`` (stage ``image``: PENet; stage ``fusion``: image encoder).

        Raises:
            ConfigError: a stage after ``penet`` without ``init_run``.
            CheckpointError: the file is missing or does not hold the part (keys listed).
        """
        if self.stage == "penet":
            return
        if self.init_run is None:
            _log.warning("mmcaf_net stage %r without init_run: its frozen part keeps random weights", self.stage)
            return
        path = Path(self.init_run)
        path = path / "model.safetensors" if path.is_dir() else path
        if not path.is_file():
            raise CheckpointError(f"model.options.init_run={self.init_run!r}: no weights file at {str(path)!r} (give "
                                  "the previous stage's run folder or its model.safetensors)")
        part = "image.backbone" if self.stage == "image" else "image"
        load_checkpoint(self.get_submodule(part), path, prefix=part + ".")
        _log.info("mmcaf_net stage %r: %s loaded from %s", self.stage, part, path)

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: MMCAFNet) -> dict[str, Tensor]:
        """Runs written before the cross-attention was shared (the fusion's attentions as separate ``q``/``k``/``v``
        Linears, ``fusion.attn[.s].q.weight``) get them fused into the shared attention's ``qkv``."""
        out = dict(state_dict)
        for key in state_dict:
            if key.startswith("fusion.attn.") and key.endswith(".q.weight"):
                out = Attention.convert_separate_qkv_state(out, key[:-len("q.weight")])
        return out

    def _image_tokens(self, x: Tensor) -> Tensor:
        if self.level_proj is None:
            return self.image(x).unsqueeze(1)
        f_img, levels = self.image.forward_levels(x)
        toks = [proj(F.adaptive_max_pool3d(lv, 1).flatten(1)) for proj, lv in zip(self.level_proj, levels, strict=True)]
        return torch.stack([f_img, *toks], 1)

    def _fuse(self, inputs: Inputs, present: Present) -> tuple[Tensor, Tensor | None]:
        """Features and, for ``fusion="clip"``, the contrastive term."""
        x = inputs[self.volume]
        p_img = presence_mask(present, self.volume, x)
        if self.record is None:
            return self.image(x) * p_img[:, None].to(x.dtype), None
        r = inputs[self.record]
        p_tab = presence_mask(present, self.record, r)
        img = self._image_tokens(x) * p_img[:, None, None].to(x.dtype)
        tab = (self.tabular(r[:, self.record_cols]) * p_tab[:, None].to(r.dtype)).unsqueeze(1)
        if self.fusion_mode == "clip":
            return self.fusion(img, tab, p_img & p_tab)
        return self.fusion(img, tab), None

    def forward_features(self, inputs: Inputs, present: Present = None) -> Tensor:
        return self._fuse(inputs, present)[0]

    def forward(self, inputs: Inputs, present: Present = None) -> ModelOutput:
        features, align = self._fuse(inputs, present)
        out = self.forward_head(features)
        if align is not None and self.training:
            out[AUX_LOSS_KEY] = {"clip": (self.clip_weight, align)}
        return out


def _default_spec(num_classes: int) -> DatasetSpec:
    """Lung-PET-CT-Dx's shape: a 12 × 192 × 192 CT window and 7 clinical numerics, one diagnosis task."""
    from mmdiag.data.schema import NumericField

    names = ("sex", "age", "weight_kg", "t_stage", "n_stage", "m_stage", "smoking_history")
    classes = (("adenocarcinoma", "squamous_cell") if num_classes == 2
               else tuple(f"class_{i}" for i in range(num_classes)))
    return DatasetSpec(name="lung_pet_ct_dx", modalities={
        "ct": VolumeModality(channels=1, size=(12, 192, 192)),
        "record": TabularModality(fields={n: NumericField() for n in names})},
        tasks={"diagnosis": TaskSpec(type="binary" if num_classes == 2 else "multiclass", classes=classes)})


@register_multimodal(options=MMCAFNet, default_spec=_default_spec, paper="mmcaf")
def mmcaf_net(spec: DatasetSpec, **kwargs) -> MMCAFNet:
    """MMCAF-Net (paper 002): PENet-50 + E3D-MSCA/BFPU, KAN record encoder, MSCA + BSF fusion (stage ``fusion``)."""
    return MMCAFNet(spec, **kwargs)


@register_multimodal(options=MMCAFNet, default_spec=_default_spec, paper="mmcaf")
def mmcaf_cross_attention(spec: DatasetSpec, **kwargs) -> MMCAFNet:
    """Table 3 "Cross-Attention": MMCAF-Net with single-scale cross-attention fusion (the code's ``Simple_Fuse``)."""
    return MMCAFNet(spec, **{"fusion": "cross_attention", **kwargs})


@register_multimodal(options=MMCAFNet, default_spec=_default_spec, paper="mmcaf")
def mmcaf_clip(spec: DatasetSpec, **kwargs) -> MMCAFNet:
    """Table 3 "CLIP": MMCAF-Net's encoders with CLIP-style aligned fusion (contrastive term + concatenation)."""
    return MMCAFNet(spec, **{"fusion": "clip", **kwargs})


@register_multimodal(options=MMCAFNet, default_spec=_default_spec, paper="mmcaf")
def tiny_mmcaf_net(spec: DatasetSpec, **kwargs) -> MMCAFNet:
    """Test variant: :func:`mmcaf_net` on ``tiny_penet`` (16 / 32 / 64 channels)."""
    return MMCAFNet(spec, **{"backbone": "tiny_penet", **kwargs})
