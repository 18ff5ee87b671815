"""Tiny ISIC 2017 / 2018 / 2019 releases in the official archive layouts (exact CSV headers, tiny JPEGs, masks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmdiag.data.adapters.isic import (ATTRIBUTES_2017, ATTRIBUTES_2018, CLASSES_2018, CLASSES_2019, GT_COLUMNS_2017,
                                       GT_COLUMNS_2018, GT_COLUMNS_2019, META_COLUMNS_2019, SITES_2019)
from mmdiag.testing.writers import write_png

__all__ = ["write_isic2017", "write_isic2018", "write_isic2019"]


def _jpeg(path: Path, rng: np.random.Generator, cls: int, size: int) -> None:
    from PIL import Image

    img = rng.integers(0, 80, (size, size + 4, 3), dtype=np.uint8)
    img[size // 4: 3 * size // 4, :, cls % 3] = 200 + 5 * (cls // 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95)


def _one_hot(columns: tuple[str, ...], cls: int) -> dict[str, str]:
    return {c: "1.0" if i == cls else "0.0" for i, c in enumerate(columns)}


def write_isic2017(root: str | Path, per_class: dict[str, int] | None = None, size: int = 16,
                   seed: int = 0) -> Path:
    """ISIC 2017 Training / Validation / Test_v2 sets: Part 3 CSVs, JPEGs, ``_superpixels.png`` decoys, Part 2 JSONs.

    ``per_class`` gives images per class (MEL, SK, NV) and set; default 4 train, 1 val, 2 test. Every image has a
    features JSON with 4 attributes over 6 superpixels; attribute ``k`` is present on image ``i`` when ``(i + k) % 3
    == 0``, so every attribute is present on some images and absent on others.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = per_class or {"Training": 4, "Validation": 1, "Test_v2": 2}
    n = 0
    for name, k in counts.items():
        rows = []
        for cls in range(3):
            for _ in range(k):
                cid = f"ISIC_{n:07d}"
                rows.append({"image_id": cid, "melanoma": "1.0" if cls == 0 else "0.0",
                             "seborrheic_keratosis": "1.0" if cls == 1 else "0.0"})
                data = root / f"ISIC-2017_{name}_Data"
                _jpeg(data / f"{cid}.jpg", rng, cls, size)
                write_png(data / f"{cid}_superpixels.png", rng.integers(0, 6, (size, size + 4, 3), dtype=np.uint8))
                feats = {a: [int((n + j) % 3 == 0 and s == j) for s in range(6)] for j, a in enumerate(ATTRIBUTES_2017)}
                p = root / f"ISIC-2017_{name}_Part2_GroundTruth" / f"{cid}_features.json"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps(feats))
                n += 1
        pd.DataFrame(rows, columns=list(GT_COLUMNS_2017)).to_csv(root / f"ISIC-2017_{name}_Part3_GroundTruth.csv",
                                                                 index=False)
    meta = pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(n)], "age_approximate": "55", "sex": "female"})
    meta.to_csv(root / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv", index=False)
    return root


def write_isic2018(root: str | Path, per_class: int = 5, n_attribute_images: int = 8, size: int = 16,
                   seed: int = 0) -> Path:
    """ISIC 2018 Task 3 Training (``per_class`` images per class) + Validation (1 per class) + LesionGroupings, and
    the Task 1-2 training images with their 5 Task 2 attribute masks.

    Task 3 ids start at ISIC_0024306 (the release's first); consecutive pairs of training images share a lesion id.
    Task 2: attribute ``k`` of image ``i`` is a 255-valued blob when ``(i + k) % 2 == 0``, else an all-zero mask.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = 24306
    groups = []
    for name, k in (("Training", per_class), ("Validation", 1)):
        rows = []
        for cls in range(len(CLASSES_2018)):
            for _ in range(k):
                cid = f"ISIC_{n:07d}"
                rows.append({"image": cid, **_one_hot(CLASSES_2018, cls)})
                _jpeg(root / f"ISIC2018_Task3_{name}_Input" / f"{cid}.jpg", rng, cls, size)
                if name == "Training":
                    groups.append({"image": cid, "lesion_id": f"HAM_{(n - 24306) // 2:07d}",
                                   "diagnosis_confirm_type": "histo"})
                n += 1
        folder = root / f"ISIC2018_Task3_{name}_GroundTruth"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=list(GT_COLUMNS_2018)).to_csv(folder / f"ISIC2018_Task3_{name}_GroundTruth.csv",
                                                                 index=False)
    pd.DataFrame(groups).to_csv(root / "ISIC2018_Task3_Training_LesionGroupings.csv", index=False)
    for i in range(n_attribute_images):
        cid = f"ISIC_{i:07d}"
        _jpeg(root / "ISIC2018_Task1-2_Training_Input" / f"{cid}.jpg", rng, i, size)
        for k, a in enumerate(ATTRIBUTES_2018):
            mask = np.zeros((size, size + 4), dtype=np.uint8)
            if (i + k) % 2 == 0:
                mask[2:5, 3:7] = 255
            write_png(root / "ISIC2018_Task2_Training_GroundTruth_v3" / f"{cid}_attribute_{a}.png", mask)
    return root


def write_isic2019(root: str | Path, per_class: int = 5, size: int = 16, seed: int = 0) -> Path:
    """ISIC 2019 training set: GroundTruth CSV (UNK column all 0), Metadata CSV, JPEGs.

    Every 4th row of the metadata has blank age, site and sex; every 3rd a blank lesion_id; otherwise consecutive
    pairs share a lesion id (BCN_/HAM_ style).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    gt, meta = [], []
    n = 0
    for cls in range(len(CLASSES_2019)):
        for _ in range(per_class):
            cid = f"ISIC_{n:07d}"
            gt.append({"image": cid, **_one_hot(GT_COLUMNS_2019[1:], cls)})
            blank = n % 4 == 3
            meta.append({"image": cid, "age_approx": "" if blank else f"{float(5 * rng.integers(4, 18)):.1f}",
                         "anatom_site_general": "" if blank else str(rng.choice(SITES_2019)),
                         "lesion_id": "" if n % 3 == 2 else f"BCN_{n // 2:07d}",
                         "sex": "" if blank else str(rng.choice(["male", "female"]))})
            _jpeg(root / "ISIC_2019_Training_Input" / f"{cid}.jpg", rng, cls, size)
            n += 1
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(gt, columns=list(GT_COLUMNS_2019)).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta, columns=list(META_COLUMNS_2019)).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    return root
