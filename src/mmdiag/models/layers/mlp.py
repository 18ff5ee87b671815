"""Token MLPs and the activations the vision foundation models use."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmdiag.errors import ConfigError

__all__ = ["Mlp", "QuickGELU", "get_act_layer"]


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU used by OpenAI CLIP: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}  # gelu = exact (erf)


def get_act_layer(name: Literal["gelu", "quick_gelu"]) -> type[nn.Module]:
    """Activation class from its name.

    Raises:
        ConfigError: unknown ``name`` (the valid names are listed).
    """
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(sorted(_ACTIVATIONS))}") from None


class Mlp(nn.Module):
    """Two-layer token MLP ``fc2(drop(act(fc1(x))))``; ``fc1``/``fc2`` are ``nn.Linear`` (PEFT wraps them by name).

    Args:
        in_features: input width.
        hidden_features: hidden width (default ``in_features``).
        out_features: output width (default ``in_features``).
        act_layer: activation class.
        bias: bias on both linear layers.
        drop: dropout after the activation and after ``fc2``.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, bias: bool = True, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
