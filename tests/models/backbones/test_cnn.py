"""The registered CNNs: 2D and 3D, multi-scale maps, used as encoders that keep their spatial tokens."""

import pytest
import torch

from mmdiag import create_model
from mmdiag.data.schema import ImageModality, VolumeModality
from mmdiag.errors import ConfigError
from mmdiag.models.backbones.encoders import build_encoder


@pytest.mark.parametrize("name", ["small_cnn", "resnet10", "densenet121"])
@pytest.mark.parametrize("dims", [2, 3])
def test_cnn_maps_levels_and_head(name, dims):
    torch.manual_seed(0)
    net = create_model(name, num_classes=3, in_chans=2, spatial_dims=dims).eval()
    x = torch.rand(2, 2, *([32] * dims))
    levels = net.forward_intermediates(x)
    sizes = [lv.shape[2] for lv in levels]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes) >= 3  # one map per resolution
    torch.testing.assert_close(levels[-1], net.forward_features(x))
    assert net.forward_features(x).shape[1] == net.num_features and net(x).shape == (2, 3)
    assert net.output_fmt == ("NCHW" if dims == 2 else "NCDHW")


def test_encoder_tokens_keep_the_spatial_map():
    enc = build_encoder(VolumeModality(channels=1, size=(16, 32, 32)), "small_cnn")
    x = torch.rand(2, 1, 16, 32, 32)
    assert enc.tokens(x).shape == (2, 2 * 4 * 4, 64)
    torch.testing.assert_close(enc(x), enc.tokens(x).mean(1))
    mamba = build_encoder(ImageModality(size=(64, 64)), "tiny_medmamba")
    assert mamba.tokens(torch.rand(1, 3, 64, 64)).shape[1] == 2 * 2  # the H/32 x W/32 map, not one token


def test_volume_needs_a_3d_backbone():
    with pytest.raises(ConfigError, match="backbone='tiny_medmamba' reads 2D images"):
        build_encoder(VolumeModality(channels=1, size=(16, 32, 32)), "tiny_medmamba")
    with pytest.raises(ConfigError, match="takes no 'backbone' option"):
        create_model("resnet18", backbone="resnet50")
