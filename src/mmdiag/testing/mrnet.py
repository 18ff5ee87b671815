"""A tiny ``MRNet-v1.0`` tree: uint8 ``(S, H, W)`` volumes per plane, the six header-less label CSVs.

The exams are real entries of the EI authors' lists (shipped with mmdiag), one or two per label combination of each
list, with their release folder (``train`` or ``valid``) and labels. The number of slices differs per exam and plane.
Row 0 of slice ``i`` holds the value ``i``, so a test can tell which slices were read; the rest is noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_mrnet", "slices_of"]

_PLANES = ("axial", "coronal", "sagittal")
_TASKS = ("abnormal", "acl", "meniscus")
_SLICES = (3, 5, 7, 9, 12, 17)


def slices_of(exam: str, plane: str) -> int:
    """Number of slices the fixture gives ``plane`` of ``exam``."""
    return _SLICES[(int(exam) + _PLANES.index(plane)) % len(_SLICES)]


def write_mrnet(root: str | Path, per_combination: dict[str, int] | None = None, size: int = 32,
                seed: int = 0) -> Path:
    """Write ``<root>/MRNet-v1.0`` and return its path.

    Args:
        root: parent folder.
        per_combination: exams per label combination taken from each EI list, in list order (default
            ``mrnet_train_train`` 2, ``mrnet_train_val`` 1, ``mrnet_val`` 1).
        size: height and width of every slice.
        seed: seed of the noise.
    """
    from mmdiag.data.adapters._ei_splits import ei_split_lists

    per_combination = per_combination or {"train": 2, "val": 1, "test": 1}
    rng = np.random.default_rng(seed)
    base = Path(root) / "MRNet-v1.0"
    rows: dict[str, list[tuple[str, set[str]]]] = {"train": [], "valid": []}
    for split, entries in ei_split_lists("mrnet").items():
        taken: dict[tuple[str, ...], int] = {}
        for e in entries:
            if taken.get(e.labels, 0) < per_combination[split]:
                taken[e.labels] = taken.get(e.labels, 0) + 1
                folder, _, name = e.paths[0][0].split("/")
                rows[folder].append((Path(name).stem, set(e.labels)))
    for folder, exams in rows.items():
        exams.sort()
        for exam, _ in exams:
            for plane in _PLANES:
                n = slices_of(exam, plane)
                vol = rng.integers(0, 200, (n, size, size)).astype(np.uint8)
                vol[:, 0, :] = np.arange(n, dtype=np.uint8)[:, None]
                (base / folder / plane).mkdir(parents=True, exist_ok=True)
                np.save(base / folder / plane / f"{exam}.npy", vol)
        for task in _TASKS:
            (base / f"{folder}-{task}.csv").write_text("".join(f"{exam},{int(task in labels)}\n"
                                                               for exam, labels in exams))
    return base
