"""Checks shared by the native-format adapters: option values, required layout files, missing-file hints."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmdiag.errors import ConfigError, DataError, close_matches

__all__ = ["check_choice", "require_file", "missing_file_error"]


def check_choice(dataset: str, option: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise a :class:`ConfigError` naming ``data.options.<option>`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{dataset}: data.options.{option}={value!r} is not one of {allowed}")


def require_file(dataset: str, path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a :class:`DataError` naming it and what it should hold."""
    if not path.is_file():
        raise DataError(f"{dataset}: {what} {str(path)!r} does not exist; is data.root the dataset's folder?",
                        path=str(path))
    return path


def missing_file_error(case_id: str, path: Path, modality: str) -> DataError:
    """A :class:`DataError` for an absent image/volume file, offering same-folder names that differ only in case.

    Native releases mix ``.JPG`` and ``.jpg``; on a case-sensitive file system a renamed copy is not found.
    """
    msg = f"case {case_id!r}: {modality} file {str(path)!r} does not exist"
    if path.parent.is_dir():
        names = [p.name for p in path.parent.iterdir()]
        same = [n for n in names if n.lower() == path.name.lower()]
        hint = same or close_matches(path.name, names, n=2)
        if hint:
            msg += f"; the folder has {hint} (file names are case-sensitive)"
    else:
        msg += f" (its folder {str(path.parent)!r} does not exist either)"
    return DataError(msg, case_id, str(path))
