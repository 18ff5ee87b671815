"""Gradient (activation) checkpointing: a block's activations are recomputed in the backward pass instead of stored.

Every model that offers ``grad_checkpointing`` / ``use_checkpoint`` runs its blocks through :func:`recompute`, so the
choices below hold for all of them:

* non-reentrant :func:`torch.utils.checkpoint.checkpoint` (inputs need not require gradients, frozen VFMs work);
* on glibc (Linux), the first call fixes the allocator's mmap threshold for the whole process
  (:func:`limit_heap_retention`). Checkpointing frees each block's activations right after the block. Under glibc's
  default *dynamic* threshold (raised to up to 32 MiB by the first large free) those multi-megabyte activations come
  from the ``brk`` heap, where small long-lived allocations made in between (tensor and autograd objects) split the
  freed space into pieces too small for the next block: the heap keeps growing while PyTorch holds little. EI on
  ViT-S/14 (two 224² views, batch 8, one CPU training step) held about 0.3 GB of tensors beyond its weights, yet the
  heap grew by 4 GB of free but resident memory. With the fixed threshold an allocation of at least
  :data:`MMAP_THRESHOLD` bytes that no free heap chunk fits gets its own mapping, unmapped when the tensor is freed
  (and the heap stops growing for them), so the resident memory follows what PyTorch holds. The price is a page
  fault per fresh page of such tensors; docs/benchmarks.md ("EI and the Table 3 baselines") gives both figures.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from collections.abc import Callable
from typing import Any

from torch.utils.checkpoint import checkpoint

__all__ = ["recompute", "limit_heap_retention", "MMAP_THRESHOLD"]

_log = logging.getLogger(__name__)

MMAP_THRESHOLD = 1 << 20
"""Bytes from which glibc serves an allocation by its own mapping once :func:`limit_heap_retention` ran (1 MiB)."""

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_limited: bool | None = None


def limit_heap_retention() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` for this process (once; later calls do nothing).

    Freed tensors of at least that size then go back to the system at once instead of staying in the heap. Costs a
    page fault per fresh page of such tensors (see docs/benchmarks.md for the time per step).

    Returns:
        Whether the threshold is fixed (``False`` outside glibc, e.g. macOS, Windows, musl).
    """
    global _limited
    if _limited is None:
        _limited = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            _limited = bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
            _log.debug("glibc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD, _limited)
    return _limited


def recompute(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` whose intermediate activations are recomputed in the backward pass (same values, same gradients).

    Call it only when training with gradients (the callers check ``self.training`` and their flag).
    """
    limit_heap_retention()
    return checkpoint(fn, *args, use_reentrant=False)
