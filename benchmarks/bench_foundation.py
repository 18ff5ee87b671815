"""Foundation benchmarks: demo wall time, training throughput of each baseline, data loading with and without the
decode cache. ``run()`` returns rows for docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TITLE = "Foundation: demo, baseline training throughput, data loading"


def _train_throughput(name: str, options: dict, steps: int = 30, batch: int = 32) -> float:
    """Cases per second of forward + backward + AdamW step on synthetic 32x32 batches (data already in memory)."""
    from mmdiag import create_model
    from mmdiag.data.synthetic import synthetic
    from mmdiag.training.losses import MultiTaskLoss

    spec = synthetic(n_cases=40).spec
    torch.manual_seed(0)
    model = create_model(name, spec=spec, **options).train()
    loss_fn = MultiTaskLoss(spec.tasks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = {"clinical": torch.rand(batch, 3, 32, 32), "dermoscopy": torch.rand(batch, 3, 32, 32),
         "record": torch.randn(batch, 9)}
    y = {"diagnosis": torch.randint(0, 8, (batch,))}

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)[0].backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def _loading_throughput(n: int = 200, side: int = 512, size: int = 224) -> dict[str, float]:
    """Cases per second through the data loader (2 JPEG modalities of side x side, resized to size), first epoch
    without cache, first epoch filling the cache, and a warm epoch."""
    from PIL import Image

    from mmdiag.config.schema import DataConfig
    from mmdiag.data.datamodule import MultimodalDataModule
    from mmdiag.data.manifest import load_manifest_dataset

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        rows = ["case_id,a,b,y"]
        for i in range(n):
            for m in ("a", "b"):
                Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"{m}{i}.jpg",
                                                                                           quality=90)
            rows.append(f"c{i},a{i}.jpg,b{i}.jpg,{i % 2}")
        (root / "cases.csv").write_text("\n".join(rows) + "\n")
        (root / "d.yaml").write_text(
            "name: bench\nmanifest: cases.csv\nmodalities:\n"
            f"  a: {{kind: image, size: [{size}, {size}]}}\n  b: {{kind: image, size: [{size}, {size}]}}\n"
            "tasks:\n  y: {type: binary, classes: ['0', '1']}\n")
        table = load_manifest_dataset(root / "d.yaml")

        def epoch(cache_dir):
            cfg = DataConfig(batch_size=32, verify=False, cache_dir=cache_dir, split={"kind": "kfold", "folds": 2})
            dm = MultimodalDataModule(table, cfg)
            dm.setup()
            ds = dm.datasets["train"]
            ds.indices = list(range(n))  # every case, whatever the split
            start = time.perf_counter()
            for _ in dm.loader("train"):
                pass
            return n / (time.perf_counter() - start)

        out["no cache"] = epoch(None)
        cache = str(root / "cache")
        out["cache, cold (filling)"] = epoch(cache)
        out["cache, warm"] = epoch(cache)
    return out


def _demo_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmdiag", "demo", "--output", str(Path(tmp) / "demo")], check=True,
                       capture_output=True)
        return time.perf_counter() - start


def run() -> list[dict]:
    rows = [{"benchmark": "make demo (mmdiag demo, 7 models x 10 epochs, 800 cases), wall time",
             "value": f"{_demo_seconds():.0f} s"}]
    for label, name, options in [("unimodal (small CNN, clinical)", "unimodal", {"modality": "clinical"}),
                                 ("tabular MLP", "tabular_mlp", {}),
                                 ("early fusion", "early_fusion", {}),
                                 ("late fusion (logits)", "late_fusion", {}),
                                 ("late fusion (features)", "late_fusion", {"mode": "features"}),
                                 ("middle fusion (cross-attention)", "middle_fusion", {}),
                                 ("unimodal (MONAI ResNet-18, clinical)", "unimodal",
                                  {"modality": "clinical", "backbone": "resnet18"})]:
        rows.append({"benchmark": f"training throughput, {label}, batch 32, 32x32",
                     "value": f"{_train_throughput(name, options):.0f} cases/s"})
    for label, v in _loading_throughput().items():
        rows.append({"benchmark": f"data loading, 2 JPEG 512x512 -> 224x224 per case, {label}",
                     "value": f"{v:.0f} cases/s"})
    return rows


def to_markdown(rows: list[dict]) -> str:
    return "| benchmark | value |\n|---|---|\n" + "\n".join(f"| {r['benchmark']} | {r['value']} |" for r in rows)


if __name__ == "__main__":
    print(to_markdown(run()))
