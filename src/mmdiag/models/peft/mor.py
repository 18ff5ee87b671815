"""MoR: Mixture of Low-varied-Ranks Adaptation (EI paper, §3.4, Eq. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field, model_validator
from torch import nn

from mmdiag.models.peft.inject import AdapterConfig, register_peft_method, require_linear
from mmdiag.models.peft.loramoe import LoRAMoE

__all__ = ["MoR", "MoRConfig", "MoRNoBypassConfig"]


class MoR(LoRAMoE):
    """Mixture of Low-varied-Ranks Adaptation (EI §3.4, Eq. 4): LoRAs of ranks 2, 4, 8 and a relaxed router.

    ``[w0, w1, w2, w3] = softmax(Router(h))`` per token; ``h' = W h + Σ_k w_k B_k A_k h``. The bypass weight ``w0``
    multiplies no expert, so a router that puts all its mass on it leaves the layer at ``W h``.

    Deviation: each expert is scaled by ``alpha_k / r_k`` with ``alpha = (4, 8, 16)`` (scaling 2), the router is a
    Linear with bias, and ``B`` starts at zero, as in the authors' code; Eq. 4 shows no scaling or init.

    Args:
        base_layer: the frozen linear layer.
        ranks: one rank per LoRA.
        alphas: one scaling numerator per LoRA.
        dropout: dropout on the LoRAs' input (the authors use none).
        bypass: keep the bypass router output (``False`` gives MoR without bypass, a 3-way router).
    """

    def __init__(self, base_layer: nn.Linear, ranks: Sequence[int] = (2, 4, 8),
                 alphas: Sequence[float] = (4.0, 8.0, 16.0), dropout: float = 0.0, bypass: bool = True):
        super().__init__(base_layer, ranks, alphas, dropout, bypass)


@register_peft_method
class MoRConfig(AdapterConfig):
    """Options of ``mor``. Defaults are the authors' configuration (ranks 2/4/8, alphas 4/8/16, ``mlp.fc1`` and
    ``mlp.fc2`` of every block), which reproduces the paper's Table 7 count.
    """

    method: ClassVar[str] = "mor"
    bypass: ClassVar[bool] = True

    r: tuple[int, ...] = Field((2, 4, 8), min_length=1, description="one rank per LoRA")
    alpha: tuple[float, ...] = Field((4.0, 8.0, 16.0), min_length=1, description="one scaling numerator per LoRA")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRAs' input")

    @model_validator(mode="after")
    def _check_lengths(self) -> MoRConfig:
        if len(self.r) != len(self.alpha):
            raise ValueError(f"'alpha' = {list(self.alpha)} must give one value per rank in 'r' = {list(self.r)}")
        if min(self.r) <= 0 or min(self.alpha) <= 0:
            raise ValueError(f"'r' = {list(self.r)} and 'alpha' = {list(self.alpha)} must be positive")
        return self

    def wrap(self, model: nn.Module, name: str, module: nn.Module) -> MoR:
        return MoR(require_linear(self.method, name, module), self.r, self.alpha, self.dropout, self.bypass)


@register_peft_method
class MoRNoBypassConfig(MoRConfig):
    """Options of ``mor_nobypass``: MoR whose router has one output per LoRA (paper Table 7, "MoR w/o bypass")."""

    method: ClassVar[str] = "mor_nobypass"
    bypass: ClassVar[bool] = False
