"""Resolving ``data.dataset`` to a :class:`CaseTable`: a registered dataset name or a ``dataset.yaml`` path."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from mmdiag.data.table import CaseTable
from mmdiag.errors import ConfigError
from mmdiag.registry import DATASETS

__all__ = ["load_table", "list_datasets"]


def _register_all() -> None:
    import mmdiag.data.adapters  # noqa: F401  (registers the native-format adapters)
    import mmdiag.data.synthetic  # noqa: F401


def list_datasets() -> list[tuple[str, str]]:
    """(name, first docstring line) of every registered dataset."""
    _register_all()
    return [(n, (inspect.getdoc(DATASETS.get(n)) or "").splitlines()[0]) for n in DATASETS.names()]


def load_table(dataset: str, root: str | None = None, options: dict[str, Any] | None = None) -> CaseTable:
    """Load a dataset by registered name (native layout under ``root``) or from a ``dataset.yaml``/``.yml`` path.

    Raises:
        UnknownNameError: neither a registered name nor a YAML file (close names offered).
        ConfigError: an option the adapter does not take, or a missing ``root``.
    """
    if dataset.endswith((".yaml", ".yml")) or Path(dataset).is_file():
        from mmdiag.data.manifest import load_manifest_dataset

        if options:
            raise ConfigError(f"data.options {sorted(options)} are not used with a dataset.yaml ({dataset})")
        return load_manifest_dataset(dataset)
    _register_all()
    fn = DATASETS.get(dataset)
    params = inspect.signature(fn).parameters
    kwargs = dict(options or {})
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ConfigError(f"data.options: dataset {dataset!r} takes no option(s) {unknown}; it takes "
                          f"{[p for p in params if p != 'root']}")
    if "root" in params:
        if root is None:
            raise ConfigError(f"dataset {dataset!r} reads its native files: set data.root to its folder")
        kwargs["root"] = root
    elif root is not None:
        raise ConfigError(f"dataset {dataset!r} is built in and takes no data.root")
    return fn(**kwargs)
