"""Input normalisation inside a model (mean/std per channel), for models whose pretraining statistics differ from
the data spec's (the VFMs of EI and its baselines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from mmdiag.errors import ConfigError

__all__ = ["InputNorm", "InputNormMode", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

InputNormMode = Literal["clip", "vfm", "none"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InputNorm(nn.Module):
    """``(x - mean) / std`` over the channel axis of ``(N, C, H, W)`` images.

    Args:
        mode: ``"clip"`` the OpenAI CLIP statistics (EI's code uses them for every VFM), ``"vfm"`` the backbone's own
            pretraining statistics (``vfm_stats``), ``"none"`` identity.
        vfm_stats: ``(mean, std)`` of the backbone, needed for ``"vfm"``.
        channels: number of channels.

    Raises:
        ConfigError: an unknown mode, or ``"vfm"`` without statistics.
    """

    def __init__(self, mode: InputNormMode = "none",
                 vfm_stats: tuple[Sequence[float], Sequence[float]] | None = None, channels: int = 3):
        super().__init__()
        if mode not in ("clip", "vfm", "none"):
            raise ConfigError(f"model.options.input_norm={mode!r}; choose 'clip', 'vfm' or 'none'")
        if mode == "vfm" and vfm_stats is None:
            raise ConfigError("model.options.input_norm='vfm': this backbone has no pretraining mean/std; use 'clip' "
                              "or 'none'")
        mean, std = {"clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "none": ((0.0,) * channels, (1.0,) * channels),
                     "vfm": vfm_stats}[mode]
        self.mode = mode
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
