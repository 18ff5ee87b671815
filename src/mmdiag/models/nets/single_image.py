"""Using a registered single-input image classifier (MedMamba, a ViT, ...) on an mmdiag dataset."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError

__all__ = ["SingleImageClassifier"]


class SingleImageClassifier(nn.Module):
    """Feeds one image modality to a registered classifier built with the task's number of classes.

    The inner network keeps its own state-dict layout under ``net.``, so official checkpoints load into it.

    Args:
        spec: the dataset spec; it must have one task (multi-task datasets use ``unimodal`` with this backbone).
        name: the registered image model.
        modality: the image modality to read (default: the only image modality).
        **kwargs: options of the image model.
    """

    def __init__(self, spec: DatasetSpec, name: str, modality: str | None = None, **kwargs: Any):
        super().__init__()
        from mmdiag.models._factory import create_model
        from mmdiag.registry import MODELS

        images = spec.of_kind("image")
        if modality is None:
            if len(images) != 1:
                raise ConfigError(f"model {name!r} reads one image; set model.options.modality to one of {images}")
            modality = images[0]
        if modality not in images:
            raise ConfigError(f"model.options.modality={modality!r} is not an image modality of {spec.name!r}: "
                              f"{images}")
        if len(spec.tasks) != 1:
            raise ConfigError(f"model {name!r} has one head; dataset {spec.name!r} has tasks {list(spec.tasks)}. Use "
                              f"model.name=unimodal with model.options.backbone={name}")
        self.modality, self.task = modality, next(iter(spec.tasks))
        params = inspect.signature(MODELS.get(name)).parameters
        if "in_chans" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kwargs.setdefault("in_chans", spec.modalities[modality].channels)
        self.net = create_model(name, num_classes=spec.tasks[self.task].num_outputs, **kwargs)

    def forward(self, inputs: dict[str, torch.Tensor], present=None) -> dict[str, torch.Tensor]:
        return {self.task: self.net(inputs[self.modality])}
