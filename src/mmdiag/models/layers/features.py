"""Choosing the stages ``forward_intermediates`` returns (timm's ``feature_take_indices``)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["stage_indices"]


def stage_indices(indices: int | Sequence[int] | None, n: int, owner: str) -> list[int]:
    """Sorted, non-negative stage indices out of ``n`` stages.

    Args:
        indices: a list of indices (negative ones count from the end), an int ``k`` for the last ``k`` stages, or
            ``None`` for all.
        owner: the model's name, for the message.

    Raises:
        ValueError: nothing selected, or an index out of range.
    """
    if isinstance(indices, int):
        wanted = list(range(n - indices, n)) if 0 < indices <= n else []
    else:
        wanted = list(range(n)) if indices is None else list(indices)
    if not wanted or any(not -n <= i < n for i in wanted):
        raise ValueError(f"{owner}.forward_intermediates: indices must select stages 0..{n - 1}, got {indices}")
    return sorted({i % n for i in wanted})
