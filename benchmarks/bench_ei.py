"""EI and its Table 3 baselines: trainable/total parameters on ViT-B VFMs (meta device, compared with the paper), CPU
time and peak memory of one training step of EI vs CosCat (ViT-S/14, 224 px, batch 8), and inference latency per
case. ``run()`` returns rows for docs/benchmarks.md."""

from __future__ import annotations

import logging
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch

from benchmarks.timing import forward_seconds

TITLE = "EI and the Table 3 baselines: parameters, CPU training step, inference latency"

BASELINES = ["coscat", "dynmm", "mm_mil", "sfusion", "raddiag", "mmrad", "mm_mil_mor", "mmrad_mor", "unimodel"]
# EI paper Table 3, "Params. (M)": trainable parameters averaged over MMC-AMD, Derm7pt and MRNet.
PAPER = {"clip_vit_b16": {"raddiag": 212.2, "dynmm": 402.2, "mm_mil": 202.5, "coscat": 201.0, "sfusion": 263.4,
                          "mmrad": 9.3, "ei": 8.9, "mm_mil_mor": 5.0, "mmrad_mor": 12.5, "unimodel": 1.5},
         "dinov2_vitb14_reg": {"sfusion": 265.8, "dynmm": 404.3, "coscat": 202.0, "raddiag": 213.3, "mm_mil": 203.6,
                               "mmrad": 9.3, "ei": 8.9, "mm_mil_mor": 5.0, "mmrad_mor": 12.5, "unimodel": 1.5}}
SMALL_VFM = "dinov2_vits14_reg"


def _spec(name: str, views: list[str], side: int, channels: int, task: dict[str, Any]):
    from mmdiag.data.schema import DatasetSpec

    return DatasetSpec.model_validate({
        "name": name, "tasks": {"t": task},
        "modalities": {v: {"kind": "image", "channels": channels, "size": [side, side]} for v in views}})


def _table3_specs() -> list:
    """MMC-AMD (2 views, 448 px, 4 classes), Derm7pt (2, 512 px, 5), MRNet (3 planes of 4 RGB slices, 256 px, 3)."""
    return [_spec("mmc_amd", ["cfp", "oct"], 448, 3, {"type": "multiclass", "classes": list("abcd")}),
            _spec("derm7pt", ["clinic", "derm"], 512, 3, {"type": "multiclass", "classes": list("abcde")}),
            _spec("mrnet", ["axial", "coronal", "sagittal"], 256, 12, {"type": "multilabel", "classes": list("abc")})]


def _methods() -> list[str]:
    from mmdiag import list_models

    return BASELINES + (["ei"] if "ei" in list_models() else [])


def _param_rows() -> list[dict[str, Any]]:
    from mmdiag.evaluation.param_table import parameter_table

    rows = []
    for vfm, paper in PAPER.items():
        for name in _methods():
            counts = [parameter_table([name], s, vfm=vfm)[0] for s in _table3_specs()]
            rows.append({"kind": "params", "method": name, "vfm": vfm,
                         "trainable_m": sum(c["trainable"] for c in counts) / 3e6,
                         "total_m": sum(c["total"] for c in counts) / 3e6, "paper_m": paper.get(name)})
    return rows


def _small_spec():
    return _spec("two_views_224", ["a", "b"], 224, 3, {"type": "multiclass", "classes": list("abcd")})


def _loss(loss_fn, out: dict[str, Any], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training system's objective: task loss, weighted auxiliary logit terms and ready scalar terms."""
    from mmdiag.training.system import AUX_KEY

    total, _ = loss_fn({t: out[t] for t in labels}, labels)
    for weight, logits in out.get(AUX_KEY, {}).values():
        total = total + weight * loss_fn(logits, labels)[0]
    for weight, value in out.get("aux_loss", {}).values():
        total = total + weight * value
    return total


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _train_step_child(name: str, steps: int, batch: int, grad_checkpointing: bool = False,
                      fixed_mmap_threshold: bool = False) -> dict[str, float]:
    """In a fresh process: seconds per SGD training step and memory (peak RSS, and its growth during training).

    ``fixed_mmap_threshold`` fixes glibc's mmap threshold as checkpointing does by itself (``limit_heap_retention``),
    to tell the allocator's share of the memory from the recomputation's.
    """
    from mmdiag import create_model
    from mmdiag.models.layers.recompute import limit_heap_retention
    from mmdiag.training.losses import MultiTaskLoss

    if fixed_mmap_threshold:
        limit_heap_retention()

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    spec = _small_spec()
    extra = {"grad_checkpointing": True} if grad_checkpointing else {}
    model = create_model(name, spec=spec, vfm=SMALL_VFM, **extra).train()
    loss_fn = MultiTaskLoss(spec.tasks)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.95)
    x = {m: torch.rand(batch, 3, 224, 224) for m in spec.modalities}
    y = {"t": torch.randint(0, 4, (batch,))}
    before = _rss_mb()

    def step() -> None:
        opt.zero_grad()
        _loss(loss_fn, model(x), y).backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": seconds, "peak_mb": peak, "growth_mb": peak - before, "trainable_m": trainable / 1e6}


def _train_rows(steps: int = 3, batch: int = 8) -> list[dict[str, Any]]:
    from mmdiag import list_models

    rows = []
    for name, ckpt, fixed in [("ei", False, False), ("ei", False, True), ("ei", True, False), ("coscat", False, False)]:
        label = name + (" + grad_checkpointing" if ckpt else "") + (", glibc mmap threshold fixed" if fixed else "")
        if name not in list_models():
            gap = "not registered (src/mmdiag/models/nets/ei.py missing when the benchmark ran)"
            rows.append({"kind": "train", "method": label, "gap": gap})
            continue
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            measured = pool.submit(_train_step_child, name, steps, batch, ckpt, fixed).result()
        rows.append({"kind": "train", "method": label, **measured})
    return rows


def _latency_rows(repeats: int = 5) -> list[dict[str, Any]]:
    """Best-of-``repeats`` seconds of one case (batch 1, eval, no gradients), two views at 224 px, ViT-S/14."""
    from mmdiag import create_model

    logging.disable(logging.WARNING)
    spec = _small_spec()
    x = {m: torch.rand(1, 3, 224, 224) for m in spec.modalities}
    rows = []
    for name in _methods():
        torch.manual_seed(0)
        model = create_model(name, spec=spec, vfm=SMALL_VFM).eval()
        rows.append({"kind": "latency", "method": name, "seconds": min(forward_seconds(model, x, repeats))})
    logging.disable(logging.NOTSET)
    return rows


def run() -> list[dict[str, Any]]:
    return _param_rows() + _train_rows() + _latency_rows()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    def paper(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    out = ["Trainable / total parameters (millions), averaged over the three Table 3 datasets as the paper does "
           "(MMC-AMD 2 views at 448 px, Derm7pt 2 at 512, MRNet 3 planes of 4 slices at 256), built on the meta "
           "device:", "", "| method | VFM | trainable (M) | total (M) | paper trainable (M) |", "|---|---|---|---|---|"]
    out += [f"| {r['method']} | {r['vfm']} | {r['trainable_m']:.2f} | {r['total_m']:.1f} | {paper(r['paper_m'])} |"
            for r in rows if r["kind"] == "params"]
    out += ["", f"One training step (forward, backward, SGD) on CPU, {SMALL_VFM}, 2 views at 224x224, batch 8; "
            "memory = peak RSS of a fresh process and its growth during training. `grad_checkpointing` recomputes the "
            "VFM blocks and fixes glibc's mmap threshold (`mmdiag.models.layers.recompute`); the row `glibc mmap "
            "threshold fixed` does only the latter, without recomputation:", "",
            "| method | trainable (M) | s / step | peak RSS (MB) | growth in training (MB) |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "train":
            out.append(f"| {r['method']} | {r['gap']} | | | |" if "gap" in r else
                       f"| {r['method']} | {r['trainable_m']:.2f} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
                       f"{r['growth_mb']:.0f} |")
    out += ["", f"Inference latency per case (batch 1, eval, no gradients, CPU, {SMALL_VFM}, 2 views at 224x224, "
            "best of 5):", "", "| method | ms / case |", "|---|---|"]
    out += [f"| {r['method']} | {1000 * r['seconds']:.0f} |" for r in rows if r["kind"] == "latency"]
    return "\n".join(out)


if __name__ == "__main__":
    print(to_markdown(run()))
