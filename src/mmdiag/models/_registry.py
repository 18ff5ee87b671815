"""The model registry's face: registration decorators, option checking, listing.

Two registration decorators record which side of the model contract (:mod:`mmdiag.models.contract`) a name builds:
``register_model`` for image models (``num_classes``, ``in_chans``) and ``register_multimodal`` for models built from
a :class:`~mmdiag.data.schema.DatasetSpec`. A builder that takes ``**kwargs`` names the callable they go to with
``options=`` so that every option can be checked before anything is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mmdiag.errors import ConfigError, did_you_mean
from mmdiag.registry import MODELS

__all__ = [
    "PAPERS",
    "check_options",
    "is_multimodal",
    "list_models",
    "model_options",
    "paper_of",
    "register_model",
    "register_multimodal",
]


def _register(fn: Callable | None, multimodal: bool, options: Callable | None, name: str | None, **tags: Any):
    if tags.get("paper") is not None and tags["paper"] not in PAPERS:
        raise ValueError(f"paper={tags['paper']!r}: not one of {list(PAPERS)}")

    def wrap(f: Callable) -> Callable:
        var_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(f).parameters.values())
        if var_kw and options is None:
            raise TypeError(f"model builder {f.__qualname__} takes **kwargs: register it with options=<the callable "
                            "they are passed to>")
        return MODELS.register(f, name=name, multimodal=multimodal, options=options, **tags)

    return wrap(fn) if fn is not None else wrap


def register_model(fn: Callable | None = None, *, options: Callable | tuple[Callable, ...] | None = None,
                   name: str | None = None, paper: str | None = None):
    """Register an image model builder (``num_classes``, ``in_chans``; timm's API).

    Args:
        options: where the builder's ``**kwargs`` go (a class or function, or a tuple of them).
        paper: the paper the model implements (shown in model cards).
    """
    return _register(fn, False, options, name, paper=paper)


def register_multimodal(fn: Callable | None = None, *, options: Callable | tuple[Callable, ...] | None = None,
                        name: str | None = None, default_spec: Callable[[int | None], Any] | None = None,
                        paper: str | None = None):
    """Register a builder ``f(spec, **options)`` of a :class:`~mmdiag.models.contract.MultimodalModel`.

    Args:
        options: where the builder's ``**kwargs`` go.
        default_spec: ``f(num_classes) -> DatasetSpec`` used by ``create_model(name)`` without ``spec``
            (``num_classes`` None: the model's own default tasks).
        paper: the paper the model implements (shown in model cards).
    """
    return _register(fn, True, options, name, paper=paper,
                     **({"default_spec": default_spec} if default_spec else {}))


# the five papers mmdiag implements; ``paper=`` of the registration decorators takes one of these keys
PAPERS: dict[str, str] = {
    "iimgf": "IIMGF-Net: in-depth integration of multi-granularity features from dual modalities for disease "
             "classification",
    "remixformer": "RemixFormer++: a multi-modal transformer for skin tumor diagnosis with memory-efficient attention",
    "mmcaf": "MMCAF-Net: small-lesion-aware multimodal multiscale fusion for lung disease classification",
    "ei": "EI: early intervention for multimodal imaging based disease recognition",
    "medmamba": "MedMamba: Vision Mamba for medical image classification",
}


def paper_of(name: str) -> str | None:
    """The paper a registered model implements (None for baselines and generic backbones)."""
    key = MODELS.tags(name).get("paper")
    return None if key is None else PAPERS[key]


def is_multimodal(name: str) -> bool:
    """Whether ``name`` is built from a dataset spec (else it is an image model)."""
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
    parts = []
    for k in bad:
        parts.append(f"{where}.{k}={options[k]!r}: model {name!r} has no option {k!r}" + did_you_mean(k, valid))
    raise ConfigError("; ".join(parts) + f" (valid options: {', '.join(sorted(valid))})")


def list_models(pattern: str = "*", include_hidden: bool = False, multimodal: bool | None = None) -> list[str]:
    """Names of registered models matching a shell pattern (``tiny_*`` test variants hidden by default).

    Args:
        multimodal: ``True`` only models built from a dataset spec, ``False`` only image models, ``None`` both.
    """
    names = MODELS.names(pattern, include_hidden=include_hidden)
    return [n for n in names if multimodal is None or MODELS.tags(n)["multimodal"] == multimodal]
