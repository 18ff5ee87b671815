"""EI: Early Intervention for multimodal imaging based disease recognition (paper 003, Wei, Lin & Li 2026).

Each image modality ``m`` has two copies of a vision foundation model (VFM) with its own PEFT adapters (MoR by
default, §3.4): an *auxiliary* VFM ``phi_a`` and a *primary* VFM ``phi_p``. For every target modality ``t`` the final
[CLS] of each reference modality ``r != t`` (from ``phi_a``) passes an :class:`INTAdapter` and joins the target's token
sequence as one intervention token ([INT], §3.1-3.2, Eq. 1-2); ``phi_p`` then embeds the target with the [INT] tokens
attending through its blocks. Adaptive late fusion (§3.3, Eq. 3) weighs the per-modality predictions by a softmax gate.

Output of :class:`EI` (the multimodal contract of ``models/fusion/baselines.py``)::

    {task: fused logits                                   # y_hat = sum_t alpha_t y_hat_t (Eq. 3), used for inference
     "aux": {"primary_<m>": (1.0, {task: logits}),        # the sum over t in L_p (Eq. 5)
             "aux_<m>":     (0.3, {task: logits})},       # lambda_1 L_aa (Eq. 6), one term per auxiliary VFM
     "aux_loss": {"gate": (0.1, scalar)}}                 # lambda_2 L_ag (Eq. 7), only with ``prior_modality``

The system scores each ``"aux"`` term with the task loss and adds it with its weight, so the training loss is the
joint loss of Eq. 8. ``L_ag = CE(pi, alpha)`` supervises the gate with a one-hot modality prior, not the task labels,
so it cannot be written as task logits; it is returned as a ready scalar under ``"aux_loss"`` (:data:`AUX_LOSS_KEY`)
for the training system to add.

Inputs are images in [0, 1]; the model normalises them itself (``input_norm``). An image modality with ``C = 3k``
channels is read as ``k`` RGB slices, one with ``C = k`` (not a multiple of 3) as ``k`` grey slices replicated to RGB,
and a volume ``(c, D, H, W)`` as ``D`` slices (MRNet views). Slices go through the VFM one by one; the auxiliary branch
max-pools its logits and its [CLS] over slices, the primary branch mean-pools its tokens (authors' code).

Missing modalities (``present`` False) never act as data: a missing reference contributes no [INT] token (cases are
grouped by which references they have, so the attention sees only real tokens), a missing target gets gate weight 0
and its per-modality loss terms carry constant zero logits (no gradient); a case with no modality gets zero logits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec, ImageModality, VolumeModality
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._factory import create_model, register_multimodal
from mmdiag.models.backbones.vit import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, VisionTransformer
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.peft import apply_peft
from mmdiag.models.peft.inject import build_peft_config
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY
from mmdiag.models.layers.presence import presence_mask

__all__ = ["UnimodalVFM", "INTAdapter", "EI", "EIBranches", "VFM_OPTIONS"]

_log = logging.getLogger(__name__)


VFM_OPTIONS = ("vfm", "vfm_checkpoint", "vfm_peft", "vfm_peft_options", "vfm_options", "input_norm", "slices")
"""Options shared by :class:`EI` and its unimodal pre-adaptation model (``ei_unimodal``); a stage-1 run built with the
same values has exactly the state-dict layout of an EI branch."""

InputNorm = Literal["clip", "vfm", "none"]


def _keep_rows(logits: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows where ``keep`` is False become constant zeros: they add a constant to a loss and no gradient."""
    return {t: torch.where(keep[:, None], z, torch.zeros_like(z)) for t, z in logits.items()}


def _slice_layout(name: str, modality: ImageModality | VolumeModality, slices: int | None) -> tuple[int, int]:
    """``(number of slices k, channels per slice)`` of a modality (see the module docstring).

    Raises:
        ConfigError: the channels cannot be split into ``k`` slices of 1 or 3 channels.
    """
    if isinstance(modality, VolumeModality):
        if modality.channels not in (1, 3) or slices not in (None, modality.size[0]):
            raise ConfigError(f"EI reads volume modality {name!r} as {modality.size[0]} slices of {modality.channels} "
                              f"channel(s); it needs 1 or 3 channels per slice and model.options.slices.{name} unset "
                              f"(got {slices})")
        return modality.size[0], modality.channels
    c = modality.channels
    k = slices if slices is not None else (c // 3 if c % 3 == 0 else c)
    if k < 1 or c % k or c // k not in (1, 3):
        raise ConfigError(f"model.options.slices.{name}={k}: image modality {name!r} has {c} channels, which do not "
                          f"split into {k} slices of 1 (grey) or 3 (RGB) channels; use a divisor k of {c} with "
                          f"{c}/k in (1, 3)")
    return k, c // k


def _warn_random_base(options: Mapping[str, Any], modalities: list[str]) -> None:
    if modalities and options.get("vfm_checkpoint") is None:
        _log.warning("no model.options.vfm_checkpoint: the VFM base weights of %s stay random", modalities)


def _build_vfm(vfm: str, size: tuple[int, ...], checkpoint: str | os.PathLike | None, peft: str,
               peft_options: Mapping[str, Any], options: Mapping[str, Any]) -> VisionTransformer:
    """A headless VFM (frozen base + ``peft`` adapters) able to read ``size`` inputs; base weights from ``checkpoint``.

    Fixed-size VFMs (CLIP) are built with ``img_size`` = the input side, so their position table is resized once at
    load, as EI does; DINOv2 resamples its table at run time.
    """
    kwargs = {**options, "num_classes": 0, "in_chans": 3}
    with torch.device("meta"):
        probe = create_model(vfm, **kwargs)
    if not isinstance(probe, VisionTransformer):
        raise ConfigError(f"model.options.vfm={vfm!r} is a {type(probe).__name__}; EI needs a ViT foundation model "
                          "(dinov2_vits14, dinov2_vitb14, dinov2_vits14_reg, dinov2_vitb14_reg, clip_vit_b16)")
    if not probe.dynamic_img_size and "img_size" not in kwargs:
        if size[-1] != size[-2]:
            raise ConfigError(f"{vfm} has a fixed-size position table and needs square inputs; got {size[-2]}x"
                              f"{size[-1]} (resize the modality or use a DINOv2 VFM)")
        kwargs["img_size"] = size[-1]
    model = create_model(vfm, checkpoint=checkpoint, **kwargs)
    return apply_peft(model, peft, **{"modules_to_save": [], **peft_options})


class UnimodalVFM(nn.Module):
    """One modality's VFM with PEFT adapters and task heads: EI's unimodal pre-adaptation model (§4.1) and each
    auxiliary / primary branch of :class:`EI`.

    ``forward`` gives the task logits of the final [CLS] (token 0 after the final norm), max-pooled over slices.

    Deviation: the paper mean-pools slices; the authors' single-modal model and auxiliary branch take the maximum of
    the slice logits (and of the slice tokens), which this follows.

    Args:
        spec: the dataset spec (tasks, and the modality's channels/size).
        modality: the image (or volume) modality read.
        vfm: registered ViT name (``dinov2_vitb14_reg`` as in EI's code, ``clip_vit_b16``, ``dinov2_vits14``...).
        vfm_checkpoint: local file with the VFM's published weights (any layout ``vit.py`` converts); ``None`` keeps
            the random initialisation (tests, or when weights are loaded afterwards).
        vfm_peft: PEFT method of :mod:`mmdiag.models.peft` (``mor`` default; ``lp`` = frozen VFM, ``lora``...).
        vfm_peft_options: options of that method (``r``, ``alpha``, ``target_modules``...).
        vfm_options: further options of the VFM constructor (``act_layer="gelu"`` for EI's CLIP, ``drop_path_rate``).
        input_norm: ``clip`` normalises with the OpenAI CLIP mean/std (EI's code does so for every VFM), ``vfm`` with
            the VFM's own pretraining statistics, ``none`` leaves inputs as they come (normalised by the data spec).
        slices: per modality name, the number of slices packed in its channels (default: ``C/3`` when ``C`` is a
            multiple of 3, else ``C`` grey slices).

    Raises:
        ConfigError: an unknown modality, a non-image modality, a VFM that is not a ViT, or a slice layout that does
            not fit the channels; or ``input_norm`` other than ``none`` while the spec already normalises.
    """

    def __init__(self, spec: DatasetSpec, modality: str, vfm: str = "dinov2_vitb14_reg",
                 vfm_checkpoint: str | os.PathLike | None = None, vfm_peft: str = "mor",
                 vfm_peft_options: Mapping[str, Any] | None = None, vfm_options: Mapping[str, Any] | None = None,
                 input_norm: InputNorm = "clip", slices: Mapping[str, int] | None = None):
        super().__init__()
        if modality not in spec.modalities:
            raise ConfigError(f"model.options.modality={modality!r}; the dataset has {list(spec.modalities)}")
        mod = spec.modalities[modality]
        if not isinstance(mod, (ImageModality, VolumeModality)):
            raise ConfigError(f"EI's VFMs read images; modality {modality!r} is {mod.kind} (choose image modalities "
                              "with data.modalities)")
        if input_norm not in ("clip", "vfm", "none"):
            raise ConfigError(f"model.options.input_norm={input_norm!r}; choose 'clip', 'vfm' or 'none'")
        if input_norm != "none" and getattr(mod, "mean", None) is not None:
            raise ConfigError(f"modality {modality!r} is already normalised by the dataset spec (mean={mod.mean}); "
                              "set model.options.input_norm=none or remove the spec's mean/std")
        unknown = sorted(set(slices or {}) - set(spec.modalities))
        if unknown:
            raise ConfigError(f"model.options.slices names {unknown}; modalities: {list(spec.modalities)}")
        self.modality, self.is_volume = modality, isinstance(mod, VolumeModality)
        self.num_slices, self.slice_chans = _slice_layout(modality, mod, (slices or {}).get(modality))
        self.vfm = _build_vfm(vfm, mod.size, vfm_checkpoint, vfm_peft, dict(vfm_peft_options or {}),
                              dict(vfm_options or {}))
        self.num_features = self.vfm.num_features
        self.tasks = dict(spec.tasks)
        self.heads = TaskHeads(self.num_features, self.tasks)
        self.peft_config = build_peft_config(vfm_peft, {**(vfm_peft_options or {}), "modules_to_save": ["heads"]})
        stats = {"clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "none": ((0.0,) * 3, (1.0,) * 3),
                 "vfm": (self.vfm.pretrained_cfg.get("mean"), self.vfm.pretrained_cfg.get("std"))}[input_norm]
        self.register_buffer("mean", torch.tensor(stats[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(stats[1]).view(1, 3, 1, 1), persistent=False)

    @property
    def depth(self) -> int:
        """Number of transformer blocks ``L``."""
        return len(self.vfm.blocks)

    def reset_heads(self) -> None:
        """Fresh task heads (EI re-creates the primary branch's classifier after loading the unimodal weights)."""
        self.heads = TaskHeads(self.num_features, self.tasks).to(self.mean.device)

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` of an input batch (after zero padding to the patch multiple)."""
        p = self.vfm.patch_size
        return -(-x.shape[-2] // p), -(-x.shape[-1] // p)

    def to_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` image or ``(B, c, D, H, W)`` volume -> normalised RGB slices ``(B * k, 3, H, W)``."""
        b, k, c = x.shape[0], self.num_slices, self.slice_chans
        if self.is_volume:
            x = x.transpose(1, 2)
        x = x.reshape(b * k, c, *x.shape[-2:])
        if c == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode(self, x: torch.Tensor, extra: torch.Tensor | None = None, insert_at: int = 0,
               capture: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final-normalised tokens of every slice, with optional extra tokens attending from block ``insert_at`` on.

        Args:
            x: the modality's batch (see :meth:`to_slices`).
            extra: ``(B, E, C)`` tokens appended after the patch tokens (no position embedding) before block
                ``insert_at``, shared by the ``k`` slices of a case.
            insert_at: 0-based block index (0 = the input of the first block).
            capture: also return the [CLS] after block ``capture`` (1-based), passed through the final norm.

        Returns:
            ``(tokens (B, k, L, C), captured (B, k, C) or None)``; ``L`` counts [CLS], registers and patches, the extra
            tokens are dropped from the output.
        """
        b, k = x.shape[0], self.num_slices
        z = self.vfm.embed(self.to_slices(x))
        n = z.shape[1]
        if extra is not None:
            extra = extra.to(z.dtype).repeat_interleave(k, dim=0)
        captured = None
        for i, blk in enumerate(self.vfm.blocks):
            if extra is not None and i == insert_at:
                z = torch.cat([z, extra], dim=1)
            z = blk(z)
            if capture == i + 1:
                captured = self.vfm.norm(z[:, 0]).view(b, k, -1)
        z = self.vfm.norm(z)[:, :n]
        return z.view(b, k, n, -1), captured

    def slice_logits(self, cls: torch.Tensor) -> dict[str, torch.Tensor]:
        """Task logits of per-slice [CLS] features ``(B, k, C)``, max-pooled over the slices."""
        b, k = cls.shape[:2]
        return {t: z.view(b, k, -1).amax(dim=1) for t, z in self.heads(cls.flatten(0, 1)).items()}

    def forward(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        x = inputs[self.modality]
        logits = self.slice_logits(self.encode(x)[0][:, :, 0])
        return _keep_rows(logits, presence_mask(present, self.modality, x))


class INTAdapter(nn.Module):
    """[INT] token adapter (EI §3.1, Eq. 1): a two-layer MLP from a reference [CLS] to an intervention token.

    ``LayerNorm(C) -> Linear(C, C/2) -> GELU -> Linear(C/2, C)`` with PyTorch's default init, no dropout.

    Deviation: the paper says only "a two-layer MLP"; the input LayerNorm (eps 1e-6) and the halved hidden width are
    the authors' code.

    Args:
        dim: token width ``C``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, dim // 2)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


@dataclass
class EIBranches:
    """What EI's VFMs produce for a batch, before fusion.

    Attributes:
        present: ``(B,)`` bool per modality.
        aux_logits: per modality, the auxiliary VFM's task logits (max over slices).
        int_source: per modality, the auxiliary [CLS] ``(B, C)`` that feeds the [INT] adapters (max over slices).
        tokens: per modality, the primary VFM's final tokens ``(B, k, L, C)`` per slice ([CLS], registers, patches;
            the [INT] tokens removed).
    """

    present: dict[str, torch.Tensor]
    aux_logits: dict[str, dict[str, torch.Tensor]]
    int_source: dict[str, torch.Tensor]
    tokens: dict[str, torch.Tensor]


class EI(nn.Module):
    """Early Intervention (EI, paper 003 §3): auxiliary and primary VFMs per modality, [INT] tokens, gated late fusion.

    Deviation (authors' code): the [INT] tokens are appended after the patch tokens with no position
    embedding and skip CLIP's ``norm_pre``; one adapter per ordered (target, reference) pair; with ``detach_fusion``
    the gate reads detached [CLS] features and weighs detached per-modality logits, so the fused loss trains only the
    gate (Eq. 3 has no stop-gradient); ``L_ag`` is a proper cross-entropy on the gate's probabilities (the later fix of
    the authors' code, which first applied a second softmax). The prior ``pi`` is a fixed modality, as in the paper
    (the authors' per-sample rule with prior gaps 1 : 0.001 picks the last modality almost always).

    Args:
        spec: the dataset spec; every modality must be an image or volume, at least two of them.
        int_layer: 0-based block of the primary VFM before which the [INT] tokens join (0 = earliest, the default;
            Table 4 "layer to use").
        int_source_layer: 1-based block of the auxiliary VFM whose [CLS] (through the final norm) feeds the adapters;
            ``None`` = the last block (Table 4 "layer to acquire").
        primary_weight: weight of each per-modality primary term of ``L_p`` (Eq. 5; 1).
        aux_weight: ``lambda_1`` of ``L_aa`` (0.3).
        gate_weight: ``lambda_2`` of ``L_ag`` (0.1).
        prior_modality: the modality ``pi`` points at (the best unimodal modality); ``None`` = no gate loss.
        detach_fusion: stop gradients into the fusion as the authors' code does (see Deviation).
        init_runs: per modality, a unimodal ``ei_unimodal`` run folder (or its ``model.safetensors``) built with the
            same VFM options: both of the modality's VFMs start from its adapted weights and the auxiliary branch also
            keeps its heads; the primary heads start fresh (§4.1; the authors' code).
        **vfm_kwargs: :data:`VFM_OPTIONS`, see :class:`UnimodalVFM`.

    Raises:
        ConfigError: fewer than two image modalities, a non-image modality, a layer out of range, an unknown
            ``prior_modality`` or ``init_runs`` modality.
        CheckpointError: an ``init_runs`` file that does not fit the branch.
    """

    def __init__(self, spec: DatasetSpec, int_layer: int = 0, int_source_layer: int | None = None,
                 primary_weight: float = 1.0, aux_weight: float = 0.3, gate_weight: float = 0.1,
                 prior_modality: str | None = None, detach_fusion: bool = True,
                 init_runs: Mapping[str, str | os.PathLike] | None = None, **vfm_kwargs: Any):
        super().__init__()
        self.modalities = list(spec.modalities)
        other = [m for m, v in spec.modalities.items() if not isinstance(v, (ImageModality, VolumeModality))]
        if other or len(self.modalities) < 2:
            images = [m for m in self.modalities if m not in other]
            raise ConfigError(f"EI fuses two or more image modalities; dataset {spec.name!r} has images {images} and "
                              f"other modalities {other}: choose the images with data.modalities (one modality: use "
                              "model.name=ei_unimodal)")
        for key, value in (("prior_modality", prior_modality), *(("init_runs", m) for m in init_runs or {})):
            if value is not None and value not in self.modalities:
                raise ConfigError(f"model.options.{key} names {value!r}; modalities: {self.modalities}")
        unknown = sorted(set(vfm_kwargs) - set(VFM_OPTIONS))
        if unknown:
            raise ConfigError(f"model.options {unknown} are not EI options; VFM options: {list(VFM_OPTIONS)}")
        init_runs = dict(init_runs or {})
        _warn_random_base(vfm_kwargs, [m for m in self.modalities if m not in init_runs])
        self.tasks = dict(spec.tasks)
        self.aux = nn.ModuleDict()
        self.primary = nn.ModuleDict()
        for m in self.modalities:
            kw = {**vfm_kwargs, "vfm_checkpoint": None if m in init_runs else vfm_kwargs.get("vfm_checkpoint")}
            self.aux[m] = UnimodalVFM(spec, m, **kw)
            self.primary[m] = UnimodalVFM(spec, m, **kw)
        depth, dim = self.aux[self.modalities[0]].depth, self.aux[self.modalities[0]].num_features
        if not 0 <= int_layer < depth:
            raise ConfigError(f"model.options.int_layer={int_layer}: the VFM has blocks 0..{depth - 1}")
        source = depth if int_source_layer is None else int_source_layer
        if not 1 <= source <= depth:
            raise ConfigError(f"model.options.int_source_layer={int_source_layer}: choose 1..{depth} (None = last)")
        self.int_layer, self.int_source_layer = int_layer, source
        self.int_adapters = nn.ModuleDict({t: nn.ModuleDict({r: INTAdapter(dim) for r in self.modalities if r != t})
                                           for t in self.modalities})
        self.gate = nn.Linear(dim * len(self.modalities), len(self.modalities))
        self.num_features = dim
        self.primary_weight, self.aux_weight, self.gate_weight = primary_weight, aux_weight, gate_weight
        self.prior_modality, self.detach_fusion = prior_modality, detach_fusion
        heads = [f"{b}.{m}.heads" for b in ("aux", "primary") for m in self.modalities]
        self.peft_config = build_peft_config(vfm_kwargs.get("vfm_peft", "mor"), {
            **(vfm_kwargs.get("vfm_peft_options") or {}), "modules_to_save": ["int_adapters", "gate", *heads]})
        for m, path in init_runs.items():
            self.load_unimodal(m, path)

    def load_unimodal(self, modality: str, path: str | os.PathLike) -> None:
        """Initialise both VFMs of ``modality`` from a unimodal run (folder or ``model.safetensors``), strictly; the
        auxiliary branch keeps the run's heads, the primary branch gets fresh ones.

        Raises:
            CheckpointError: the file is missing or was trained with other VFM options.
        """
        path = Path(path)
        file = path / "model.safetensors" if path.is_dir() else path
        load_checkpoint(self.aux[modality], file)
        load_checkpoint(self.primary[modality], file)
        self.primary[modality].reset_heads()
        _log.info("EI: %s VFMs initialised from %s", modality, file)

    def _encode_target(self, t: str, x: torch.Tensor, ints: torch.Tensor | None,
                       ref_present: torch.Tensor) -> torch.Tensor:
        """Primary tokens of target ``t``; cases are grouped by their present references so that only real [INT]
        tokens enter each sequence."""
        branch = self.primary[t]
        if ints is None or bool(ref_present.all()):
            return branch.encode(x, ints, self.int_layer)[0]
        patterns, inverse = torch.unique(ref_present.to(torch.uint8), dim=0, return_inverse=True)
        rows, parts = [], []
        for i, pattern in enumerate(patterns.bool()):
            idx = (inverse == i).nonzero(as_tuple=True)[0]
            extra = ints[idx][:, pattern] if bool(pattern.any()) else None
            parts.append(branch.encode(x[idx], extra, self.int_layer)[0])
            rows.append(idx)
        # back to batch order by a permutation (gather), which stays deterministic on CUDA
        return torch.cat(parts)[torch.cat(rows).argsort()]

    def forward_branches(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None,
                         intervene: bool = True) -> EIBranches:
        """Run every auxiliary VFM, build the [INT] tokens, run every primary VFM (with them if ``intervene``)."""
        pres = {m: presence_mask(present, m, inputs[m]) for m in self.modalities}
        capture = self.int_source_layer if self.int_source_layer < self.aux[self.modalities[0]].depth else None
        aux_logits, source = {}, {}
        for m in self.modalities:
            tokens, captured = self.aux[m].encode(inputs[m], capture=capture)
            aux_logits[m] = self.aux[m].slice_logits(tokens[:, :, 0])
            source[m] = (tokens[:, :, 0] if captured is None else captured).amax(dim=1)
        tokens = {}
        for t in self.modalities:
            refs = [r for r in self.modalities if r != t]
            ints = torch.stack([self.int_adapters[t][r](source[r]) for r in refs], dim=1) if intervene else None
            tokens[t] = self._encode_target(t, inputs[t], ints, torch.stack([pres[r] for r in refs], dim=1))
        return EIBranches(pres, aux_logits, source, tokens)

    def forward(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
                ) -> dict[str, Any]:
        br = self.forward_branches(inputs, present)
        keep = torch.stack([br.present[m] for m in self.modalities], dim=1)  # (B, M)
        cls = {m: br.tokens[m][:, :, 0].mean(dim=1) for m in self.modalities}  # mean over slices
        primary = {m: self.primary[m].heads(cls[m]) for m in self.modalities}
        gate_in = torch.cat([cls[m] * br.present[m][:, None] for m in self.modalities], dim=1)
        gate_logits = self.gate(gate_in.detach() if self.detach_fusion else gate_in)
        masked = gate_logits.masked_fill(~keep, float("-inf"))
        masked = torch.where(keep.any(dim=1, keepdim=True), masked, torch.zeros_like(masked))
        log_alpha = masked.log_softmax(dim=1)
        alpha = log_alpha.exp() * keep
        out: dict[str, Any] = {}
        for task in self.tasks:
            stacked = torch.stack([primary[m][task] for m in self.modalities], dim=1)  # (B, M, K)
            out[task] = (alpha.unsqueeze(-1) * (stacked.detach() if self.detach_fusion else stacked)).sum(dim=1)
        aux = {}
        for m in self.modalities:
            if self.primary_weight:
                aux[f"primary_{m}"] = (self.primary_weight, _keep_rows(primary[m], br.present[m]))
            if self.aux_weight:
                aux[f"aux_{m}"] = (self.aux_weight, _keep_rows(br.aux_logits[m], br.present[m]))
        out[AUX_KEY] = aux
        if self.prior_modality is not None and self.gate_weight:
            out[AUX_LOSS_KEY] = {"gate": (self.gate_weight, self.gate_loss(log_alpha, keep))}
        return out

    def gate_loss(self, log_alpha: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``L_ag = CE(pi, alpha) = -log alpha_pi`` (Eq. 7), averaged over the cases that have the prior modality."""
        j = self.modalities.index(self.prior_modality)
        rows = keep[:, j]
        nll = torch.where(rows, -log_alpha[:, j], torch.zeros_like(log_alpha[:, j]))
        return nll.sum() / rows.sum().clamp_min(1)


@register_multimodal(options=(EI, UnimodalVFM))
def ei(spec: DatasetSpec, **kwargs: Any) -> EI:
    """EI (paper 003): [INT] tokens from auxiliary VFMs steer each primary VFM; gated late fusion; MoR adapters."""
    return EI(spec, **kwargs)


@register_multimodal(options=UnimodalVFM)
def ei_unimodal(spec: DatasetSpec, modality: str, **kwargs: Any) -> UnimodalVFM:
    """EI stage 1: one modality's VFM with PEFT (MoR) and task heads, slices max-pooled (unimodal pre-adaptation)."""
    _warn_random_base(kwargs, [modality])
    return UnimodalVFM(spec, modality, **kwargs)
