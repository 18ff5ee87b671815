"""BatchNorm with statistics over the global batch under DDP, on any device (CPU/gloo included).

Choice: torch's ``nn.SyncBatchNorm`` (what Lightning's ``sync_batchnorm=True`` installs) refuses CPU modules, so DDP
on CPU processes would train a BatchNorm model differently from one process. :class:`GlobalBatchNorm` sums the
per-channel count, sum and sum of squares over the processes with a differentiable all-reduce (:class:`_SumOverRanks`,
whose backward all-reduces the gradients, as torch's SyncBatchNorm backward does), so the forward pass, the
gradients and the running statistics equal those of one process on the whole batch. ``train`` installs it through
Lightning's :class:`LayerSync` plugin for CPU runs and leaves GPU runs to torch's fused ``SyncBatchNorm``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["GlobalBatchNorm", "GlobalBatchNormSync"]


class _SumOverRanks(torch.autograd.Function):
    """Sum of a tensor over all processes; the gradient of every process's input is the sum of the processes'
    output gradients (each process's loss depends on every input through the shared sum)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm layer (any spatial rank) whose training-mode statistics cover every DDP process's batch.

    Outside training, or without an initialised process group of more than one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got {input.dim()} dimensions")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        x = input.double()  # sum of squares minus squared mean loses digits in float32
        count = torch.full((1,), input.numel() / input.shape[1], dtype=x.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = input.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(f * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - f).add_(f * (var * n / (n - 1)).to(self.running_var.dtype))
        shape = [1, c] + [1] * (input.dim() - 2)
        y = ((x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)).to(input.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _move_state(src: _BatchNorm, dst: _BatchNorm) -> _BatchNorm:
    """``dst`` takes over ``src``'s parameters and buffers (the same tensors, so optimizers keep tracking them)."""
    if src.affine:
        dst.weight, dst.bias = src.weight, src.bias
    dst.running_mean, dst.running_var = src.running_mean, src.running_var
    dst.num_batches_tracked = src.num_batches_tracked
    dst.train(src.training)
    return dst


class GlobalBatchNormSync(LayerSync):
    """Lightning plugin: every BatchNorm layer becomes a :class:`GlobalBatchNorm` for fitting and is turned back into
    its own class afterwards."""

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, _BatchNorm) and not isinstance(model, (GlobalBatchNorm, nn.SyncBatchNorm)):
            new = _move_state(model, GlobalBatchNorm(model.num_features, model.eps, model.momentum, model.affine,
                                                     model.track_running_stats))
            new._original_class = type(model)
            model = new
        for name, child in model.named_children():
            model.add_module(name, self.apply(child))
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        cls = getattr(model, "_original_class", None)  # set by apply
        if isinstance(model, GlobalBatchNorm) and cls is not None:
            model = _move_state(model, cls(model.num_features, model.eps, model.momentum, model.affine,
                                           model.track_running_stats))
        for name, child in model.named_children():
            model.add_module(name, self.revert(child))
        return model
