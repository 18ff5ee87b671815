"""Convolutional encoders for 2D images and 3D volumes: a small CNN and MONAI's ResNet / DenseNet / EfficientNet.

Every encoder maps (B, C, *spatial) to a feature map (B, F, *spatial') via :meth:`forward_map` and to a pooled vector
(B, F) via ``forward``; ``num_features`` is F. MONAI's classic medical CNNs are used as they are, minus their heads.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmdiag.errors import UnknownNameError

__all__ = ["ConvEncoder", "CONV_BACKBONES"]

CONV_BACKBONES = ("small_cnn", "resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0")


def _small_cnn(spatial_dims: int, in_chans: int, widths: tuple[int, ...]) -> tuple[nn.Module, int]:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    layers, c = [], in_chans
    for i, w in enumerate(widths):
        layers += [conv(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False), norm(w), nn.ReLU(inplace=True)]
        c = w
    return nn.Sequential(*layers), c


def _monai(name: str, spatial_dims: int, in_chans: int) -> tuple[nn.Module, int]:
    from monai.networks import nets

    if name.startswith("resnet"):
        net = getattr(nets, name)(spatial_dims=spatial_dims, n_input_channels=in_chans, feed_forward=False)
        body = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        width = net.layer4[-1].conv3.out_channels if hasattr(net.layer4[-1], "conv3") else net.layer4[-1].conv2.out_channels
        return body, width
    if name == "densenet121":
        net = nets.DenseNet121(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=1)
        return nn.Sequential(net.features, nn.ReLU(inplace=True)), net.class_layers.out.in_features
    net = nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=spatial_dims, in_channels=in_chans,
                              num_classes=1)
    body = nn.Sequential(net._conv_stem_padding, net._conv_stem, net._bn0, net._swish, *net._blocks,
                         net._conv_head_padding, net._conv_head, net._bn1, net._swish)
    return body, net._fc.in_features


class ConvEncoder(nn.Module):
    """A CNN feature extractor for images (``spatial_dims=2``) or volumes (``spatial_dims=3``).

    Args:
        backbone: ``small_cnn`` (4 conv-BN-ReLU stages, for small inputs and quick runs) or a MONAI network:
            ``resnet10/18/34/50``, ``densenet121``, ``efficientnet-b0``.
        spatial_dims: 2 or 3.
        in_chans: input channels.
        widths: stage widths of ``small_cnn``.

    Raises:
        UnknownNameError: an unknown backbone.
    """

    def __init__(self, backbone: str = "small_cnn", spatial_dims: Literal[2, 3] = 2, in_chans: int = 3,
                 widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        if backbone not in CONV_BACKBONES:
            raise UnknownNameError("convolutional backbone", backbone, CONV_BACKBONES)
        if backbone == "small_cnn":
            self.body, self.num_features = _small_cnn(spatial_dims, in_chans, tuple(widths))
        else:
            self.body, self.num_features = _monai(backbone, spatial_dims, in_chans)
        self.backbone = backbone

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_map(x).flatten(2).mean(-1)
