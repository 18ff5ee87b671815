"""Adapter-only state dicts and run-level adapter checkpoints (every PEFT-adapted part of a model, e.g. EI's VFMs)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.models.peft.model import peft_config_of, trained_tensors

__all__ = ["adapter_state_dict", "load_adapter_state_dict", "adapter_checkpoint", "load_adapter_checkpoint"]


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter and head tensors of ``model`` keyed by their state-dict names (found by visiting, not by prefix)."""
    wanted = {id(t) for t in trained_tensors(model, peft_config_of(model))}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) in wanted}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter-only checkpoint: the method's parameters plus ``modules_to_save`` (for ``fpt``: everything).

    Keys are the model's state-dict names; tensors are detached and share storage with the model.

    Raises:
        ConfigError: ``model`` has no PEFT method applied.
    """
    return {k: v.detach() for k, v in _adapter_tensors(model).items()}


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy an :func:`adapter_state_dict` into ``model`` (built and adapted with the same method and options).

    Raises:
        ConfigError: ``model`` has no PEFT method applied.
        CheckpointError: keys or shapes differ; the missing, unexpected and wrong-shape keys are listed.
    """
    own = _adapter_tensors(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                   for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"adapter state dict does not fit {type(model).__name__} with peft method "
                 f"{model.peft_config.method!r}:"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:12])}" + (" ..." if len(keys) > 12 else ""))
        raise CheckpointError("\n  ".join(parts))
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])
    return model


def _peft_roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if getattr(m, "peft_config", None) is not None]


def adapter_checkpoint(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Adapter-only tensors of every PEFT-adapted sub-model of ``model`` (several for EI: one per VFM), keyed by
    their full state-dict names, and metadata recording each sub-model's method and options (JSON)."""
    import json

    roots = _peft_roots(model)
    if not roots:
        raise ConfigError(f"{type(model).__name__} has no PEFT method applied; nothing to save as adapters")
    state, meta = {}, {}
    for name, sub in roots:
        prefix = f"{name}." if name else ""
        state.update({prefix + k: v for k, v in adapter_state_dict(sub).items()})
        meta[name or "<root>"] = {"method": sub.peft_config.method, "options": sub.peft_config.model_dump(mode="json")}
    return state, {"peft": json.dumps(meta)}


def load_adapter_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an :func:`adapter_checkpoint` into ``model`` built and adapted the same way (strict per sub-model).

    Raises:
        CheckpointError: a sub-model's keys or shapes differ (listed), or keys belong to no adapted sub-model.
    """
    roots = sorted(_peft_roots(model), key=lambda r: -len(r[0]))
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name, _ in roots}
    for key, value in state.items():
        owner = next((name for name, _ in roots if not name or key.startswith(name + ".")), None)
        if owner is None:
            raise CheckpointError(f"adapter key {key!r} belongs to no PEFT-adapted part of {type(model).__name__}")
        parts[owner][key[len(owner) + 1:] if owner else key] = value
    for name, sub in roots:
        load_adapter_state_dict(sub, parts[name])
    return model
