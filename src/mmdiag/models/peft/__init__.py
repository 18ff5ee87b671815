"""Parameter-efficient fine-tuning: inject adapters into any model by module name, freeze the rest, save adapters.

Methods (``PEFT_METHODS``): ``lp``, ``fpt``, ``vpt``, ``bitfit``, ``lora``, ``loramoe``, ``mor``, ``mor_nobypass``.
Defaults reproduce the trainable counts of the EI paper's Table 7 on ViT-B (see ``docs/peft.md``).

Example:
    >>> model = apply_peft(create_model("clip_vit_b16", num_classes=4), "mor")
    >>> trainable_parameter_report(model)["trainable"]
    1477732
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.models.peft.bitfit import BitFitConfig
from mmdiag.models.peft.inject import (
    PEFT_METHODS,
    AdapterLayer,
    FullFinetuningConfig,
    LinearProbingConfig,
    NoMatchingModuleError,
    PeftConfig,
    adapter_layers,
    build_peft_config,
    freeze_except,
    replace_module,
)
from mmdiag.models.peft.lora import LoRA, LoraConfig, LoRALinear
from mmdiag.models.peft.loramoe import LoRAMoE, LoRAMoEConfig
from mmdiag.models.peft.mor import MoR, MoRConfig, MoRNoBypassConfig
from mmdiag.models.peft.vpt import VPTBlock, VptConfig

__all__ = [
    "adapter_checkpoint",
    "load_adapter_checkpoint",
    "apply_peft",
    "trainable_parameter_report",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "merge_lora",
    "PEFT_METHODS",
    "PeftConfig",
    "LinearProbingConfig",
    "FullFinetuningConfig",
    "BitFitConfig",
    "LoraConfig",
    "LoRAMoEConfig",
    "MoRConfig",
    "MoRNoBypassConfig",
    "VptConfig",
    "AdapterLayer",
    "LoRA",
    "LoRALinear",
    "LoRAMoE",
    "MoR",
    "VPTBlock",
    "NoMatchingModuleError",
]

_log = logging.getLogger(__name__)


def apply_peft(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Prepare ``model`` for fine-tuning with ``method``, in place; returns the same model.

    Adapters are swapped in by module name (no model file is edited); afterwards exactly the method's parameters
    and the modules in ``modules_to_save`` (default: the head ``model.classifier_name``) have ``requires_grad``.
    The validated config is stored as ``model.peft_config``.

    Args:
        model: any ``nn.Module``; built on the ``meta`` device is fine for counting.
        method: one of :data:`PEFT_METHODS` (``lp``, ``fpt``, ``vpt``, ``bitfit``, ``lora``, ``loramoe``, ``mor``,
            ``mor_nobypass``).
        **options: the method's options with PEFT's names (``r``, ``alpha``, ``dropout``, ``target_modules``,
            ``exclude_modules``, ``modules_to_save``...).

    Returns:
        ``model``, adapted.

    Raises:
        UnknownNameError: ``method`` is unknown (close matches offered).
        ConfigError: an option is unknown or invalid, the model already has a PEFT method, a target is of an
            unsupported type, or ``modules_to_save`` names no submodule.
        NoMatchingModuleError: ``target_modules`` matches no module (the patterns and module names are listed).
    """
    config = build_peft_config(method, options)
    previous = getattr(model, "peft_config", None)
    if previous is not None:
        raise ConfigError(f"{type(model).__name__} already has peft method {previous.method!r} applied; build a fresh "
                          f"model to apply {method!r}")
    config = config.model_copy(update={"modules_to_save": _resolve_modules_to_save(model, config)})
    config.inject(model)
    freeze_except(model, _trained_tensors(model, config))
    model.peft_config = config
    report = trainable_parameter_report(model)
    _log.info("peft %s on %s: %d of %d parameters trainable (%.3f%%)", method, type(model).__name__,
              report["trainable"], report["total"], report["trainable_percent"])
    return model


def _resolve_modules_to_save(model: nn.Module, config: PeftConfig) -> tuple[str, ...]:
    names = config.modules_to_save
    if names is None:
        head = getattr(model, "classifier_name", None)
        if not head:
            raise ConfigError(f"{type(model).__name__} has no `classifier_name`, so peft method {config.method!r} "
                              "cannot tell which head to train; pass modules_to_save=[<head module name>] (or [] "
                              "to train no head)")
        names = (head,)
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"modules_to_save entry {name!r} is not a submodule of {type(model).__name__} "
                              f"(top-level modules: {children})") from None
    return tuple(names)


def _peft_config(model: nn.Module) -> PeftConfig:
    config = getattr(model, "peft_config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no peft method applied; call apply_peft(model, method) first")
    return config


def _head_tensors(model: nn.Module, config: PeftConfig | None) -> Iterator[torch.Tensor]:
    if config is not None:
        names = config.modules_to_save
    else:
        head = getattr(model, "classifier_name", None)
        names = (head,) if head else ()
    for name in names:
        module = model.get_submodule(name)
        yield from module.parameters()
        yield from module.buffers()


def _trained_tensors(model: nn.Module, config: PeftConfig) -> Iterator[torch.Tensor]:
    yield from config.adapter_parameters(model)
    yield from _head_tensors(model, config)


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter and head tensors of ``model`` keyed by their state-dict names (found by visiting, not by prefix)."""
    wanted = {id(t) for t in _trained_tensors(model, _peft_config(model))}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) in wanted}


def trainable_parameter_report(model: nn.Module) -> dict[str, Any]:
    """Count parameters of ``model`` (shared ones once).

    Returns:
        ``method`` (``None`` without PEFT), ``total``, ``trainable`` (``requires_grad``), ``trainable_percent``,
        ``adapter`` (the method's own parameters, found by visiting adapter modules; head excluded), ``head``
        (``modules_to_save``), ``adapter_layers`` (wrapper class name → count).
    """
    config = getattr(model, "peft_config", None)
    params = list(model.parameters())
    head_ids = {id(t) for t in _head_tensors(model, config)}
    adapter_ids = {id(p) for p in config.adapter_parameters(model)} - head_ids if config is not None else set()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {
        "method": config.method if config is not None else None,
        "total": total,
        "trainable": trainable,
        "trainable_percent": 100.0 * trainable / max(total, 1),
        "adapter": sum(p.numel() for p in params if id(p) in adapter_ids),
        "head": sum(p.numel() for p in params if id(p) in head_ids),
        "adapter_layers": dict(Counter(type(layer).__name__ for _, layer in adapter_layers(model))),
    }


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
