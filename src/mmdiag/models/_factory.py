"""``create_model`` / ``list_models``: the one way every model in mmdiag is built."""

from __future__ import annotations

import os
from typing import Any

import torch

from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.registry import MODELS

__all__ = ["create_model", "list_models", "register_model"]

register_model = MODELS.register


def list_models(pattern: str = "*", include_hidden: bool = False) -> list[str]:
    """Names of registered models matching a shell pattern (``tiny_*`` test variants hidden by default)."""
    import mmdiag.models._families  # noqa: F401

    return MODELS.names(pattern, include_hidden=include_hidden)


def create_model(name: str, *, checkpoint: str | os.PathLike | None = None, peft: str | None = None,
                 peft_options: dict[str, Any] | None = None, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model.

    Args:
        name: registered model name (``mmdiag models`` lists them).
        checkpoint: optional local weights file (safetensors or a PyTorch state dict), loaded strictly; official
            layouts are converted by the family's ``checkpoint_filter_fn``.
        peft: optional parameter-efficient fine-tuning method applied after loading (e.g. ``"lora"``, ``"mor"``).
        peft_options: keyword arguments of that method (PEFT names: ``r``, ``alpha``, ``target_modules``...).
        **kwargs: the model's own options; ``None`` values are dropped so unset options never override defaults.

    Raises:
        UnknownNameError: ``name`` is not registered (close matches are offered).
        CheckpointError: the checkpoint does not fit.
    """
    import mmdiag.models._families  # noqa: F401  (registers every family)

    fn = MODELS.get(name)
    model = fn(**{k: v for k, v in kwargs.items() if v is not None})
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if peft is not None:
        from mmdiag.models.peft import apply_peft

        model = apply_peft(model, peft, **(peft_options or {}))
    return model
