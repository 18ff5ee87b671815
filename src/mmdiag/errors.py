"""Error types. Every error a user can cause derives from :class:`MmdiagError` and names the key, file or case."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MmdiagError",
    "UnknownNameError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "NonFiniteLossError",
    "close_matches",
    "did_you_mean",
]


class MmdiagError(Exception):
    """Base class of every error mmdiag raises on bad user input."""


def close_matches(word: str, options: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` options closest to ``word`` (case-insensitive)."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'a', 'b'?"`` for the options closest to ``word``, or ``""`` when none is close."""
    hint = close_matches(word, options)
    return f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""


class UnknownNameError(MmdiagError, KeyError):
    """A name that is not in a registry table; the message offers close matches and the CLI verb listing all."""

    def __init__(self, kind: str, name: str, options: Iterable[str], list_verb: str | None = None):
        options = sorted(options)
        hint = close_matches(name, options)
        msg = f"unknown {kind} {name!r}"
        if hint:
            msg += f"; did you mean {', '.join(repr(h) for h in hint)}?"
        if list_verb:
            msg += f" (`{list_verb}` lists all {len(options)})"
        elif options:
            msg += f"; valid: {', '.join(options)}"
        super().__init__(msg)
        self.kind, self.name, self.options = kind, name, options

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ConfigError(MmdiagError, ValueError):
    """A configuration file or override is invalid; the message names the file and the dotted key."""


class DataError(MmdiagError, ValueError):
    """A data file, manifest row or label is invalid; the message names the case and the file or field."""

    def __init__(self, msg: str, case_id: str | None = None, path: str | None = None):
        super().__init__(msg)
        self.case_id, self.path = case_id, path


class CheckpointError(MmdiagError, ValueError):
    """A checkpoint does not fit the model; the message names the file and the missing/unexpected keys."""


class NonFiniteLossError(MmdiagError, FloatingPointError):
    """The training loss became NaN or infinite."""
