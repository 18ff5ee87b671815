"""One encoder per modality, whatever its kind: the building block every fusion model shares.

``build_encoder`` picks a :class:`~mmdiag.models.backbones.conv_encoders.ConvEncoder` (small CNN or MONAI network)
for images and volumes, a :class:`~mmdiag.models.tabular.mlp.TabularMLP` for records, or any registered image
classifier (``medmamba_t``, ``dinov2_vits14``, ...) used as a backbone without its head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import ImageModality, Modality, TabularModality
from mmdiag.errors import UnknownNameError
from mmdiag.models.backbones.conv_encoders import CONV_BACKBONES, ConvEncoder
from mmdiag.models.tabular.mlp import TabularMLP

__all__ = ["ModalityEncoder", "build_encoder"]


class ModalityEncoder(nn.Module):
    """Wraps an encoder so that every modality offers ``forward`` → (B, F) and ``tokens`` → (B, L, F)."""

    def __init__(self, body: nn.Module, num_features: int, kind: str):
        super().__init__()
        self.body, self.num_features, self.kind = body, num_features, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.body, (ConvEncoder, TabularMLP)):
            return self.body(x)
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial feature maps as token sequences; records and foreign backbones give one token."""
        if isinstance(self.body, ConvEncoder):
            return self.body.forward_map(x).flatten(2).transpose(1, 2)
        return self.forward(x).unsqueeze(1)


def build_encoder(modality: Modality, backbone: str = "small_cnn", backbone_options: dict[str, Any] | None = None,
                  tabular_hidden: tuple[int, ...] = (64, 64), tabular_dropout: float = 0.1) -> ModalityEncoder:
    """An encoder for one modality.

    Args:
        modality: the modality's spec (kind, channels, size or fields).
        backbone: for images/volumes, a convolutional backbone (``small_cnn``, ``resnet18``, ``densenet121``, ...)
            or, for 2D images, any registered model name (built with ``num_classes=0``).
        tabular_hidden: hidden widths of the tabular MLP.
        tabular_dropout: dropout inside the tabular MLP.
        backbone_options: options of the backbone (checked: an unknown one is a named error).
    """
    backbone_kwargs = dict(backbone_options or {})
    if isinstance(modality, TabularModality):
        mlp = TabularMLP(modality.width, hidden=tuple(tabular_hidden), drop_rate=tabular_dropout)
        return ModalityEncoder(mlp, mlp.num_features, "tabular")
    dims = 2 if isinstance(modality, ImageModality) else 3
    if backbone in CONV_BACKBONES:
        enc = ConvEncoder(backbone, spatial_dims=dims, in_chans=modality.channels, **backbone_kwargs)
        return ModalityEncoder(enc, enc.num_features, modality.kind)
    from mmdiag.models._factory import create_model, list_models

    if backbone not in list_models(include_hidden=True):
        raise UnknownNameError("backbone", backbone, [*CONV_BACKBONES, *list_models()], "mmdiag models")
    net = create_model(backbone, num_classes=0, in_chans=modality.channels, **backbone_kwargs)
    return ModalityEncoder(net, net.num_features, modality.kind)
