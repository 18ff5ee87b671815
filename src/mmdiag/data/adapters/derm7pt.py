"""Derm7pt, the seven-point checklist dermatology dataset (Kawahara et al., IEEE JBHI 2019), release_v0 layout.

Layout read (``data.root`` = ``release_v0`` or its parent)::

    meta/meta.csv                      19 columns, one row per case (1011 cases)
    meta/{train,valid,test}_indexes.csv  column ``indexes``: 0-based row positions into meta.csv
    images/<GROUP>/<file>              paths as written in meta.csv's ``clinic`` / ``derm`` columns

File names mix ``.JPG`` and ``.jpg`` and are used exactly as written (a case-sensitive file system does not find a
renamed copy; the error then names the near match). A few cases name the same file in both columns; it is read for
both. A blank path cell makes that image missing for the case.

Modalities: ``clinical`` and ``dermoscopy`` (RGB, ``crop`` px cut from every border first — the reference code's
default of 25 px removes the black frame some images have — then resized to ``image_size``) and ``record``, the
patient metadata as categorical fields with closed vocabularies:

* ``record_fields="mm"`` (default): ``level_of_diagnostic_difficulty`` (3), ``elevation`` (3), ``location`` (9),
  ``sex`` (2), ``management`` (3) — the 20-wide one-hot record of the multimodal papers' code. Note that
  ``management`` (e.g. excision) and the difficulty are decided with the diagnosis in mind: they can leak the label.
* ``record_fields="kawahara"``: ``elevation``, ``sex``, ``location`` — the fields of the reference code.

Tasks (name = meta.csv column; ``diagnosis`` is the primary task), raw strings grouped as in the reference code
``Derm7PtDatasetGroupInfrequent``; matching is by exact string (a value outside the vocabulary is an error):

* ``diagnosis`` (5): BCC; NEV = the 7 nevus subtypes; MEL = the 6 melanoma strings; MISC = dermatofibroma, lentigo,
  melanosis, miscellaneous, vascular lesion; SK.
* the seven criteria: ``pigment_network`` absent/typical/atypical, ``blue_whitish_veil`` absent/present,
  ``vascular_structures`` absent/regular/irregular, ``pigmentation`` absent/regular/irregular, ``streaks``
  absent/regular/irregular, ``dots_and_globules`` absent/regular/irregular, ``regression_structures``
  absent/present.

``label_order`` fixes the diagnosis class order and the task order (both are recorded in the run's config):

* ``"kawahara"`` (default, the dataset authors' code): BCC, NEV, MEL, MISC, SK; tasks diagnosis, pigment_network,
  blue_whitish_veil, vascular_structures, pigmentation, streaks, dots_and_globules, regression_structures.
* ``"mm"`` (public multimodal training code): NEV, BCC, MEL, MISC, SK; tasks diagnosis, pigment_network, streaks,
  pigmentation, regression_structures, dots_and_globules, blue_whitish_veil, vascular_structures.
* ``"ei"`` (EI's ``mapping_derm7pt.json``): BCC, NEV, MEL, SK, MISC; tasks in the ``kawahara`` order.

The criteria keep one class order (absent first) under every ``label_order``.

Splits: ``split="official"`` reads the three index files (413 / 203 / 395). ``split="ei"`` sets each case's split from
the EI authors' lists ``derm7pt_{train,val,test}`` (shipped with mmdiag; the same 413 / 203 / 395 cases, matched by
their clinical and dermoscopic file names, label cross-checked); cases the lists do not name are left out. The EI
view of the dataset is ``tasks="diagnosis"``, ``label_order="ei"`` and ``data.modalities=[clinical, dermoscopy]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmdiag.data.adapters._common import check_choice, missing_file_error, require_file
from mmdiag.data.adapters._ei_splits import ei_split_lists
from mmdiag.data.readers import DecodeCache, read_image
from mmdiag.data.schema import CategoricalField, DatasetSpec, ImageModality, TabularModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError, DataError
from mmdiag.registry import DATASETS

__all__ = ["derm7pt", "Derm7ptTable", "META_COLUMNS", "TASK_GROUPS", "DIAGNOSIS_ORDERS", "TASK_ORDERS",
           "RECORD_VOCABULARIES", "RECORD_FIELDS"]

_log = logging.getLogger(__name__)

META_COLUMNS = ("case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
                "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
                "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
                "case_id", "notes")

_NEVI = ("blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus", "recurrent nevus",
         "reed or spitz nevus")
_MELANOMAS = ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
              "melanoma (more than 1.5 mm)", "melanoma metastasis")
_ABS_REG_IR = {"absent": ("absent",), "regular": ("regular",), "irregular": ("irregular",)}

# task (= meta.csv column) → class → the raw meta.csv strings grouped into it. The aliases the reference code also
# accepts ("nevus", "DF/LT/MLS/MISC", "regular", "irregular", "dotted/irregular", "present") are kept.
TASK_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "diagnosis": {
        "BCC": ("basal cell carcinoma",),
        "NEV": ("nevus", *_NEVI),
        "MEL": _MELANOMAS,
        "MISC": ("DF/LT/MLS/MISC", "dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"),
        "SK": ("seborrheic keratosis",),
    },
    "pigment_network": {"absent": ("absent",), "typical": ("typical",), "atypical": ("atypical",)},
    "blue_whitish_veil": {"absent": ("absent",), "present": ("present",)},
    "vascular_structures": {
        "absent": ("absent",),
        "regular": ("regular", "arborizing", "comma", "hairpin", "within regression", "wreath"),
        "irregular": ("dotted/irregular", "dotted", "linear irregular"),
    },
    "pigmentation": {
        "absent": ("absent",),
        "regular": ("regular", "diffuse regular", "localized regular"),
        "irregular": ("irregular", "diffuse irregular", "localized irregular"),
    },
    "streaks": _ABS_REG_IR,
    "dots_and_globules": _ABS_REG_IR,
    "regression_structures": {"absent": ("absent",), "present": ("present", "blue areas", "white areas",
                                                                  "combinations")},
}

DIAGNOSIS_ORDERS = {
    "kawahara": ("BCC", "NEV", "MEL", "MISC", "SK"),
    "mm": ("NEV", "BCC", "MEL", "MISC", "SK"),
    "ei": ("BCC", "NEV", "MEL", "SK", "MISC"),
}
_KAWAHARA_TASKS = ("diagnosis", "pigment_network", "blue_whitish_veil", "vascular_structures", "pigmentation",
                   "streaks", "dots_and_globules", "regression_structures")
TASK_ORDERS = {
    "kawahara": _KAWAHARA_TASKS,
    "mm": ("diagnosis", "pigment_network", "streaks", "pigmentation", "regression_structures", "dots_and_globules",
           "blue_whitish_veil", "vascular_structures"),
    "ei": _KAWAHARA_TASKS,
}

RECORD_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "level_of_diagnostic_difficulty": ("low", "medium", "high"),
    "elevation": ("flat", "palpable", "nodular"),
    "location": ("back", "lower limbs", "abdomen", "upper limbs", "chest", "head neck", "acral", "buttocks",
                 "genital areas"),
    "sex": ("female", "male"),
    "management": ("excision", "clinical follow up", "no further examination"),
}
RECORD_FIELDS = {
    "mm": ("level_of_diagnostic_difficulty", "elevation", "location", "sex", "management"),
    "kawahara": ("elevation", "sex", "location"),
}
_SPLIT_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}
_IMAGE_COLUMNS = {"clinical": "clinic", "dermoscopy": "derm"}


@dataclass
class Derm7ptTable(CaseTable):
    """Derm7pt cases; reading an image cuts ``crop`` pixels from every border before resizing."""

    crop: int = 25
    bgr: bool = False

    def read(self, case: CaseRecord, modality: str, *, train: bool, rng: np.random.Generator,
             cache: DecodeCache | None = None) -> torch.Tensor:
        """Decode one image of ``case``: RGB (BGR with ``bgr``), border crop, resize, values in [0, 1].

        Raises:
            DataError: the file is missing (near-miss names offered), unreadable, or too small for the crop.
        """
        spec = self.spec.modalities[modality]
        path = Path(case.inputs[modality])
        if not path.is_file():
            raise missing_file_error(case.case_id, path, modality)
        key = cache.key(path, spec.shape, f"crop={self.crop}" + (",bgr" if self.bgr else "")) if cache else None
        if key is not None and (hit := cache.get(key)) is not None:
            return hit
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            if self.bgr:
                arr = np.ascontiguousarray(arr[..., ::-1])
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the case and file
            raise DataError(f"case {case.case_id!r}: cannot read {modality} image {str(path)!r}: "
                            f"{type(e).__name__}: {e}", case.case_id, str(path)) from e
        h, w = arr.shape[:2]
        c = self.crop
        if h <= 2 * c or w <= 2 * c:
            raise DataError(f"case {case.case_id!r}: {modality} image {str(path)!r} is {w}x{h} px; cutting crop={c} "
                            f"px from every border leaves nothing (set data.options.crop lower)", case.case_id,
                            str(path))
        out = read_image(arr[c:h - c, c:w - c], spec, case_id=case.case_id)
        if key is not None:
            cache.put(key, out)
        return out


def _release_dir(root: str) -> Path:
    base = Path(root)
    if not (base / "meta" / "meta.csv").is_file() and (base / "release_v0" / "meta" / "meta.csv").is_file():
        return base / "release_v0"
    return base


def _encode(task: str, raw: str, classes: tuple[str, ...], *, case_id: str, source: str) -> int:
    """Class index of a raw meta.csv string (``-1`` if blank)."""
    if not raw:
        return -1
    for cls, strings in TASK_GROUPS[task].items():
        if raw in strings:
            return classes.index(cls)
    allowed = [s for strings in TASK_GROUPS[task].values() for s in strings]
    raise DataError(f"case {case_id!r}: {source} column {task!r} has value {raw!r}; allowed: {allowed}", case_id,
                    source)


def _read_indexes(meta: Path, n_rows: int) -> dict[int, str]:
    """Row position → split from the three index files; positions are checked against meta.csv's rows."""
    split_of: dict[int, str] = {}
    for split, name in _SPLIT_FILES.items():
        path = require_file("derm7pt", meta / name, f"{split} index file")
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "indexes" not in df.columns:
            raise DataError(f"derm7pt: {str(path)!r} has no column 'indexes' (it has {list(df.columns)})",
                            path=str(path))
        for cell in df["indexes"]:
            try:
                pos = int(cell)
            except ValueError:
                raise DataError(f"derm7pt: {str(path)!r} holds {cell!r}; expected 0-based row positions into "
                                f"meta.csv", path=str(path)) from None
            if not 0 <= pos < n_rows:
                raise DataError(f"derm7pt: {str(path)!r} holds index {pos}, out of range for meta.csv's {n_rows} "
                                f"rows (valid: 0..{n_rows - 1}; the files count rows from 0)", path=str(path))
            if pos in split_of:
                raise DataError(f"derm7pt: row {pos} of meta.csv is listed in {split_of[pos]!r} and again in "
                                f"{str(path)!r}", path=str(path))
            split_of[pos] = split
    if len(split_of) != n_rows:
        _log.warning("derm7pt: %d of meta.csv's %d rows are in no index file; they are left out of every split",
                     n_rows - len(split_of), n_rows)
    return split_of


def _ei_splits(df: pd.DataFrame, classes: tuple[str, ...]) -> dict[int, str]:
    """Row position → split from the EI lists, matching (clinic, derm) file names; labels cross-checked."""
    listed = {}
    for split, entries in ei_split_lists("derm7pt").items():
        for e in entries:
            listed[(e.paths[0][0], e.paths[1][0])] = (split, e.labels[0])
    split_of = {}
    for pos, row in enumerate(df[["case_num", "clinic", "derm", "diagnosis"]].itertuples(index=False)):
        hit = listed.get((row.clinic, row.derm))
        if hit is None:
            continue
        split, ei_label = hit
        mine = _encode("diagnosis", row.diagnosis, classes, case_id=row.case_num, source="meta.csv")
        if mine < 0 or classes[mine] != ei_label:
            raise DataError(f"case {row.case_num!r}: meta.csv diagnosis {row.diagnosis!r} is "
                            f"{classes[mine] if mine >= 0 else 'blank'}, but the EI list {split!r} labels "
                            f"({row.clinic}, {row.derm}) {ei_label}; is this the original release_v0?", row.case_num)
        split_of[pos] = split
    dropped = len(df) - len(split_of)
    if dropped:
        _log.info("derm7pt: split='ei' leaves out %d case(s) the EI lists do not name", dropped)
    return split_of


@DATASETS.register
def derm7pt(root: str, tasks: str | list[str] = "all", label_order: str = "kawahara", split: str = "official",
            record_fields: str = "mm", crop: int = 25, image_size: int = 224, input_norm: str = "none",
            channel_order: str = "rgb") -> Derm7ptTable:
    """Derm7pt: clinical + dermoscopic images + patient record; 5-class diagnosis and the 7 checklist criteria.

    Args:
        root: the ``release_v0`` folder (or its parent).
        tasks: ``"all"`` (diagnosis + the seven criteria), ``"diagnosis"``, or a list of task names.
        label_order: ``"kawahara"``, ``"mm"`` or ``"ei"``: diagnosis class order and task order (module docstring).
        split: ``"official"`` (the index files) or ``"ei"`` (the EI authors' lists).
        record_fields: ``"mm"`` (5 fields, 20 one-hot values) or ``"kawahara"`` (elevation, sex, location).
        crop: pixels cut from every image border before resizing (reference default 25).
        image_size: side of the square images the models see.
        input_norm: ``"none"`` (values in [0, 1], as the IIMGF-Net code's /255) or ``"imagenet"`` (mean/std of
            ImageNet, in the channel order read).
        channel_order: ``"rgb"`` or ``"bgr"`` (the IIMGF-Net code reads with OpenCV, BGR).

    Raises:
        ConfigError: an option value outside its choices.
        DataError: a missing layout file or column, a value outside a closed vocabulary (naming the case, the
            column and the allowed values), an index out of range or listed twice.
    """
    check_choice("derm7pt", "label_order", label_order, DIAGNOSIS_ORDERS)
    check_choice("derm7pt", "split", split, ("official", "ei"))
    check_choice("derm7pt", "record_fields", record_fields, RECORD_FIELDS)
    check_choice("derm7pt", "input_norm", input_norm, ("none", "imagenet"))
    check_choice("derm7pt", "channel_order", channel_order, ("rgb", "bgr"))
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if input_norm == "imagenet" else (None, None)
    if mean is not None and channel_order == "bgr":
        mean, std = mean[::-1], std[::-1]
    task_names = list(TASK_ORDERS[label_order])
    if tasks == "all":
        selected = task_names
    else:
        selected = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in selected if t not in task_names]
        if unknown or not selected:
            raise ConfigError(f"derm7pt: data.options.tasks names {unknown or selected}; choose 'all' or tasks "
                              f"from {task_names}")
        selected = [t for t in task_names if t in selected]
    if not isinstance(crop, int) or crop < 0:
        raise ConfigError(f"derm7pt: data.options.crop={crop!r} must be a whole number of pixels >= 0")

    release = _release_dir(root)
    meta_csv = require_file("derm7pt", release / "meta" / "meta.csv", "metadata table")
    df = pd.read_csv(meta_csv, dtype=str, keep_default_na=False)
    df = df.apply(lambda col: col.str.strip())
    absent = [c for c in META_COLUMNS if c not in df.columns]
    if absent:
        raise DataError(f"derm7pt: {str(meta_csv)!r} lacks column(s) {absent}; it has {list(df.columns)}",
                        path=str(meta_csv))
    dup = df["case_num"][df["case_num"].duplicated()].tolist()
    if dup:
        raise DataError(f"derm7pt: {str(meta_csv)!r}: case_num repeats: {dup[:5]}", path=str(meta_csv))

    classes = {t: tuple(TASK_GROUPS[t]) for t in task_names}
    classes["diagnosis"] = DIAGNOSIS_ORDERS[label_order]
    split_of = _read_indexes(release / "meta", len(df)) if split == "official" else _ei_splits(df, classes["diagnosis"])

    fields = RECORD_FIELDS[record_fields]
    spec = DatasetSpec(
        name="derm7pt",
        modalities={
            "clinical": ImageModality(channels=3, size=(image_size, image_size), mean=mean, std=std),
            "dermoscopy": ImageModality(channels=3, size=(image_size, image_size), mean=mean, std=std),
            "record": TabularModality(fields={f: CategoricalField(values=RECORD_VOCABULARIES[f]) for f in fields}),
        },
        tasks={t: TaskSpec(type="multiclass", classes=classes[t]) for t in selected},
        primary_task="diagnosis" if "diagnosis" in selected else None,
    )
    images = release / "images"
    cases = []
    for pos, row in enumerate(df.to_dict("records")):
        if pos not in split_of:
            continue
        cid = row["case_num"]
        record = {}
        for f in fields:
            value = row[f]
            if value and value not in RECORD_VOCABULARIES[f]:
                raise DataError(f"case {cid!r}: meta.csv column {f!r} has value {value!r}; allowed: "
                                f"{list(RECORD_VOCABULARIES[f])}", cid, str(meta_csv))
            record[f] = value or None
        inputs = {m: (str(images / row[col]) if row[col] else None) for m, col in _IMAGE_COLUMNS.items()}
        inputs["record"] = record
        labels = {t: _encode(t, row[t], classes[t], case_id=cid, source=str(meta_csv)) for t in selected}
        cases.append(CaseRecord(cid, cid, inputs, labels, split_of[pos], extra={"row": pos}))
    return Derm7ptTable(spec, cases, root=release, official_split=True, crop=crop, bgr=channel_order == "bgr")
