"""BitFit: train only the bias terms (Ben Zaken et al., ACL 2022)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from torch import nn

from mmdiag.models.peft.inject import PeftConfig, register_peft_method

__all__ = ["BitFitConfig", "bias_parameters"]


def bias_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The ``bias`` parameter of every module that has one (linear, conv and normalisation layers alike)."""
    for module in model.modules():
        bias = dict(module.named_parameters(recurse=False)).get("bias")
        if isinstance(bias, nn.Parameter):
            yield bias


@register_peft_method
class BitFitConfig(PeftConfig):
    """Options of ``bitfit``: every bias trains, LayerNorm biases included, plus the head.

    This reproduces the paper's Table 7 count on ViT-B (12 × 8,448 block biases + the two outer norms' biases).
    """

    method: ClassVar[str] = "bitfit"

    def adapter_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        yield from bias_parameters(model)
