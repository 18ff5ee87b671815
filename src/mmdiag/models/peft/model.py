"""Applying a PEFT method to a model: adapters in, everything else frozen, and the trainable-parameter report.

The trained set of an adapted model is the method's own parameters plus ``modules_to_save`` (default: the head,
``model.classifier_name``); :func:`trained_tensors` is the one place that decides it (the adapter checkpoint of
:mod:`mmdiag.models.peft.state` saves exactly that set).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models.peft.inject import PeftConfig, adapter_layers, build_peft_config, freeze_except

__all__ = ["apply_peft", "trainable_parameter_report", "peft_config_of", "trained_tensors"]

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
    freeze_except(model, trained_tensors(model, config))
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


def peft_config_of(model: nn.Module) -> PeftConfig:
    """The PEFT config applied to ``model``.

    Raises:
        ConfigError: none is.
    """
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


def trained_tensors(model: nn.Module, config: PeftConfig) -> Iterator[torch.Tensor]:
    """The tensors an adapted model trains and its adapter checkpoint saves: adapters plus ``modules_to_save``."""
    yield from config.adapter_parameters(model)
    yield from _head_tensors(model, config)


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
