"""MedMamba-T/S/B against MONAI's ResNet-50 and DenseNet-121: parameters, MACs at 224² (both conventions), and CPU
training / inference throughput at batch 8. ``run()`` returns one row per model for docs/benchmarks.md.

MACs are counted on the meta device (no computation): MedMamba with :func:`count_macs` (conv + Linear, the paper's
convention, and the total with the SSM projections and scans), the CNNs with ``FlopCounterMode`` (FLOPs / 2).
Timings are the median of a few steps after warm-up, on whatever CPU threads torch uses here.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

BATCH = 8
SIZE = 224
WARMUP = 1  # untimed steps before each timed series (after the scan kernels are warmed up once, see _warm_scan)
STEPS = 3  # at most this many timed steps per series; the median is reported
PAIRS = 5  # MedMamba-T / ResNet-50 training steps taken in turn for the paired ratio
SERIES_BUDGET_S = 15.0  # stop a series early once its timed steps took this long (at least one step is timed)
# A MedMamba-B or ResNet-50 training step takes 5-27 s on the 2 shared cores here; the budget keeps the whole run
# near 3 minutes on an idle machine and under ~6 under heavy load.

TITLE = (f"MedMamba vs MONAI CNNs: parameters, MACs at {SIZE}², CPU throughput at batch {BATCH} "
         f"(median of up to {STEPS} steps after {WARMUP} warm-up)")


def _monai_resnet50(num_classes: int) -> nn.Module:
    from monai.networks.nets import resnet50

    return resnet50(spatial_dims=2, n_input_channels=3, num_classes=num_classes, conv1_t_stride=2)


def _monai_densenet121(num_classes: int) -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=num_classes)


def _medmamba(variant: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from mmdiag.models.backbones import medmamba

        return getattr(medmamba, f"medmamba_{variant}")(num_classes=num_classes)

    return build


RESNET = "MONAI ResNet-50 (stride-2 stem)"
MODELS: list[tuple[str, Callable[[int], nn.Module], bool]] = [  # (label, builder(num_classes), is MedMamba)
    ("MedMamba-T", _medmamba("t"), True),
    ("MedMamba-S", _medmamba("s"), True),
    ("MedMamba-B", _medmamba("b"), True),
    (RESNET, _monai_resnet50, False),
    ("MONAI DenseNet-121", _monai_densenet121, False),
]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(build: Callable[[int], nn.Module], is_medmamba: bool) -> tuple[int, int]:
    """(conv + Linear MACs, MACs with the SSM projections and scans) of one 224² image, counted on the meta device.

    For the CNNs both figures are FlopCounterMode's FLOPs / 2 (they have no scan).
    """
    with torch.device("meta"):
        model = build(1000)
    if is_medmamba:
        from mmdiag.models.backbones.medmamba import count_macs

        macs = count_macs(model, SIZE, 3)
        return macs.conv_linear, macs.total
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, SIZE, SIZE, device="meta"))
    flops = counter.get_total_flops() // 2
    return flops, flops


def _warm_scan() -> None:
    """Run the "auto" selective scan (fused C kernels on CPU) forward and backward once: the first call builds or
    loads the kernels, which must not land in a timed step."""
    from mmdiag.ops import selective_scan

    torch.manual_seed(0)
    b, d, n, l = 1, 8, 4, 16
    u, delta = torch.randn(b, d, l, requires_grad=True), torch.rand(b, d, l, requires_grad=True)
    A, B, C = -torch.rand(d, n, requires_grad=True), torch.randn(b, n, l), torch.randn(b, n, l)
    selective_scan(u, delta, A, B, C, torch.ones(d), torch.randn(b, d, l), torch.zeros(d), True).sum().backward()
    with torch.inference_mode():
        selective_scan(u, delta, A, B, C, torch.ones(d), None, torch.zeros(d), True)


def _median_seconds(step: Callable[[], None]) -> tuple[float, int]:
    """(median seconds, number of timed steps): up to STEPS steps after WARMUP, fewer past SERIES_BUDGET_S."""
    for _ in range(WARMUP):
        step()
    times: list[float] = []
    while len(times) < STEPS and sum(times) < SERIES_BUDGET_S:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def _training(build: Callable[[int], nn.Module]) -> tuple[nn.Module, Callable[[], None]]:
    """A model (1000 classes, train mode) and one AdamW training step of it on a fixed random batch of 8 at 224²."""
    torch.manual_seed(0)
    model = build(1000).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = torch.randint(0, 1000, (BATCH,))

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, train_step


def _timings(build: Callable[[int], nn.Module]) -> tuple[tuple[float, int], tuple[float, int]]:
    """(training step, inference batch) as (median seconds, timed steps) at batch 8, 224², 1000 classes."""
    model, train_step = _training(build)
    x = torch.randn(BATCH, 3, SIZE, SIZE)

    def infer_step() -> None:
        with torch.inference_mode():
            model(x)

    train_s = _median_seconds(train_step)
    model.eval()
    infer_s = _median_seconds(infer_step)
    del model, train_step
    gc.collect()
    return train_s, infer_s


def _paired_ratio() -> dict:
    """MedMamba-T's and ResNet-50's training steps taken in turn, PAIRS times after one warm-up step each, so that
    both see the same load: medians and the median of the per-pair time ratios."""
    steps = [_training(_medmamba("t"))[1], _training(_monai_resnet50)[1]]
    for step in steps:
        step()
    times: list[list[float]] = [[], []]
    for _ in range(PAIRS):
        for series, step in zip(times, steps):
            start = time.perf_counter()
            step()
            series.append(time.perf_counter() - start)
    ratios = [t / r for t, r in zip(*times)]
    return {"pair": True, "medmamba_s": statistics.median(times[0]), "resnet_s": statistics.median(times[1]),
            "ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios)}


def run() -> list[dict]:
    load_start = os.getloadavg()[0]
    _warm_scan()
    rows = []
    for label, build, is_medmamba in MODELS:
        log.info("bench_medmamba: %s", label)
        with torch.device("meta"):
            params, params7 = _params(build(1000)), _params(build(7))
        conv_linear, total = _macs(build, is_medmamba)
        (train_s, train_n), (infer_s, infer_n) = _timings(build)
        rows.append({"model": label, "params (1000 cls)": params, "params (7 cls)": params7,
                     "MACs conv+linear (G)": conv_linear / 1e9, "MACs with scan (G)": total / 1e9,
                     "train step (s, batch 8)": train_s, "train images/s": BATCH / train_s,
                     "inference images/s": BATCH / infer_s, "timed steps (train/inference)": f"{train_n}/{infer_n}"})
    log.info("bench_medmamba: MedMamba-T and ResNet-50 in turn")
    rows.append(_paired_ratio())
    rows.append({"note": f"threads={torch.get_num_threads()}, 1-min load average {load_start:.1f} at start and "
                         f"{os.getloadavg()[0]:.1f} at end"})
    return rows


def to_markdown(rows: list[dict]) -> str:
    models = [r for r in rows if "model" in r]
    pairs = [r for r in rows if "pair" in r]
    notes = [r["note"] for r in rows if "note" in r]
    lines = ["| model | params (1000 cls) | params (7 cls) | MACs conv+linear (G) | MACs with scan (G) | "
             "train step (s, batch 8) | train images/s | inference images/s | timed steps (train/inference) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['params (1000 cls)']:,} | {r['params (7 cls)']:,} | "
              f"{r['MACs conv+linear (G)']:.3f} | {r['MACs with scan (G)']:.3f} | {r['train step (s, batch 8)']:.2f} | "
              f"{r['train images/s']:.2f} | {r['inference images/s']:.2f} | {r['timed steps (train/inference)']} |"
              for r in models]
    lines += ["",
              f"Method: CPU, float32, random {SIZE}² inputs, 1000 classes. Training step = forward + cross-entropy + "
              f"backward + AdamW step (`model.train()`); inference = forward under `torch.inference_mode()` "
              f"(`model.eval()`). Each figure is the median of up to {STEPS} timed steps after {WARMUP} untimed step "
              f"(fewer once a series' timed steps pass {SERIES_BUDGET_S:.0f} s; see the last column); the "
              "selective scan (`mmdiag.ops`, impl \"auto\" = fused C kernels on CPU) is warmed up once before any "
              "timing. MACs per image: MedMamba from `count_macs` (conv + Linear = the paper's convention; \"with "
              "scan\" adds the SS2D x/dt projections and the scans), the CNNs from `FlopCounterMode` FLOPs / 2 (no "
              "scan, so both columns agree). MONAI's `resnet50` is built with `conv1_t_stride=2`, the ImageNet stem "
              "(its default stride-1 stem would quadruple the MACs). The machine's cores are "
              "shared with other jobs: timings vary with the load below."]
    lines += [f"Run: {n}." for n in notes]
    train = {r["model"]: r["train step (s, batch 8)"] for r in models}
    if "MedMamba-T" in train and RESNET in train:
        lines.append(f"MedMamba-T / ResNet-50 training-step time from the table (series measured one after the "
                     f"other, so load changes between them move it): {train['MedMamba-T'] / train[RESNET]:.2f}x.")
    for p in pairs:
        lines.append(f"Paired ({PAIRS} steps of each, taken in turn so that both see the same load): MedMamba-T "
                     f"{p['medmamba_s']:.2f} s, ResNet-50 {p['resnet_s']:.2f} s per training step (medians); "
                     f"per-pair ratio median **{p['ratio']:.2f}x** (range {p['min_ratio']:.2f}-{p['max_ratio']:.2f}).")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(to_markdown(run()))
