"""GlobalBatchNorm: two gloo processes on halves of a batch compute what one BatchNorm computes on the whole batch."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmdiag.training.sync_batchnorm import GlobalBatchNorm, GlobalBatchNormSync


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 3, 5, 5, generator=g) * 3 + 1, torch.randn(10, 3, 5, 5, generator=g)


def _reference() -> dict[str, torch.Tensor]:
    """Plain BatchNorm2d on the whole batch, the loss being the mean over the batch of a per-case loss."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    x, w = _batch()
    x.requires_grad_(True)
    loss = (bn(x) * w).pow(2).sum((1, 2, 3)).mean()
    loss.backward()
    return {"x.grad": x.grad, "weight.grad": bn.weight.grad, "bias.grad": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def _worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = GlobalBatchNormSync().apply(nn.Sequential(nn.BatchNorm2d(3)))[0]
    assert isinstance(bn, GlobalBatchNorm)
    x, w = _batch()
    x, w = x[rank * 5:(rank + 1) * 5].clone().requires_grad_(True), w[rank * 5:(rank + 1) * 5]
    loss = (bn(x) * w).pow(2).sum((1, 2, 3)).mean()
    loss.backward()
    for p in (bn.weight, bn.bias):  # what DDP does with parameter gradients: their mean over the processes
        dist.all_reduce(p.grad)
        p.grad /= 2
    queue.put((rank, {"x.grad": x.grad / 2, "weight.grad": bn.weight.grad, "bias.grad": bn.bias.grad,
                      "running_mean": bn.running_mean, "running_var": bn.running_var}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_batchnorm_on_the_whole_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ref = _reference()
    torch.testing.assert_close(torch.cat([got[0]["x.grad"], got[1]["x.grad"]]), ref["x.grad"])
    for r in (0, 1):
        for k in ("weight.grad", "bias.grad", "running_mean", "running_var"):
            torch.testing.assert_close(got[r][k], ref[k], msg=k)


def test_revert_gives_back_the_original_layers_with_the_same_tensors():
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm3d(4)))
    weight = model[1].weight
    synced = GlobalBatchNormSync().apply(model)
    assert isinstance(synced[1], GlobalBatchNorm) and isinstance(synced[2][0], GlobalBatchNorm)
    assert synced[1].weight is weight
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(synced[:2](x), nn.functional.batch_norm(model[0](x), None, None, weight,
                                                                          model[1].bias, training=True))
    back = GlobalBatchNormSync().revert(synced)
    assert type(back[1]) is nn.BatchNorm1d and type(back[2][0]) is nn.BatchNorm3d and back[1].weight is weight
