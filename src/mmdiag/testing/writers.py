"""Tiny on-disk datasets: a CSV manifest + ``dataset.yaml`` with PNG images, NumPy volumes and a record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

__all__ = ["write_png", "write_manifest_dataset"]


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a (H, W) or (H, W, C) uint8 array as PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_manifest_dataset(root: str | Path, n_cases: int = 24, size: int = 16, seed: int = 0,
                           with_volume: bool = False, rgba: bool = False) -> Path:
    """A bring-your-own-data example: two image modalities (PNG), an optional volume (.npy) and a record.

    The binary label is visible in both images (bright left vs right half), so a model can learn it. Returns the
    path of ``dataset.yaml``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        y = i % 2
        cid = f"c{i:03d}"
        img = rng.integers(0, 60, (size, size, 4 if rgba else 3), dtype=np.uint8)
        img[:, (size // 2) * y: (size // 2) * (y + 1)] += 150
        if rgba:
            img[..., 3] = 255
        write_png(root / "photo" / f"{cid}.png", img)
        write_png(root / "scope" / f"{cid}.png", img[..., 0])
        row = {"case_id": cid, "patient_id": f"p{i // 2:03d}", "photo": f"photo/{cid}.png",
               "scope_path": f"scope/{cid}.png", "age": str(int(rng.integers(20, 80))),
               "sex": ["female", "male"][int(rng.integers(2))], "diagnosis": ["benign", "malignant"][y]}
        if with_volume:
            vol = rng.normal(0, 1, (6, size, size)).astype(np.float32) + 3 * y
            (root / "ct").mkdir(parents=True, exist_ok=True)
            np.save(root / "ct" / f"{cid}.npy", vol)
            row["ct"] = f"ct/{cid}.npy"
        rows.append(row)
    import pandas as pd

    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    desc = {
        "name": "tiny_manifest", "manifest": "cases.csv",
        "modalities": {
            "photo": {"kind": "image", "channels": 3, "size": [size, size]},
            "scope": {"kind": "image", "channels": 1, "size": [size, size], "column": "scope_path"},
            "record": {"kind": "tabular", "fields": {"age": {"type": "numeric"},
                                                     "sex": {"type": "categorical", "values": ["female", "male"]}}},
        },
        "tasks": {"diagnosis": {"type": "binary", "classes": ["benign", "malignant"]}},
    }
    if with_volume:
        desc["modalities"]["ct"] = {"kind": "volume", "channels": 1, "size": [4, size, size]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    return root / "dataset.yaml"
