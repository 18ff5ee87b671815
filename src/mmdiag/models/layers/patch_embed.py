"""Patch embedding (non-overlapping conv stem) and Swin-style 2x2 patch merging for hierarchical backbones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

__all__ = ["PatchEmbed", "PatchMerging"]

OutputFmt = Literal["NHWC", "NCHW", "NDHWC", "NCDHW", "NLC"]
_FORMATS = {2: ("NHWC", "NCHW", "NLC"), 3: ("NDHWC", "NCDHW", "NLC")}


class PatchEmbed(nn.Module):
    """Patch embedding: a ``patch_size``-strided convolution, then an optional norm over channels.

    The norm (LayerNorm by default in MedMamba/VMamba/Swin) always acts on the channel axis; ``output_fmt`` only
    chooses the returned layout. Parameter names ``proj`` / ``norm`` follow timm, Swin and MedMamba's checkpoints.

    Args:
        patch_size: Side of the square patches (kernel size and stride).
        in_chans: Input channels.
        embed_dim: Output channels.
        norm_layer: Channel norm constructor (called with ``embed_dim``), or None for no norm.
        bias: Convolution bias.
        output_fmt: ``"NHWC"`` (channels-last map), ``"NCHW"``, or ``"NLC"`` (row-major tokens); for volumes
            ``"NDHWC"``, ``"NCDHW"`` or ``"NLC"``.
        spatial_dims: 2 (images ``(B, C, H, W)``) or 3 (volumes ``(B, C, D, H, W)``, cubic patches).
    """

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Callable[[int], nn.Module] | None = nn.LayerNorm,
        bias: bool = True,
        output_fmt: OutputFmt = "NHWC",
        spatial_dims: Literal[2, 3] = 2,
    ):
        super().__init__()
        if output_fmt not in _FORMATS.get(spatial_dims, ()):
            raise ValueError(f"PatchEmbed: spatial_dims={spatial_dims} takes output_fmt in "
                             f"{_FORMATS.get(spatial_dims, _FORMATS[2])}, got {output_fmt!r}")
        self.patch_size, self.spatial_dims = patch_size, spatial_dims
        self.output_fmt = output_fmt
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` ``(B, in_chans, *S)`` (``S`` = H, W or D, H, W); every side must be a multiple of
        ``patch_size``.

        Raises:
            ValueError: ``x`` has the wrong rank, or a side is not divisible by ``patch_size``.
        """
        kind = "an image batch (B, C, H, W)" if self.spatial_dims == 2 else "a volume batch (B, C, D, H, W)"
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"PatchEmbed: expected {kind}, got shape {tuple(x.shape)}")
        sides = tuple(x.shape[2:])
        if any(side % self.patch_size for side in sides):
            raise ValueError(
                f"PatchEmbed: input size {'x'.join(map(str, sides))} is not divisible by the patch size "
                f"{self.patch_size}; resize or pad the input to a multiple of {self.patch_size}"
            )
        x = self.norm(self.proj(x).movedim(1, -1))
        if self.output_fmt.startswith("NC"):
            return x.movedim(-1, 1)
        if self.output_fmt == "NLC":
            return x.flatten(1, -2)
        return x


class PatchMerging(nn.Module):
    """2x2 patch merging (Swin / VMamba ``PatchMerging2D``): halve H and W, concat 4 neighbours, norm, reduce.

    Input and output are channels-last ``(B, H, W, C) -> (B, H/2, W/2, out_dim)``. The neighbours are concatenated
    in the order (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col); an odd H or W
    drops the last row/column, as the official MedMamba/VMamba code does.

    Args:
        dim: Input channels C.
        out_dim: Output channels; default ``2 * dim``.
        norm_layer: Norm over the ``4 * dim`` concatenated channels.
    """

    output_fmt = "NHWC"

    def __init__(self, dim: int, out_dim: int | None = None, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        # Registration order (reduction before norm) reproduces the official state_dict order.
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        h, w = H // 2, W // 2
        if (H, W) != (2 * h, 2 * w):
            x = x[:, : 2 * h, : 2 * w]
        # (B, h, row parity, w, col parity, C) -> (B, h, w, col parity, row parity, C): neighbour 2 * col + row, the
        # order above, in one copy (four strided slices cost a zero-filled full-size gradient each in backward).
        x = x.reshape(B, h, 2, w, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, h, w, 4 * C)
        return self.reduction(self.norm(x))
