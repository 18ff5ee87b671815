"""Weight initialisations shared by several backbones."""

from __future__ import annotations

from torch import nn

__all__ = ["init_vssm_weights"]


def init_vssm_weights(m: nn.Module) -> None:
    """The official VSSM initialisation (MedMamba, VMamba): Linear ~ trunc_normal(0.02) with zero bias, LayerNorm
    1 / 0; convolutions keep PyTorch's (kaiming) default. Use with ``module.apply``."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
