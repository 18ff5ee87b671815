"""The missing-modality mask every fusion model reads: ``present`` travels with each batch (see data.schema)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

__all__ = ["presence_mask", "presence_matrix", "presence_groups", "masked_softmax", "open_empty_rows"]


def presence_mask(present: Mapping[str, torch.Tensor] | None, name: str, x: torch.Tensor) -> torch.Tensor:
    """Bool ``(B,)`` on ``x``'s device: which cases have modality ``name`` (all, when ``present`` does not say)."""
    if present is None or name not in present:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return present[name].to(device=x.device, dtype=torch.bool)


def presence_matrix(modalities: Sequence[str], inputs: Mapping[str, torch.Tensor],
                    present: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """Bool ``(B, M)`` in ``modalities`` order."""
    return torch.stack([presence_mask(present, m, inputs[m]) for m in modalities], 1)


def presence_groups(mask: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The cases of a batch grouped by which modalities they have, so that a model can build each group's token
    sequence from real tokens only.

    Args:
        mask: bool ``(B, M)`` (e.g. :func:`presence_matrix`).

    Yields:
        ``(pattern (M,) bool, rows (n,) long)`` per distinct pattern; the rows of all groups partition ``range(B)``.
        Put results back in batch order with ``torch.cat(parts)[torch.cat(rows).argsort()]`` (a gather, deterministic
        on CUDA).
    """
    patterns, inverse = torch.unique(mask.to(torch.uint8), dim=0, return_inverse=True)
    for i, pattern in enumerate(patterns.bool()):
        yield pattern, (inverse == i).nonzero(as_tuple=True)[0]


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over the entries where ``mask``; masked entries get 0, and an all-masked slice gives all zeros."""
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return logits.softmax(dim) * mask


def open_empty_rows(pad: torch.Tensor) -> torch.Tensor:
    """A key-padding mask ``(B, L)`` (True = ignore) whose all-padded rows (no modality at all) are opened, so that
    attention stays finite; the caller discards those rows' result."""
    return pad & ~pad.all(1, keepdim=True)
