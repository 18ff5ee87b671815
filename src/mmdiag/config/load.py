"""Loading experiment configs from YAML with ``key=value`` overrides, and readable validation errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mmdiag.config.schema import ExperimentConfig
from mmdiag.errors import ConfigError, close_matches

__all__ = ["load_config", "apply_overrides", "format_validation_error", "resolve_config_path", "shipped_configs"]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the key at ``loc`` (None if it is not a model)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per problem: ``file: key.path: message``, with a 'did you mean' for unknown keys."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in {"ImageModality", "VolumeModality",
                                                                               "TabularModality", "image", "volume",
                                                                               "tabular", "numeric", "categorical"}))
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            owner = _model_at(root, loc)
            hint = close_matches(str(loc[-1]), owner.model_fields) if owner else []
            valid = sorted(owner.model_fields) if owner else []
            msg = f"unknown key {key!r}" + (f"; did you mean {'/'.join(repr('.'.join([*map(str, loc[:-1]), h])) for h in hint)}?" if hint else "")
            if valid:
                msg += f" (valid keys here: {', '.join(valid)})"
        else:
            msg = f"{key}: {e['msg']} (got {e.get('input')!r})"
        lines.append(f"{source}: {msg}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict, in order.

    Raises:
        ConfigError: an override without ``=``.
    """
    raw = dict(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key, text = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = _parse_value(text)
    return raw


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (or start from ``base``/defaults), apply overrides, validate.

    Raises:
        ConfigError: the file is missing or invalid; the message names the file and the dotted key.
    """
    raw: dict[str, Any] = dict(base or {})
    source = "<overrides>"
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data, model, ...)")
        raw = _merge(raw, loaded)
        source = str(p)
    raw = apply_overrides(raw, overrides or [])
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, ExperimentConfig)) from None


def shipped_configs() -> list[str]:
    """Names of the experiment configs shipped with mmdiag (``mmdiag configs`` lists them)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return sorted(str(f.relative_to(root).with_suffix("")) for f in root.rglob("*.yaml"))


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config file path, or the name of a shipped config (``medmamba_medmnist``, ``ei/ei_derm7pt``).

    Raises:
        ConfigError: neither exists (close shipped names are offered).
    """
    p = Path(path)
    if p.is_file():
        return p
    shipped = Path(__file__).resolve().parent.parent / "configs" / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    hint = close_matches(str(path), shipped_configs())
    raise ConfigError(f"config file {str(p)!r} does not exist and is not a shipped config"
                      + (f"; did you mean {', '.join(hint)}?" if hint else "") + " (`mmdiag configs` lists them)")


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
