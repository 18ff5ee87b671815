"""Visual State Space block (VSS; VMamba, Liu et al. 2024): ``x + DropPath(SS2D(norm(x)))``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from mmdiag.models.layers.drop import DropPath
from mmdiag.models.layers.ss2d import SS2D

__all__ = ["VSSBlock"]


class VSSBlock(nn.Module):
    """VSS block, token-mixer part: norm → SS2D → drop path → residual, on channels-last maps ``(B, H, W, dim)``.

    Child names ``norm`` / ``op`` are VMamba v2's, so its checkpoints map onto this block one to one (the MLP half of
    a VMamba v2 block, ``norm2`` / ``mlp``, is left to the model that needs it). MedMamba's "SSM only" ablation
    (Table 7, Base Model-I) is a stack of these blocks.

    Args:
        dim: Channels.
        drop_path: Stochastic-depth rate of the SS2D branch.
        norm_layer: Norm constructor applied before SS2D.
        **ss2d_kwargs: Passed to :class:`SS2D` (``d_state``, ``expand``, ``gated``, ``scan_impl``, ...).
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        **ss2d_kwargs: Any,
    ):
        super().__init__()
        self.norm = norm_layer(dim)
        self.op = SS2D(d_model=dim, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.op(self.norm(x)))
