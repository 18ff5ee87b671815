"""Patch embedding for images and volumes: the layouts agree with each other and with a plain convolution."""

import pytest
import torch

from mmdiag.models.layers.patch_embed import PatchEmbed


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
