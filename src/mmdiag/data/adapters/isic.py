"""ISIC 2017 / 2018 / 2019 dermoscopy challenges (RemixFormer++ §IV-A), read in the official archive layouts.

Layouts read (``data.root`` = the folder the archives were unpacked into)::

    ISIC 2017
      ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_xxxxxxx.jpg      (+ *_superpixels.png, skipped)
      ISIC-2017_{Training,Validation,Test_v2}_Part3_GroundTruth.csv       image_id, melanoma, seborrheic_keratosis
      ISIC-2017_{Training,Validation,Test_v2}_Part2_GroundTruth/ISIC_xxxxxxx_features.json
    ISIC 2018
      ISIC2018_Task3_{Training,Validation,Test}_Input/ISIC_xxxxxxx.jpg
      ISIC2018_Task3_{Training,Validation,Test}_GroundTruth/ISIC2018_Task3_*_GroundTruth.csv
                                                         image, MEL, NV, BCC, AKIEC, BKL, DF, VASC (one-hot floats)
      ISIC2018_Task3_Training_LesionGroupings.csv        image, lesion_id, diagnosis_confirm_type
      ISIC2018_Task1-2_Training_Input/ISIC_xxxxxxx.jpg
      ISIC2018_Task2_Training_GroundTruth_v3/ISIC_xxxxxxx_attribute_<name>.png   (0 = absent, 255 = present)
    ISIC 2019
      ISIC_2019_Training_Input/ISIC_xxxxxxx.jpg
      ISIC_2019_Training_GroundTruth.csv                 image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK
      ISIC_2019_Training_Metadata.csv                    image, age_approx, anatom_site_general, lesion_id, sex

Tasks (``task``):

* ``diagnosis`` (multi-class): 2017 MEL, SK, NV (nevus = both Part 3 columns 0); 2018 the 7 Task 3 columns in file
  order; 2019 the 8 training classes in file order (UNK, all-zero in the training truth, is dropped).
* ``attributes`` (multi-label, RemixFormer++ Table V): the image-level dermoscopic attributes of the Task 1-2 image
  set, in the paper's order MLCs, NPN, PN, STR (+ GLO in 2018) = ``milia_like_cyst``, ``negative_network``,
  ``pigment_network``, ``streaks`` (, ``globules``). 2018: an attribute is present when its mask has any pixel above
  128 (the official Task 2 scorer's threshold; a two-valued mask whose high value is not 255 is rescaled first, as the
  scorer does; any other mask is an error). 2017: an attribute is present when any superpixel is labelled with it in
  ``ISIC_xxxxxxx_features.json`` (one 0/1 list per attribute, indexed by superpixel id); the superpixel image is not
  needed for an image-level label, so it is not read. Choice: key names and the list form follow the notes (not
  checked against a real file); a JSON whose keys differ is an error naming them.

Splits (``split``): ``train_cv`` (default for 2018 and 2019, the paper's protocol after CI-Net) keeps the training set
only and leaves it to ``data.split.kind=kfold`` (5 folds, stratified, grouped by ``lesion_id`` where the release has
one: 2018 LesionGroupings, 2019 metadata); ``official`` (default for 2017: 2,000 train / 150 val / 600 test) uses every
set whose ground truth is present. ISIC 2019's test truth was never released, so it has no ``official`` split.

Images are read as RGB and resized to ``image_size`` (the paper: 1024² for the dermoscopy branch) and normalised with
the ImageNet mean/std (the notes' recommendation). ISIC 2019's metadata is the ``record`` modality (``metadata=True``):
``age_approx`` numeric, ``anatom_site_general`` (8 sites) and ``sex`` categorical, blank = missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmdiag.data.adapters._common import check_choice, missing_file_error, require_file
from mmdiag.data.schema import CategoricalField, DatasetSpec, ImageModality, NumericField, TabularModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import DataError
from mmdiag.registry import DATASETS

__all__ = ["isic2017", "isic2018", "isic2019", "CLASSES_2017", "CLASSES_2018", "CLASSES_2019", "GT_COLUMNS_2017",
           "GT_COLUMNS_2018", "GT_COLUMNS_2019", "META_COLUMNS_2019", "ATTRIBUTES_2017", "ATTRIBUTES_2018",
           "SITES_2019", "attribute_present"]

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

GT_COLUMNS_2017 = ("image_id", "melanoma", "seborrheic_keratosis")
CLASSES_2017 = ("MEL", "SK", "NV")
GT_COLUMNS_2018 = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
CLASSES_2018 = GT_COLUMNS_2018[1:]
GT_COLUMNS_2019 = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
CLASSES_2019 = GT_COLUMNS_2019[1:-1]
META_COLUMNS_2019 = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
SITES_2019 = ("anterior torso", "posterior torso", "lateral torso", "upper extremity", "lower extremity",
              "head/neck", "palms/soles", "oral/genital")
ATTRIBUTES_2017 = ("milia_like_cyst", "negative_network", "pigment_network", "streaks")
ATTRIBUTES_2018 = (*ATTRIBUTES_2017, "globules")

_SETS_2017 = {"train": "Training", "val": "Validation", "test": "Test_v2"}
_SETS_2018 = {"train": "Training", "val": "Validation", "test": "Test"}


def _image_modality(image_size: int) -> ImageModality:
    return ImageModality(channels=3, size=(image_size, image_size), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _read_csv(path: Path, columns: tuple[str, ...], dataset: str) -> pd.DataFrame:
    """A ground-truth/metadata CSV as strings; every column of ``columns`` must be present."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False).apply(lambda c: c.str.strip())
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DataError(f"{dataset}: {str(path)!r} lacks column(s) {absent}; it has {list(df.columns)} (the release "
                        f"has {list(columns)})", path=str(path))
    key = columns[0]
    dup = df[key][df[key].duplicated()].tolist()
    if dup:
        raise DataError(f"{dataset}: {str(path)!r}: {key} repeats: {dup[:5]}", path=str(path))
    return df


def _one_hot_label(row: dict, columns: tuple[str, ...], *, case_id: str, source: Path) -> int:
    """Index of the single 1.0 among ``columns`` of a one-hot ground-truth row."""
    try:
        values = np.array([float(row[c]) for c in columns])
    except ValueError:
        raise DataError(f"case {case_id!r}: {str(source)!r} holds a non-number in {list(columns)}: "
                        f"{[row[c] for c in columns]}", case_id, str(source)) from None
    hot = np.flatnonzero(values == 1.0)
    if len(hot) != 1 or np.count_nonzero(values) != 1:
        raise DataError(f"case {case_id!r}: {str(source)!r} row is not one-hot over {list(columns)}: "
                        f"{values.tolist()}", case_id, str(source))
    return int(hot[0])


def _image_case(folder: Path, image_id: str, case_id: str, patient_id: str, labels: dict, split: str | None,
                inputs: dict | None = None) -> CaseRecord:
    path = folder / f"{image_id}.jpg"
    if not path.is_file():
        raise missing_file_error(case_id, path, "dermoscopy")
    return CaseRecord(case_id, patient_id, {"dermoscopy": str(path), **(inputs or {})}, labels, split)


def _sets(root: Path, split: str, names: dict[str, str], gt_path, dataset: str) -> dict[str, str]:
    """split name → release set name, for the sets whose ground truth exists (training is required)."""
    require_file(dataset, gt_path(names["train"]), "training ground truth")
    if split == "train_cv":
        return {"train": names["train"]}
    found = {s: n for s, n in names.items() if gt_path(n).is_file()}
    if "test" not in found:
        _log.warning("%s: no test ground truth %r; split='official' has train/val only", dataset,
                     str(gt_path(names["test"])))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Attribute labels


def attribute_present(mask: np.ndarray, *, source: str = "mask") -> bool:
    """Image-level label of one Task 2 attribute mask: any pixel above 128, after the scorer's rescaling.

    The official scorer accepts a single-channel mask whose values are {0, 255}, rescales a two-valued mask whose high
    value is not 255 to {0, 255}, and rejects anything else.

    Raises:
        DataError: the mask is not single-channel or holds more than two values.
    """
    if mask.ndim != 2:
        raise DataError(f"{source}: attribute mask has shape {mask.shape}; expected a single-channel image",
                        path=source)
    values = np.unique(mask)
    if len(values) > 2:
        raise DataError(f"{source}: attribute mask holds {len(values)} values {values[:6].tolist()}...; expected a "
                        f"binary mask (0 and 255)", path=source)
    if len(values) == 2:
        return True  # the high value becomes 255 > 128
    return bool(values[0] > 128)


def _mask_label(path: Path, case_id: str) -> bool:
    from PIL import Image

    if not path.is_file():
        raise DataError(f"case {case_id!r}: attribute mask {str(path)!r} does not exist", case_id, str(path))
    with Image.open(path) as im:
        arr = np.asarray(im)
    return attribute_present(arr, source=str(path))


def _features_label(path: Path, case_id: str) -> np.ndarray:
    """2017 Part 2: per attribute, whether any superpixel carries it."""
    if not path.is_file():
        raise DataError(f"case {case_id!r}: superpixel features {str(path)!r} do not exist", case_id, str(path))
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"case {case_id!r}: {str(path)!r} is not JSON: {e}", case_id, str(path)) from e
    absent = [a for a in ATTRIBUTES_2017 if a not in obj]
    if absent:
        raise DataError(f"case {case_id!r}: {str(path)!r} lacks attribute(s) {absent}; it has {sorted(obj)}",
                        case_id, str(path))
    return np.array([float(np.any(np.asarray(obj[a], dtype=float) > 0)) for a in ATTRIBUTES_2017], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Datasets


@DATASETS.register
def isic2017(root: str, task: str = "diagnosis", split: str = "official", image_size: int = 1024) -> CaseTable:
    """ISIC 2017: melanoma / seborrheic keratosis / nevus (Part 3) or 4 dermoscopic attributes (Part 2).

    Args:
        root: folder holding the ``ISIC-2017_*`` archives' folders and CSVs.
        task: ``diagnosis`` (MEL, SK, NV) or ``attributes`` (4 labels, module docstring).
        split: ``official`` (train / val / test, as the paper) or ``train_cv`` (training set only, for k-fold).
        image_size: side the images are resized to.

    Raises:
        ConfigError: an option outside its choices.
        DataError: a missing CSV / column / image / features file, a row that is neither MEL, SK nor nevus.
    """
    check_choice("isic2017", "task", task, ("diagnosis", "attributes"))
    check_choice("isic2017", "split", split, ("official", "train_cv"))
    base = Path(root)

    def gt(name: str) -> Path:
        return base / f"ISIC-2017_{name}_Part3_GroundTruth.csv"

    cases = []
    for s, name in _sets(base, split, _SETS_2017, gt, "isic2017").items():
        csv = gt(name)
        df = _read_csv(csv, GT_COLUMNS_2017, "isic2017")
        for row in df.to_dict("records"):
            cid = row["image_id"]
            if task == "attributes":
                label = _features_label(base / f"ISIC-2017_{name}_Part2_GroundTruth" / f"{cid}_features.json", cid)
            else:
                mel, sk = (float(row[c]) for c in GT_COLUMNS_2017[1:])
                if {mel, sk} - {0.0, 1.0} or mel + sk > 1:
                    raise DataError(f"case {cid!r}: {str(csv)!r} has melanoma={mel}, seborrheic_keratosis={sk}; "
                                    f"expected 0/1 values, at most one 1", cid, str(csv))
                label = 0 if mel else 1 if sk else 2
            cases.append(_image_case(base / f"ISIC-2017_{name}_Data", cid, cid, cid, {task: label}, s))
    tasks = ({"diagnosis": TaskSpec(type="multiclass", classes=CLASSES_2017)} if task == "diagnosis"
             else {"attributes": TaskSpec(type="multilabel", classes=ATTRIBUTES_2017)})
    spec = DatasetSpec(name="isic2017", modalities={"dermoscopy": _image_modality(image_size)}, tasks=tasks)
    return CaseTable(spec, cases, root=base, official_split=split == "official")


def _lesion_groups(base: Path) -> dict[str, str]:
    path = base / "ISIC2018_Task3_Training_LesionGroupings.csv"
    if not path.is_file():
        _log.warning("isic2018: %r not found; folds are grouped by image, so images of one lesion may fall into "
                     "different folds", str(path))
        return {}
    df = _read_csv(path, ("image", "lesion_id"), "isic2018")
    return {r["image"]: r["lesion_id"] for r in df.to_dict("records") if r["lesion_id"]}


@DATASETS.register
def isic2018(root: str, task: str = "diagnosis", split: str = "train_cv", image_size: int = 1024) -> CaseTable:
    """ISIC 2018: Task 3 diagnosis (7 classes, = HAM10000) or Task 2 attributes (5 labels from the masks).

    Args:
        root: folder holding the ``ISIC2018_*`` folders.
        task: ``diagnosis`` or ``attributes`` (module docstring).
        split: ``train_cv`` (training set only, the paper's 5-fold protocol; grouped by lesion) or ``official``
            (diagnosis only: train / val / test where their ground truth exists).
        image_size: side the images are resized to.

    Raises:
        ConfigError: an option outside its choices.
        DataError: a missing CSV / column / image / mask, a ground-truth row that is not one-hot, a bad mask.
    """
    check_choice("isic2018", "task", task, ("diagnosis", "attributes"))
    check_choice("isic2018", "split", split, ("train_cv", "official") if task == "diagnosis" else ("train_cv",))
    base = Path(root)
    cases = []
    if task == "attributes":
        images = base / "ISIC2018_Task1-2_Training_Input"
        masks = base / "ISIC2018_Task2_Training_GroundTruth_v3"
        if not masks.is_dir():
            raise DataError(f"isic2018: attribute mask folder {str(masks)!r} does not exist; is data.root the folder "
                            f"of the ISIC 2018 archives?", path=str(masks))
        ids = sorted({p.name.split("_attribute_")[0] for p in masks.glob("ISIC_*_attribute_*.png")})
        if not ids:
            raise DataError(f"isic2018: no ISIC_*_attribute_*.png masks in {str(masks)!r}", path=str(masks))
        for cid in ids:
            label = np.array([_mask_label(masks / f"{cid}_attribute_{a}.png", cid) for a in ATTRIBUTES_2018],
                             dtype=np.float32)
            cases.append(_image_case(images, cid, cid, cid, {"attributes": label}, "train"))
        tasks = {"attributes": TaskSpec(type="multilabel", classes=ATTRIBUTES_2018)}
    else:
        def gt(name: str) -> Path:
            return base / f"ISIC2018_Task3_{name}_GroundTruth" / f"ISIC2018_Task3_{name}_GroundTruth.csv"

        lesion = _lesion_groups(base)
        for s, name in _sets(base, split, _SETS_2018, gt, "isic2018").items():
            csv = gt(name)
            for row in _read_csv(csv, GT_COLUMNS_2018, "isic2018").to_dict("records"):
                cid = row["image"]
                label = _one_hot_label(row, GT_COLUMNS_2018[1:], case_id=cid, source=csv)
                cases.append(_image_case(base / f"ISIC2018_Task3_{name}_Input", cid, cid, lesion.get(cid, cid),
                                         {"diagnosis": label}, s))
        tasks = {"diagnosis": TaskSpec(type="multiclass", classes=CLASSES_2018)}
    spec = DatasetSpec(name="isic2018", modalities={"dermoscopy": _image_modality(image_size)}, tasks=tasks)
    return CaseTable(spec, cases, root=base, official_split=split == "official")


@DATASETS.register
def isic2019(root: str, metadata: bool = True, split: str = "train_cv", image_size: int = 1024) -> CaseTable:
    """ISIC 2019 training set: 8 diagnoses, with the metadata CSV as the ``record`` modality.

    Args:
        root: folder holding ``ISIC_2019_Training_Input/`` and the training CSVs.
        metadata: add the ``record`` modality (age, site, sex); False: image only.
        split: ``train_cv`` only (the test truth is not public; the paper uses 5-fold CV on the training set).
        image_size: side the images are resized to.

    Raises:
        ConfigError: an option outside its choices.
        DataError: a missing CSV / column / image, a ground-truth row that is not one-hot over the 8 classes (an
            ``UNK`` row included), a site or sex outside the release vocabulary.
    """
    check_choice("isic2019", "split", split, ("train_cv",))
    base = Path(root)
    csv = require_file("isic2019", base / "ISIC_2019_Training_GroundTruth.csv", "training ground truth")
    df = _read_csv(csv, GT_COLUMNS_2019, "isic2019")
    meta: dict[str, dict] = {}
    meta_csv = base / "ISIC_2019_Training_Metadata.csv"
    if metadata or meta_csv.is_file():
        require_file("isic2019", meta_csv, "training metadata")
        meta = {r["image"]: r for r in _read_csv(meta_csv, META_COLUMNS_2019, "isic2019").to_dict("records")}
    vocab = {"anatom_site_general": SITES_2019, "sex": ("female", "male")}
    cases = []
    for row in df.to_dict("records"):
        cid = row["image"]
        label = _one_hot_label(row, GT_COLUMNS_2019[1:], case_id=cid, source=csv)
        if label == len(CLASSES_2019):
            raise DataError(f"case {cid!r}: {str(csv)!r} labels it UNK, which the 8-class training task has not",
                            cid, str(csv))
        m = meta.get(cid, {})
        if meta and not m:
            raise DataError(f"case {cid!r}: no row in {str(meta_csv)!r}", cid, str(meta_csv))
        inputs = None
        if metadata:
            for field, values in vocab.items():
                if m[field] and m[field] not in values:
                    raise DataError(f"case {cid!r}: {str(meta_csv)!r} column {field!r} has value {m[field]!r}; "
                                    f"allowed: {list(values)} or blank", cid, str(meta_csv))
            inputs = {"record": {"age_approx": m["age_approx"] or None,
                                 **{f: m[f] or None for f in vocab}}}
        cases.append(_image_case(base / "ISIC_2019_Training_Input", cid, cid, m.get("lesion_id") or cid,
                                 {"diagnosis": label}, "train", inputs))
    modalities: dict = {"dermoscopy": _image_modality(image_size)}
    if metadata:
        modalities["record"] = TabularModality(fields={"age_approx": NumericField(),
                                                       **{f: CategoricalField(values=v) for f, v in vocab.items()}})
    spec = DatasetSpec(name="isic2019", modalities=modalities,
                       tasks={"diagnosis": TaskSpec(type="multiclass", classes=CLASSES_2019)})
    return CaseTable(spec, cases, root=base, official_split=False)
