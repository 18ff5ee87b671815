"""LoRA: low-rank adaptation of linear layers (Hu et al., ICLR 2022), and the low-rank expert the mixtures reuse."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models.peft.inject import (
    AdapterConfig,
    AdapterLayer,
    adapter_layers,
    factory_kwargs,
    register_peft_method,
    replace_module,
    require_linear,
)

__all__ = ["LoRA", "LoRALinear", "LoraConfig", "merge_lora"]


class LoRA(nn.Module):
    """Low-rank update ``(alpha / r) · B A x`` of a linear map ``in_features → out_features``.

    ``A`` gets PyTorch's default Linear init (Kaiming-uniform, a = √5) and ``B`` starts at zero, so the update is
    exactly zero at initialisation.

    Args:
        in_features: input width of the adapted layer.
        out_features: output width of the adapted layer.
        r: rank.
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the input of ``A`` (training only).
        device: where to create the weights (the adapted layer's device, ``meta`` included).
        dtype: their dtype.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``A`` Kaiming-uniform (a = √5), ``B`` zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) → (..., out_features)``."""
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``(alpha / r) · B A`` of shape ``(out_features, in_features)``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


class LoRALinear(AdapterLayer):
    """An ``nn.Linear`` plus one :class:`LoRA` update: ``y = W x + b + (alpha / r) · B A x``.

    Args:
        base_layer: the frozen linear layer.
        r: rank.
        alpha: scaling numerator.
        dropout: dropout on the LoRA input.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base_layer)
        self.lora = LoRA(base_layer.in_features, base_layer.out_features, r, alpha, dropout,
                         **factory_kwargs(base_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora(x)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Fold the update into the base weight and return the base layer (the wrapper is then unused)."""
        weight = self.base_layer.weight
        weight.add_(self.lora.delta_weight().to(weight.dtype))
        return self.base_layer


@register_peft_method
class LoraConfig(AdapterConfig):
    """Options of ``lora``. Defaults reproduce the paper's Table 7 count (rank 4 on ``mlp.fc1``/``mlp.fc2``).

    ``alpha`` = 8 (scaling 2) matches MoR's per-expert scaling; the paper does not state LoRA's alpha.
    """

    method: ClassVar[str] = "lora"

    r: int = Field(4, gt=0, description="rank")
    alpha: float = Field(8.0, gt=0, description="scaling numerator (update scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")

    def wrap(self, model: nn.Module, name: str, module: nn.Module) -> LoRALinear:
        return LoRALinear(require_linear(self.method, name, module), self.r, self.alpha, self.dropout)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRALinear` into its base weight and unwrap it, in place, for inference.

    The merged model gives the same outputs. MoR and LoRAMoE layers route per token and cannot be merged.

    Raises:
        ConfigError: ``model`` has no LoRA layer.
    """
    layers = [(name, layer) for name, layer in adapter_layers(model) if isinstance(layer, LoRALinear)]
    if not layers:
        method = getattr(getattr(model, "peft_config", None), "method", None)
        raise ConfigError(f"{type(model).__name__} has no LoRA layer to merge (peft method {method!r}); only 'lora' "
                          "can be merged, MoR and LoRAMoE route per token")
    for name, layer in layers:
        replace_module(model, name, layer.merge())
    return model
