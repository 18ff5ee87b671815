"""``create_model`` / ``list_models``: the one way every model in mmdiag is built.

Two registration decorators record which side of the model contract (:mod:`mmdiag.models.contract`) a name builds:
``register_model`` for image models (``num_classes``, ``in_chans``) and ``register_multimodal`` for models built from
a :class:`~mmdiag.data.schema.DatasetSpec`. A builder that takes ``**kwargs`` names the callable they go to with
``options=`` so that every option can be checked before anything is built.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch

from mmdiag.errors import ConfigError, close_matches
from mmdiag.registry import MODELS

__all__ = ["create_model", "list_models", "register_model", "register_multimodal", "is_multimodal",
           "model_options", "check_options"]


def _register(fn: Callable | None, multimodal: bool, options: Callable | None, name: str | None, **tags: Any):
    def wrap(f: Callable) -> Callable:
        var_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(f).parameters.values())
        if var_kw and options is None:
            raise TypeError(f"model builder {f.__qualname__} takes **kwargs: register it with options=<the callable "
                            "they are passed to>")
        return MODELS.register(f, name=name, multimodal=multimodal, options=options, **tags)

    return wrap(fn) if fn is not None else wrap


def register_model(fn: Callable | None = None, *, options: Callable | tuple[Callable, ...] | None = None, name: str | None = None):
    """Register an image model builder (``num_classes``, ``in_chans``; timm's API).

    Args:
        options: where the builder's ``**kwargs`` go (a class or function, or a tuple of them).
    """
    return _register(fn, False, options, name)


def register_multimodal(fn: Callable | None = None, *, options: Callable | tuple[Callable, ...] | None = None,
                        name: str | None = None, default_spec: Callable[[int], Any] | None = None):
    """Register a builder ``f(spec, **options)`` of a :class:`~mmdiag.models.contract.MultimodalModel`.

    Args:
        default_spec: ``f(num_classes) -> DatasetSpec`` used by ``create_model(name, num_classes=N)`` without a spec.
    """
    return _register(fn, True, options, name, **({"default_spec": default_spec} if default_spec else {}))


def _families() -> None:
    import mmdiag.models._families  # noqa: F401  (registers every family)


def is_multimodal(name: str) -> bool:
    """Whether ``name`` is built from a dataset spec (else it is an image model)."""
    _families()
    return bool(MODELS.tags(name)["multimodal"])


def _signature_options(fn: Callable) -> dict[str, inspect.Parameter]:
    """Named parameters of ``fn``; a class whose ``__init__`` takes ``**kwargs`` adds its base classes' (they go
    there through ``super().__init__``)."""
    params = inspect.signature(fn).parameters
    found = {k: p for k, p in params.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and k not in ("self", "spec")}
    if isinstance(fn, type) and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        base = next((b for b in fn.__mro__[1:] if "__init__" in vars(b)), None)
        if base is not None and base.__module__.startswith("mmdiag."):
            found = {**_signature_options(base), **found}
    return found


def model_options(name: str) -> dict[str, Any]:
    """Every option ``name`` accepts, with its default (``inspect.Parameter.empty`` when required)."""
    _families()
    fn, targets = MODELS.get(name), MODELS.tags(name)["options"]
    found = {k: p.default for k, p in _signature_options(fn).items()}
    for target in targets if isinstance(targets, tuple) else (targets,) if targets else ():
        found.update({k: p.default for k, p in _signature_options(target).items() if k not in found})
    return found


def check_options(name: str, options: dict[str, Any], where: str = "model.options") -> None:
    """Raise a :class:`ConfigError` naming each option ``name`` does not take, with close matches and the valid list.

    Args:
        name: registered model name.
        options: the options given (``num_classes``/``in_chans`` included for image models).
        where: how the user wrote them, for the message (``model.options``, ``create_model``).
    """
    valid = model_options(name)
    bad = [k for k in options if k not in valid]
    if not bad:
        return
    lines = []
    for k in bad:
        hint = close_matches(k, valid)
        lines.append(f"{where}.{k}={options[k]!r}: model {name!r} has no option {k!r}"
                     + (f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""))
    raise ConfigError("\n".join(lines) + f"\n  valid options of {name!r}: {', '.join(sorted(valid))}")


def list_models(pattern: str = "*", include_hidden: bool = False, multimodal: bool | None = None) -> list[str]:
    """Names of registered models matching a shell pattern (``tiny_*`` test variants hidden by default).

    Args:
        multimodal: ``True`` only models built from a dataset spec, ``False`` only image models, ``None`` both.
    """
    _families()
    names = MODELS.names(pattern, include_hidden=include_hidden)
    return [n for n in names if multimodal is None or MODELS.tags(n)["multimodal"] == multimodal]


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
    from mmdiag.models._builder import build_model

    _families()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return build_model(name, kwargs, checkpoint=checkpoint, peft=peft, peft_options=peft_options)
