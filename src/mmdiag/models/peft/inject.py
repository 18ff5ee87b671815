"""Shared PEFT machinery: method configs and their registry, target-module matching, module swapping, freezing.

Targets follow PEFT's conventions: ``target_modules`` given as a list matches a module whose qualified name equals an
entry or ends with ``"." + entry``; given as a single string it is a regular expression that must match the whole
name. ``exclude_modules`` uses the same rules. Matched modules are swapped for wrappers that keep the original as
``base_layer``, so no model file is edited. Adapter parameters are always found by visiting :class:`AdapterLayer`
modules (``isinstance``), never by name prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from mmdiag.errors import ConfigError, close_matches
from mmdiag.registry import Registry

__all__ = [
    "AdapterLayer",
    "PeftConfig",
    "AdapterConfig",
    "LinearProbingConfig",
    "FullFinetuningConfig",
    "PEFT_METHODS",
    "NoMatchingModuleError",
    "register_peft_method",
    "build_peft_config",
    "find_target_modules",
    "inject_adapters",
    "replace_module",
    "freeze_except",
    "adapter_layers",
    "require_linear",
    "factory_kwargs",
    "Targets",
]

PEFT_METHODS: Registry = Registry("peft method", "mmdiag models --peft")

Targets = str | tuple[str, ...]

# other libraries' spellings of our option names, offered when an unknown option is given
_SPELLINGS = {"rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "num_tokens": "num_virtual_tokens"}


class NoMatchingModuleError(ConfigError):
    """``target_modules`` (minus ``exclude_modules``) matched no module; the message lists patterns and names."""


class AdapterLayer(nn.Module):
    """Base of every adapter wrapper: holds the wrapped module as ``base_layer``.

    Attributes the wrapper does not define (``weight``, ``in_features``, ``attn``...) are looked up on
    ``base_layer``, so model code that reads them keeps working after injection.

    Args:
        base_layer: the module being adapted; it is kept unchanged (and frozen by :func:`apply_peft`).
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters this wrapper adds (everything outside ``base_layer``)."""
        yield from self.parameters(recurse=False)
        for child in self.children():
            if child is not self.base_layer:
                yield from child.parameters()


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """``(qualified name, wrapper)`` for every :class:`AdapterLayer` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


class PeftConfig(BaseModel):
    """Base of every method's options. Subclasses set ``method`` and override :meth:`inject` and
    :meth:`adapter_parameters`.

    ``modules_to_save`` (PEFT's name) lists submodules trained in full next to the adapters; ``None`` means the
    model's classifier head (``model.classifier_name``), ``[]`` trains no head.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: ClassVar[str]

    modules_to_save: tuple[str, ...] | None = Field(
        None, description="submodules trained in full (default: the classifier head, model.classifier_name)")

    def inject(self, model: nn.Module) -> None:
        """Add this method's adapter modules to ``model`` in place (methods that add none keep this no-op)."""

    def adapter_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        """The parameters the method trains besides ``modules_to_save``; everything else is frozen."""
        yield from ()


def register_peft_method(cls: type[PeftConfig]) -> type[PeftConfig]:
    """Class decorator: register a config class in :data:`PEFT_METHODS` under ``cls.method``."""
    return PEFT_METHODS.register(cls, name=cls.method)


def build_peft_config(method: str, options: dict[str, Any]) -> PeftConfig:
    """Validate ``options`` against the config of ``method``.

    Raises:
        UnknownNameError: ``method`` is not registered (close matches are offered).
        ConfigError: an option is unknown or invalid; the message names the option, the value and the valid options.
    """
    cls = PEFT_METHODS.get(method)
    try:
        return cls(**options)
    except ValidationError as e:
        fields = list(cls.model_fields)
        parts = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = [_SPELLINGS[key]] if _SPELLINGS.get(key) in fields else close_matches(key, fields)
                parts.append(f"unknown option {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            elif key:
                parts.append(f"option {key!r} = {err['input']!r}: {err['msg']}")
            else:
                parts.append(err["msg"])
        raise ConfigError(f"invalid options for peft method {method!r}: {'; '.join(parts)} "
                          f"(valid options: {', '.join(fields)})") from None


class AdapterConfig(PeftConfig):
    """Options shared by methods that wrap modules selected by name (LoRA, LoRAMoE, MoR, VPT)."""

    target_modules: Targets = Field(
        ("mlp.fc1", "mlp.fc2"),
        description="module names to adapt: list = exact name or '.suffix' match; string = full-match regex")
    exclude_modules: Targets | None = Field(None, description="module names never adapted (same matching rules)")

    @field_validator("target_modules", "exclude_modules")
    @classmethod
    def _check_patterns(cls, value: Targets | None) -> Targets | None:
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a valid regular expression ({e})") from None
        elif value is not None and not value:
            raise ValueError("give at least one module name")
        return value

    def wrap(self, model: nn.Module, name: str, module: nn.Module) -> AdapterLayer:
        """Return the adapter wrapper for ``module``, matched as ``name`` in ``model``."""
        raise NotImplementedError

    def inject(self, model: nn.Module) -> None:
        inject_adapters(model, self.target_modules, self.exclude_modules, lambda n, m: self.wrap(model, n, m))

    def adapter_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        for _, layer in adapter_layers(model):
            yield from layer.adapter_parameters()


@register_peft_method
class LinearProbingConfig(PeftConfig):
    """Linear probing (``lp``): the backbone is frozen and only the head (``modules_to_save``) trains."""

    method: ClassVar[str] = "lp"


@register_peft_method
class FullFinetuningConfig(PeftConfig):
    """Full-parameter fine-tuning (``fpt``): every parameter trains."""

    method: ClassVar[str] = "fpt"

    def adapter_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        yield from model.parameters()


def _match(name: str, patterns: Targets) -> str | None:
    """The pattern that selects ``name`` under PEFT's rules, or ``None``."""
    if isinstance(patterns, str):
        return patterns if re.fullmatch(patterns, name) else None
    return next((p for p in patterns if name == p or name.endswith("." + p)), None)


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` that does not descend into existing adapter wrappers."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        yield full, child
        if not isinstance(child, AdapterLayer):
            yield from _walk(child, full)


def _name_sample(model: nn.Module, n: int = 10) -> list[str]:
    """A few distinct module names of ``model`` with block indices collapsed to ``*``."""
    seen: dict[str, None] = {}
    for name, _ in _walk(model):
        seen.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", name), None)
    return list(seen)[:n]


def find_target_modules(model: nn.Module, target_modules: Targets, exclude_modules: Targets | None = None) -> list[str]:
    """Qualified names of the modules selected by ``target_modules`` minus ``exclude_modules``.

    Raises:
        NoMatchingModuleError: nothing is selected, or a list entry of ``target_modules`` matches no module; the
            message lists the unmatched patterns and a sample of the model's module names.
    """
    hits: set[str] = set()
    selected = []
    for name, _ in _walk(model):
        pattern = _match(name, target_modules)
        if pattern is None:
            continue
        hits.add(pattern)
        if exclude_modules is None or _match(name, exclude_modules) is None:
            selected.append(name)
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    unmatched = [p for p in patterns if p not in hits]
    if unmatched or not selected:
        what = (f"target_modules {unmatched} matched no module" if unmatched else
                f"every module matched by target_modules {patterns} is excluded by exclude_modules={exclude_modules!r}")
        raise NoMatchingModuleError(
            f"{what} of {type(model).__name__}; module names include: {', '.join(_name_sample(model))} "
            "(a list entry matches a full name or a '.suffix'; a single string is a full-match regex)")
    return selected


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (its parent's attribute is reassigned)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject_adapters(model: nn.Module, target_modules: Targets, exclude_modules: Targets | None,
                    wrap: Callable[[str, nn.Module], nn.Module]) -> list[str]:
    """Swap every selected module for ``wrap(name, module)`` in its parent; returns the swapped names.

    All wrappers are built before the first swap, so a failing ``wrap`` leaves the model untouched. Deeper modules
    are swapped first, so a selected parent wraps its already-adapted children.

    Raises:
        NoMatchingModuleError: see :func:`find_target_modules`.
    """
    names = find_target_modules(model, target_modules, exclude_modules)
    wrappers = {name: wrap(name, model.get_submodule(name)) for name in names}
    for name in sorted(names, key=lambda n: n.count("."), reverse=True):
        replace_module(model, name, wrappers[name])
    return names


def freeze_except(model: nn.Module, trained: Iterable[torch.Tensor]) -> None:
    """Set ``requires_grad`` on exactly the parameters among ``trained`` (buffers are skipped), off elsewhere."""
    model.requires_grad_(False)
    for tensor in trained:
        if isinstance(tensor, nn.Parameter):
            tensor.requires_grad_(True)


def require_linear(method: str, name: str, module: nn.Module) -> nn.Linear:
    """Return ``module`` if it is an ``nn.Linear``.

    Raises:
        ConfigError: naming the module, its type and the method, with the fix.
    """
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"peft method {method!r} wraps nn.Linear layers only, but target module {name!r} is a "
                          f"{type(module).__name__}; narrow target_modules (or add it to exclude_modules)")
    return module


def factory_kwargs(module: nn.Module) -> dict[str, Any]:
    """``device``/``dtype`` of ``module``'s first parameter, so adapters are created beside it (meta included)."""
    p = next(module.parameters(), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {"dtype": torch.get_default_dtype()}
