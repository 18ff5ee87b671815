"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"), per sample."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DropPath", "drop_path"]


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob`` (identity in eval mode).

    Args:
        x: Branch output ``(B, ...)``; the mask is drawn per sample along dim 0.
        drop_prob: Probability of dropping a sample's branch.
        training: Drop only when True.
        scale_by_keep: Divide kept samples by ``1 - drop_prob`` so the expectation is unchanged.

    Returns:
        ``x`` with dropped samples zeroed (and kept ones rescaled).
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if scale_by_keep and keep > 0.0:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path`.

    Args:
        drop_prob: Probability of dropping a sample's residual branch during training.
        scale_by_keep: Rescale kept samples by ``1 / (1 - drop_prob)``.

    Raises:
        ValueError: ``drop_prob`` is outside ``[0, 1]``.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"

