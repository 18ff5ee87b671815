"""The Lightning system: a built multimodal model, its loss, optimiser and per-epoch metrics.

The model is an ``nn.Module`` passed in (the Lightning style guide's *model* vs *system*); this class holds only the
training logic. Validation metrics are computed on the whole validation set at epoch end (gathered over DDP ranks)
with :func:`mmdiag.evaluation.metrics.evaluate_tasks` and logged as ``val/<task>/<metric>`` and ``val/mean/<metric>``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from mmdiag.config.schema import OptimConfig, ScheduleConfig
from mmdiag.data.schema import DatasetSpec
from mmdiag.data.transforms import BatchTransform
from mmdiag.errors import NonFiniteLossError
from mmdiag.evaluation.metrics import evaluate_tasks
from mmdiag.evaluation.scores import probabilities
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY
from mmdiag.training.losses import MultiTaskLoss
from mmdiag.training.optim import build_optimizer, build_scheduler

__all__ = ["MultimodalSystem"]


_LOGGED = ("acc", "balanced_acc", "auc", "f1", "map", "s2", "sensitivity", "specificity")


class MultimodalSystem(L.LightningModule):
    """Trains any mmdiag multimodal model.

    Args:
        model: the network (``forward(inputs, present) -> {task: logits}``).
        spec: the dataset spec the model was built for.
        loss: the multi-task loss.
        optim: optimiser settings; schedule: learning-rate schedule settings.
        max_epochs: for the schedule.
        batch_transform: augmentation + normalisation applied on the device.
        seed: base of the per-step seeds of the global generator (see ``on_after_batch_transfer``).
        score: ``eval.score`` of the validation metrics (see :func:`probabilities`).
    """

    def __init__(self, model: nn.Module, spec: DatasetSpec, loss: MultiTaskLoss, optim: OptimConfig,
                 schedule: ScheduleConfig, max_epochs: int, batch_transform: BatchTransform, seed: int = 0,
                 score: str = "probability"):
        super().__init__()
        self.model, self.spec, self.loss = model, spec, loss
        self.optim_cfg, self.schedule_cfg, self.max_epochs = optim, schedule, max_epochs
        self.batch_transform = batch_transform
        self.seed, self.score = seed, score
        self._val: list[dict[str, Any]] = []

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(batch["inputs"], batch["present"])

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        train = self.training and self.trainer.training
        if train:
            # The global generator (augmentation, dropout) is reseeded per step from (seed, step, rank): a resumed
            # run draws exactly what the uninterrupted run drew, whatever else consumed random numbers meanwhile.
            torch.manual_seed((self.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank)
        return self.batch_transform(batch, train=train)

    def _loss(self, out: dict[str, Any], labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Task loss of the main logits plus each weighted auxiliary term (``AUX_KEY``, ``AUX_LOSS_KEY``)."""
        total, parts = self.loss({t: out[t] for t in self.spec.tasks}, labels)
        for name, (weight, logits) in out.get(AUX_KEY, {}).items():
            aux, _ = self.loss(logits, labels)
            parts[name] = aux
            total = total + weight * aux
        for name, (weight, value) in out.get(AUX_LOSS_KEY, {}).items():
            parts[name] = value
            total = total + weight * value
        return total, parts

    def _log_train_accuracy(self, out: dict[str, Any], labels: dict[str, torch.Tensor]) -> None:
        """``train/<task>/acc`` per epoch over the known labels (in train mode: dropout and augmentation on)."""
        with torch.no_grad():
            probs = probabilities(self.spec, {t: out[t].detach() for t in self.spec.tasks})
        for t, task in self.spec.tasks.items():
            y = labels[t]
            if task.type == "multilabel":
                known = ~torch.isnan(y)
                hits = ((probs[t] > 0.5) == (y > 0.5))[known]
            else:
                known = y >= 0
                hits = probs[t][known].argmax(1) == y[known]
            if hits.numel():
                self.log(f"train/{t}/acc", hits.float().mean(), on_step=False, on_epoch=True,
                         batch_size=hits.numel(), sync_dist=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        total, parts = self._loss(out, batch["labels"])
        if not torch.isfinite(total):
            bad = [t for t, v in parts.items() if not torch.isfinite(v)]
            saved = [c.best_model_path for c in self.trainer.checkpoint_callbacks if c.monitor is None]
            last = next((p for p in saved if p), "none written yet")
            raise NonFiniteLossError(f"training loss became {total.item()} at epoch {self.current_epoch}, batch "
                                     f"{batch_idx} (task(s) {bad}); stopped. Last good checkpoint: {last}. Lower "
                                     f"optim.lr or set trainer.gradient_clip_val.")
        bs = len(batch["case_id"])
        self.log("train/loss", total, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        self._log_train_accuracy(out, batch["labels"])
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        total, _ = self._loss(out, batch["labels"])
        logits = {t: out[t] for t in self.spec.tasks}
        self.log("val/loss", total, on_epoch=True, batch_size=len(batch["case_id"]), sync_dist=True)
        self._val.append({"index": batch["index"], "probs": probabilities(self.spec, logits, self.score),
                          "labels": batch["labels"]})

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        index = self._gather(torch.cat([v["index"] for v in self._val]))
        _, keep = np.unique(index.numpy(), return_index=True)  # DDP pads with repeated cases
        y_true, y_prob = {}, {}
        for t in self.spec.tasks:
            y_true[t] = self._gather(torch.cat([v["labels"][t] for v in self._val])).numpy()[keep]
            y_prob[t] = self._gather(torch.cat([v["probs"][t] for v in self._val])).numpy()[keep]
        self._val.clear()
        tasks = {t: (s.type, list(s.classes)) for t, s in self.spec.tasks.items()}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class absent from a small validation set is expected here
            result = evaluate_tasks(tasks, y_true, y_prob)
        logged = {}
        for t, m in result["tasks"].items():
            logged.update({f"val/{t}/{k}": m[k] for k in _LOGGED if k in m})
        logged.update({f"val/mean/{k}": v for k, v in result["mean"].items() if k in _LOGGED})
        self.log_dict({k: float(v) if v is not None and not math.isnan(v) else 0.0 for k, v in logged.items()},
                      sync_dist=False)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            x = self.all_gather(x)
            x = x.transpose(0, 1).reshape(-1, *x.shape[2:])  # interleave ranks back into sampler order
        return x.cpu()

    def configure_optimizers(self):
        opt = build_optimizer(self.optim_cfg, self.model.parameters())
        sched = build_scheduler(self.schedule_cfg, opt, self.optim_cfg, self.max_epochs)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}
