"""IIMGF-Net vs MedMamba-T late fusion on two 224² images: parameters (total, used), MACs, CPU forward latency at
batch 1 and 2, and one Adam training step at batch 8 (8 Derm7pt tasks). ``run()`` returns rows for
docs/benchmarks.md. Few repetitions: the machine is shared, its load is recorded with every run."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from torch import nn

from benchmarks.timing import forward_seconds

TITLE = "IIMGF-Net: parameters, MACs, CPU latency and training step (two 224² images)"

AUTHORS_REGISTERED = 43_773_464  # the authors' IIMGF module, notes §1c (13,480,936 of them never reach the output)
MODELS = {"iimgf_net": {}, "late_fusion (medmamba_t)": {"backbone": "medmamba_t"}}


def _build(label: str, spec) -> nn.Module:
    from mmdiag import create_model

    name = label.split(" ")[0]
    return create_model(name, spec=spec, **MODELS[label])


def count_macs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Conv/Linear/matmul/einsum MACs (``FlopCounterMode`` / 2) plus every selective scan by the official
    ``flops_selective_scan_ref`` convention (SS2D: K·d_inner channels, CMM: d channels per scanned sequence)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmdiag.models.fusion.cmigf import CMM
    from mmdiag.models.layers.ss2d import SS2D, scan_macs

    scans = [0]

    def on_ss2d(m: SS2D, inp: tuple, out: torch.Tensor) -> None:
        b, h, w, _ = inp[0].shape
        scans[0] += b * m.macs(h, w)[1]

    def on_cmm(m: CMM, inp: tuple, out: tuple) -> None:
        b, length, d = inp[0].shape
        scans[0] += b * scan_macs(d, length, m.d_state) * (2 if m.both_outputs else 1)

    hooks = [m.register_forward_hook(on_ss2d) for m in model.modules() if isinstance(m, SS2D)]
    hooks += [m.register_forward_hook(on_cmm) for m in model.modules() if isinstance(m, CMM)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return fc.get_total_flops() // 2 + scans[0]


def _latency(model: nn.Module, batch: int, reps: int = 3) -> float:
    x = {m: torch.rand(batch, 3, 224, 224) for m in ("clinical", "dermoscopy")}
    return min(forward_seconds(model, x, reps))


def _train_step(model: nn.Module, spec, batch: int = 8, reps: int = 2) -> float:
    from mmdiag.training.losses import MultiTaskLoss

    loss_fn = MultiTaskLoss(spec.tasks, {t: 1 / len(spec.tasks) for t in spec.tasks})
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = {m: torch.rand(batch, 3, 224, 224) for m in ("clinical", "dermoscopy")}
    y = {t: torch.randint(0, s.num_outputs, (batch,)) for t, s in spec.tasks.items()}
    model.train()
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y)[0].backward()
        opt.step()
        times.append(time.perf_counter() - start)
    model.eval()
    return min(times[1:])


def run() -> list[dict[str, Any]]:
    from mmdiag.models.nets.iimgf_net import derm7pt_8task_spec

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    spec = derm7pt_8task_spec()
    rows = []
    for label in MODELS:
        model = _build(label, spec).eval()
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, {m: torch.rand(1, 3, 224, 224) for m in ("clinical", "dermoscopy")})
        load_before = os.getloadavg()[0]
        row = {"model": label, "params_m": params / 1e6, "macs_g": macs / 1e9,
               "fwd_b1_s": _latency(model, 1), "fwd_b2_s": _latency(model, 2), "train_b8_s": _train_step(model, spec),
               "load": f"{load_before:.1f}–{os.getloadavg()[0]:.1f}"}
        if label == "iimgf_net":
            row["authors_total_m"] = AUTHORS_REGISTERED / 1e6
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | params (M, all used) | authors' registered (M) | MACs (G, batch 1) | forward b1 (s) | "
             "forward b2 (s) | train step b8 (s) | 1-min load |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        authors = f"{r['authors_total_m']:.2f}" if "authors_total_m" in r else "—"
        lines.append(f"| {r['model']} | {r['params_m']:.3f} | {authors} | {r['macs_g']:.2f} | {r['fwd_b1_s']:.3f} | "
                     f"{r['fwd_b2_s']:.3f} | {r['train_b8_s']:.2f} | {r['load']} |")
    lines.append("")
    lines.append(f"CPU: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
                 "minimum of 3 forward / 2 training repetitions. Goal (issue 10): forward ≤ 0.4 s at batch 2.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(to_markdown(run()))
