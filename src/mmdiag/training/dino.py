"""DINO self-distillation (Caron et al., ICCV 2021) of a ViT window encoder, as RemixFormer++ §III-C / §IV-B use it.

Pieces (the official ``facebookresearch/dino`` recipe unless marked):

* :class:`MultiCrop`: 2 global views (RandomResizedCrop scale 0.4-1, bicubic) and ``n_local`` local views (scale
  0.05-0.4) per window, with horizontal flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, Gaussian
  blur (σ 0.1-2; p 1.0 / 0.1 on the two global views, 0.5 on the locals) and solarisation at 0.5 (p 0.2, second global
  view only), on batches with kornia. Deviation: DINO blurs with PIL ``GaussianBlur(radius)``; PIL's radius is the
  standard deviation, so σ is drawn from the same range, with a kernel of ``2·ceil(3σ_max)+1`` = 13 px.
* :class:`DINOHead`: Linear-GELU-Linear-GELU-Linear (hidden 2048, bottleneck 256), L2 normalisation, weight-normalised
  bias-free Linear to ``out_dim`` (65,536) whose norm ``g`` starts at 1 and is frozen with ``norm_last_layer``.
* :class:`DINOLoss`: cross-entropy between the centred, sharpened teacher distribution of each global view and the
  student distribution of every other view (student τ 0.1; teacher τ linearly 0.04 → 0.07 over the first 30 epochs,
  RemixFormer++'s setting), centre EMA 0.9 updated after the loss (averaged over processes when distributed).
* :func:`cosine_schedule`: per-iteration cosine values with a linear warm-up (learning rate: 5e-4·batch/256 after 10
  warm-up epochs → 1e-6; weight decay 0.04 → 0.4; teacher momentum 0.996 → 1).
* :class:`DINOModule`: the Lightning module: student (drop-path 0.1) and EMA teacher (a copy, no gradients, global views
  only), AdamW with no decay on biases and 1-D parameters, per-parameter gradient clipping at 3.0, the last layer's
  gradient cancelled during the first ``freeze_last_layer`` epochs.
"""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmdiag.errors import ConfigError

__all__ = ["MultiCrop", "DINOHead", "DINOLoss", "cosine_schedule", "DINOModule", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiCrop(nn.Module):
    """Multi-crop views of a batch of windows ``(B, 3, H, W)`` in [0, 1]: a list of 2 + ``n_local`` normalised batches.

    Args:
        global_size: side of the two global views (RemixFormer++: 256).
        local_size: side of the local views (96).
        n_local: number of local views (DINO default 8).
        global_scale: area range of the global crops.
        local_scale: area range of the local crops.
    """

    def __init__(self, global_size: int = 256, local_size: int = 96, n_local: int = 8,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4)):
        super().__init__()
        import kornia.augmentation as K

        if n_local < 0 or global_size < 1 or local_size < 1:
            raise ConfigError(f"multi-crop: n_local={n_local} must be >= 0, sizes ({global_size}, {local_size}) > 0")
        self.n_local = n_local

        def colour() -> list[nn.Module]:
            return [K.RandomHorizontalFlip(p=0.5), K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
                    K.RandomGrayscale(p=0.2)]

        def blur(p: float) -> nn.Module:
            return K.RandomGaussianBlur((13, 13), (0.1, 2.0), p=p)

        norm = K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD))
        crop_g = dict(size=(global_size, global_size), scale=global_scale, resample="BICUBIC")
        self.global1 = K.AugmentationSequential(K.RandomResizedCrop(**crop_g), *colour(), blur(1.0), norm)
        self.global2 = K.AugmentationSequential(K.RandomResizedCrop(**crop_g), *colour(), blur(0.1),
                                                K.RandomSolarize(thresholds=0.0, additions=0.0, p=0.2), norm)
        self.local = K.AugmentationSequential(
            K.RandomResizedCrop(size=(local_size, local_size), scale=local_scale, resample="BICUBIC"), *colour(),
            blur(0.5), norm)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        views = [self.global1(x), self.global2(x)]
        return views + [self.local(x) for _ in range(self.n_local)]


class DINOHead(nn.Module):
    """DINO projection head: MLP → L2 normalisation → weight-normalised linear layer (no bias).

    Args:
        in_dim: backbone feature width.
        out_dim: number of prototypes (65,536).
        hidden_dim: MLP width (2048).
        bottleneck_dim: MLP output width (256).
        nlayers: MLP layers (3).
        norm_last_layer: freeze the weight norm ``g`` of the last layer at 1.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if nlayers < 1:
            raise ConfigError(f"DINO head: nlayers={nlayers} must be >= 1")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class DINOLoss(nn.Module):
    """Cross-entropy of student views against the centred, sharpened teacher global views (module docstring).

    Args:
        out_dim: head output width (size of the centre).
        n_views: total views per window (2 global + locals).
        epochs: length of training (the teacher-temperature schedule covers it).
        warmup_teacher_temp: teacher τ at epoch 0 (0.04).
        teacher_temp: teacher τ after the warm-up (0.07).
        warmup_teacher_temp_epochs: linear warm-up length (30).
        student_temp: student τ (0.1).
        center_momentum: EMA momentum of the centre (0.9).
    """

    def __init__(self, out_dim: int, n_views: int, epochs: int, warmup_teacher_temp: float = 0.04,
                 teacher_temp: float = 0.07, warmup_teacher_temp_epochs: int = 30, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.n_views = n_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        warm = min(warmup_teacher_temp_epochs, epochs)
        self.teacher_temps = np.concatenate([np.linspace(warmup_teacher_temp, teacher_temp, warm),
                                             np.full(max(epochs - warm, 0), teacher_temp)])

    def teacher_temp(self, epoch: int) -> float:
        """Teacher temperature of ``epoch`` (the last value beyond the schedule)."""
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int) -> torch.Tensor:
        """Loss of one batch; ``student_out`` stacks the ``n_views`` views, ``teacher_out`` the 2 global ones."""
        student = (student_out / self.student_temp).chunk(self.n_views)
        teacher = F.softmax((teacher_out - self.center) / self.teacher_temp(epoch), dim=-1).detach().chunk(2)
        total, terms = student_out.new_zeros(()), 0
        for i, t in enumerate(teacher):
            for v, s in enumerate(student):
                if v == i:
                    continue
                total = total + torch.sum(-t * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
        self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = teacher_out.sum(dim=0, keepdim=True)
        count = torch.tensor(float(len(teacher_out)), device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_center / count, alpha=1 - self.center_momentum)


def cosine_schedule(base: float, final: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear ``warmup_start`` → ``base`` in the warm-up, then cosine ``base`` → ``final``."""
    warm = np.linspace(warmup_start, base, warmup_epochs * steps_per_epoch) if warmup_epochs > 0 else np.array([])
    it = np.arange(epochs * steps_per_epoch - len(warm))
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * it / max(len(it), 1)))
    return np.concatenate([warm, cos])


class DINOModule(L.LightningModule):
    """Student + EMA teacher (backbone + :class:`DINOHead`) trained with :class:`DINOLoss` on multi-crop views.

    Args:
        backbone: the student backbone; ``forward`` must return the pooled [CLS] feature ``(B, num_features)`` and
            accept every view size (e.g. a ViT with run-time position resampling).
        crops: the :class:`MultiCrop` augmentation (run on the training device).
        epochs: training length, for the schedules.
        steps_per_epoch: optimiser steps per epoch, for the schedules.
        lr: base learning rate for a batch of 256 (scaled linearly by ``batch_size / 256``).
        batch_size: windows per step (for the learning-rate scaling).
        min_lr, warmup_epochs, weight_decay, weight_decay_end, momentum_teacher, clip_grad, freeze_last_layer:
            the DINO recipe values (module docstring).
        head: :class:`DINOHead` options (``out_dim``, ``hidden_dim``, ``bottleneck_dim``, ``norm_last_layer``).
        loss: :class:`DINOLoss` temperature options.
    """

    def __init__(self, backbone: nn.Module, crops: MultiCrop, *, epochs: int, steps_per_epoch: int,
                 lr: float = 5e-4, batch_size: int = 256, min_lr: float = 1e-6, warmup_epochs: int = 10,
                 weight_decay: float = 0.04, weight_decay_end: float = 0.4, momentum_teacher: float = 0.996,
                 clip_grad: float = 3.0, freeze_last_layer: int = 1, head: dict | None = None,
                 loss: dict | None = None):
        super().__init__()
        width = getattr(backbone, "num_features", None)
        if width is None:
            raise ConfigError(f"DINO: backbone {type(backbone).__name__} has no num_features")
        self.student = nn.ModuleDict({"backbone": backbone, "head": DINOHead(width, **(head or {}))})
        self.teacher = copy.deepcopy(self.student)
        for m in self.teacher.modules():  # the teacher runs without stochastic depth
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
        self.teacher.requires_grad_(False)
        self.crops = crops
        out_dim = self.student["head"].last_layer.out_features
        self.loss_fn = DINOLoss(out_dim, 2 + crops.n_local, epochs, **(loss or {}))
        self.lr_schedule = cosine_schedule(lr * batch_size / 256, min_lr, epochs, steps_per_epoch,
                                           min(warmup_epochs, max(epochs - 1, 0)))
        self.wd_schedule = cosine_schedule(weight_decay, weight_decay_end, epochs, steps_per_epoch)
        self.momentum_schedule = cosine_schedule(momentum_teacher, 1.0, epochs, steps_per_epoch)
        self.clip_grad = clip_grad
        self.freeze_last_layer = freeze_last_layer
        self.history: list[float] = []

    def _step_value(self, schedule: np.ndarray) -> float:
        return float(schedule[min(self.global_step, len(schedule) - 1)])

    def _forward(self, net: nn.ModuleDict, views: list[torch.Tensor]) -> torch.Tensor:
        """Backbone over runs of same-size views (one call per resolution), then the head over all."""
        feats, i = [], 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape[-1] == views[i].shape[-1]:
                j += 1
            feats.append(net["backbone"](torch.cat(views[i:j])))
            i = j
        return net["head"](torch.cat(feats))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        for k, group in enumerate(opt.param_groups):
            group["lr"] = self._step_value(self.lr_schedule)
            if k == 0:
                group["weight_decay"] = self._step_value(self.wd_schedule)
        views = self.crops(batch)
        with torch.no_grad():
            teacher_out = self._forward(self.teacher, views[:2])
        loss = self.loss_fn(self._forward(self.student, views), teacher_out, self.current_epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DINO loss is {loss.item()} at step {self.global_step}; lower the learning rate")
        self.history.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/teacher_temp", self.loss_fn.teacher_temp(self.current_epoch))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.clip_grad:
            for p in self.student.parameters():  # per-parameter norm, as DINO's utils.clip_gradients
                if p.grad is not None:
                    norm = p.grad.detach().norm(2)
                    p.grad.mul_(torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0))
        if self.current_epoch < self.freeze_last_layer:
            for p in self.student["head"].last_layer.parameters():
                p.grad = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001 - Lightning hook
        m = self._step_value(self.momentum_schedule)
        with torch.no_grad():
            for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                 lr=float(self.lr_schedule[0]))

    def backbone_state(self, which: str = "teacher") -> dict[str, torch.Tensor]:
        """State dict of the teacher's or the student's backbone (mmdiag/timm ViT names)."""
        if which not in ("teacher", "student"):
            raise ConfigError(f"DINO export: which={which!r} is not one of ['teacher', 'student']")
        net = self.teacher if which == "teacher" else self.student
        return {k: v.detach().cpu() for k, v in net["backbone"].state_dict().items()}
