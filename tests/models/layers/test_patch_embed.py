"""Patch embedding for images and volumes: the layouts agree with each other and with a plain convolution."""

import pytest
import torch

from mmdiag.models.layers.patch_embed import PatchEmbed, PatchMerging


@pytest.mark.parametrize("dims,fmts", [(2, ("NHWC", "NCHW", "NLC")), (3, ("NDHWC", "NCDHW", "NLC"))])
def test_layouts_and_conv(dims, fmts):
    torch.manual_seed(0)
    x = torch.rand(2, 3, *([8] * dims))
    last, first, tokens = (PatchEmbed(4, 3, 16, output_fmt=f, spatial_dims=dims) for f in fmts)
    first.load_state_dict(last.state_dict())
    tokens.load_state_dict(last.state_dict())
    a = last(x)
    assert a.shape == (2, *([2] * dims), 16)
    torch.testing.assert_close(first(x), a.movedim(-1, 1))
    torch.testing.assert_close(tokens(x), a.flatten(1, -2))
    conv = last.proj(x).movedim(1, -1)
    torch.testing.assert_close(a, last.norm(conv))


def test_errors_name_the_shape():
    with pytest.raises(ValueError, match="volume batch"):
        PatchEmbed(4, 3, 16, output_fmt="NDHWC", spatial_dims=3)(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="takes output_fmt"):
        PatchEmbed(4, 3, 16, output_fmt="NHWC", spatial_dims=3)
    with pytest.raises(ValueError, match="8x6 is not divisible"):
        PatchEmbed(4, 3, 16)(torch.rand(1, 3, 8, 6))


@pytest.mark.parametrize("hw", [(6, 4), (7, 5)])
def test_patch_merging_neighbour_order_and_gradient(hw):
    """Neighbours (even row, even col), (odd, even), (even, odd), (odd, odd) along channels, as Swin/VMamba slice
    them; an odd H or W drops the last row/column; the input gradient matches the slicing form's."""
    torch.manual_seed(0)
    m = PatchMerging(3, norm_layer=torch.nn.Identity)
    x = torch.randn(2, *hw, 3, requires_grad=True)
    H, W = hw[0] // 2 * 2, hw[1] // 2 * 2
    xs = x[:, :H, :W]
    ref = torch.cat([xs[:, 0::2, 0::2], xs[:, 1::2, 0::2], xs[:, 0::2, 1::2], xs[:, 1::2, 1::2]], dim=-1)
    out, expected = m(x), m.reduction(ref)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expected, x, g)[0])
