"""PAD-UFES-20 (Pacheco et al., Data in Brief 2020): smartphone photos of skin lesions with a patient/lesion record.

Native release layout (Mendeley Data, doi:10.17632/zr7vgbcyr2.1)::

    <root>/metadata.csv                    26 columns, one row per image
    <root>/images/imgs_part_1/*.png        (911)   \\
    <root>/images/imgs_part_2/*.png        (659)    } 2,298 PNGs named by ``img_id``, RGBA or RGB
    <root>/images/imgs_part_3/*.png        (728)   /

Images are found by file name anywhere under the root, so the folder that merges the three parts (``imgs/``, as
MetaBlock uses) works too. RGBA photos are read as RGB (the alpha channel is dropped, as ``PIL.Image.convert("RGB")``
does).

Task ``diagnosis``: 6 classes in alphabetical order **ACK, BCC, MEL, NEV, SCC, SEK** (the pandas category codes of
MetaBlock's code; BOD is already merged into SCC in the release).

Modality ``record`` (``metadata=True``), built from these columns of ``metadata.csv``:

* numeric: ``age``, ``fitspatrick`` (Fitzpatrick skin type 1-6, the source's spelling), ``diameter_1``, ``diameter_2``;
* categorical ``True``/``False``: ``smoke``, ``drink``, ``pesticide``, ``skin_cancer_history``, ``cancer_history``,
  ``has_piped_water``, ``has_sewage_system``;
* categorical ``True``/``False``/``UNK``: ``itch``, ``grew``, ``hurt``, ``changed``, ``bleed``, ``elevation``;
* categorical: ``gender`` (FEMALE, MALE), ``region`` (14 sites), ``background_father`` (13), ``background_mother`` (11);
  the vocabularies of the release (BRAZIL and BRASIL kept apart, as written). A value outside them is appended to the
  vocabulary with a warning.

A blank cell is "not collected" (≈35 % of rows miss the same clinical columns): a missing value, encoded as an all-zero
one-hot or a numeric missing flag. ``biopsed`` is **never** used: it leaks the label (every BCC, SCC and MEL is
biopsied). Note that missingness itself also leaks (rows without clinical data are never cancers).

There is no official split (``official_split=False``): splits are patient-grouped (``patient_id``) and stratified on
the diagnosis. ``lesion_id`` is unique only within a patient, so it is not used for grouping.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mmdiag.data.manifest import encode_label
from mmdiag.data.schema import CategoricalField, DatasetSpec, ImageModality, NumericField, TabularModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import DataError
from mmdiag.registry import DATASETS

__all__ = ["pad_ufes20", "CLASSES", "COLUMNS", "NUMERIC_FIELDS", "CATEGORICAL_FIELDS"]

_log = logging.getLogger(__name__)

COLUMNS = ("patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age", "pesticide",
           "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
           "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed",
           "elevation", "img_id", "biopsed")
CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
_BOOL = ("True", "False")
_TRISTATE = ("True", "False", "UNK")
NUMERIC_FIELDS = ("age", "fitspatrick", "diameter_1", "diameter_2")
CATEGORICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "gender": ("FEMALE", "MALE"),
    "region": ("ARM", "NECK", "FACE", "HAND", "FOREARM", "CHEST", "NOSE", "THIGH", "SCALP", "EAR", "BACK", "FOOT",
               "ABDOMEN", "LIP"),
    "smoke": _BOOL, "drink": _BOOL, "pesticide": _BOOL, "skin_cancer_history": _BOOL, "cancer_history": _BOOL,
    "has_piped_water": _BOOL, "has_sewage_system": _BOOL,
    "itch": _TRISTATE, "grew": _TRISTATE, "hurt": _TRISTATE, "changed": _TRISTATE, "bleed": _TRISTATE,
    "elevation": _TRISTATE,
    "background_father": ("POMERANIA", "GERMANY", "BRAZIL", "NETHERLANDS", "ITALY", "POLAND", "UNK", "PORTUGAL",
                          "BRASIL", "CZECH", "AUSTRIA", "SPAIN", "ISRAEL"),
    "background_mother": ("POMERANIA", "ITALY", "GERMANY", "BRAZIL", "UNK", "POLAND", "NORWAY", "PORTUGAL",
                          "NETHERLANDS", "FRANCE", "SPAIN"),
}
_TASK = TaskSpec(type="multiclass", classes=CLASSES)


def _vocabulary(df: pd.DataFrame, column: str, known: tuple[str, ...], source: Path) -> tuple[str, ...]:
    """The release vocabulary of ``column`` plus (sorted, with a warning) any other non-blank value in the file."""
    seen = {str(v).strip() for v in df[column] if str(v).strip()}
    extra = sorted(seen - set(known))
    if extra:
        _log.warning("%s: column %r holds values %s outside the release vocabulary %s; they are added to it",
                     source, column, extra, list(known))
    return known + tuple(extra)


def _record_modality(df: pd.DataFrame, source: Path) -> TabularModality:
    fields: dict[str, NumericField | CategoricalField] = {n: NumericField() for n in NUMERIC_FIELDS}
    fields |= {n: CategoricalField(values=_vocabulary(df, n, v, source)) for n, v in CATEGORICAL_FIELDS.items()}
    return TabularModality(fields=fields)


def _image_index(root: Path) -> dict[str, Path]:
    """PNG file name → path, over every folder under ``root`` (first in sorted order wins, with a warning)."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() != ".png" or not p.is_file():
            continue
        if p.name in index:
            _log.warning("PAD-UFES-20: %s appears twice (%s, %s); using the first", p.name, index[p.name], p)
            continue
        index[p.name] = p
    return index


@DATASETS.register
def pad_ufes20(root: str, metadata: bool = True, image_size: int = 224, normalize: bool = True) -> CaseTable:
    """PAD-UFES-20 smartphone skin-lesion photos, 6 diagnoses, with the patient/lesion record (native release).

    Args:
        root: folder holding ``metadata.csv`` and the image folders (``images/imgs_part_1..3`` or a merged folder).
        metadata: add the ``record`` modality (see the module docstring for its fields); False: image only.
        image_size: side the photos are resized to (aspect ratio not kept, as in the MedMamba code).
        normalize: normalise with mean 0.5 and std 0.5 per channel, as MedMamba's code does.

    Raises:
        DataError: ``metadata.csv`` is missing or lacks a column (named), an ``img_id`` repeats, a diagnosis is not
            one of the 6 classes (allowed ones listed), or an image file is missing (naming the case and the file).
    """
    root_path = Path(root)
    csv = root_path / "metadata.csv"
    if not csv.is_file():
        raise DataError(f"PAD-UFES-20: {str(csv)!r} does not exist; data.root must be the folder of the release "
                        f"(metadata.csv + images/imgs_part_1..3)", path=str(csv))
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    needed = ["patient_id", "img_id", "diagnostic"] + (list(NUMERIC_FIELDS) + list(CATEGORICAL_FIELDS) if metadata
                                                       else [])
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise DataError(f"{str(csv)!r} lacks column(s) {absent}; it has {list(df.columns)} (the release has "
                        f"{list(COLUMNS)})", path=str(csv))
    dup = df["img_id"][df["img_id"].duplicated()].tolist()
    if dup:
        raise DataError(f"{str(csv)!r}: img_id repeats: {dup[:5]}", path=str(csv))
    record = _record_modality(df, csv) if metadata else None
    images = _image_index(root_path)
    cases, missing = [], []
    for row in df.to_dict("records"):
        img_id = row["img_id"].strip()
        cid = Path(img_id).stem
        label = encode_label("diagnosis", _TASK, row["diagnostic"], case_id=cid)
        path = images.get(img_id)
        if path is None:
            missing.append((cid, img_id))
            continue
        inputs: dict = {"clinical": str(path)}
        if record is not None:
            inputs["record"] = {name: row[name] for name in record.fields}
        cases.append(CaseRecord(cid, row["patient_id"].strip() or cid, inputs, {"diagnosis": label},
                                extra={"lesion_id": row.get("lesion_id", "")}))
    if missing:
        cid, img_id = missing[0]
        raise DataError(f"PAD-UFES-20: {len(missing)} image file(s) not found under {str(root_path)!r}, e.g. case "
                        f"{cid!r}: {img_id!r} (searched every folder, e.g. images/imgs_part_1..3); first missing: "
                        f"{[m[1] for m in missing[:5]]}", cid, str(root_path / "images" / img_id))
    mean = (0.5,) * 3 if normalize else None
    modalities: dict = {"clinical": ImageModality(channels=3, size=(image_size, image_size), mean=mean, std=mean)}
    if record is not None:
        modalities["record"] = record
    spec = DatasetSpec(name="pad_ufes20", modalities=modalities, tasks={"diagnosis": _TASK}, primary_task="diagnosis")
    return CaseTable(spec, cases, root=root_path, official_split=False)
