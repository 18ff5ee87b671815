"""IIMGF-Net (Wang et al., paper 000): Intra- and Inter-Modal Mamba with Multi-Granularity Fusion for two images.

Both images pass through a VMamba v2 tiny backbone (patch-embed v2 + learnable position embedding, stages 1-3); after
each stage l a :class:`~mmdiag.models.fusion.cmigf.CMIGF` block fuses the two maps with Cross-Modal Mamba, and its
output f_l passes through a per-modality PatchMerging into the next level (``h_{l+1} + PM(f_l)``; the backbone path
itself is not modified). :class:`~mmdiag.models.fusion.cmigf.MGC` combines the fused maps of the three levels; the
heads read ``[GAP(f_3x + h_3x), GAP(f_3y + h_3y), mean_tokens(R_3)]`` (3072 wide), one linear layer per task.

Deviations (authors' code, notes §1c; every one also in docs/iimgf.md):
    - One backbone and one position embedding shared by both modalities (paper: two streams);
      ``separate_streams=True`` gives each modality its own.
    - Stem = VMamba patch-embed v2 (paper: conv + ReLU); per-modality PatchMerging of f_{l-1} before the addition.
    - CMIGF depths 1/1/2; shared depthwise conv; CMM details (see :class:`CMM`); MGC details (see :class:`MGC`).
    - Head reshape: the authors convert the channels-last f_3 with ``transpose(1, 2).reshape(B, -1, 7, 7)``, which
      scrambles channels and positions; the default here is the correct permute, ``official_head_reshape=True``
      reproduces the authors' computation exactly (for their trained weights).

Choice: a missing image (``present`` False) is replaced by zeros before the backbone, so its tensor never changes
the output; the model has no dedicated missing-modality path.

Parameters: 30,292,528 at the authors' 8 Derm7pt heads, equal to the parameters of the authors' model that reach the
output. The unused ones (VMamba stage 4 + classifier, ``norm``/``norm_f``, the MGC Mambas' discarded y branches) are
not built; :meth:`IIMGFNet.checkpoint_filter_fn` drops them from the authors' state dict and logs them as unused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.io.checkpoint import load_state_dict_file
from mmdiag.models._factory import register_multimodal
from mmdiag.models.backbones.vmamba import VMamba
from mmdiag.models.contract import Inputs, MultimodalModel, Present
from mmdiag.models.fusion.cmigf import CMIGF, MGC, MgcPooling
from mmdiag.models.layers.heads import TaskHeads
from mmdiag.models.layers.patch_embed import PatchMerging
from mmdiag.models.layers.presence import presence_mask

__all__ = ["IIMGFNet", "derm7pt_8task_spec", "iimgf_net", "OFFICIAL_HEADS"]

_log = logging.getLogger(__name__)

# The authors' head attribute → Derm7pt task (adapter names), in the authors' order (BWV is stored as ``fc_bwn``).
OFFICIAL_HEADS: dict[str, str] = {
    "fc_diag": "diagnosis", "fc_pn": "pigment_network", "fc_bwn": "blue_whitish_veil", "fc_vs": "vascular_structures",
    "fc_pig": "pigmentation", "fc_str": "streaks", "fc_dag": "dots_and_globules", "fc_rs": "regression_structures",
}
_SENTINEL = "fusion_block0.cross_mamba.0.CMA_ssm.x_proj_1.weight"
_BACKBONES: dict[str, dict[str, Any]] = {
    "vmamba_tiny_s1l8": dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768)),
    "tiny_vmamba": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), mlp_ratio=2.0),
}


def derm7pt_8task_spec(num_classes: int | None = None, image_size: int = 224) -> DatasetSpec:
    """The authors' setting: clinical + dermoscopy images and the 8 Derm7pt tasks in their head order (adapter
    class names and order, ``label_order="kawahara"``); with ``num_classes`` one ``diagnosis`` task of that size."""
    from mmdiag.data.adapters.derm7pt import DIAGNOSIS_ORDERS, TASK_GROUPS

    img = ImageModality(channels=3, size=(image_size, image_size))
    if num_classes is not None:
        tasks = {"diagnosis": TaskSpec(type="multiclass" if num_classes > 2 else "binary",
                                       classes=tuple(f"class_{i}" for i in range(num_classes)))}
    else:
        classes = {t: tuple(TASK_GROUPS[t]) for t in OFFICIAL_HEADS.values()}
        classes["diagnosis"] = DIAGNOSIS_ORDERS["kawahara"]
        tasks = {t: TaskSpec(type="multiclass", classes=classes[t]) for t in OFFICIAL_HEADS.values()}
    return DatasetSpec(name="derm7pt", modalities={"clinical": img, "dermoscopy": img}, tasks=tasks,
                       primary_task="diagnosis")


class _Stream(nn.Module):
    """One image stream: VMamba stages 1-3 (stage 4 and the classifier are not built) and a learnable position
    embedding added after the patch embedding (trunc-normal, std 0.02)."""

    def __init__(self, backbone: str, in_chans: int, grid: int, drop_path_rate: float, scan_impl: str):
        super().__init__()
        cfg = _BACKBONES[backbone]
        self.mamba = VMamba(in_chans=in_chans, num_classes=0, drop_path_rate=drop_path_rate, scan_impl=scan_impl,
                            num_stages=3, **cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg["dims"][0], grid, grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


class IIMGFNet(MultimodalModel):
    """IIMGF-Net (paper 000, Fig. 1): VMamba streams + per-level CMIGF + MGC + per-task linear heads.

    Args:
        spec: Dataset spec; its tasks give the heads (any number and size).
        modalities: The two image modalities (default: the spec's image modalities, which must be two).
        backbone: ``"vmamba_tiny_s1l8"`` (authors) or ``"tiny_vmamba"`` (tests, fast runs).
        separate_streams: Own backbone and position embedding per modality (paper) instead of shared (code).
        use_cmigf: CMIGF blocks (Table 2 ablation; False: f_l = the backbone maps, no cross-level injection).
        use_mgc: MGC (Table 2 ablation; False: the fused vector reads ``mean_tokens(Z_3)`` instead of R_3).
        mgc_pooling: ``"1d"`` (authors' code) or ``"2d"`` (paper's 2x2 reading), see :class:`MGC`.
        official_head_reshape: Reproduce the authors' scrambled reshape of f_3 in the heads.
        cmigf_depths: CMIGF blocks per level.
        drop_path_rate: Backbone stochastic depth (authors: 0.2).
        drop_rate: Dropout before the heads.
        scan_impl: Selective-scan implementation everywhere.
        backbone_checkpoint: Official VMamba v2 weights file (``vssm1_tiny_0230s_ckpt_epoch_264.pth``) read by
            :meth:`load_pretrained` into every stream (the authors train from it).

    Raises:
        ConfigError: not exactly two image modalities, an unknown modality or backbone, or an image size whose
            stage-3 grid is not a whole square (the size must be a multiple of 32).
    """

    classifier_name = "heads"

    def __init__(
        self,
        spec: DatasetSpec,
        modalities: Sequence[str] | None = None,
        backbone: str = "vmamba_tiny_s1l8",
        separate_streams: bool = False,
        use_cmigf: bool = True,
        use_mgc: bool = True,
        mgc_pooling: MgcPooling = "1d",
        official_head_reshape: bool = False,
        cmigf_depths: Sequence[int] = (1, 1, 2),
        drop_path_rate: float = 0.2,
        drop_rate: float = 0.0,
        scan_impl: str = "auto",
        backbone_checkpoint: str | None = None,
    ):
        images = spec.of_kind("image")
        mods = list(modalities) if modalities is not None else images
        if len(mods) != 2 or any(m not in images for m in mods):
            raise ConfigError(f"iimgf_net is dual-modal: model.options.modalities must name exactly two image "
                              f"modalities of dataset {spec.name!r}; got {mods}, image modalities: {images}")
        if backbone not in _BACKBONES:
            raise ConfigError(f"iimgf_net: model.options.backbone={backbone!r}; valid: {sorted(_BACKBONES)}")
        sizes = {tuple(spec.modalities[m].size) for m in mods}
        chans = {spec.modalities[m].channels for m in mods}
        size = next(iter(sizes))
        if len(sizes) != 1 or size[0] != size[1] or size[0] % 32 or len(chans) != 1:
            raise ConfigError(f"iimgf_net: both images must share one square size that is a multiple of 32 and one "
                              f"channel count; got sizes {sorted(sizes)}, channels {sorted(chans)}")
        if len(cmigf_depths) != 3:
            raise ConfigError(f"iimgf_net: cmigf_depths needs one depth per level (3), got {list(cmigf_depths)}")
        super().__init__(spec, mods)
        self.use_cmigf, self.use_mgc, self.official_head_reshape = use_cmigf, use_mgc, official_head_reshape
        self.separate_streams, self.backbone_checkpoint = separate_streams, backbone_checkpoint
        dims = _BACKBONES[backbone]["dims"][1:]  # tapped after stages 1-3 (each ends with its downsample)
        grid = size[0] // 4
        self.grids = (grid // 2, grid // 4, grid // 8)
        n_streams = 2 if separate_streams else 1
        self.streams = nn.ModuleList(_Stream(backbone, next(iter(chans)), grid, drop_path_rate, scan_impl)
                                     for _ in range(n_streams))
        if use_cmigf:
            self.fusion = nn.ModuleList(CMIGF(d, depth, 16, scan_impl) for d, depth in zip(dims, cmigf_depths))
            self.merge_x = nn.ModuleList(PatchMerging(d) for d in dims[:2])
            self.merge_y = nn.ModuleList(PatchMerging(d) for d in dims[:2])
        if use_mgc:
            self.mgc = MGC(tuple(2 * d for d in dims), tuple(g * g for g in self.grids), 4, mgc_pooling, scan_impl)
        self.num_features = 4 * dims[2]
        self.heads = TaskHeads(self.num_features, spec.tasks, drop_rate)
        if separate_streams:  # a shared stream runs once per modality: no module output belongs to one modality
            self.explain_layers = {m: f"streams.{i}.mamba.layers.2" for i, m in enumerate(mods)}
            self.output_fmts = {m: "NHWC" for m in mods}

    def _stream(self, i: int) -> _Stream:
        return self.streams[i if self.separate_streams else 0]

    def forward_features(self, inputs: Inputs, present: Present = None) -> Tensor:
        hs = []
        for i, m in enumerate(self.modalities):
            x = inputs[m]
            p = presence_mask(present, m, x).to(x.dtype).view(-1, 1, 1, 1)
            s = self._stream(i)
            hs.append(s.mamba.embed(x * p) + s.pos_embed.permute(0, 2, 3, 1))
        zs, fs = [], None
        for level in range(3):
            hs = [self._stream(i).mamba.layers[level](h) for i, h in enumerate(hs)]
            inp = hs
            if self.use_cmigf and level > 0:
                inp = [hs[0] + self.merge_x[level - 1](fs[0]), hs[1] + self.merge_y[level - 1](fs[1])]
            fs = list(self.fusion[level](*inp)) if self.use_cmigf else inp
            zs.append(torch.cat(fs, -1).flatten(1, 2).transpose(1, 2))  # Z_l (B, 2C_l, N_l)
        fused = (self.mgc(*zs) if self.use_mgc else zs[2]).mean(-1)
        pooled = [self._head_map(f, h).mean(dim=(1, 2)) for f, h in zip(fs, hs)]
        return torch.cat([*pooled, fused], dim=1)

    def _head_map(self, f: Tensor, h: Tensor) -> Tensor:
        """``f_3 + h_3`` channels-last; with ``official_head_reshape`` f_3 goes through the authors' reshape."""
        if not (self.official_head_reshape and self.use_cmigf):
            return f + h
        b, hh, ww, c = f.shape
        return f.transpose(1, 2).reshape(b, c, hh, ww).permute(0, 2, 3, 1) + h

    def load_pretrained(self) -> None:
        """Load ``backbone_checkpoint`` (the official VMamba v2 file) into every stream; its stage 4 and classifier
        are not built here and are logged as unused.

        Raises:
            CheckpointError: the file is unreadable or does not fit stages 1-3 strictly.
        """
        if self.backbone_checkpoint is None:
            return
        state = load_state_dict_file(self.backbone_checkpoint)
        keep = {k: v for k, v in state.items() if not k.startswith(("layers.3.", "classifier."))}
        if len(keep) < len(state):
            _log.info("VMamba checkpoint %s: stage 4 / classifier (%d tensors) not used by IIMGF-Net",
                      self.backbone_checkpoint, len(state) - len(keep))
        for stream in self.streams:
            own = stream.mamba.state_dict()
            missing, unexpected = sorted(set(own) - set(keep)), sorted(set(keep) - set(own))
            wrong = sorted(k for k in set(own) & set(keep) if own[k].shape != keep[k].shape)
            if missing or unexpected or wrong:
                raise CheckpointError(f"model.options.backbone_checkpoint={self.backbone_checkpoint!r} does not fit "
                                      f"the VMamba stages of iimgf_net: missing {missing[:5]}, unexpected "
                                      f"{unexpected[:5]}, wrong shapes {wrong[:5]}")
            stream.mamba.load_state_dict(keep, strict=True)

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """The authors' ``IIMGF`` state dict (sentinel ``fusion_block0.cross_mamba.0.CMA_ssm.x_proj_1.weight``) →
        this model's names; the tensors the authors' forward never uses are dropped and logged as unused.

        A bare VMamba v2 checkpoint (sentinel ``patch_embed.5.weight``) is not a whole IIMGF model: the strict load
        then reports every fusion tensor as missing.
        """
        state = dict(state_dict)
        if _SENTINEL not in state:
            return state
        heads = getattr(model, "spec", None)
        tasks = list(heads.tasks) if heads is not None else list(OFFICIAL_HEADS.values())
        rename = [("mamba.", "streams.0.mamba."), ("pos_embed", "streams.0.pos_embed"),
                  ("downsample_cli_0.", "merge_x.0."), ("downsample_der_0.", "merge_y.0."),
                  ("downsample_cli.", "merge_x.1."), ("downsample_der.", "merge_y.1."),
                  *((f"fusion_block{i}.", f"fusion.{i}.") for i in range(3)),
                  *((p, f"mgc.{p}") for p in ("C2F.", "C2F_cross.", "F2C.", "F2C_cross."))]
        out, unused = {}, []
        for k, v in state.items():
            if (k.startswith(("mamba.layers.3.", "mamba.classifier.", "norm.", "norm_f."))
                    or (k.startswith(("C2F_cross.", "F2C_cross.")) and k.split(".")[2].endswith("_2")
                        and not k.split(".")[2].startswith("x_proj"))):
                unused.append(k)
                continue
            head = k.split(".")[0]
            if head in OFFICIAL_HEADS:
                if OFFICIAL_HEADS[head] in tasks:
                    out[f"heads.heads.{OFFICIAL_HEADS[head]}.{k.split('.', 1)[1]}"] = v
                else:
                    unused.append(k)
                continue
            new = next((n + k[len(o):] for o, n in rename if k.startswith(o)), k)
            out[new] = v
        if getattr(model, "separate_streams", False):
            out.update({"streams.1." + k[len("streams.0."):]: v for k, v in list(out.items())
                        if k.startswith("streams.0.")})
        if unused:
            _log.info("IIMGF checkpoint: %d tensors the authors' forward never uses were not loaded: %s", len(unused),
                      ", ".join(sorted({".".join(k.split(".")[:3]) for k in unused})))
        return out


@register_multimodal(options=IIMGFNet, default_spec=derm7pt_8task_spec, paper="iimgf")
def iimgf_net(spec: DatasetSpec, **kwargs: Any) -> IIMGFNet:
    """IIMGF-Net with the authors' settings (VMamba-T s1l8 shared backbone, CMIGF depths 1/1/2, MGC)."""
    return IIMGFNet(spec, **kwargs)
