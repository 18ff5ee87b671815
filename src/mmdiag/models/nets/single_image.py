"""Using a registered single-input image model (MedMamba, a ViT, ...) on an mmdiag dataset."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError
from mmdiag.models.contract import Inputs, MultimodalModel, Present

__all__ = ["SingleImageClassifier", "image_model_options"]


def image_model_options(spec: DatasetSpec, name: str, options: dict[str, Any], accepts_in_chans: bool
                        ) -> tuple[str, dict[str, Any]]:
    """The modality image model ``name`` reads on ``spec`` and its options with ``num_classes`` (and ``in_chans``).

    Args:
        options: ``model.options``; ``modality`` picks the image modality (default: the only one).
        accepts_in_chans: whether the model takes ``in_chans`` (set from the modality's channels unless given).

    Raises:
        ConfigError: no single image modality to choose, a modality that is not an image, or several tasks.
    """
    options = dict(options)
    modality = options.pop("modality", None)
    images = spec.of_kind("image")
    if modality is None:
        if len(images) != 1:
            raise ConfigError(f"model {name!r} reads one image; set model.options.modality to one of {images}")
        modality = images[0]
    if modality not in images:
        raise ConfigError(f"model.options.modality={modality!r} is not an image modality of {spec.name!r}: {images}")
    if len(spec.tasks) != 1:
        raise ConfigError(f"model {name!r} has one head; dataset {spec.name!r} has tasks {list(spec.tasks)}. Use "
                          f"model.name=unimodal with model.options.backbone={name}")
    if accepts_in_chans:
        options.setdefault("in_chans", spec.modalities[modality].channels)
    options["num_classes"] = next(iter(spec.tasks.values())).num_outputs
    return modality, options


class SingleImageClassifier(MultimodalModel):
    """Feeds one image modality to a registered image model built with the task's number of classes.

    The inner network keeps its own state-dict layout under ``net.`` (so official checkpoints load into it) and its
    own head: ``forward_features`` is the network's pooled vector, ``forward_head`` its classifier.

    Args:
        spec: the dataset spec (one task: :func:`image_model_options` checks it).
        net: the image model, built with the task's number of outputs.
        modality: the image modality it reads.
    """

    def __init__(self, spec: DatasetSpec, net: nn.Module, modality: str):
        super().__init__(spec, (modality,))
        self.modality, self.task = modality, next(iter(spec.tasks))
        self.net = net
        self.num_features = net.num_features
        self.classifier_name = f"net.{net.classifier_name}"
        self.explain_layers = {modality: f"net.{net.explain_layer}"}
        self.output_fmts = {modality: net.explain_fmt}

    def forward_features(self, inputs: Inputs, present: Present = None) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(inputs[self.modality]), pre_logits=True)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        if pre_logits:
            return features
        return {self.task: self.net.get_submodule(self.net.classifier_name)(features)}
