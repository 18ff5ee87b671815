"""The 3D pyramid: module parameter counts of the notes, attention semantics, BFPU modes, level shapes."""

import pytest
import torch

from mmdiag.errors import ConfigError
from mmdiag.models.backbones.e3dmsca import BFPU, CAB3D, DCFB, SAB3D, UCB, Pyramid3D, channel_shuffle_3d


def _n(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("module,expected,notes", [
    (lambda: CAB3D(1024), 131072, 131e3), (lambda: CAB3D(512), 32768, 33e3), (lambda: CAB3D(256), 8192, 8e3),
    (lambda: DCFB(1024), 4526080, 4.53e6), (lambda: DCFB(512), 1214464, 1.21e6), (lambda: DCFB(256), 345088, 0.35e6),
    (lambda: UCB(1024, 512), 554496, 0.55e6), (lambda: UCB(512, 256), 146176, 0.15e6), (lambda: SAB3D(), 686, 686),
    (lambda: BFPU(512), 14398980, 14.4e6), (lambda: BFPU(1024), 57371652, 57.4e6),
])
def test_parameter_counts_match_the_notes(module, expected, notes):
    with torch.device("meta"):
        n = _n(module())
    assert n == expected
    assert abs(n - notes) / notes < 0.03  # the notes give 2-3 significant digits


def test_channel_attention_is_a_gate_in_0_1_and_equal_for_permuted_positions():
    torch.manual_seed(0)
    cab = CAB3D(32)
    x = torch.randn(2, 32, 2, 4, 4)
    a = cab(x)
    assert a.shape == (2, 32, 1, 1, 1) and ((a > 0) & (a < 1)).all()
    perm = x.flatten(2)[:, :, torch.randperm(32)].reshape(x.shape)
    torch.testing.assert_close(cab(perm), a)


def test_spatial_attention_reads_channel_mean_and_max():
    sab = SAB3D()
    with torch.no_grad():
        sab.conv.weight.zero_()
        sab.conv.weight[0, 1, 3, 3, 3] = 1.0  # centre tap on the max map
    x = torch.randn(1, 5, 3, 4, 4)
    torch.testing.assert_close(sab(x), torch.sigmoid(x.amax(1, keepdim=True)))


def test_channel_shuffle_interleaves_pairs():
    x = torch.arange(8.0).view(1, 8, 1, 1, 1)
    assert channel_shuffle_3d(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("mode", ["gated", "concat"])
def test_pyramid_levels_and_output(mode):
    torch.manual_seed(0)
    pyr = Pyramid3D((8, 16, 32), level_drop=0.0, bfpu_mode=mode).eval()
    feats = [torch.randn(2, 8, 4, 8, 8), torch.randn(2, 16, 2, 4, 4), torch.randn(2, 32, 1, 2, 2)]
    levels = pyr.top_down(feats)
    assert [tuple(lv.shape) for lv in levels] == [tuple(f.shape) for f in feats]
    out = pyr(feats)
    assert out.shape == (2, 32, 1, 2, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert pyr.sab.conv.weight.grad is not None  # one SAB serves every level


def test_ucb_lands_on_an_odd_depth():
    up = UCB(16, 8)(torch.randn(1, 16, 2, 4, 4), (3, 8, 8))
    assert up.shape == (1, 8, 3, 8, 8)


def test_bad_bfpu_mode_is_named():
    with pytest.raises(ConfigError, match="mode='sum'"):
        BFPU(16, mode="sum")
