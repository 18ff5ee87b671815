"""Convolutional image / volume models: a small CNN and MONAI's classic medical CNNs (ResNet, DenseNet,
EfficientNet), registered by name for 2D (``spatial_dims=2``) and 3D (``spatial_dims=3``) inputs.

They follow the image side of the model contract (:mod:`mmdiag.models.contract`): ``forward_features`` gives the
last feature map ``(B, F, *S)``, ``forward_head`` pools it and applies the head (none with ``num_classes=0``, the
encoder use), ``forward_intermediates`` the last map of every resolution level (for feature pyramids).
MONAI's networks are used as they are, minus their heads (MONAI builds them; nothing is re-implemented).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models._registry import register_model

__all__ = ["ConvNet", "CNN_NAMES"]

CNN_NAMES = ("small_cnn", "resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0")


def _small_cnn(spatial_dims: int, in_chans: int, widths: Sequence[int]) -> tuple[nn.Sequential, int]:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    layers, c = [], in_chans
    for i, w in enumerate(widths):
        layers += [conv(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), norm(w), nn.ReLU(inplace=True)]
        c = w
    return nn.Sequential(*layers), c


def _monai(name: str, spatial_dims: int, in_chans: int) -> tuple[nn.Sequential, int]:
    from monai.networks import nets

    if name.startswith("resnet"):
        net = getattr(nets, name)(spatial_dims=spatial_dims, n_input_channels=in_chans, feed_forward=False)
        body = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        last = net.layer4[-1]
        return body, (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
    if name == "densenet121":
        net = nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=1)
        return nn.Sequential(net.features, nn.ReLU(inplace=True)), net.class_layers.out.in_features
    net = nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=spatial_dims, in_channels=in_chans,
                              num_classes=1)
    body = nn.Sequential(net._conv_stem_padding, net._conv_stem, net._bn0, net._swish, *net._blocks,
                         net._conv_head_padding, net._conv_head, net._bn1, net._swish)
    return body, net._fc.in_features


class ConvNet(nn.Module):
    """A CNN classifier / feature extractor for images (``spatial_dims=2``) or volumes (``spatial_dims=3``).

    Args:
        backbone: one of :data:`CNN_NAMES` (``small_cnn``: 4 conv-BN-ReLU stages, for small inputs and quick runs).
        spatial_dims: 2 or 3.
        in_chans: input channels.
        num_classes: classes of the linear head on the pooled map; 0 = no head (an encoder).
        widths: stage widths of ``small_cnn``.
    """

    classifier_name = "head"
    explain_layer = "body"

    def __init__(self, backbone: str = "small_cnn", spatial_dims: Literal[2, 3] = 2, in_chans: int = 3,
                 num_classes: int = 0, widths: Sequence[int] = (16, 32, 64, 64)):
        super().__init__()
        if backbone == "small_cnn":
            self.body, self.num_features = _small_cnn(spatial_dims, in_chans, widths)
        else:
            self.body, self.num_features = _monai(backbone, spatial_dims, in_chans)
        self.backbone, self.num_classes = backbone, num_classes
        self.output_fmt = self.explain_fmt = "NCHW" if spatial_dims == 2 else "NCDHW"
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _units(self) -> list[nn.Module]:
        """The body's modules in order, a nested feature block (DenseNet's) opened."""
        first = self.body[0]
        return [*first.children(), *self.body[1:]] if self.backbone == "densenet121" else list(self.body)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map of every resolution level the body passes through, finest first (channels first)."""
        out: list[torch.Tensor] = []
        for i, unit in enumerate(self._units()):
            y = unit(x)
            if i and y.shape[2:] != x.shape[2:]:
                out.append(x)
            x = y
        return [*out, x]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``(B, num_features, *S)``."""
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then the head (skipped with ``pre_logits``)."""
        x = x.flatten(2).mean(-1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _register(name: str) -> None:
    def build(**kwargs: Any) -> ConvNet:
        if "backbone" in kwargs:
            raise ConfigError(f"model {name!r} is the backbone; it takes no 'backbone' option")
        return ConvNet(name, **kwargs)

    build.__doc__ = f"``{name}`` for 2D images or 3D volumes (``spatial_dims``); MONAI builds it." if name != \
        "small_cnn" else "A 4-stage conv-BN-ReLU CNN for small inputs and quick runs, 2D or 3D (``spatial_dims``)."
    build.__qualname__ = build.__name__ = name.replace("-", "_")
    register_model(build, options=ConvNet, name=name)


for _name in CNN_NAMES:
    _register(_name)
