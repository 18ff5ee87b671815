"""A tiny MMC-AMD ``VisualSearch`` tree: ImageData JPEGs, three split collections with their id and label lists.

The eyes are real entries of the EI authors' lists (shipped with mmdiag), so ids, classes and the number of OCT scans
per eye are the release's, including the eye with two CFPs (``w-ICG-4449-r``). Two eyes with a CFP only (one in train,
one in val) stand for the release's CFP-only eyes; they are in no EI list.

Pixel values tell which file was read: a CFP is its class colour, OCT scan ``j`` of an eye (``j``-th in sorted file
order) is a uniform grey of level ``OCT_LEVEL0 + OCT_STEP * j``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmdiag.testing.derm7pt import write_jpeg

__all__ = ["write_mmc_amd", "OCT_LEVEL0", "OCT_STEP", "CFP_ONLY_EYES"]

OCT_LEVEL0, OCT_STEP = 20, 40
CFP_ONLY_EYES = {"train": "f-d-90000001-l", "val": "f-h-90000002_32"}
_LABELS = {"no_amd": 0, "dry_amd": 1, "pcv": 2, "wet_amd": 3}
_COLOURS = ((90, 60, 40), (150, 90, 40), (200, 120, 60), (230, 160, 80))
_DIRS = {"cfp": "cfp-clahe-448x448", "oct": "oct-median3x3-448x448"}


def write_mmc_amd(root: str | Path, per_class: dict[str, int] | None = None, size: int = 32,
                  version: str = "splitAP", link: bool = True) -> Path:
    """Write ``<root>/VisualSearch`` and return its path.

    Args:
        root: parent folder.
        per_class: eyes per class in each split (default train 2, val 1, test 2), in EI-list order.
        size: side of every JPEG.
        version: collection name part (``splitAP`` or ``splitA``).
        link: make each collection's ``ImageData`` a symbolic link to ``mmc-amd/ImageData`` as the release does
            (else the adapter falls back to ``mmc-amd/ImageData``).
    """
    from mmdiag.data.adapters._ei_splits import ei_split_lists

    per_class = per_class or {"train": 2, "val": 1, "test": 2}
    vs = Path(root) / "VisualSearch"
    images = vs / "mmc-amd" / "ImageData"
    for split, entries in ei_split_lists("mmc_amd").items():
        chosen = []
        for label in _LABELS:
            chosen += [e for e in entries if e.labels[0] == label][: per_class[split]]
        if split == "train":
            chosen.append(next(e for e in entries if len(e.paths[0]) > 1))
        ids = {"cfp": [], "oct": []}
        labels = {}
        for e in chosen:
            for m, cell in zip(_DIRS, e.paths):
                ids[m] += [Path(p).stem for p in cell]
                labels.update({Path(p).stem: _LABELS[e.labels[0]] for p in cell})
        extra = CFP_ONLY_EYES.get(split)
        if extra:
            ids["cfp"].append(extra)
            labels[extra] = "hdpw".index(extra[2])
        for image in ids["cfp"]:
            colour = np.array(_COLOURS[labels[image]], dtype=np.uint8)
            write_jpeg(images / _DIRS["cfp"] / f"{image}.jpg", np.broadcast_to(colour, (size, size, 3)).copy())
        by_eye: dict[str, list[str]] = {}
        for image in ids["oct"]:
            by_eye.setdefault(image.split("_")[0], []).append(image)
        for scans in by_eye.values():
            for j, image in enumerate(sorted(scans, key=lambda i: f"{i}.jpg")):
                grey = np.full((size, size, 3), OCT_LEVEL0 + OCT_STEP * j, dtype=np.uint8)
                write_jpeg(images / _DIRS["oct"] / f"{image}.jpg", grey)
        coll = vs / f"mmc-amd-{version}-{split}"
        for m in _DIRS:
            _write(coll / "ImageSets" / f"{m}.txt", ids[m])
            _write(coll / "annotations" / f"{m}.txt", [f"{i} {labels[i]}" for i in ids[m]])
            eyes = list(dict.fromkeys(i[2:].split("_")[0] for i in ids[m]))
            _write(coll / "EyeSets" / f"{m}.txt", eyes)
            _write(coll / "SubjectSets" / f"{m}.txt", list(dict.fromkeys(e.split("-", 1)[1].removesuffix("-l")
                                                                          .removesuffix("-r") for e in eyes)))
        if split != "train":
            _write(coll / "ImageSets" / "mm.txt",
                   [f"{c} {o}" for c in ids["cfp"] for o in ids["oct"] if c[2:].split("_")[0] == o[2:].split("_")[0]])
        if link:
            os.symlink(os.path.relpath(images, coll), coll / "ImageData", target_is_directory=True)
    return vs


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
