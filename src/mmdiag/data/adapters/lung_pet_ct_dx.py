"""Lung-PET-CT-Dx (Li et al., TCIA 2020, doi:10.7937/TCIA.2020.NNC2-0461): lung-cancer CT + clinical record.

Layout read (``data.root``; each part found below it, or named by an option)::

    [manifest-<n>/]Lung-PET-CT-Dx/Lung_Dx-A0001/<study folder>/<series folder>/1-01.dcm ...   (NBIA Data Retriever)
    Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020/Annotation/A0001/<SOPInstanceUID>.xml    (PASCAL-VOC boxes)
    <clinical spreadsheet>.xlsx                                                                 (one row per patient)

Patients are ``Lung_Dx-<L><NNNN>``; the letter is the histology: A adenocarcinoma, B small-cell, E large-cell,
G squamous-cell carcinoma. Only CT series (DICOM Modality ``CT``) are used; each is read slice by slice with pydicom,
ordered by ImagePositionPatient along the slice normal (ascending; InstanceNumber when the position is absent),
rescaled to HU (RescaleSlope/Intercept), clipped to ``hu_window`` and scaled to [0, 1], resized in-plane to
``image_size`` (area-like antialiased bilinear). A *window* is ``num_slices`` consecutive slices; a series shorter
than that is padded at the end with air (-1000 HU).

Case-id and grouping convention (also in docs/lung_pet_ct_dx.md)::

    case_id    = "<patient>/<SeriesInstanceUID>@<window>"     e.g. "Lung_Dx-A0001/1.3.6.1.4.1.14519...@0012"
    series key = case_id.rsplit("@", 1)[0]                    (:func:`series_key`)
    patient_id = "<patient>" = case_id.split("/", 1)[0]

``<window>`` is the first slice index of a sliding window (4 digits) or ``tumour`` for an annotation-centred window.
The series-level score is the maximum over its windows (:func:`series_scores` reads it from ``predictions.csv``).

Cases per split (``split`` is the dataset's own, patient-grouped: use ``data.split.kind=official``/``auto``):

* train: one ``@tumour`` case per CT series with VOC boxes; its window is centred on the middle of the annotated
  slices [first, last] (start = (first + last) // 2 - num_slices // 2) and shifted in training by a uniform integer
  in ``±train_jitter``, clamped to the series. Patients without an annotated CT series are left out (listed in
  :attr:`LungPetCtDxTable.left_out`).
* val / test (``eval_windows="sliding"``, default): no annotation is used; the CT series of each patient
  (``eval_series="largest"``: the one with the most slices, as the authors keep; ``"all"``: every CT series, each
  its own group) is cut into windows starting every ``window_stride`` slices, the last one ending at the last slice.
  ``eval_windows="tumour"`` gives instead the annotation-centred window of each annotated series, without jitter
  (the authors' test protocol; it uses the annotation at test time).

Tasks: ``diagnosis``; ``classes="AG"`` (default, MMCAF-Net): binary adenocarcinoma (0) vs squamous-cell (1), other
patients left out; ``classes="ABEG"``: the four types, in that order.

Modalities: ``ct`` a volume ``(1, num_slices, image_size, image_size)`` in [0, 1]; ``record`` the clinical fields
sex (M/F), age, weight_kg, t_stage, n_stage, m_stage, smoking_history (numeric; stages as their number, ``is`` = 0,
``x`` = missing). The spreadsheet's headers are normalised (NFKC, case-folded, punctuation to ``_``); a header that
lost its first letter (``_stage``, a non-Latin "M" in the release) is the M-stage.

Splits: ``split="random"``: per class, patients shuffled with ``split_seed`` and cut into test (``test_fraction``),
val (``val_fraction``) and train; ``split="mmcaf"``: test = the 43 patients of the MMCAF-Net authors' test set (from
their published predictions), the rest cut into val/train as above.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmdiag.data.adapters._common import check_choice
from mmdiag.data.adapters._dicom import IndexCache, SeriesIndex, first_modality, index_series, read_hu_slices
from mmdiag.data.readers import DecodeCache
from mmdiag.data.schema import CategoricalField, DatasetSpec, NumericField, TabularModality, TaskSpec, VolumeModality
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError, DataError
from mmdiag.registry import DATASETS

__all__ = ["lung_pet_ct_dx", "LungPetCtDxTable", "series_key", "series_scores", "read_clinical", "read_boxes",
           "normalise_header", "MMCAF_TEST_PATIENTS", "RECORD_FIELDS"]

_log = logging.getLogger(__name__)

_CLASSES = {"AG": {"A": "adenocarcinoma", "G": "squamous_cell"},
            "ABEG": {"A": "adenocarcinoma", "B": "small_cell", "E": "large_cell", "G": "squamous_cell"}}
_PATIENT = re.compile(r"([ABEG])(\d{4})")
RECORD_FIELDS = ("sex", "age", "weight_kg", "t_stage", "n_stage", "m_stage", "smoking_history")
_HEADERS = {"newpatientid": "patient", "new_patient_id": "patient", "patient_id": "patient", "sex": "sex",
            "gender": "sex", "age": "age", "weight_kg": "weight_kg", "weight": "weight_kg", "t_stage": "t_stage",
            "n_stage": "n_stage", "m_stage": "m_stage", "stage": "m_stage", "smoking_history": "smoking_history",
            "smoking": "smoking_history"}
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}

# Test patients of the MMCAF-Net authors (the study ids of their published test predictions, 15 G + 28 A).
MMCAF_TEST_PATIENTS = tuple(f"Lung_Dx-{p}" for p in (
    "G0006 G0007 G0015 G0018 G0024 G0035 G0037 G0038 G0040 G0041 G0045 G0047 G0053 G0060 G0062 "
    "A0001 A0006 A0013 A0018 A0032 A0046 A0058 A0072 A0078 A0082 A0086 A0108 A0117 A0118 A0123 A0130 "
    "A0133 A0142 A0144 A0148 A0166 A0170 A0176 A0181 A0223 A0256 A0257 A0265").split())


def series_key(case_id: str) -> str:
    """The series a window case belongs to (``<patient>/<SeriesInstanceUID>``)."""
    return case_id.rsplit("@", 1)[0]


def series_scores(predictions: pd.DataFrame | str | Path, column: str = "diagnosis.prob.squamous_cell"
                  ) -> pd.DataFrame:
    """Series-level scores from window predictions: the maximum of ``column`` over each series' windows.

    Returns:
        One row per series: ``series``, ``patient``, ``true`` (the task's true class, when present), ``score``,
        ``windows`` (how many windows were pooled).
    """
    df = predictions if isinstance(predictions, pd.DataFrame) else pd.read_csv(predictions)
    if column not in df.columns:
        raise DataError(f"predictions have no column {column!r}; columns: {list(df.columns)}")
    keys = df["case_id"].astype(str).map(series_key)
    true_col = column.split(".prob.")[0] + ".true"
    agg = {"score": (column, "max"), "windows": (column, "size")}
    if true_col in df.columns:
        agg["true"] = (true_col, "first")
    out = df.assign(series=keys).groupby("series", sort=True).agg(**agg).reset_index()
    out.insert(1, "patient", out["series"].str.split("/", n=1).str[0])
    return out


def normalise_header(name: Any) -> str:
    """A spreadsheet header as a key: NFKC, case-folded, runs of anything but ``a-z0-9`` turned into one ``_``."""
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _patient_of(value: Any) -> str | None:
    m = _PATIENT.search(str(value).upper())
    return f"Lung_Dx-{m.group(1)}{m.group(2)}" if m else None


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    m = re.search(r"-?\d+(\.\d+)?", str(value))
    return float(m.group(0)) if m else None


def _stage(value: Any) -> float | None:
    """T/N/M stage as its number: ``T2a`` → 2, ``is`` → 0, ``x`` or blank → missing."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return None if np.isnan(value) else float(value)
    text = str(value).strip().casefold().lstrip("tnm")
    if text == "is":
        return 0.0
    m = re.match(r"\d", text)
    return float(m.group(0)) if m else None


def read_clinical(path: Path) -> dict[str, dict[str, Any]]:
    """Patient id → typed record fields (:data:`RECORD_FIELDS`) from the clinical spreadsheet.

    Raises:
        DataError: no patient-id column, a repeated patient, or an unknown sex value (naming the file, row, value).
    """
    try:
        df = pd.read_excel(path, sheet_name=0, dtype=object)
    except ImportError as e:
        raise DataError(f"reading {str(path)!r} needs openpyxl (pip install openpyxl)", path=str(path)) from e
    except Exception as e:  # noqa: BLE001 - any spreadsheet failure is reported with the file
        raise DataError(f"cannot read clinical spreadsheet {str(path)!r}: {type(e).__name__}: {e}",
                        path=str(path)) from e
    columns: dict[str, str] = {}
    for raw in df.columns:
        key = _HEADERS.get(normalise_header(raw))
        if key is not None and key not in columns.values():
            columns[raw] = key
    if "patient" not in columns.values():
        raise DataError(f"clinical spreadsheet {str(path)!r} has no patient-id column (NewPatientID); headers: "
                        f"{[str(c) for c in df.columns]}", path=str(path))
    df = df[list(columns)].rename(columns=columns)
    out: dict[str, dict[str, Any]] = {}
    for row_no, row in enumerate(df.to_dict("records"), start=2):
        pid = _patient_of(row["patient"])
        if pid is None:
            continue
        if pid in out:
            raise DataError(f"clinical spreadsheet {str(path)!r} row {row_no}: patient {pid!r} appears twice", pid,
                            str(path))
        rec: dict[str, Any] = {}
        sex = row.get("sex")
        if sex is None or (isinstance(sex, float) and np.isnan(sex)) or not str(sex).strip():
            rec["sex"] = None
        elif str(sex).strip().casefold() in _SEX:
            rec["sex"] = _SEX[str(sex).strip().casefold()]
        else:
            raise DataError(f"clinical spreadsheet {str(path)!r} row {row_no} (patient {pid!r}): sex {sex!r}; "
                            f"allowed: M, F, Male, Female", pid, str(path))
        for f in ("age", "weight_kg", "smoking_history"):
            rec[f] = _number(row.get(f))
        for f in ("t_stage", "n_stage", "m_stage"):
            rec[f] = _stage(row.get(f)) if f in row and row[f] is not None else None
        out[pid] = rec
    return out


def read_boxes(path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The ``(name, (xmin, ymin, xmax, ymax))`` objects of one PASCAL-VOC XML file (name ``""`` when unlabelled).

    Raises:
        DataError: the file is not well-formed XML or a box lacks a coordinate (naming the file).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"annotation {str(path)!r} is not valid XML: {e}", path=str(path)) from e
    boxes = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            coords = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as e:
            raise DataError(f"annotation {str(path)!r}: a box lacks one of xmin/ymin/xmax/ymax", path=str(path)) from e
        boxes.append(((obj.findtext("name") or "").strip(), coords))
    return boxes


@dataclass
class LungPetCtDxTable(CaseTable):
    """Window cases of Lung-PET-CT-Dx CT series (module docstring); reading ``ct`` decodes one window.

    With a decode cache the whole series is decoded, windowed and resized once and kept as one cache entry; without
    one, only the window's slices are decoded.
    """

    series: dict[str, SeriesIndex] = field(default_factory=dict, repr=False)
    num_slices: int = 12
    image_size: int = 192
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    train_jitter: int = 6
    left_out: list[tuple[str, str]] = field(default_factory=list)
    _memo: tuple[str, torch.Tensor] | None = field(default=None, repr=False)

    def window_start(self, case: CaseRecord, *, train: bool, rng: np.random.Generator) -> int:
        """First slice of the window ``case`` reads (tumour windows jittered in training, then clamped)."""
        n = len(self.series[series_key(case.case_id)])
        start = int(case.extra["start"])
        if case.extra.get("tumour") and train and self.train_jitter:
            start += int(rng.integers(-self.train_jitter, self.train_jitter + 1))
        return int(np.clip(start, 0, max(n - self.num_slices, 0)))

    def read(self, case: CaseRecord, modality: str, *, train: bool, rng: np.random.Generator,
             cache: DecodeCache | None = None) -> torch.Tensor:
        """The window as a ``(1, num_slices, image_size, image_size)`` float tensor in [0, 1].

        Raises:
            DataError: an unreadable DICOM file or an inconsistent series (naming the case and the file).
        """
        if modality != "ct":
            return super().read(case, modality, train=train, rng=rng, cache=cache)
        key = series_key(case.case_id)
        s = self.series[key]
        if s.error is not None:
            raise DataError(str(s.error).replace(repr(key), repr(case.case_id), 1), case.case_id, s.error.path)
        start = self.window_start(case, train=train, rng=rng)
        stop = min(start + self.num_slices, len(s))
        if cache is None:
            x = self._finish(read_hu_slices(s.files[start:stop], case.case_id))
        else:
            x = self._series_volume(key, cache, case.case_id)[start:stop]
        if x.shape[0] < self.num_slices:
            air = (-1000.0 - self.hu_window[0]) / (self.hu_window[1] - self.hu_window[0])
            pad = torch.full((self.num_slices - x.shape[0], *x.shape[1:]), float(np.clip(air, 0.0, 1.0)))
            x = torch.cat([x, pad])
        return x.unsqueeze(0).contiguous()

    def _finish(self, hu: np.ndarray) -> torch.Tensor:
        lo, hi = self.hu_window
        x = (torch.from_numpy(hu).clamp_(lo, hi) - lo) / (hi - lo)
        if tuple(x.shape[1:]) != (self.image_size, self.image_size):
            x = F.interpolate(x.unsqueeze(1), size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)[:, 0].clamp_(0.0, 1.0)
        return x

    def _series_volume(self, key: str, cache: DecodeCache, case_id: str) -> torch.Tensor:
        """The whole series windowed and resized, from the decode cache (decoded on a miss); the last one memoised."""
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        s = self.series[key]
        ckey = cache.key(s.folder, (len(s), self.image_size, self.image_size),
                         f"lung_pet_ct_dx|{self.hu_window}|{[f.name for f in s.files]}")
        vol = cache.get(ckey)
        if vol is None:
            vol = self._finish(read_hu_slices(s.files, case_id))
            cache.put(ckey, vol)
        self._memo = (key, vol)
        return vol


def _find(root: Path, option: str | None, what: str, pattern: str, is_dir: bool) -> Path | None:
    """``root/option`` when given, else the single match of ``pattern`` at depth ≤ 3 below ``root``."""
    if option:
        path = root / option
        if not (path.is_dir() if is_dir else path.is_file()):
            raise ConfigError(f"lung_pet_ct_dx: data.options.{what}={option!r}: {str(path)!r} does not exist")
        return path
    hits = sorted({p for depth in ("", "*/", "*/*/", "*/*/*/") for p in root.glob(depth + pattern)
                   if (p.is_dir() if is_dir else p.is_file())})
    if len(hits) > 1:
        raise ConfigError(f"lung_pet_ct_dx: several {what} under {str(root)!r}: {[str(h) for h in hits[:5]]}; name "
                          f"one with data.options.{what}")
    return hits[0] if hits else None


def _patient_dirs(root: Path, images: str | None) -> dict[str, Path]:
    base = root / images if images else root
    if images and not base.is_dir():
        raise ConfigError(f"lung_pet_ct_dx: data.options.images={images!r}: {str(base)!r} does not exist")
    dirs = {}
    for depth in ("", "*/", "*/*/", "*/*/*/"):
        for p in sorted(base.glob(depth + "Lung_Dx-*")):
            pid = _patient_of(p.name)
            if p.is_dir() and pid is not None and pid == p.name:
                dirs.setdefault(pid, p)
        if dirs:
            break
    if not dirs:
        raise DataError(f"lung_pet_ct_dx: no patient folders Lung_Dx-<L><NNNN> under {str(base)!r}; is data.root "
                        f"the download folder (holding manifest-*/Lung-PET-CT-Dx)?", path=str(base))
    return dirs


def _ct_series(pid: str, folder: Path, spacing_tolerance: float, index: IndexCache | None) -> list[SeriesIndex]:
    """The patient's CT series; a folder whose first readable file is not CT is skipped without indexing."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for f in folder.rglob("*.dcm"):
        by_folder[f.parent].append(f)
    out = []
    for sfolder, files in sorted(by_folder.items()):
        s = index.get(sfolder, files) if index is not None else None
        if s is None:
            modality = first_modality(files)
            if modality is not None and modality != "CT":
                s = {"modality": modality}
                if index is not None:
                    index.put(sfolder, files, modality)
            else:
                s = index_series(sfolder, files, f"{pid}/{sfolder.name}", spacing_tolerance)
                if index is not None:
                    index.put(sfolder, files, s)
        if isinstance(s, SeriesIndex) and s.modality == "CT":
            out.append(s)
    return out


def _annotated_slices(s: SeriesIndex, boxes_by_uid: dict[str, list]) -> list[int]:
    return [i for i, uid in enumerate(s.sop_uids) if boxes_by_uid.get(uid)]


def _split_patients(labels: dict[str, int], split: str, val_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, str]:
    """Patient → train/val/test, per class (stratified); a patient is never in two splits."""
    rng = np.random.default_rng(seed)
    out = {}
    fixed = set(MMCAF_TEST_PATIENTS) if split == "mmcaf" else set()
    for y in sorted(set(labels.values())):
        pts = sorted(p for p, v in labels.items() if v == y)
        out.update({p: "test" for p in pts if p in fixed})
        rest = [p for p in pts if p not in fixed]
        rng.shuffle(rest)
        n = len(rest)
        n_test = 0 if split == "mmcaf" else (max(1, round(n * test_fraction)) if n >= 3 else 0)
        n_val = max(1, round(n * val_fraction)) if n - n_test >= 2 else 0
        for i, p in enumerate(rest):
            out[p] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    return out


def _sliding_starts(n: int, k: int, stride: int) -> list[int]:
    if n <= k:
        return [0]
    starts = list(range(0, n - k + 1, stride))
    if starts[-1] != n - k:
        starts.append(n - k)
    return starts


@DATASETS.register
def lung_pet_ct_dx(root: str, classes: str = "AG", num_slices: int = 12, image_size: int = 192,
                   hu_window: tuple[float, float] | list[float] = (-1000.0, 400.0), train_jitter: int = 6,
                   eval_windows: str = "sliding", eval_series: str = "largest", window_stride: int | None = None,
                   split: str = "random", val_fraction: float = 0.15, test_fraction: float = 0.2, split_seed: int = 0,
                   spacing_tolerance: float = 0.1, images: str | None = None, annotations: str | None = None,
                   clinical: str | None = None, index_cache: str | None = None) -> LungPetCtDxTable:
    """Lung-PET-CT-Dx: 12-slice CT windows + clinical record; adenocarcinoma vs squamous-cell (or four types).

    Args:
        root: the download folder (module docstring for what is looked for below it).
        classes: ``"AG"`` (binary A vs G, MMCAF-Net) or ``"ABEG"`` (four types).
        num_slices: slices per window (the model's depth).
        image_size: in-plane side the slices are resized to.
        hu_window: [low, high] HU clipped and scaled to [0, 1].
        train_jitter: training tumour windows move by a uniform integer in ±this.
        eval_windows: ``"sliding"`` (no annotation used at evaluation) or ``"tumour"`` (annotation-centred).
        eval_series: ``"largest"`` (one CT series per patient, the longest) or ``"all"`` (every CT series).
        window_stride: slices between sliding-window starts (default ``num_slices``: windows tile the series).
        split: ``"random"`` (stratified by class, grouped by patient) or ``"mmcaf"`` (the authors' test patients).
        val_fraction, test_fraction: share of each class's patients in val / test.
        split_seed: seed of the patient shuffle.
        spacing_tolerance: largest relative deviation of a slice gap from the series' median gap.
        images, annotations, clinical: the patient folders' parent, the VOC ``Annotation`` folder and the XLSX, as
            paths relative to ``root`` (default: found below ``root``).
        index_cache: a JSON file keeping the DICOM header index between builds (reused while a series folder's
            files are unchanged); default: headers are read on every build.

    Raises:
        ConfigError: an option value outside its choices, or an ambiguous / missing named path.
        DataError: no patient folders, an unreadable spreadsheet or annotation (naming the file).
    """
    check_choice("lung_pet_ct_dx", "classes", classes, tuple(_CLASSES))
    check_choice("lung_pet_ct_dx", "eval_windows", eval_windows, ("sliding", "tumour"))
    check_choice("lung_pet_ct_dx", "eval_series", eval_series, ("largest", "all"))
    check_choice("lung_pet_ct_dx", "split", split, ("random", "mmcaf"))
    for name, value, low in (("num_slices", num_slices, 1), ("image_size", image_size, 8),
                             ("train_jitter", train_jitter, 0), ("window_stride", window_stride or 1, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"lung_pet_ct_dx: data.options.{name}={value!r} must be a whole number >= {low}")
    if len(hu_window) != 2 or not float(hu_window[0]) < float(hu_window[1]):
        raise ConfigError(f"lung_pet_ct_dx: data.options.hu_window={list(hu_window)!r} must be [low, high], low < high")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"lung_pet_ct_dx: data.options.{name}={value!r} must be in [0, 1)")
    window = (float(hu_window[0]), float(hu_window[1]))
    stride = window_stride or num_slices
    base = Path(root)
    names = _CLASSES[classes]
    patients = {p: d for p, d in _patient_dirs(base, images).items() if p[len("Lung_Dx-")] in names}
    ann_dir = _find(base, annotations, "annotations", "Annotation", True)
    boxes_by_uid: dict[str, list] = {}
    if ann_dir is not None:
        for xml in sorted(ann_dir.glob("*/*.xml")):
            if f"Lung_Dx-{xml.parent.name}" in patients:
                boxes_by_uid[xml.stem] = read_boxes(xml)
    else:
        _log.warning("lung_pet_ct_dx: no Annotation folder below %s: no tumour windows (training needs them)", base)
    xlsx = _find(base, clinical, "clinical", "*.xlsx", False)
    records = read_clinical(xlsx) if xlsx is not None else {}
    if xlsx is None:
        _log.warning("lung_pet_ct_dx: no clinical .xlsx below %s: the record modality is missing for every case", base)

    letters = list(names)
    labels = {p: letters.index(p[len("Lung_Dx-")]) for p in patients}
    split_of = _split_patients(labels, split, val_fraction, test_fraction, split_seed)
    cases, series, left_out = [], {}, []
    index = IndexCache(index_cache, salt=f"spacing_tolerance={spacing_tolerance}") if index_cache else None
    for pid, folder in sorted(patients.items()):
        cts = _ct_series(pid, folder, spacing_tolerance, index)
        if not cts:
            left_out.append((pid, "no CT series"))
            continue
        which = split_of[pid]
        annotated = [(s, _annotated_slices(s, boxes_by_uid)) for s in cts]
        annotated = [(s, a) for s, a in annotated if a]
        if which == "train" or eval_windows == "tumour":
            chosen = [(s, f"{(a[0] + a[-1]) // 2 - num_slices // 2}", True) for s, a in annotated]
        else:
            pool = cts if eval_series == "all" else [max(cts, key=lambda s: (len(s), s.folder.name))]
            chosen = [(s, str(st), False) for s in pool for st in _sliding_starts(len(s), num_slices, stride)]
        if not chosen:
            left_out.append((pid, "no annotated CT series"))
            continue
        for s, start, tumour in chosen:
            key = f"{pid}/{s.series_uid}"
            if s.error is not None:
                s.error = DataError(str(s.error).replace(f"{pid}/{s.folder.name}", key), key, s.error.path)
            series[key] = s
            window_id = "tumour" if tumour else f"{int(start):04d}"
            cases.append(CaseRecord(f"{key}@{window_id}", pid, {"ct": str(s.folder), "record": records.get(pid)},
                                    {"diagnosis": labels[pid]}, which,
                                    extra={"start": int(start), "tumour": tumour}))
    if index is not None:
        index.save()
    if left_out:
        _log.info("lung_pet_ct_dx: %d patient(s) left out: %s", len(left_out), left_out[:5])
    if not cases:
        raise DataError(f"lung_pet_ct_dx: no usable CT series under {str(base)!r} ({len(left_out)} patients left out)",
                        path=str(base))
    task = TaskSpec(type="binary" if classes == "AG" else "multiclass", classes=tuple(names.values()))
    record = TabularModality(fields={"sex": CategoricalField(values=("M", "F")),
                                     **{f: NumericField() for f in RECORD_FIELDS[1:]}})
    spec = DatasetSpec(name="lung_pet_ct_dx",
                       modalities={"ct": VolumeModality(channels=1, size=(num_slices, image_size, image_size),
                                                        intensity_range=window),
                                   "record": record},
                       tasks={"diagnosis": task}, primary_task="diagnosis")
    return LungPetCtDxTable(spec, cases, root=base, official_split=True, series=series, num_slices=num_slices,
                            image_size=image_size, hu_window=window, train_jitter=train_jitter, left_out=left_out)
