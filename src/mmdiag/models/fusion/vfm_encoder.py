"""One modality's vision foundation model (VFM): frozen or PEFT-adapted base, [CLS] features, token sequences.

Shared by EI (paper 003) and the multimodal baselines it compares against (``vfm_baselines``), which all put "the
same VFMs" (DINOv2 ViT-B/14 with registers, CLIP ViT-B/16) under every modality.

Input channels: a ``(B, C, H, W)`` batch with ``C = 3*k`` is read as ``k`` RGB slices (MRNet's slice stacks) that go
through the VFM one by one and are mean-pooled (EI's primary branch pools slices by the mean); any other ``C`` is read
as ``C`` grey slices, each replicated to 3 channels as EI does for MRNet (``C = 1``: one grey image).

Normalisation (``input_norm``): ``"clip"`` applies the OpenAI CLIP mean/std, which EI's code uses for every VFM;
``"vfm"`` the VFM's own pretraining statistics; ``"none"`` leaves the inputs as the data spec's ``mean``/``std`` made
them.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn

from mmdiag.errors import ConfigError

__all__ = ["VFMEncoder", "DEFAULT_VFM", "InputNorm"]

DEFAULT_VFM = "dinov2_vitb14_reg"

InputNorm = Literal["clip", "vfm", "none"]


class VFMEncoder(nn.Module):
    """A registered ViT (``dinov2_vitb14_reg``, ``clip_vit_b16``, ...) as a per-modality feature extractor.

    Trainable parts: ``peft=None`` freezes the whole VFM (a fixed feature extractor); ``"fpt"`` trains all of it;
    any other method of :data:`mmdiag.models.peft.PEFT_METHODS` (``mor``, ``lora``, ``vpt``, ...) trains only its
    adapters. No head is trained here (``modules_to_save`` defaults to ``[]``).

    Args:
        vfm: registered ViT name; built with ``num_classes=0``.
        peft: PEFT method applied after the checkpoint is loaded, or ``None`` for a frozen VFM.
        peft_options: the method's options (``r``, ``target_modules``, ``modules_to_save``...).
        vfm_checkpoint: local weights file of the VFM in any published layout (see ``vit.checkpoint_filter_fn``).
        img_size: side of the (square) input images. A VFM with a fixed patch grid (CLIP) is built for it, its
            checkpoint position table resized once at load; a VFM that resamples its table at run time (DINOv2)
            keeps its own table, as EI's code does. ``None``: the VFM's default size.
        input_norm: ``"none"`` (default), ``"clip"`` or ``"vfm"`` (see the module docstring).

    Attributes:
        vit: the (adapted) VisionTransformer.
        num_features: width ``C`` of features and tokens.
    """

    def __init__(self, vfm: str = DEFAULT_VFM, peft: str | None = None, peft_options: dict[str, Any] | None = None,
                 vfm_checkpoint: str | os.PathLike | None = None, img_size: int | None = None,
                 input_norm: InputNorm = "none"):
        super().__init__()
        from mmdiag.models._factory import create_model
        from mmdiag.models.backbones.vit import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        if input_norm not in ("clip", "vfm", "none"):
            raise ConfigError(f"input_norm={input_norm!r}; choose 'clip', 'vfm' or 'none'")

        with torch.device("meta"):
            probe = create_model(vfm, num_classes=0)
        for attr in ("embed", "forward_tokens", "num_prefix_tokens", "dynamic_img_size"):
            if not hasattr(probe, attr):
                raise ConfigError(f"vfm={vfm!r} is not a VisionTransformer (it has no {attr!r}); choose one of "
                                  "dinov2_vits14, dinov2_vitb14, dinov2_vits14_reg, dinov2_vitb14_reg, clip_vit_b16")
        if probe.dynamic_img_size:
            img_size = None
        options = dict(peft_options or {})
        if peft is not None:
            options.setdefault("modules_to_save", [])
        self.vit = create_model(vfm, num_classes=0, img_size=img_size, checkpoint=vfm_checkpoint, peft=peft,
                                peft_options=options)
        if peft is None:
            self.vit.requires_grad_(False)
        self.vfm, self.peft = vfm, peft
        self.num_features: int = self.vit.num_features
        self.num_prefix_tokens: int = self.vit.num_prefix_tokens
        self.in_chans: int = self.vit.in_chans
        self.input_norm = input_norm
        cfg = self.vit.pretrained_cfg
        if input_norm == "vfm" and "mean" not in cfg:
            raise ConfigError(f"vfm={vfm!r} has no pretraining mean/std; use input_norm='clip' or 'none'")
        mean, std = (cfg["mean"], cfg["std"]) if input_norm == "vfm" else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def slices(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(B, C, H, W)`` → normalised ``(B*k, 3, H, W)`` slices and ``k`` (grey slices replicated to RGB).

        Raises:
            ConfigError: ``x`` is not 4-D.
        """
        if x.ndim != 4:
            raise ConfigError(f"VFM {self.vfm!r} expects images (B, C, H, W), got shape {tuple(x.shape)}")
        b, c = x.shape[:2]
        if c % self.in_chans:
            k = c
            s = x.reshape(b * k, 1, *x.shape[2:]).expand(-1, self.in_chans, -1, -1)
        else:
            k = c // self.in_chans
            s = x.reshape(b * k, self.in_chans, *x.shape[2:])
        if self.input_norm != "none":
            s = (s - self.mean.to(s.dtype)) / self.std.to(s.dtype)
        return s, k

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Input tokens of every slice before the first block: ``(B*k, L, C)`` and ``k``."""
        s, k = self.slices(x)
        return self.vit.embed(s), k

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

    def slice_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normalised tokens of each slice, ``(B, k, L, C)``."""
        tokens, k = self.embed(x)
        out = self.run(tokens)
        return out.reshape(-1, k, *out.shape[1:])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normalised tokens ``(B, L, C)``: [CLS], registers, patches (mean over slices)."""
        return self.slice_tokens(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[CLS] features ``(B, C)`` (mean over slices)."""
        return self.tokens(x)[:, 0]
