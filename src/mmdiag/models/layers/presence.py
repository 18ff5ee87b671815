"""The missing-modality mask every fusion model reads: ``present`` travels with each batch (see data.schema)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["presence_mask", "presence_matrix"]


def presence_mask(present: Mapping[str, torch.Tensor] | None, name: str, x: torch.Tensor) -> torch.Tensor:
    """Bool ``(B,)`` on ``x``'s device: which cases have modality ``name`` (all, when ``present`` does not say)."""
    if present is None or name not in present:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return present[name].to(device=x.device, dtype=torch.bool)


def presence_matrix(modalities: Sequence[str], inputs: Mapping[str, torch.Tensor],
                    present: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """Bool ``(B, M)`` in ``modalities`` order."""
    return torch.stack([presence_mask(present, m, inputs[m]) for m in modalities], 1)
