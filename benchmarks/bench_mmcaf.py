"""MMCAF-Net's image side on one CT window ``[1, 1, 12, 192, 192]`` on CPU: PENet-50 alone, the full image encoder
(PENet + E3D-MSCA/BFPU pyramid + head) and the whole model (with the KAN record encoder and MSCA fusion).

Per model, in a fresh process: forward time (eval, no gradients; best of a few after a warm-up), the time of one
training step of the stage that trains it (PENet: all of it; image encoder: pyramid + head with PENet frozen; whole
model: record encoder + fusion + classifier with the image encoder frozen), and the peak RSS. Then the image
encoder's forward time per module (forward hooks) and its parameters per module against the notes' counts.
The authors' PENet forward takes ≈ 3.4 s on this machine (notes §10).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch

from benchmarks.timing import forward_seconds

log = logging.getLogger(__name__)

TITLE = "MMCAF-Net image side on [1, 1, 12, 192, 192]: CPU forward, training step, peak memory, cost per module"
SHAPE = (1, 1, 12, 192, 192)
REPEATS = 2
AUTHORS_PENET_FORWARD_S = 3.4
NOTES_PARAMS = {  # module: the notes' count (§2.3-2.4, §3, §4)
    "CAB 256/512/1024": "8k / 33k / 131k", "DCFB 256/512/1024": "0.35M / 1.21M / 4.53M",
    "UCB 512→256 / 1024→512": "0.15M / 0.55M", "SAB": "686", "BFPU 512 / 1024": "14.4M / 57.4M",
    "KAN 7→24": "1,680", "MSCA + BSF": "4,848"}

STAGE = {"PENet-50": "penet", "image encoder": "image", "MMCAF-Net": "fusion"}


def _build(stage: str) -> torch.nn.Module:
    from mmdiag import create_model

    logging.getLogger("mmdiag").setLevel(logging.ERROR)  # "no init_run" warnings
    torch.manual_seed(0)
    return create_model("mmcaf_net", num_classes=2, stage=stage)


def _inputs() -> dict[str, torch.Tensor]:
    return {"ct": torch.rand(*SHAPE), "record": torch.rand(1, 14) * 2 - 1}


def _measure_child(stage: str) -> dict[str, float]:
    """Forward and training-step seconds and peak RSS of one stage's model, in this (fresh) process."""
    model = _build(stage)
    x = _inputs()
    times = forward_seconds(model.eval(), x, REPEATS)
    model.train()
    if stage == "fusion":  # MSCA's BatchNorm1d (authors' design) needs two cases in training
        x = {k: torch.cat([v, v]) for k, v in x.items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    y = torch.ones(len(x["ct"]), dtype=torch.long)
    steps = []
    for i in range(2):  # one warm-up step, one timed (a pyramid step takes minutes on a loaded 2-core machine)
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x)["diagnosis"], y).backward()
        opt.step()
        if i:
            steps.append(time.perf_counter() - start)
    return {"forward_s": min(times), "train_step_s": min(steps),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def _module_costs() -> list[dict[str, Any]]:
    """Forward seconds per module of the image encoder (eval, no gradients, best of ``REPEATS``)."""
    model = _build("image").eval()
    enc, pyr = model.image, model.image.pyramid
    parts = {"PENet stem + pool": [enc.backbone.stem, enc.backbone.pool]}
    parts.update({f"PENet stage {i}": [s] for i, s in enumerate(enc.backbone.stages)})
    parts.update({f"level pre-norm {i}": [p] for i, p in enumerate(pyr.pre)})
    parts.update({f"CAB {i}": [m.cab] for i, m in enumerate(pyr.msca)})
    parts.update({f"DCFB {i}": [m.dcfb] for i, m in enumerate(pyr.msca)})
    parts["SAB (shared)"] = [pyr.sab]
    parts.update({f"UCB {i}": [u] for i, u in enumerate(pyr.ucb)})
    parts.update({f"BFPU {i}": [b] for i, b in enumerate(pyr.bfpu)})
    parts["head"] = [enc.head]
    spent = {k: 0.0 for k in parts}
    handles, started = [], {}
    for name, mods in parts.items():
        for m in mods:
            handles.append(m.register_forward_pre_hook(
                lambda mod, a: started.__setitem__(id(mod), time.perf_counter())))
            handles.append(m.register_forward_hook(
                lambda mod, a, o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter() - started[id(mod)])))
    x = _inputs()
    best: dict[str, float] = {}
    total = float("inf")
    with torch.no_grad():
        model(x)
        for _ in range(REPEATS):
            spent.update({k: 0.0 for k in spent})
            start = time.perf_counter()
            model(x)
            took = time.perf_counter() - start
            if took < total:
                total, best = took, dict(spent)
    for h in handles:
        h.remove()
    n = {name: sum(p.numel() for m in mods for p in m.parameters()) for name, mods in parts.items()}
    return [{"kind": "module", "module": k, "seconds": v, "share": v / total, "params": n[k]} for k, v in best.items()]


def _param_rows() -> list[dict[str, Any]]:
    with torch.device("meta"):
        model = _build("fusion")
    pyr = model.image.pyramid

    def n(*mods: torch.nn.Module) -> list[int]:
        return [sum(p.numel() for p in m.parameters()) for m in mods]

    ours = {"CAB 256/512/1024": n(*(m.cab for m in pyr.msca)), "DCFB 256/512/1024": n(*(m.dcfb for m in pyr.msca)),
            "UCB 512→256 / 1024→512": n(*pyr.ucb), "SAB": n(pyr.sab), "BFPU 512 / 1024": n(*pyr.bfpu),
            "KAN 7→24": n(model.tabular), "MSCA + BSF": n(model.fusion)}
    return [{"kind": "params", "module": k, "ours": " / ".join(f"{v:,}" for v in ours[k]), "notes": NOTES_PARAMS[k]}
            for k in NOTES_PARAMS]


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"kind": "load", "uptime": os.popen("uptime").read().strip(),
                                   "threads": torch.get_num_threads()}]
    rows += _param_rows()
    for label, stage in STAGE.items():  # cheapest first; each row is logged as it comes
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows.append({"kind": "model", "model": label, **pool.submit(_measure_child, stage).result()})
        log.info("%s", rows[-1])
        if stage == "image":
            rows += _module_costs()
            log.info("%s", [r for r in rows if r["kind"] == "module"])
    rows.append({"kind": "load", "uptime": os.popen("uptime").read().strip(), "threads": torch.get_num_threads()})
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    loads = [r["uptime"].split("load average:")[-1].strip() for r in rows if r["kind"] == "load"]
    out = [f"Load average before / after: {loads[0]} / {loads[-1]}; {rows[0]['threads']} torch threads. "
           f"Forward: best of {REPEATS} after a warm-up; training step: one after a warm-up step. Authors' PENet forward: ≈ {AUTHORS_PENET_FORWARD_S} s (notes §10).", "",
           "| model | params (M) | trainable in its stage (M) | forward (s) | training step (s) | peak RSS (MB) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "model":
            out.append(f"| {r['model']} | {r['params_m']:.2f} | {r['trainable_m']:.2f} | {r['forward_s']:.2f} | "
                       f"{r['train_step_s']:.2f} | {r['peak_mb']:.0f} |")
    out += ["", "Image encoder forward by module:", "", "| module | params | s | share |", "|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "module":
            out.append(f"| {r['module']} | {r['params']:,} | {r['seconds']:.3f} | {100 * r['share']:.1f} % |")
    out += ["", "Parameters per module against the notes:", "", "| module | ours | notes |", "|---|---|---|"]
    out += [f"| {r['module']} | {r['ours']} | {r['notes']} |" for r in rows if r["kind"] == "params"]
    return "\n".join(out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(to_markdown(run()))
