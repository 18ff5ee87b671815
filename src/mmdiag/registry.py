"""One registry mechanism with one table per kind (models, datasets)."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mmdiag.errors import MmdiagError, UnknownNameError

__all__ = ["Registry", "MODELS", "DATASETS", "RECIPES"]

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """A name → constructor table. Registration is a decorator at the definition; a duplicate raises.

    Args:
        kind: what the table holds, used in messages ("model", "dataset").
        list_verb: the CLI command that lists the table, offered in "unknown name" errors.
        populate: module whose import registers every entry; imported (by name, so that no import cycle forms)
            the first time the table is read.
    """

    def __init__(self, kind: str, list_verb: str, populate: str | None = None):
        self.kind = kind
        self.list_verb = list_verb
        self._entries: dict[str, T] = {}
        self._tags: dict[str, dict[str, object]] = {}
        self._populate = populate

    def _ensure(self) -> None:
        if self._populate is not None:
            module, self._populate = self._populate, None
            importlib.import_module(module)

    def register(self, fn: T | None = None, *, name: str | None = None, **tags: object):
        """Register ``fn`` under its function name (or ``name``), with optional ``tags`` (facts about the entry).

        Usable as ``@reg.register`` or with arguments.
        """

        def wrap(f: T) -> T:
            key = name or f.__name__
            if key in self._entries:
                raise MmdiagError(f"{self.kind} {key!r} is registered twice ({self._entries[key].__module__} and "
                                  f"{f.__module__})")
            self._entries[key] = f
            self._tags[key] = dict(tags)
            return f

        return wrap(fn) if fn is not None else wrap

    def get(self, name: str) -> T:
        """Return the constructor registered as ``name``; raises :class:`UnknownNameError` with close matches."""
        self._ensure()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries, self.list_verb) from None

    def tags(self, name: str) -> dict[str, object]:
        """The tags ``name`` was registered with; raises :class:`UnknownNameError` like :meth:`get`."""
        self.get(name)
        return self._tags[name]

    def names(self, pattern: str = "*", include_hidden: bool = False) -> list[str]:
        """Sorted names matching a shell ``pattern``; ``tiny_*`` test variants only with ``include_hidden``."""
        self._ensure()
        out = [n for n in self._entries if fnmatch.fnmatch(n, pattern)]
        if not include_hidden:
            out = [n for n in out if not n.startswith("tiny_") or pattern.startswith("tiny_")]
        return sorted(out)

    def __contains__(self, name: str) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return iter(sorted(self._entries))


MODELS: Registry = Registry("model", "mmdiag models", populate="mmdiag.models._families")
DATASETS: Registry = Registry("dataset", "mmdiag datasets")
RECIPES: Registry = Registry("recipe", "mmdiag models --recipes")
