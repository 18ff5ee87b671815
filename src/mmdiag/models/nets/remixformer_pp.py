"""RemixFormer++ (paper 001): clinical, dermoscopy and metadata branches joined by cross-modality fusion (CMF).

One class covers every modality subset of Tables VI and XIV (C, D, M, CD, CM, DM, CDM): ``use`` names the branches
built; a branch whose modality a case lacks (``present``) is replaced by a learned "absent" vector and its tokens
are never attended to, so a missing modality's tensor cannot change the output.

Branch outputs: clinical ``(g^C, l^C)``, dermoscopy ``(g^D, l^D)`` (:class:`DermoscopyBranch`), metadata ``g^M``
(:class:`MetadataBranch`). CMF (§III-D, "the same strategy as CSF"; the notes' recommended reading):

* units ``g^C ← l^D``, ``g^D ← K_C``, ``g^M ← K_C``, ``g^M ← K_D`` with ``K_C = [g^C; l^C]``, ``K_D = l^D``
  (Deviation: the notes suggest ``K_C = [l^C; g^patch]``; the clinical branch returns ``g^C, l^C`` after CSF, which
  already carry the patch information, so ``K_C`` is those two tokens; with the ViT stand-in ``l^C`` is its patch
  tokens);
* each unit is CrossViT-style (:class:`CrossModalUnit`): one LayerNorm over query and keys, multi-head attention
  from the query to the keys, an output Linear, residual on the normalised query;
* the fused vector is the concatenation of the slots the subset has (C: ``g^C'``; D: ``g^D'``; M: ``g^M_C'``,
  ``g^M_D'``, or ``g^M`` itself when neither image branch is used), all in the common width ``fusion_dim``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec, ImageModality, TabularModality
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._factory import register_multimodal
from mmdiag.models.backbones.remixformer_clinical import ClinicalBranch
from mmdiag.models.backbones.remixformer_dermoscopy import DermoscopyBranch
from mmdiag.models.backbones.vit import VisionTransformer
from mmdiag.models.contract import MultimodalModel
from mmdiag.models.layers.attention import Attention
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.presence import presence_mask

__all__ = ["MetadataBranch", "CrossModalUnit", "CMF", "ViTClinicalBranch", "RemixFormerPP"]

_LETTERS = {"C": "clinical", "D": "dermoscopy", "M": "metadata"}


class MetadataBranch(nn.Module):
    """Metadata branch ``M_θ`` (paper 001 §III-D): encoded record → Linear → BatchNorm1d → ReLU.

    The record arrives encoded by :class:`~mmdiag.data.tabular.TabularEncoder` (categorical fields one-hot, missing =
    all zero; multi-select fields multi-hot when the adapter encodes them so; numeric fields standardised + a missing
    flag). Choice: BatchNorm statistics are taken over the cases that have a record only.

    Args:
        in_features: width of the encoded record.
        dim: output width.
    """

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.fc = nn.Linear(in_features, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.act = nn.ReLU()
        self.num_features = dim

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, in_features)`` → ``(B, dim)``; rows not ``present`` are zeros and do not enter the statistics."""
        if present is None or bool(present.all()):
            return self.act(self.bn(self.fc(x)))
        out = x.new_zeros(x.shape[0], self.num_features)
        if bool(present.any()):
            out[present] = self.act(self.bn(self.fc(x[present])))
        return out


class CrossModalUnit(nn.Module):
    """One CMF direction (paper 001 eqs. 10–14 applied across modalities): a query token attends to key tokens.

    ``q̂ = LN(q)``, ``K̂ = LN(K)`` (one LayerNorm), ``out = q̂ + Linear(MHA(q̂, K̂, K̂))`` with MHA the shared
    :class:`~mmdiag.models.layers.attention.Attention` (its own output projection included); cases whose keys are
    missing get ``q̂`` alone.

    Args:
        dim: token width.
        num_heads: attention heads.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"fusion_dim={dim} is not divisible by fusion_heads={num_heads}")
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, keys_present: torch.Tensor) -> torch.Tensor:
        """``q`` ``(B, dim)``, ``keys`` ``(B, L, dim)``, ``keys_present`` bool ``(B,)`` → ``(B, dim)``."""
        qn, kn = self.norm(q).unsqueeze(1), self.norm(keys)
        att = self.proj(self.attn(qn, context=kn))[:, 0]
        return qn[:, 0] + torch.where(keys_present[:, None], att, torch.zeros_like(att))


class CMF(nn.Module):
    """Cross-Modality Fusion (paper 001 §III-D) over ``g^C, K_C, g^D, K_D, g^M``; see the module docstring.

    Args:
        use: the branches present in the model (a subset of ``"CDM"``).
        dim: common width.
        num_heads: attention heads of each unit.
    """

    def __init__(self, use: str, dim: int, num_heads: int):
        super().__init__()
        self.use = use
        pairs = [("C", "D"), ("D", "C"), ("M", "C"), ("M", "D")]
        self.units = nn.ModuleDict({f"{q}{k}": CrossModalUnit(dim, num_heads) for q, k in pairs
                                    if q in use and k in use})
        self.slots = [s for s in ("C", "D") if s in use]
        if "M" in use:
            self.slots += [f"M{k}" for k in "CD" if k in use] or ["M"]
        self.absent = nn.ParameterDict({s: nn.Parameter(torch.zeros(dim)) for s in self.slots})
        self.num_features = dim * len(self.slots)

    def forward(self, g: dict[str, torch.Tensor], keys: dict[str, torch.Tensor],
                present: dict[str, torch.Tensor]) -> torch.Tensor:
        """``g``: query token per branch ``(B, dim)``; ``keys``: tokens per image branch ``(B, L, dim)``;
        ``present``: bool ``(B,)`` per branch → ``(B, num_features)``."""
        out = []
        for slot in self.slots:
            q, k = slot[0], slot[1:]
            if k:
                v = self.units[slot](g[q], keys[k], present[k])
            elif f"{q}{'D' if q == 'C' else 'C'}" in self.units:
                other = "D" if q == "C" else "C"
                v = self.units[f"{q}{other}"](g[q], keys[other], present[other])
            else:
                v = g[q]
            out.append(torch.where(present[q][:, None], v, self.absent[slot].expand_as(v)))
        return torch.cat(out, 1)


class ViTClinicalBranch(nn.Module):
    """Stand-in clinical branch: a ViT whose final [CLS] is ``g^C`` and patch tokens are ``l^C``.

    Used for ``clinical_branch="vit"`` (the ViT rows of the paper's tables and CPU tests); the paper's branch
    (CLS-Swin + LSM + CSF) is ``clinical_branch="cls_swin"``.

    Args:
        img_size: input side.
        **kwargs: :class:`VisionTransformer` options (``patch_size``, ``embed_dim``, ``depth``, ``num_heads``...).
    """

    def __init__(self, img_size: int, **kwargs: Any):
        super().__init__()
        self.vit = VisionTransformer(img_size=img_size, num_classes=0, **kwargs)
        self.num_features = self.vit.num_features
        self.explain_layer, self.explain_fmt = "vit.norm", "NLC"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_features(x)
        return tokens[:, 0], tokens[:, self.vit.num_prefix_tokens:]


def _clinical_branch(kind: str, img_size: int, options: dict[str, Any]) -> nn.Module:
    if kind == "vit":
        return ViTClinicalBranch(img_size, **options)
    if kind == "cls_swin":
        return ClinicalBranch(**options)
    raise ConfigError(f"model.options.clinical_branch={kind!r}; valid: 'cls_swin', 'vit'")


class RemixFormerPP(MultimodalModel):
    """RemixFormer++ (Xu et al., paper 001): any subset of clinical / dermoscopy / metadata branches + CMF + heads.

    Choice: every task gets its own linear head on the fused vector (Derm7pt: 8 heads, loss = sum of the CE terms,
    ``loss.task_weights`` to weight them). A single-branch model (Ours-C / Ours-D / M) still goes through CMF's
    slot (the branch's ``g`` in ``fusion_dim``), so its head reads the same kind of vector.

    Args:
        spec: the dataset spec.
        use: branches to build, letters of ``"CDM"`` (``"CD"``, ``"DM"``...); default: every branch whose modality
            the dataset has.
        clinical: the spec's clinical image modality.
        dermoscopy: the spec's dermoscopy image modality.
        metadata: the spec's record modality.
        clinical_branch: ``"cls_swin"`` (the paper's CLS-Swin + LSM + CSF) or ``"vit"``.
        clinical_options: options of the clinical branch.
        dermoscopy_options: options of :class:`DermoscopyBranch` (``img_size`` defaults to the modality's size).
        window_checkpoint: DINO weights of the window encoder ``T_φ1`` (read by :meth:`load_pretrained`).
        clinical_checkpoint: ImageNet Swin-T weights of the clinical branch (official or timm layout).
        fusion_dim: common width of CMF (768 = Swin-T's).
        fusion_heads: attention heads of each CMF unit.
        drop_rate: dropout before the heads.
    """

    def __init__(self, spec: DatasetSpec, use: str | None = None, clinical: str = "clinical",
                 dermoscopy: str = "dermoscopy", metadata: str = "record",
                 clinical_branch: Literal["cls_swin", "vit"] = "cls_swin",
                 clinical_options: dict[str, Any] | None = None, dermoscopy_options: dict[str, Any] | None = None,
                 window_checkpoint: str | None = None, clinical_checkpoint: str | None = None, fusion_dim: int = 768, fusion_heads: int = 8,
                 drop_rate: float = 0.0):
        names = {"C": clinical, "D": dermoscopy, "M": metadata}
        kinds = {"C": ImageModality, "D": ImageModality, "M": TabularModality}
        if use is None:
            use = "".join(k for k in "CDM" if names[k] in spec.modalities)
        given, use = use, "".join(k for k in "CDM" if k in str(use).upper())
        if set(str(given).upper()) - set("CDM") or not use:
            raise ConfigError(f"model.options.use={given!r}; use letters of 'CDM' (C clinical, D dermoscopy, "
                              f"M metadata), e.g. 'CDM' or 'D'")
        for k in use:
            if not isinstance(spec.modalities.get(names[k]), kinds[k]):
                raise ConfigError(f"model.options.use={use!r} needs the {_LETTERS[k]} modality "
                                  f"model.options.{_LETTERS[k]}={names[k]!r}, which dataset {spec.name!r} does not "
                                  f"have as {kinds[k].__name__}; its modalities: {list(spec.modalities)}")
        super().__init__(spec, [names[k] for k in use])
        self.use, self.names = use, names
        self.window_checkpoint, self.clinical_checkpoint = window_checkpoint, clinical_checkpoint
        self.proj = nn.ModuleDict()
        if "C" in use:
            size = spec.modalities[clinical].size[0]
            self.clinical = _clinical_branch(clinical_branch, size, dict(clinical_options or {}))
            self.proj["C"] = self._to(self.clinical.num_features, fusion_dim)
        if "D" in use:
            opts = {"img_size": spec.modalities[dermoscopy].size[0], **(dermoscopy_options or {})}
            opts.setdefault("in_chans", spec.modalities[dermoscopy].channels)
            self.dermoscopy = DermoscopyBranch(**opts)
            self.proj["D"] = self._to(self.dermoscopy.num_features, fusion_dim)
        if "M" in use:
            self.metadata = MetadataBranch(spec.modalities[metadata].width, fusion_dim)
        self.cmf = CMF(use, fusion_dim, fusion_heads)
        for k, attr in (("C", "clinical"), ("D", "dermoscopy")):
            if k in use:
                branch = getattr(self, attr)
                self.explain_layers[names[k]] = f"{attr}.{branch.explain_layer}"
                self.output_fmts[names[k]] = branch.explain_fmt
        self.num_features = self.cmf.num_features
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)

    @staticmethod
    def _to(width: int, dim: int) -> nn.Module:
        return nn.Identity() if width == dim else nn.Linear(width, dim)

    def load_pretrained(self) -> None:
        """Load ``window_checkpoint`` (DINO) into ``T_φ1`` and ``clinical_checkpoint`` (Swin-T) into the clinical
        branch, strictly, converting official layouts."""
        if self.window_checkpoint is not None and "D" in self.use:
            load_checkpoint(self.dermoscopy.window_encoder, self.window_checkpoint)
        if self.clinical_checkpoint is not None and "C" in self.use:
            load_checkpoint(self.clinical, self.clinical_checkpoint)

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: RemixFormerPP) -> dict[str, torch.Tensor]:
        """Runs written before the cross-attention was shared (CMF units and the clinical branch's CSF holding an
        ``nn.MultiheadAttention``, ``...in_proj_weight``) are renamed to the shared attention's names."""
        return Attention.convert_multihead_state(dict(state_dict))

    def forward_features(self, inputs: dict[str, torch.Tensor], present=None) -> torch.Tensor:
        g: dict[str, torch.Tensor] = {}
        keys: dict[str, torch.Tensor] = {}
        mask: dict[str, torch.Tensor] = {}
        for k in self.use:
            x = inputs[self.names[k]]
            mask[k] = presence_mask(present, self.names[k], x)
            if k == "M":
                g["M"] = self.metadata(x, mask["M"])
                continue
            gk, lk = (self.clinical if k == "C" else self.dermoscopy)(x)
            lk = lk if lk.ndim == 3 else lk.unsqueeze(1)
            g[k] = self.proj[k](gk)
            keys[k] = self.proj[k](torch.cat([gk.unsqueeze(1), lk], 1) if k == "C" else lk)
        return self.cmf(g, keys, mask)


@register_multimodal(options=RemixFormerPP, paper="remixformer")
def remixformer_pp(spec: DatasetSpec, **kwargs: Any) -> RemixFormerPP:
    """RemixFormer++ (paper 001): clinical CLS-Swin + LSM + CSF, dermoscopy HRWE + MSTA + region encoder, metadata
    branch, cross-modality fusion; ``use`` picks the subset (C / D / M / CD / CM / DM / CDM)."""
    return RemixFormerPP(spec, **kwargs)

