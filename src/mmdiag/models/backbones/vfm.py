"""One modality's vision foundation model (VFM): a registered ViT, frozen or PEFT-adapted, reading the modality's
images, slice stacks or volumes. The one VFM wrapper of EI (paper 003) and of the Table 3 baselines, which all put
"the same VFMs" (DINOv2 ViT-B/14 with registers, CLIP ViT-B/16) under every modality.

Slices: an image modality with ``C = 3k`` channels is read as ``k`` RGB slices, one with ``C = k`` (not a multiple of
3) as ``k`` grey slices replicated to RGB (``slices`` overrides ``k``), and a volume ``(c, D, H, W)`` as ``D`` slices.
Every slice goes through the VFM; callers pool over slices (EI's branches by max or mean, the baselines by mean).

Weights: the constructor reads no file. :meth:`VFMEncoder.load_base` loads a published checkpoint (any layout
``vit.checkpoint_filter_fn`` converts) into the base layers after the adapters exist.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn

from mmdiag.data.schema import ImageModality, VolumeModality
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_state_dict_file
from mmdiag.models._factory import create_model
from mmdiag.models._registry import list_models
from mmdiag.models.backbones.vit import VisionTransformer, checkpoint_filter_fn
from mmdiag.models.layers.input_norm import InputNorm, InputNormMode
from mmdiag.models.peft import apply_peft, load_base_weights
from mmdiag.registry import MODELS

__all__ = ["VFMEncoder", "DEFAULT_VFM", "SliceLayout", "vfm_names", "slice_layout"]

DEFAULT_VFM = "dinov2_vitb14_reg"


def vfm_names() -> list[str]:
    """Registered ViTs usable as a VFM."""
    return [n for n in list_models(multimodal=False) if MODELS.tags(n)["options"] is VisionTransformer]


class SliceLayout(NamedTuple):
    """How a modality's tensor is cut into VFM inputs: ``k`` slices of ``chans`` (1 or 3) channels."""

    k: int
    chans: int
    volume: bool


def slice_layout(name: str, modality: ImageModality | VolumeModality, slices: int | None = None) -> SliceLayout:
    """The :class:`SliceLayout` of a modality (see the module docstring).

    Raises:
        ConfigError: the channels cannot be split into ``k`` slices of 1 or 3 channels.
    """
    if isinstance(modality, VolumeModality):
        if modality.channels not in (1, 3) or slices not in (None, modality.size[0]):
            raise ConfigError(f"a VFM reads volume modality {name!r} as {modality.size[0]} slices of "
                              f"{modality.channels} channel(s); it needs 1 or 3 channels per slice and "
                              f"model.options.slices.{name} unset (got {slices})")
        return SliceLayout(modality.size[0], modality.channels, True)
    c = modality.channels
    k = slices if slices is not None else (c // 3 if c % 3 == 0 else c)
    if k < 1 or c % k or c // k not in (1, 3):
        raise ConfigError(f"model.options.slices.{name}={k}: image modality {name!r} has {c} channels, which do not "
                          f"split into {k} slices of 1 (grey) or 3 (RGB) channels; use a divisor k of {c} with "
                          f"{c}/k in (1, 3)")
    return SliceLayout(k, c // k, False)


class VFMEncoder(nn.Module):
    """A registered ViT as one modality's encoder.

    Args:
        vfm: registered ViT name (``dinov2_vitb14_reg``, ``clip_vit_b16``, ``dinov2_vits14``...).
        modality: the modality's spec; name: its name (for messages).
        peft: PEFT method of :mod:`mmdiag.models.peft` (``None`` = frozen VFM, ``"fpt"`` = fully trained, ``"mor"``,
            ``"lora"``...); no head is trained here (``modules_to_save`` defaults to ``[]``).
        peft_options: options of that method.
        vfm_options: further options of the ViT constructor (``act_layer``, ``drop_path_rate``...).
        img_size: side of the (square) input of a ViT with a fixed patch grid (CLIP; its checkpoint position table
            is resized once at load); default: the modality's side. ViTs that resample at run time (DINOv2) keep theirs.
        input_norm: ``"clip"``, ``"vfm"`` or ``"none"`` (:class:`~mmdiag.models.layers.input_norm.InputNorm`).
        slices: number of slices packed in an image modality's channels (default: see the module docstring).

    Raises:
        ConfigError: ``vfm`` is not a ViT, a slice layout that does not fit, a non-square input for a fixed-grid ViT,
            or ``input_norm`` other than ``none`` on a modality the data spec already normalises.
    """

    def __init__(self, vfm: str, modality: ImageModality | VolumeModality, name: str = "image",
                 peft: str | None = None, peft_options: dict | None = None, vfm_options: dict | None = None,
                 img_size: int | None = None, input_norm: InputNormMode = "none", slices: int | None = None):
        super().__init__()
        if not isinstance(modality, (ImageModality, VolumeModality)):
            raise ConfigError(f"a VFM reads images; modality {name!r} is {modality.kind} (choose image modalities "
                              "with data.modalities)")
        if input_norm != "none" and isinstance(modality, ImageModality) and modality.mean is not None:
            raise ConfigError(f"modality {name!r} is already normalised by the dataset spec (mean={modality.mean}); "
                              "set model.options.input_norm=none or remove the spec's mean/std")
        self.name = name
        self.layout = slice_layout(name, modality, slices)
        kwargs = {**(vfm_options or {}), "num_classes": 0, "in_chans": 3}
        with torch.device("meta"):
            probe = create_model(vfm, **kwargs)
        if not isinstance(probe, VisionTransformer):
            raise ConfigError(f"model.options.vfm={vfm!r} is a {type(probe).__name__}, not a ViT foundation model; "
                              f"choose one of {', '.join(vfm_names())}")
        if not probe.dynamic_img_size:
            side = img_size
            if side is None:
                h, w = modality.size[-2:]
                if h != w:
                    raise ConfigError(f"{vfm} has a fixed-size position table and needs square inputs; modality "
                                      f"{name!r} is {h}x{w} (set model.options.img_size, resize, or use a DINOv2 VFM)")
                side = h
            kwargs["img_size"] = side
        self.vit = create_model(vfm, **kwargs)
        if peft is None:
            self.vit.requires_grad_(False)
        else:
            self.vit = apply_peft(self.vit, peft, **{"modules_to_save": [], **(peft_options or {})})
        self.vfm, self.peft = vfm, peft
        self.num_features: int = self.vit.num_features
        self.num_prefix_tokens: int = self.vit.num_prefix_tokens
        cfg = self.vit.pretrained_cfg
        self.input_norm = InputNorm(input_norm, (cfg["mean"], cfg["std"]) if "mean" in cfg else None)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.vit.blocks)

    def load_base(self, path: str | os.PathLike) -> None:
        """Load a published checkpoint of the VFM (any converted layout) into its base layers, strictly.

        Raises:
            CheckpointError: naming the file, when it does not fit.
        """
        state = checkpoint_filter_fn(load_state_dict_file(path), self.vit)
        load_base_weights(self.vit, state, source=f"checkpoint {str(path)!r}")

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` of an input batch (after zero padding to the patch multiple)."""
        p = self.vit.patch_size
        return -(-x.shape[-2] // p), -(-x.shape[-1] // p)

    @property
    def num_slices(self) -> int:
        """Slices per case of this encoder's modality."""
        return self.layout.k

    def to_slices(self, x: torch.Tensor, layout: SliceLayout | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` image or ``(B, c, D, H, W)`` volume → normalised RGB slices ``(B * k, 3, H, W)``.

        Args:
            layout: another modality's layout (one VFM shared by several modalities); default: this encoder's.
        """
        k, c, volume = layout or self.layout
        b = x.shape[0]
        if volume:
            x = x.transpose(1, 2)
        x = x.reshape(b * k, c, *x.shape[-2:])
        if c == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.input_norm(x)

    def embed(self, x: torch.Tensor, layout: SliceLayout | None = None) -> torch.Tensor:
        """Input tokens of every slice before the first block, ``(B * k, L, C)`` (``layout`` as in :meth:`to_slices`)."""
        return self.vit.embed(self.to_slices(x, layout))

    def run(self, tokens: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks + final norm on ``(N, L, C)`` tokens (extra tokens allowed).

        Args:
            tokens: e.g. the output of :meth:`embed`.
            prompts: optional ``(N, depth, P, C)`` per-sample prompts: ``prompts[:, i]`` is inserted after the
                prefix tokens before block ``i`` and removed after it (deep, input-conditioned prompting), for the
                first ``depth`` blocks.

        Returns:
            ``(N, L, C)`` final-normalised tokens (prompts removed).
        """
        if prompts is None:
            return self.vit.forward_tokens(tokens)
        n, p = self.num_prefix_tokens, prompts.shape[2]
        for i, blk in enumerate(self.vit.blocks):
            if i < prompts.shape[1]:
                tokens = blk(torch.cat([tokens[:, :n], prompts[:, i].to(tokens.dtype), tokens[:, n:]], 1))
                tokens = torch.cat([tokens[:, :n], tokens[:, n + p:]], 1)
            else:
                tokens = blk(tokens)
        return self.vit.norm(tokens)

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
        z = self.embed(x)
        n = z.shape[1]
        if extra is not None:
            extra = extra.to(z.dtype).repeat_interleave(k, dim=0)
        captured = None
        for i, blk in enumerate(self.vit.blocks):
            if extra is not None and i == insert_at:
                z = torch.cat([z, extra], dim=1)
            z = blk(z)
            if capture == i + 1:
                captured = self.vit.norm(z[:, 0]).view(b, k, z.shape[-1])
        z = self.vit.norm(z)[:, :n]
        return z.view(b, k, n, z.shape[-1]), captured

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normalised tokens ``(B, L, C)``: [CLS], registers, patches (mean over slices)."""
        return self.encode(x)[0].mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] features ``(B, C)`` (mean over slices)."""
        return self.tokens(x)[:, 0]
