"""LoRAMoE: a per-token softmax router over several LoRA experts on one linear layer (Dou et al., ACL 2024)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models.peft.inject import AdapterConfig, AdapterLayer, factory_kwargs, register_peft_method, require_linear
from mmdiag.models.peft.lora import LoRA

__all__ = ["LoRAMoE", "LoRAMoEConfig"]


class LoRAMoE(AdapterLayer):
    """Mixture of LoRA experts: ``y = W x + b + Σ_k w_k(x) · (alpha_k / r_k) · B_k A_k x``.

    The router is ``Linear(in_features → num_outputs)`` with bias followed by a softmax, evaluated for every token
    separately (no pooling). With ``bypass`` the router has one extra output, index 0, that carries no expert: its
    weight is dropped, so the experts' weights sum to ``1 − w_0`` (MoR's relaxed router, :class:`~.mor.MoR`).
    Experts start with ``B = 0``, so the layer equals its base at initialisation; the router keeps PyTorch's default
    Linear init. No load-balancing loss is added.

    Args:
        base_layer: the frozen linear layer.
        ranks: one rank per expert.
        alphas: one scaling numerator per expert.
        dropout: dropout on the experts' input (the router sees the raw input).
        bypass: add the router output that carries no expert.

    Raises:
        ConfigError: ``ranks`` and ``alphas`` differ in length or are empty.
    """

    def __init__(self, base_layer: nn.Linear, ranks: Sequence[int], alphas: Sequence[float], dropout: float = 0.0,
                 bypass: bool = False):
        super().__init__(base_layer)
        if not ranks or len(ranks) != len(alphas):
            raise ConfigError(f"{type(self).__name__} needs one alpha per rank, got ranks={list(ranks)} and "
                              f"alphas={list(alphas)}")
        kw = factory_kwargs(base_layer)
        self.bypass = bypass
        self.experts = nn.ModuleList(
            LoRA(base_layer.in_features, base_layer.out_features, r, a, dropout, **kw) for r, a in zip(ranks, alphas))
        self.router = nn.Linear(base_layer.in_features, len(ranks) + int(bypass), **kw)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax router output per token, ``(..., num_outputs)``; with ``bypass`` column 0 is the bypass."""
        return self.router(x).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.routing_weights(x)[..., int(self.bypass):]
        out = self.base_layer(x)
        for k, expert in enumerate(self.experts):
            out = out + weights[..., k:k + 1] * expert(x)
        return out


@register_peft_method
class LoRAMoEConfig(AdapterConfig):
    """Options of ``loramoe``. Defaults reproduce the paper's Table 7 count: 3 rank-4 experts and a 3-way router
    on ``mlp.fc1``/``mlp.fc2``.
    """

    method: ClassVar[str] = "loramoe"

    r: int = Field(4, gt=0, description="rank of every expert")
    alpha: float = Field(8.0, gt=0, description="scaling numerator of every expert (update scaled by alpha / r)")
    num_experts: int = Field(3, gt=0, description="number of LoRA experts")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the experts' input")

    def wrap(self, model: nn.Module, name: str, module: nn.Module) -> LoRAMoE:
        return LoRAMoE(require_linear(self.method, name, module), [self.r] * self.num_experts,
                       [self.alpha] * self.num_experts, self.dropout)
