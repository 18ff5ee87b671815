"""Optimisers and learning-rate schedules of the papers: AdamW, SGD with momentum; cosine with warm-up, multi-step,
cyclic."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mmdiag.config.schema import OptimConfig, ScheduleConfig

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, optim: OptimConfig, max_epochs: int
                    ) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` dict for ``cfg`` (None for ``name=none``).

    ``cosine``: linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr`` at ``max_epochs``.
    ``multistep``: lr × ``gamma`` at each epoch in ``milestones`` (after an optional linear warm-up).
    ``cyclic``: ``torch.optim.lr_scheduler.CyclicLR`` between ``base_lr`` and ``max_lr``, stepped per optimiser step;
    with ``cycle_decay < 1`` the amplitude shrinks by that factor every cycle.
    """
    if cfg.name == "none":
        return None
    if cfg.name == "cyclic":
        decay = cfg.cycle_decay
        sched = torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=cfg.base_lr if cfg.base_lr is not None else optim.lr / 100,
            max_lr=cfg.max_lr if cfg.max_lr is not None else optim.lr, step_size_up=cfg.step_size_up,
            mode=cfg.cyclic_mode, cycle_momentum=optim.name == "sgd",
            scale_fn=(lambda cycle: decay ** (cycle - 1)) if decay < 1 else None, scale_mode="cycle",
            base_momentum=cfg.base_momentum if cfg.base_momentum is not None else 0.8 * optim.momentum,
            max_momentum=cfg.max_momentum if cfg.max_momentum is not None else optim.momentum)
        return {"scheduler": sched, "interval": "step"}
    warm = cfg.warmup_epochs
    floor = cfg.min_lr / optim.lr
    milestones = sorted(cfg.milestones)

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        if cfg.name == "multistep":
            return cfg.gamma ** sum(epoch >= m for m in milestones)
        progress = (epoch - warm) / max(1, max_epochs - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "epoch"}
