"""RemixFormer++ Table IX on CPU: peak memory above the model's own of plain ViT-S/16, Swin-T, Ours-C and Ours-D at
512² and 2048², batch 1 and 2, inference (no-grad fp32 forward, what the paper's numbers fit) and a training step
(forward + backward).

Every cell runs in a fresh Python process: the model and the input are built, the process's peak-RSS mark is reset
(``/proc/self/clear_refs`` = 5), the step runs, and the cell reports ``VmHWM − RSS before the step`` (the memory the
step itself needed: activations, attention matrices, gradients). Attention runs with PyTorch's math kernel (the
paper's explicit softmax(QKᵀ)V materialises each (heads, N, N) matrix); ``--attention default`` lets SDPA pick its
memory-efficient CPU kernel instead. A cell whose predicted peak exceeds ``LIMIT_GB`` is skipped with the estimate.

``python -m benchmarks.bench_remixformer`` prints the table; ``run()``/``to_markdown()`` feed ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TITLE = "RemixFormer++ Table IX: peak memory (CPU, MiB above the model's own)"
LIMIT_GB = 16.0
MODELS = ["vit_s", "swin_t", "ours_c", "ours_d"]
SIZES = [512, 2048]
BATCHES = [1, 2]
MODES = ["infer", "train"]
# Paper Table IX, torch.cuda.max_memory_allocated (MiB, V100): {(model, size, batch): MiB}
PAPER = {("vit_s", 512, 1): 268, ("vit_s", 512, 2): 351, ("vit_s", 2048, 1): 16906, ("vit_s", 2048, 2): 33865,
         ("swin_t", 512, 1): 204, ("swin_t", 512, 2): 299, ("swin_t", 2048, 1): 1675, ("swin_t", 2048, 2): 3170,
         ("ours_c", 512, 1): 241, ("ours_c", 512, 2): 291, ("ours_c", 2048, 1): 1000, ("ours_c", 2048, 2): 1779,
         ("ours_d", 512, 1): 194, ("ours_d", 512, 2): 224, ("ours_d", 2048, 1): 646, ("ours_d", 2048, 2): 1128}
NUM_CLASSES = 12


def _build(model: str, size: int, chunk: int, grad_checkpoint: bool):
    """The model of one row (12 classes), or a reason why it cannot be built here."""
    if model == "vit_s":
        from mmdiag.models.backbones.vit import VisionTransformer

        return VisionTransformer(img_size=size, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                                 num_classes=NUM_CLASSES)
    if model == "ours_d":
        from mmdiag.models.backbones.remixformer_dermoscopy import OursD

        return OursD(num_classes=NUM_CLASSES, img_size=size, chunk_size=chunk, grad_checkpoint=grad_checkpoint)
    from mmdiag import list_models

    name = {"swin_t": "swin_t", "ours_c": "remixformer_c"}[model]
    if name not in list_models():
        return f"{name} is not registered in this tree (clinical branch not merged)"
    from mmdiag.models import create_model

    return create_model(name, num_classes=NUM_CLASSES)


def _estimate_gb(model: str, size: int, batch: int, mode: str, attention: str, grad_checkpoint: bool) -> float:
    """Rough peak (GB) used only to skip cells that cannot fit: attention matrices of a plain ViT-S dominate."""
    if model != "vit_s" or attention != "math":
        return 0.0
    n = (size // 16) ** 2 + 1
    mat = batch * 6 * n * n * 4 / 1e9
    return mat * (2.2 if mode == "infer" else 2 * 12 + 2)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cell(model: str, size: int, batch: int, mode: str, attention: str, chunk: int, grad_checkpoint: bool) -> dict:
    """Run one cell in this process and return its row."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    net = _build(model, size, chunk, grad_checkpoint)
    if isinstance(net, str):
        return {"skipped": net}
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(batch, 3, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    net.train(mode == "train")
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    backends = [SDPBackend.MATH] if attention == "math" else list(SDPBackend)
    with sdpa_kernel(backends):
        if mode == "infer":
            with torch.no_grad():
                net(x)
        else:
            torch.nn.functional.cross_entropy(net(x), y).backward()
    seconds = time.perf_counter() - start
    return {"peak_mib": (_rss_kib("VmHWM") - base) / 1024, "params": params, "seconds": seconds}


def _run_cell(model: str, size: int, batch: int, mode: str, attention: str, chunk: int, grad_checkpoint: bool,
              timeout: float) -> dict:
    row = {"model": model, "size": size, "batch": batch, "mode": mode, "attention": attention, "chunk": chunk,
           "grad_checkpoint": grad_checkpoint}
    est = _estimate_gb(model, size, batch, mode, attention, grad_checkpoint)
    if est > LIMIT_GB:
        return {**row, "skipped": f"needs about {est:.0f} GB (> {LIMIT_GB:.0f} GB)"}
    cmd = [sys.executable, "-m", "benchmarks.bench_remixformer", "--cell", model, str(size), str(batch), mode,
           "--attention", attention, "--chunk", str(chunk)] + (["--grad-checkpoint"] if grad_checkpoint else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                             cwd=Path(__file__).resolve().parent.parent, env=os.environ)
    except subprocess.TimeoutExpired:
        return {**row, "skipped": f"ran past {timeout:.0f} s"}
    if out.returncode:
        return {**row, "skipped": f"failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:]}"}
    return {**row, **json.loads(out.stdout.strip().splitlines()[-1])}


def run(models: list[str] | None = None, modes: list[str] | None = None, sizes: list[int] | None = None,
        batches: list[int] | None = None, attention: str = "math", chunk: int = 16, grad_checkpoint: bool = False,
        timeout: float = 1800.0) -> list[dict[str, Any]]:
    """Every (model, size, batch, mode) cell, each in its own process."""
    rows = []
    for mode in modes or MODES:
        for model in models or MODELS:
            for size in sizes or SIZES:
                for batch in batches or BATCHES:
                    row = _run_cell(model, size, batch, mode, attention, chunk,
                                    grad_checkpoint and model == "ours_d" and mode == "train", timeout)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| mode | model | size | batch | peak MiB (CPU) | paper max MiB (V100) | s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = PAPER.get((r["model"], r["size"], r["batch"]), "")
        note = r.get("skipped", "") or (f"chunk {r['chunk']}" + (", checkpointed" if r["grad_checkpoint"] else "")
                                        if r["model"] == "ours_d" else "")
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "—"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
        lines.append(f"| {r['mode']} | {r['model']} | {r['size']}² | {r['batch']} | {peak} | "
                     f"{paper if r['mode'] == 'infer' else ''} | {secs} | {note} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", nargs=4, metavar=("MODEL", "SIZE", "BATCH", "MODE"), help="run one cell (internal)")
    p.add_argument("--models", nargs="+", choices=MODELS)
    p.add_argument("--modes", nargs="+", choices=MODES)
    p.add_argument("--sizes", nargs="+", type=int)
    p.add_argument("--batches", nargs="+", type=int)
    p.add_argument("--attention", choices=["math", "default"], default="math")
    p.add_argument("--chunk", type=int, default=16, help="Ours-D windows encoded at once")
    p.add_argument("--grad-checkpoint", action="store_true", help="Ours-D training step with window checkpointing")
    args = p.parse_args()
    if args.cell:
        model, size, batch, mode = args.cell
        print(json.dumps(_cell(model, int(size), int(batch), mode, args.attention, args.chunk,
                               args.grad_checkpoint)))
        return
    rows = run(args.models, args.modes, args.sizes, args.batches, args.attention, args.chunk, args.grad_checkpoint)
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
