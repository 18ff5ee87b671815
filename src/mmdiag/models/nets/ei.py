"""EI: Early Intervention for multimodal imaging based disease recognition (paper 003, Wei, Lin & Li 2026).

Each image modality ``m`` has two copies of a vision foundation model (VFM) with its own PEFT adapters (MoR by
default, §3.4): an *auxiliary* VFM ``phi_a`` and a *primary* VFM ``phi_p``. For every target modality ``t`` the final
[CLS] of each reference modality ``r != t`` (from ``phi_a``) passes an :class:`INTAdapter` and joins the target's token
sequence as one intervention token ([INT], §3.1-3.2, Eq. 1-2); ``phi_p`` then embeds the target with the [INT] tokens
attending through its blocks. Adaptive late fusion (§3.3, Eq. 3) weighs the per-modality predictions by a softmax gate.

Output of :class:`EI` (the multimodal contract of ``models/contract.py``)::

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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._factory import register_multimodal
from mmdiag.models.backbones.vfm import DEFAULT_VFM, VFMEncoder
from mmdiag.models.contract import MultimodalModel
from mmdiag.models.fusion.intervention import INTAdapter
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.input_norm import InputNormMode
from mmdiag.models.layers.presence import presence_groups, presence_mask
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY
from mmdiag.models.peft.inject import build_peft_config

__all__ = ["UnimodalVFM", "EI", "EIBranches", "VFM_OPTIONS"]

_log = logging.getLogger(__name__)


VFM_OPTIONS = ("vfm", "vfm_checkpoint", "vfm_peft", "vfm_peft_options", "vfm_options", "input_norm", "slices",
               "grad_checkpointing")
"""Options shared by :class:`EI` and its unimodal pre-adaptation model (``ei_unimodal``); a stage-1 run built with the
same values has exactly the state-dict layout of an EI branch."""

_OLD_VFM_KEY = re.compile(r"(^|\.)vfm\.")


def _keep_rows(logits: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows where ``keep`` is False become constant zeros: they add a constant to a loss and no gradient."""
    return {t: torch.where(keep[:, None], z, torch.zeros_like(z)) for t, z in logits.items()}


def _rename_old_vfm_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runs written before the VFM wrapper was shared kept each branch's ViT under ``vfm.``; it is ``encoder.vit.``."""
    return {_OLD_VFM_KEY.sub(r"\1encoder.vit.", k): v for k, v in state.items()}


def _warn_random_base(vfm_checkpoint: str | os.PathLike | None, modalities: list[str]) -> None:
    if modalities and vfm_checkpoint is None:
        _log.warning("no model.options.vfm_checkpoint: the VFM base weights of %s stay random", modalities)


class UnimodalVFM(MultimodalModel):
    """One modality's VFM with PEFT adapters and task heads: EI's unimodal pre-adaptation model (§4.1) and each
    auxiliary / primary branch of :class:`EI`.

    ``forward`` gives the task logits of the final [CLS] (token 0 after the final norm), max-pooled over slices.

    Deviation: the paper mean-pools slices; the authors' single-modal model and auxiliary branch take the maximum of
    the slice logits (and of the slice tokens), which this follows.

    Args:
        spec: the dataset spec (tasks, and the modality's channels/size).
        modality: the image (or volume) modality read.
        vfm: registered ViT name (``dinov2_vitb14_reg`` as in EI's code, ``clip_vit_b16``, ``dinov2_vits14``...).
        vfm_checkpoint: local file with the VFM's published weights (any layout ``vit.py`` converts), loaded by
            :meth:`load_pretrained`; ``None`` keeps the random initialisation.
        vfm_peft: PEFT method of :mod:`mmdiag.models.peft` (``mor`` default; ``lp`` = frozen VFM, ``lora``...).
        vfm_peft_options: options of that method (``r``, ``alpha``, ``target_modules``...).
        vfm_options: further options of the VFM constructor (``act_layer="gelu"`` for EI's CLIP, ``drop_path_rate``).
        input_norm: ``clip`` normalises with the OpenAI CLIP mean/std (EI's code does so for every VFM), ``vfm`` with
            the VFM's own pretraining statistics, ``none`` leaves inputs as they come (normalised by the data spec).
        slices: per modality name, the number of slices packed in its channels (default: ``C/3`` when ``C`` is a
            multiple of 3, else ``C`` grey slices).
        grad_checkpointing: recompute the VFM blocks' activations in the backward pass (less memory, same result).

    Raises:
        ConfigError: an unknown modality, a non-image modality, a VFM that is not a ViT, or a slice layout that does
            not fit the channels; or ``input_norm`` other than ``none`` while the spec already normalises.
    """

    def __init__(self, spec: DatasetSpec, modality: str, vfm: str = DEFAULT_VFM,
                 vfm_checkpoint: str | os.PathLike | None = None, vfm_peft: str = "mor",
                 vfm_peft_options: Mapping[str, Any] | None = None, vfm_options: Mapping[str, Any] | None = None,
                 input_norm: InputNormMode = "clip", slices: Mapping[str, int] | None = None,
                 grad_checkpointing: bool = False):
        if modality not in spec.modalities:
            raise ConfigError(f"model.options.modality={modality!r}; the dataset has {list(spec.modalities)}")
        unknown = sorted(set(slices or {}) - set(spec.modalities))
        if unknown:
            raise ConfigError(f"model.options.slices names {unknown}; modalities: {list(spec.modalities)}")
        super().__init__(spec, [modality])
        self.modality = modality
        self.encoder = VFMEncoder(vfm, spec.modalities[modality], modality, vfm_peft, dict(vfm_peft_options or {}),
                                  {**(vfm_options or {}), **({"grad_checkpointing": True} if grad_checkpointing else {})},
                                  input_norm=input_norm,
                                  slices=(slices or {}).get(modality))
        self.vfm_checkpoint = vfm_checkpoint
        self.num_features = self.encoder.num_features
        self.heads = TaskHeads(self.num_features, spec.tasks)
        self.peft_config = build_peft_config(vfm_peft, {**(vfm_peft_options or {}), "modules_to_save": ["heads"]})

    def load_pretrained(self) -> None:
        """Load ``vfm_checkpoint`` into the VFM's base layers."""
        _warn_random_base(self.vfm_checkpoint, [self.modality])
        if self.vfm_checkpoint is not None:
            self.encoder.load_base(self.vfm_checkpoint)

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Earlier runs' key names (``vfm.`` → ``encoder.vit.``)."""
        return _rename_old_vfm_keys(state_dict)

    @property
    def depth(self) -> int:
        """Number of transformer blocks ``L``."""
        return self.encoder.depth

    def reset_heads(self) -> None:
        """Fresh task heads (EI re-creates the primary branch's classifier after loading the unimodal weights)."""
        self.heads = TaskHeads(self.num_features, self.spec.tasks).to(self.encoder.input_norm.mean.device)

    def encode(self, x: torch.Tensor, extra: torch.Tensor | None = None, insert_at: int = 0,
               capture: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-slice final tokens (and an optional captured [CLS]); see :meth:`VFMEncoder.encode`."""
        return self.encoder.encode(x, extra, insert_at, capture)

    def slice_logits(self, cls: torch.Tensor) -> dict[str, torch.Tensor]:
        """Task logits of per-slice [CLS] features ``(B, k, C)``, max-pooled over the slices."""
        b, k = cls.shape[:2]
        return {t: z.view(b, k, -1).amax(dim=1) for t, z in self.heads(cls.flatten(0, 1)).items()}

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        """The final [CLS] per slice, max-pooled over the slices ``(B, C)`` (the vector t-SNE shows)."""
        return self.encode(inputs[self.modality])[0][:, :, 0].amax(dim=1)

    def forward(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        x = inputs[self.modality]
        logits = self.slice_logits(self.encode(x)[0][:, :, 0])
        return _keep_rows(logits, presence_mask(present, self.modality, x))


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


class EI(MultimodalModel):
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
            keeps its heads; the primary heads start fresh (§4.1; the authors' code). Read by
            :meth:`load_pretrained`, not by the constructor.
        vfm, vfm_checkpoint, vfm_peft, vfm_peft_options, vfm_options, input_norm, slices: :data:`VFM_OPTIONS`, see
            :class:`UnimodalVFM`.

    Raises:
        ConfigError: fewer than two image modalities, a non-image modality, a layer out of range, an unknown
            ``prior_modality`` or ``init_runs`` modality.
        CheckpointError: an ``init_runs`` file that does not fit the branch.
    """

    def __init__(self, spec: DatasetSpec, int_layer: int = 0, int_source_layer: int | None = None,
                 primary_weight: float = 1.0, aux_weight: float = 0.3, gate_weight: float = 0.1,
                 prior_modality: str | None = None, detach_fusion: bool = True,
                 init_runs: Mapping[str, str | os.PathLike] | None = None, vfm: str = DEFAULT_VFM,
                 vfm_checkpoint: str | os.PathLike | None = None, vfm_peft: str = "mor",
                 vfm_peft_options: Mapping[str, Any] | None = None, vfm_options: Mapping[str, Any] | None = None,
                 input_norm: InputNormMode = "clip", slices: Mapping[str, int] | None = None,
                 grad_checkpointing: bool = False):
        modalities = list(spec.modalities)
        other = [m for m, v in spec.modalities.items() if v.kind == "tabular"]
        if other or len(modalities) < 2:
            images = [m for m in modalities if m not in other]
            raise ConfigError(f"EI fuses two or more image modalities; dataset {spec.name!r} has images {images} and "
                              f"other modalities {other}: choose the images with data.modalities (one modality: use "
                              "model.name=ei_unimodal)")
        for key, value in (("prior_modality", prior_modality), *(("init_runs", m) for m in init_runs or {})):
            if value is not None and value not in modalities:
                raise ConfigError(f"model.options.{key} names {value!r}; modalities: {modalities}")
        super().__init__(spec, modalities)
        self.init_runs = dict(init_runs or {})
        self.vfm_checkpoint = vfm_checkpoint
        branch = {"vfm": vfm, "vfm_peft": vfm_peft, "vfm_peft_options": vfm_peft_options, "vfm_options": vfm_options,
                  "input_norm": input_norm, "slices": slices, "grad_checkpointing": grad_checkpointing}
        self.tasks = dict(spec.tasks)
        self.aux = nn.ModuleDict({m: UnimodalVFM(spec, m, **branch) for m in self.modalities})
        self.primary = nn.ModuleDict({m: UnimodalVFM(spec, m, **branch) for m in self.modalities})
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
        self.num_features = dim * len(self.modalities)
        self.primary_weight, self.aux_weight, self.gate_weight = primary_weight, aux_weight, gate_weight
        self.prior_modality, self.detach_fusion = prior_modality, detach_fusion
        heads = [f"{b}.{m}.heads" for b in ("aux", "primary") for m in self.modalities]
        self.peft_config = build_peft_config(vfm_peft, {
            **(vfm_peft_options or {}), "modules_to_save": ["int_adapters", "gate", *heads]})

    def load_pretrained(self) -> None:
        """Initialise each modality's VFMs from its stage-1 run (``init_runs``), else from ``vfm_checkpoint``."""
        _warn_random_base(self.vfm_checkpoint, [m for m in self.modalities if m not in self.init_runs])
        for m in self.modalities:
            if m in self.init_runs:
                self.load_unimodal(m, self.init_runs[m])
            elif self.vfm_checkpoint is not None:
                self.aux[m].encoder.load_base(self.vfm_checkpoint)
                self.primary[m].encoder.load_base(self.vfm_checkpoint)

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Earlier runs' key names (``vfm.`` → ``encoder.vit.``)."""
        return _rename_old_vfm_keys(state_dict)

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
        rows, parts = [], []
        for pattern, idx in presence_groups(ref_present):
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

    def _primary_cls(self, br: EIBranches) -> dict[str, torch.Tensor]:
        """Each primary VFM's final [CLS], mean over slices."""
        return {m: br.tokens[m][:, :, 0].mean(dim=1) for m in self.modalities}

    def _gate_input(self, br: EIBranches, cls: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([cls[m] * br.present[m][:, None] for m in self.modalities], dim=1)

    def forward_features(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
                         ) -> torch.Tensor:
        """The gate's input: every primary [CLS] (zero where the modality is missing), concatenated in
        ``modalities`` order, ``(B, M * C)``. EI fuses logits, not features: :meth:`forward` is the model."""
        br = self.forward_branches(inputs, present)
        return self._gate_input(br, self._primary_cls(br))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``pre_logits`` only: EI's logits are a gated sum of per-modality logits that needs presence (``forward``)."""
        if not pre_logits:
            raise NotImplementedError("EI fuses per-modality logits with presence; call the model (forward)")
        return features

    def forward(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
                ) -> dict[str, Any]:
        br = self.forward_branches(inputs, present)
        keep = torch.stack([br.present[m] for m in self.modalities], dim=1)  # (B, M)
        cls = self._primary_cls(br)
        primary = {m: self.primary[m].heads(cls[m]) for m in self.modalities}
        gate_in = self._gate_input(br, cls)
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


@register_multimodal(options=EI, paper="ei")
def ei(spec: DatasetSpec, **kwargs: Any) -> EI:
    """EI (paper 003): [INT] tokens from auxiliary VFMs steer each primary VFM; gated late fusion; MoR adapters."""
    return EI(spec, **kwargs)


@register_multimodal(options=UnimodalVFM, paper="ei")
def ei_unimodal(spec: DatasetSpec, modality: str, **kwargs: Any) -> UnimodalVFM:
    """EI stage 1: one modality's VFM with PEFT (MoR) and task heads, slices max-pooled (unimodal pre-adaptation)."""
    return UnimodalVFM(spec, modality, **kwargs)
