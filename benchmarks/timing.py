"""Timing shared by the benchmark modules."""

from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["forward_seconds"]


def forward_seconds(model: nn.Module, inputs, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` no-grad forward passes of ``model`` on ``inputs``, after one untimed warm-up."""
    times = []
    with torch.no_grad():
        model(inputs)
        for _ in range(repeats):
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
    return times
