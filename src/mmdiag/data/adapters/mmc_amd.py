"""MMC-AMD (Wang et al., MICCAI 2019 / arXiv 2012.01879): colour fundus (CFP) + OCT B-scans, 4-class AMD.

Layout read (``data.root`` = the ``VisualSearch`` folder the release unpacks into)::

    mmc-amd/ImageData/cfp-clahe-448x448/<cfp id>.jpg        e.g. f-w-1544817.jpg
    mmc-amd/ImageData/oct-median3x3-448x448/<oct id>.jpg    e.g. o-w-27662-l_003.jpg
    mmc-amd-<version>-{train,val,test}/
        ImageSets/{cfp,oct}.txt      one image id per line (no extension)
        annotations/{cfp,oct}.txt    "<image id> <label>" (the last token is the class index)
        ImageData -> ../mmc-amd/ImageData   (a link; a real folder works too; without it mmc-amd/ImageData is used)

``version`` is ``splitAP`` (default; patient-disjoint, the split EI's 610 / 79 / 79 eyes come from) or ``splitA``
(eye-disjoint).

One case per **eye**. The eye id is the image id without its ``f-``/``o-`` prefix, cut at the first ``_`` (suffixes
``-trs``/``-ori``/``-flr`` of synthetic images removed): ``o-w-27662-l_003`` → ``w-27662-l``; CFP and OCT images pair
by eye id. The patient id is the eye id without its class letter and ``-l``/``-r`` side (``w-18782465-l`` →
``18782465``; inferred from the file names: the release's SubjectSets list patients without naming their eyes).

An eye may have several OCT scans (and, rarely, several CFPs): each modality's input is the sorted list of its files.
In training one is drawn at random each time (from the per-case ``rng``, so runs reproduce); in evaluation it is always
the **first in sorted file-name order** — EI's choice (``sorted(paths)[0]``). Evaluation therefore scores one CFP-OCT
pair per eye, not every ``mm.txt`` pair as the MMC-AMD authors' own evaluation does.

Classes (the release's label indices, ``h``/``d``/``p``/``w`` in the ids): normal, dry_amd, pcv, wet_amd — the same
order as EI's ``mapping_mmc-amd.json`` (no_amd, dry_amd, pcv, wet_amd). Some eyes have only a CFP (1093 eyes with CFP,
817 with OCT, 768 with both): ``complete_only=True`` (default) keeps the 768 multimodal eyes as EI and the
multimodal papers do; ``False`` keeps every eye, the absent modality marked missing.

Splits: ``split="official"`` takes the three collections of ``version``. ``split="ei"`` sets each eye's split from the
EI authors' lists ``mmc-amd_{train,val,test}`` (shipped with mmdiag; 610 / 79 / 79 eyes, matched by eye id, label
cross-checked); eyes the lists do not name are left out.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdiag.data.adapters._common import check_choice, missing_file_error, require_file
from mmdiag.data.adapters._ei_splits import ei_mapping, ei_split_lists
from mmdiag.data.readers import DecodeCache, read_image
from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import DataError
from mmdiag.registry import DATASETS

__all__ = ["mmc_amd", "MMCAMDTable", "CLASSES", "IMAGE_DIRS", "eye_id", "patient_id"]

_log = logging.getLogger(__name__)

CLASSES = ("normal", "dry_amd", "pcv", "wet_amd")
IMAGE_DIRS = {"cfp": "cfp-clahe-448x448", "oct": "oct-median3x3-448x448"}
_SPLITS = ("train", "val", "test")
_SYNTHETIC_SUFFIXES = re.compile(r"-(trs|ori|flr)")
_SIDE = re.compile(r"-[lr]$")


def eye_id(image_id: str) -> str:
    """Eye id of an MMC-AMD image id or file name: ``o-w-27662-l_003(.jpg)`` → ``w-27662-l``."""
    stem = Path(image_id).name
    stem = stem[:-4] if stem.lower().endswith(".jpg") else stem
    return _SYNTHETIC_SUFFIXES.sub("", stem[2:].split("_")[0])


def patient_id(eye: str) -> str:
    """Patient id inferred from an eye id: class letter and side dropped (``w-18782465-l`` → ``18782465``)."""
    return _SIDE.sub("", eye.split("-", 1)[1] if "-" in eye else eye)


@dataclass
class MMCAMDTable(CaseTable):
    """MMC-AMD eyes: each modality's input is a sorted list of files; one is chosen per read (module docstring)."""

    def read(self, case: CaseRecord, modality: str, *, train: bool, rng: np.random.Generator,
             cache: DecodeCache | None = None) -> torch.Tensor:
        """Decode one of the eye's ``modality`` files: random (``rng``) in training, the sorted-first otherwise.

        Raises:
            DataError: the chosen file is missing or unreadable (naming the case and the file).
        """
        files = sorted(case.inputs[modality])
        path = Path(files[int(rng.integers(len(files)))] if train else files[0])
        if not path.is_file():
            raise missing_file_error(case.case_id, path, modality)
        return read_image(path, self.spec.modalities[modality], case_id=case.case_id, cache=cache)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _image_dir(root: Path, collection: Path, modality: str) -> Path:
    for base in (collection / "ImageData", root / "mmc-amd" / "ImageData"):
        if (base / IMAGE_DIRS[modality]).is_dir():
            return base / IMAGE_DIRS[modality]
    raise DataError(f"mmc_amd: no folder {IMAGE_DIRS[modality]!r} under {str(collection / 'ImageData')!r} or "
                    f"{str(root / 'mmc-amd' / 'ImageData')!r}; is data.root the VisualSearch folder?",
                    path=str(root / "mmc-amd" / "ImageData" / IMAGE_DIRS[modality]))


def _read_collection(root: Path, collection: Path, split: str, eyes: dict[str, dict]) -> None:
    """Add the images of one collection to ``eyes`` (eye id → {"split", "label", "cfp": [...], "oct": [...]})."""
    for modality in IMAGE_DIRS:
        ids_file = require_file("mmc_amd", collection / "ImageSets" / f"{modality}.txt", f"{modality} image list")
        ann_file = require_file("mmc_amd", collection / "annotations" / f"{modality}.txt", f"{modality} labels")
        labels = {}
        for line in _read_lines(ann_file):
            tokens = line.split()
            try:
                labels[tokens[0]] = int(tokens[-1])
            except (IndexError, ValueError):
                raise DataError(f"mmc_amd: {str(ann_file)!r} line {line!r} is not '<image id> <label>'",
                                path=str(ann_file)) from None
        folder = _image_dir(root, collection, modality)
        for image in _read_lines(ids_file):
            eye = eye_id(image)
            if image not in labels:
                raise DataError(f"case {eye!r}: image {image!r} of {str(ids_file)!r} has no label in "
                                f"{str(ann_file)!r}", eye, str(ann_file))
            label = labels[image]
            if not 0 <= label < len(CLASSES):
                raise DataError(f"case {eye!r}: {str(ann_file)!r} gives image {image!r} label {label}; allowed: "
                                f"0..{len(CLASSES) - 1} = {list(CLASSES)}", eye, str(ann_file))
            rec = eyes.setdefault(eye, {"split": split, "label": label, "cfp": [], "oct": []})
            if rec["split"] != split:
                raise DataError(f"case {eye!r}: the eye is in both {rec['split']!r} and {split!r} "
                                f"({str(ids_file)!r})", eye, str(ids_file))
            if rec["label"] != label:
                raise DataError(f"case {eye!r}: image {image!r} is labelled {CLASSES[label]} but another image of "
                                f"the eye {CLASSES[rec['label']]} ({str(ann_file)!r})", eye, str(ann_file))
            rec[modality].append(str(folder / f"{image}.jpg"))


def _ei_splits(eyes: dict[str, dict]) -> dict[str, str]:
    """Eye id → split from the EI lists; labels cross-checked against the release's."""
    mapping = ei_mapping("mmc_amd")
    split_of = {}
    for split, entries in ei_split_lists("mmc_amd").items():
        for e in entries:
            eye = eye_id(e.paths[0][0])
            if eye in eyes and eyes[eye]["label"] != mapping[e.labels[0]]:
                raise DataError(f"case {eye!r}: the release labels the eye {CLASSES[eyes[eye]['label']]}, the EI "
                                f"list {split!r} {e.labels[0]}; is this the original MMC-AMD release?", eye)
            split_of[eye] = split
    return split_of


@DATASETS.register
def mmc_amd(root: str, version: str = "splitAP", split: str = "official", complete_only: bool = True,
            image_size: int = 448) -> MMCAMDTable:
    """MMC-AMD: colour fundus + OCT per eye; normal / dry AMD / PCV / wet AMD (one OCT scan drawn per read).

    Args:
        root: the ``VisualSearch`` folder.
        version: ``"splitAP"`` (patient-disjoint) or ``"splitA"`` (eye-disjoint) collections.
        split: ``"official"`` (the collections) or ``"ei"`` (the EI authors' lists).
        complete_only: keep only eyes with both a CFP and an OCT.
        image_size: side of the square images the models see (the release's images are 448 x 448).

    Raises:
        ConfigError: an option value outside its choices.
        DataError: a missing list/annotation file or image folder, an image without a label, a label outside
            0..3, an eye in two splits or with two labels.
    """
    check_choice("mmc_amd", "version", version, ("splitAP", "splitA"))
    check_choice("mmc_amd", "split", split, ("official", "ei"))
    base = Path(root)
    eyes: dict[str, dict] = {}
    for s in _SPLITS:
        _read_collection(base, base / f"mmc-amd-{version}-{s}", s, eyes)
    if split == "ei":
        split_of = _ei_splits(eyes)
        dropped = [e for e in eyes if e not in split_of]
        if dropped:
            _log.info("mmc_amd: split='ei' leaves out %d eye(s) the EI lists do not name", len(dropped))
        eyes = {e: {**rec, "split": split_of[e]} for e, rec in eyes.items() if e in split_of}
    if complete_only:
        counts = defaultdict(int)
        for rec in eyes.values():
            counts[(bool(rec["cfp"]), bool(rec["oct"]))] += 1
        eyes = {e: rec for e, rec in eyes.items() if rec["cfp"] and rec["oct"]}
        if len(eyes) < sum(counts.values()):
            _log.info("mmc_amd: complete_only keeps %d eyes with CFP and OCT of %d (CFP only %d, OCT only %d)",
                      len(eyes), sum(counts.values()), counts[(True, False)], counts[(False, True)])

    size = (image_size, image_size)
    spec = DatasetSpec(name="mmc_amd",
                       modalities={"cfp": ImageModality(channels=3, size=size),
                                   "oct": ImageModality(channels=3, size=size)},
                       tasks={"diagnosis": TaskSpec(type="multiclass", classes=CLASSES)}, primary_task="diagnosis")
    cases = [CaseRecord(eye, patient_id(eye), {m: sorted(rec[m]) or None for m in IMAGE_DIRS},
                        {"diagnosis": rec["label"]}, rec["split"])
             for eye, rec in sorted(eyes.items())]
    return MMCAMDTable(spec, cases, root=base, official_split=True)
