"""Deep VPT: learnable prompt tokens fed to every transformer block (Jia et al., ECCV 2022)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models.peft.inject import AdapterConfig, AdapterLayer, Targets, factory_kwargs, register_peft_method

__all__ = ["VPTBlock", "VptConfig"]


class VPTBlock(AdapterLayer):
    """A transformer block with its own prompt tokens (deep VPT).

    Tokens ``(B, L, C)`` start with ``num_prefix_tokens`` prefix tokens ([CLS], registers). Before the block the
    ``num_virtual_tokens`` prompts are inserted right after the prefix tokens; after the block the prompt outputs are
    removed, so the block's output has the input's length and every block sees fresh prompts.
    Prompts are initialised Xavier-uniform on their ``(num_virtual_tokens, token_dim)`` matrix.

    Args:
        base_layer: the frozen block, called as ``base_layer(tokens, *args, **kwargs)``.
        num_virtual_tokens: number of prompt tokens.
        token_dim: token width ``C``.
        num_prefix_tokens: tokens kept before the prompts.
        dropout: dropout on the prompts (training only).
    """

    def __init__(self, base_layer: nn.Module, num_virtual_tokens: int, token_dim: int, num_prefix_tokens: int,
                 dropout: float = 0.0):
        super().__init__(base_layer)
        self.num_prefix_tokens = num_prefix_tokens
        self.prompts = nn.Parameter(torch.empty(num_virtual_tokens, token_dim, **factory_kwargs(base_layer)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        bound = math.sqrt(6.0 / (num_virtual_tokens + token_dim))
        nn.init.uniform_(self.prompts, -bound, bound)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``(B, L, C) → (B, L, C)``: insert prompts after the prefix tokens, run the block, drop them again."""
        p, n = self.num_prefix_tokens, self.prompts.shape[0]
        prompts = self.dropout(self.prompts).to(x.dtype).expand(x.shape[0], -1, -1)
        out = self.base_layer(torch.cat([x[:, :p], prompts, x[:, p:]], dim=1), *args, **kwargs)
        return torch.cat([out[:, :p], out[:, p + n:]], dim=1)


@register_peft_method
class VptConfig(AdapterConfig):
    """Options of ``vpt`` (deep VPT). Defaults reproduce the paper's Table 7 count: 5 prompts in each of the
    blocks ``blocks.<i>``.

    ``token_dim`` defaults to ``model.embed_dim`` (else ``model.num_features``) and ``num_prefix_tokens`` to
    ``model.num_prefix_tokens``. Target ``"blocks.0"`` alone for shallow VPT.
    """

    method: ClassVar[str] = "vpt"

    target_modules: Targets = Field(r"blocks\.\d+", description="transformer blocks to prompt (regex or names)")
    num_virtual_tokens: int = Field(5, gt=0, description="prompt tokens per block")
    token_dim: int | None = Field(None, gt=0, description="token width (default: model.embed_dim)")
    num_prefix_tokens: int | None = Field(None, ge=0, description="prefix tokens (default: model.num_prefix_tokens)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the prompts")

    def wrap(self, model: nn.Module, name: str, module: nn.Module) -> VPTBlock:
        token_dim = self.token_dim or getattr(model, "embed_dim", None) or getattr(model, "num_features", None)
        prefix = self.num_prefix_tokens
        if prefix is None:
            prefix = getattr(model, "num_prefix_tokens", None)
        if not isinstance(token_dim, int) or not isinstance(prefix, int):
            raise ConfigError(f"peft method 'vpt' cannot read the token width (embed_dim = {token_dim!r}) or "
                              f"num_prefix_tokens = {prefix!r} from {type(model).__name__}; pass the options "
                              "token_dim and num_prefix_tokens")
        return VPTBlock(module, self.num_virtual_tokens, token_dim, prefix, self.dropout)
