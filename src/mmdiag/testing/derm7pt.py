"""A tiny Derm7pt ``release_v0`` tree: meta.csv with the 19 release columns, 0-based index files, JPEGs.

The cases are real entries of the EI authors' lists (shipped with mmdiag), so their file names have the release's
mixed case (``NGL/NGL046.JPG`` next to ``NGL/Ngl047.jpg``) and one case names the same file in both image columns,
as the release does for a few cases. Their official split (index files) equals the EI split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write_derm7pt", "write_jpeg", "DERM7PT_RAW_VOCABULARIES"]

# The raw strings of the release's categorical columns (dataset facts, independent of the adapter's grouping).
DERM7PT_RAW_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "pigment_network": ("absent", "typical", "atypical"),
    "streaks": ("absent", "regular", "irregular"),
    "pigmentation": ("absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"),
    "regression_structures": ("absent", "blue areas", "white areas", "combinations"),
    "dots_and_globules": ("absent", "regular", "irregular"),
    "blue_whitish_veil": ("absent", "present"),
    "vascular_structures": ("absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                            "linear irregular"),
    "level_of_diagnostic_difficulty": ("low", "medium", "high"),
    "elevation": ("flat", "palpable", "nodular"),
    "location": ("back", "lower limbs", "abdomen", "upper limbs", "chest", "head neck", "acral", "buttocks",
                 "genital areas"),
    "sex": ("female", "male"),
    "management": ("excision", "clinical follow up", "no further examination"),
}
_DIAGNOSES = {
    "BCC": ("basal cell carcinoma",),
    "NEV": ("blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus", "recurrent nevus",
            "reed or spitz nevus"),
    "MEL": ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
            "melanoma (more than 1.5 mm)", "melanoma metastasis"),
    "MISC": ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"),
    "SK": ("seborrheic keratosis",),
}
_COLOURS = {"BCC": (200, 80, 80), "NEV": (80, 200, 80), "MEL": (80, 80, 200), "MISC": (200, 200, 80),
            "SK": (80, 200, 200)}


def write_jpeg(path: str | Path, array: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as a JPEG at ``path`` (whatever its suffix's case), creating folders."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)
    return path


def _score(row: dict[str, str]) -> int:
    """The seven-point checklist score of a row's criteria."""
    return (2 * (row["pigment_network"] == "atypical") + 2 * (row["blue_whitish_veil"] == "present")
            + 2 * (row["vascular_structures"] in ("dotted", "linear irregular"))
            + (row["pigmentation"].endswith("irregular")) + (row["streaks"] == "irregular")
            + (row["dots_and_globules"] == "irregular") + (row["regression_structures"] != "absent"))


def write_derm7pt(root: str | Path, per_class: dict[str, int] | None = None, size: tuple[int, int] = (64, 96),
                  seed: int = 0) -> Path:
    """Write ``<root>/release_v0`` and return its path.

    Args:
        root: parent folder.
        per_class: cases per diagnosis group in each split (default train 2, val 1, test 2), taken in list order
            from the EI lists; train also gets one case whose two image columns name the same file.
        size: (H, W) of every JPEG (must exceed twice the border crop).
        seed: seed of the image noise and the row order.
    """
    from mmdiag.data.adapters._ei_splits import ei_split_lists

    per_class = per_class or {"train": 2, "val": 1, "test": 2}
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, str, str, str]] = []  # (split, clinic, derm, group)
    for split, entries in ei_split_lists("derm7pt").items():
        for group in _DIAGNOSES:
            hits = [e for e in entries if e.labels[0] == group and e.paths[0] != e.paths[1]][: per_class[split]]
            chosen += [(split, e.paths[0][0], e.paths[1][0], group) for e in hits]
        if split == "train":
            same = next(e for e in entries if e.paths[0] == e.paths[1])
            chosen.append((split, same.paths[0][0], same.paths[1][0], same.labels[0]))

    release = Path(root) / "release_v0"
    rows, count = [], {g: 0 for g in _DIAGNOSES}
    for i, (split, clinic, derm, group) in enumerate(chosen):
        row = {"case_num": "", "diagnosis": _DIAGNOSES[group][count[group] % len(_DIAGNOSES[group])],
               "seven_point_score": ""}
        count[group] += 1
        for k, (column, vocab) in enumerate(DERM7PT_RAW_VOCABULARIES.items()):
            row[column] = vocab[(i + k) % len(vocab)]  # every raw value occurs
        row["seven_point_score"] = str(_score(row))
        row.update(clinic=clinic, derm=derm, case_id="", notes="", split=split)
        rows.append(row)
        for rel in {clinic, derm}:
            img = rng.integers(0, 50, (*size, 3)).astype(np.uint8) + np.array(_COLOURS[group], dtype=np.uint8)
            write_jpeg(release / "images" / rel, img)
    order = rng.permutation(len(rows))
    rows = [rows[j] for j in order]
    for n, row in enumerate(rows, start=1):
        row["case_num"] = str(n)
    columns = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
               "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
               "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
               "case_id", "notes"]
    meta = release / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows)[columns].to_csv(meta / "meta.csv", index=False)
    for split, name in (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv")):
        pd.DataFrame({"indexes": [p for p, r in enumerate(rows) if r["split"] == split]}).to_csv(meta / name,
                                                                                                 index=False)
    return release
