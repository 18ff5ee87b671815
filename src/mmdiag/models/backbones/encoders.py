"""One encoder per modality, whatever its kind: the building block every fusion model shares.

``build_encoder`` builds any registered image model (a CNN of :mod:`~mmdiag.models.backbones.cnn` for 2D or 3D,
MedMamba, a ViT, ...) without its head for images and volumes, and a
:class:`~mmdiag.models.tabular.mlp.TabularMLP` for records.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import Modality, TabularModality, VolumeModality
from mmdiag.errors import ConfigError, UnknownNameError
from mmdiag.models._factory import create_model
from mmdiag.models._registry import list_models, model_options
from mmdiag.models.tabular.mlp import TabularMLP

__all__ = ["ModalityEncoder", "build_encoder", "explain_entries"]


class ModalityEncoder(nn.Module):
    """Wraps an encoder so that every modality offers ``forward`` → ``(B, F)`` and ``tokens`` → ``(B, L, F)``.

    Attributes:
        explain_layer: dotted name (under this module) of the image model's explain layer; ``None`` for records.
        explain_fmt: its layout.
    """

    def __init__(self, body: nn.Module, num_features: int, kind: str):
        super().__init__()
        self.body, self.num_features, self.kind = body, num_features, kind
        image = kind != "tabular"
        self.explain_layer = f"body.{body.explain_layer}" if image else None
        self.explain_fmt = body.explain_fmt if image else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "tabular":
            return self.body(x)
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map as a token sequence (a ViT's tokens as they are); a record is one token."""
        if self.kind == "tabular":
            return self.body(x).unsqueeze(1)
        f = self.body.forward_features(x)
        fmt = self.body.output_fmt
        if fmt == "NLC":
            return f
        return f.flatten(2).transpose(1, 2) if fmt.startswith("NC") else f.flatten(1, -2)


def build_encoder(modality: Modality, backbone: str = "small_cnn", backbone_options: dict[str, Any] | None = None,
                  tabular_hidden: tuple[int, ...] = (64, 64), tabular_dropout: float = 0.1) -> ModalityEncoder:
    """An encoder for one modality.

    Args:
        modality: the modality's spec (kind, channels, size or fields).
        backbone: for images and volumes, any registered image model (``small_cnn``, ``resnet18``,
            ``densenet121``, ``medmamba_t``, ``dinov2_vits14``...), built with ``num_classes=0``; volumes need one
            that takes ``spatial_dims`` (the CNNs) or is 3D itself.
        backbone_options: options of the backbone (checked: an unknown one is a named error).
        tabular_hidden: hidden widths of the tabular MLP.
        tabular_dropout: dropout inside the tabular MLP.
    """
    if isinstance(modality, TabularModality):
        mlp = TabularMLP(modality.width, hidden=tuple(tabular_hidden), drop_rate=tabular_dropout)
        return ModalityEncoder(mlp, mlp.num_features, "tabular")
    if backbone not in list_models(include_hidden=True, multimodal=False):
        raise UnknownNameError("backbone", backbone, list_models(multimodal=False), "mmdiag models")
    options = {**(backbone_options or {}), "num_classes": 0, "in_chans": modality.channels}
    if "spatial_dims" in model_options(backbone):
        options.setdefault("spatial_dims", 3 if isinstance(modality, VolumeModality) else 2)
    net = create_model(backbone, **options)
    if isinstance(modality, VolumeModality) and net.output_fmt not in ("NCDHW", "NDHWC"):
        raise ConfigError(f"model.options.backbone={backbone!r} reads 2D images; a volume modality needs a 3D "
                          "backbone (small_cnn, resnet18, densenet121, ... take spatial_dims=3)")
    return ModalityEncoder(net, net.num_features, modality.kind)


def explain_entries(encoders: dict[str, ModalityEncoder], prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """``explain_layers`` and ``output_fmts`` of a model whose modality ``m`` is encoded by ``encoders[m]``, a
    submodule named ``prefix + m`` (``prefix`` ends with a dot; ``""`` with one encoder named by ``prefix``)."""
    layers, fmts = {}, {}
    for m, enc in encoders.items():
        if enc.explain_layer is not None:
            layers[m] = f"{prefix}{m}.{enc.explain_layer}" if prefix.endswith(".") else f"{prefix}.{enc.explain_layer}"
            fmts[m] = enc.explain_fmt
    return layers, fmts
