"""Loading a plain (un-adapted) model's weights into the same model after PEFT injection.

Injection wraps each target as ``<name>.base_layer`` (:class:`~mmdiag.models.peft.inject.AdapterLayer`), so a
state dict saved before injection no longer matches by name. :func:`load_base_weights` maps every non-adapter tensor
of the adapted model back to its plain name and copies the plain state into it: the builder can inject adapters first
and read the pretrained file afterwards (no file reading in constructors), with the same result as loading first.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmdiag.errors import CheckpointError
from mmdiag.models.peft.inject import adapter_layers

__all__ = ["load_base_weights", "base_names"]

_SHOWN = 12


def _plain_name(key: str) -> str:
    """The name of a tensor before injection: every ``base_layer`` segment dropped (wrappers may nest)."""
    return ".".join(part for part in key.split(".") if part != "base_layer")


def base_names(model: nn.Module) -> dict[str, str]:
    """Plain (pre-injection) name → state-dict name of every tensor of ``model`` that is not an adapter's own."""
    adapter_ids = {id(p) for _, layer in adapter_layers(model) for p in layer.adapter_parameters()}
    return {_plain_name(k): k for k, v in model.state_dict(keep_vars=True).items() if id(v) not in adapter_ids}


def load_base_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> nn.Module:
    """Copy a plain model's ``state`` into the base tensors of the adapted ``model``, strictly; adapters keep theirs.

    Loading base weights into an adapted model equals loading them first and injecting after (adapters start at
    their initialisation either way). A model without adapters is loaded like ``load_state_dict(strict=True)``.

    Args:
        model: A model after :func:`~mmdiag.models.peft.apply_peft` (or any model).
        state: The un-adapted model's state dict (official layouts converted already).
        source: What ``state`` is (a file name), for the error message.

    Returns:
        ``model``.

    Raises:
        CheckpointError: a base tensor that ``state`` lacks, a key of ``state`` that the model does not have (an
            adapter key included: adapter tensors load with :func:`~mmdiag.models.peft.load_adapter_state_dict`), or
            a shape that differs; the keys are listed.
    """
    names = base_names(model)
    own = model.state_dict()
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names))
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[names[k]].shape)}"
                   for k in set(names) & set(state) if own[names[k]].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{source} does not fit the base weights of {type(model).__name__}:"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                more = f" ... (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else ""
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN])}{more}")
        raise CheckpointError("\n  ".join(parts))
    with torch.no_grad():
        for plain, key in names.items():
            own[key].copy_(state[plain])
    return model
