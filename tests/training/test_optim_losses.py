import math

import numpy as np
import pytest
import torch

from mmdiag.config.schema import OptimConfig, ScheduleConfig
from mmdiag.data.schema import TaskSpec
from mmdiag.training.losses import MultiTaskLoss, balanced_class_weights
from mmdiag.training.optim import build_optimizer, build_scheduler


def _lrs(schedule: ScheduleConfig, optim: OptimConfig, n: int, max_epochs: int = 10) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(optim, [p])
    sched = build_scheduler(schedule, opt, optim, max_epochs)["scheduler"]
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_and_multistep():
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=2, min_lr=0.0), OptimConfig(lr=1.0), 10)
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3]) and lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    steps = _lrs(ScheduleConfig(name="multistep", milestones=[3, 6], gamma=0.1), OptimConfig(lr=1.0), 8)
    assert steps == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_cyclic_between_bounds_with_sgd_momentum():
    optim = OptimConfig(name="sgd", lr=1e-3, momentum=0.95)
    lrs = _lrs(ScheduleConfig(name="cyclic", base_lr=1e-5, max_lr=1e-3, step_size_up=4), optim, 9)
    assert lrs[0] == pytest.approx(1e-5) and lrs[4] == pytest.approx(1e-3) and lrs[8] == pytest.approx(1e-5)


def test_cyclic_amplitude_decays_per_cycle_and_momentum_bounds():
    optim = OptimConfig(name="sgd", lr=1e-3, momentum=0.95)
    cfg = ScheduleConfig(name="cyclic", base_lr=0.0, max_lr=1.0, step_size_up=2, cycle_decay=0.8, base_momentum=0.8,
                         max_momentum=0.9)
    lrs = _lrs(cfg, optim, 9)
    assert lrs[2] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.8)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(optim, [p])
    build_scheduler(cfg, opt, optim, 10)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9)


def test_losses_mask_unknown_labels_and_weight_tasks():
    tasks = {"a": TaskSpec(type="multiclass", classes=("x", "y", "z")),
             "m": TaskSpec(type="multilabel", classes=("p", "q"))}
    logits = {"a": torch.randn(4, 3), "m": torch.randn(4, 2)}
    labels = {"a": torch.tensor([0, -1, 2, 1]), "m": torch.tensor([[1.0, float("nan")], [0, 1], [1, 1], [0, 0]])}
    total, parts = MultiTaskLoss(tasks, {"a": 2.0})(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits["a"][[0, 2, 3]], labels["a"][[0, 2, 3]])
    known = ~torch.isnan(labels["m"])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits["m"][known], labels["m"][known])
    torch.testing.assert_close(parts["a"], ce)
    torch.testing.assert_close(parts["m"], bce)
    torch.testing.assert_close(total, 2 * ce + bce)


def test_balanced_class_weights():
    task = TaskSpec(type="multiclass", classes=("x", "y", "z"))
    w = balanced_class_weights(task, np.array([0, 0, 0, 1, -1]))
    torch.testing.assert_close(w, torch.tensor([4 / 9, 4 / 3, 0.0]))
