"""``create_model``: the one way every model in mmdiag is built (``list_models`` lists them)."""

from __future__ import annotations

import os
from typing import Any

import torch

from mmdiag.models._builder import build_model
from mmdiag.models._registry import list_models, register_model, register_multimodal

__all__ = ["create_model", "list_models", "register_model", "register_multimodal"]


def create_model(name: str, *, checkpoint: str | os.PathLike | None = None, peft: str | None = None,
                 peft_options: dict[str, Any] | None = None, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model.

    Image models take ``num_classes`` / ``in_chans``; multimodal models take ``spec`` (a
    :class:`~mmdiag.data.schema.DatasetSpec`) or ``num_classes`` (then a single-task spec for the model's own
    default modalities is used when the model defines one).

    Args:
        name: registered model name (``mmdiag models`` lists them).
        checkpoint: optional local weights file (safetensors or a PyTorch state dict), loaded strictly; official
            layouts are converted by the family's ``checkpoint_filter_fn``.
        peft: optional parameter-efficient fine-tuning method applied after loading (e.g. ``"lora"``, ``"mor"``).
        peft_options: keyword arguments of that method (PEFT names: ``r``, ``alpha``, ``target_modules``...).
        **kwargs: the model's own options; ``None`` values are dropped so unset options never override defaults.

    Raises:
        UnknownNameError: ``name`` is not registered (close matches are offered).
        ConfigError: an option the model does not take (named, with close matches).
        CheckpointError: the checkpoint does not fit.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return build_model(name, kwargs, checkpoint=checkpoint, peft=peft, peft_options=peft_options)
