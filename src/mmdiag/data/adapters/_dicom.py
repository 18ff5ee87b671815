"""DICOM series read slice by slice with pydicom: header index, slice order by position, rescale to Hounsfield units.

A *series* is one folder of single-frame DICOM files (the NBIA layout). Indexing reads headers only
(``stop_before_pixels``); pixel data is decoded later, per window of slices or per whole series. A problem found
while indexing (an unreadable header, two series in one folder, mixed image sizes, inconsistent slice spacing) is kept
on the :class:`SeriesIndex` as a :class:`~mmdiag.errors.DataError` naming the file, so that the dataset raises it
when a case of that series is read (``data.on_bad_case=error``) or lists and drops the case (``skip``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmdiag.errors import DataError
from mmdiag.io.atomic import atomic_write_text

__all__ = ["SeriesIndex", "IndexCache", "index_series", "first_modality", "read_hu_slices"]

_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
         "InstanceNumber", "Rows", "Columns", "PixelSpacing"]


@dataclass
class SeriesIndex:
    """One series folder: its files in slice order and what the headers say about them.

    Attributes:
        folder: the series folder.
        files: the slice files, sorted by position along the slice normal (ascending), else by InstanceNumber.
        sop_uids: SOPInstanceUID of each file, in the same order.
        positions: position of each slice along the normal in mm (NaN where the series has no ImagePositionPatient).
        series_uid: SeriesInstanceUID.
        modality: the DICOM Modality (``CT``, ``PT``, ...).
        error: the first problem found while indexing; reading the series raises it.
    """

    folder: Path
    files: list[Path]
    sop_uids: list[str]
    positions: np.ndarray
    series_uid: str
    modality: str
    error: DataError | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.files)


def first_modality(files: list[Path]) -> str | None:
    """The Modality of the first readable file (in name order), or ``None`` when none is readable."""
    import pydicom

    for f in sorted(files):
        try:
            return str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
        except Exception:  # noqa: BLE001 - unreadable files are reported by index_series
            continue
    return None


class IndexCache:
    """Series indices kept in a JSON file, reused while a folder's files (names, sizes, mtimes) are unchanged.

    Indexing reads one header per slice; on the full release (about 250 000 files) that takes minutes, which the
    cache saves on every later build of the dataset.
    """

    def __init__(self, path: str | os.PathLike, salt: str = ""):
        self.path = Path(path)
        self.salt = salt  # indexing settings (the spacing tolerance): a change invalidates every entry
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is rebuilt
        self.dirty = False

    def signature(self, files: list[Path]) -> str:
        parts = [self.salt]
        for f in sorted(files):
            st = f.stat()
            parts.append(f"{f.name}|{st.st_size}|{st.st_mtime_ns}")
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def get(self, folder: Path, files: list[Path]) -> SeriesIndex | dict | None:
        """The cached index of ``folder`` (a dict ``{"modality": ...}`` for a skipped series), if still valid."""
        e = self.entries.get(str(folder.resolve()))
        if e is None or e["signature"] != self.signature(files):
            return None
        if "files" not in e:
            return {"modality": e["modality"]}
        err = DataError(e["error"][0], None, e["error"][1]) if e["error"] else None
        return SeriesIndex(folder, [folder / n for n in e["files"]], e["sop_uids"],
                           np.array(e["positions"], dtype=np.float64), e["series_uid"], e["modality"], err)

    def put(self, folder: Path, files: list[Path], value: SeriesIndex | str) -> None:
        """Store a series index, or only the modality (a string) of a series that is not indexed."""
        e: dict = {"signature": self.signature(files)}
        if isinstance(value, str):
            e["modality"] = value
        else:
            err = [str(value.error), value.error.path] if value.error is not None else None
            e.update(files=[f.name for f in value.files], sop_uids=value.sop_uids,
                     positions=[None if np.isnan(p) else float(p) for p in value.positions],
                     series_uid=value.series_uid, modality=value.modality, error=err)
        self.entries[str(folder.resolve())] = e
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.entries))
            self.dirty = False


def _normal(orientation) -> np.ndarray:
    o = np.asarray([float(v) for v in orientation], dtype=np.float64)
    n = np.cross(o[:3], o[3:])
    return n / (np.linalg.norm(n) or 1.0)


def index_series(folder: Path, files: list[Path], case_id: str, spacing_tolerance: float) -> SeriesIndex:
    """Read the headers of one series folder and order its slices.

    Args:
        folder: the series folder.
        files: its DICOM files (any order).
        case_id: what errors name as the case (the series' grouping key).
        spacing_tolerance: largest allowed relative deviation of a slice gap from the median gap.
    """
    import pydicom

    heads, error = [], None
    for f in sorted(files):
        try:
            heads.append((f, pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)))
        except Exception as e:  # noqa: BLE001 - any header failure is reported with the case and file
            error = error or DataError(f"case {case_id!r}: cannot read DICOM file {str(f)!r}: {type(e).__name__}: {e}",
                                       case_id, str(f))
    modality = next((str(h.get("Modality", "")) for _, h in heads if h.get("Modality")), "")
    uids = {str(h.get("SeriesInstanceUID", "")) for _, h in heads}
    series_uid = sorted(uids)[0] if uids else folder.name
    if len(uids) > 1 and error is None:
        error = DataError(f"case {case_id!r}: folder {str(folder)!r} holds {len(uids)} series "
                          f"(SeriesInstanceUID {sorted(uids)}); expected one series per folder", case_id, str(folder))
    sizes = {(h.get("Rows"), h.get("Columns")) for _, h in heads}
    if len(sizes) > 1 and error is None:
        first = (heads[0][1].get("Rows"), heads[0][1].get("Columns"))
        odd = next(f for f, h in heads if (h.get("Rows"), h.get("Columns")) != first)
        error = DataError(f"case {case_id!r}: slice {str(odd)!r} is not {first[0]}x{first[1]} like the rest of "
                          f"the series (sizes {sorted(map(str, sizes))})", case_id, str(odd))
    with_pos = [h.get("ImagePositionPatient") is not None and h.get("ImageOrientationPatient") is not None
                for _, h in heads]
    if heads and all(with_pos):
        pos = np.array([float(np.dot(_normal(h.ImageOrientationPatient), [float(v) for v in h.ImagePositionPatient]))
                        for _, h in heads])
    else:
        pos = np.full(len(heads), np.nan)
        if any(with_pos) and error is None:
            odd = heads[with_pos.index(False)][0]
            error = DataError(f"case {case_id!r}: slice {str(odd)!r} has no ImagePositionPatient/"
                              f"ImageOrientationPatient while other slices of the series do", case_id, str(odd))
    if np.isnan(pos).any():
        order = np.argsort([int(h.get("InstanceNumber") or 0) for _, h in heads], kind="stable")
    else:
        order = np.argsort(pos, kind="stable")
    files_sorted = [heads[i][0] for i in order]
    pos = pos[order]
    if error is None and len(pos) > 2 and not np.isnan(pos).any():
        error = _check_spacing(pos, files_sorted, case_id, spacing_tolerance)
    elif error is None and len(pos) == 2 and not np.isnan(pos).any() and abs(pos[1] - pos[0]) < 1e-6:
        error = _duplicate(files_sorted, 0, case_id)
    return SeriesIndex(folder, files_sorted, [str(heads[i][1].get("SOPInstanceUID", "")) for i in order], pos,
                       series_uid, modality, error)


def _duplicate(files: list[Path], i: int, case_id: str) -> DataError:
    return DataError(f"case {case_id!r}: slices {str(files[i])!r} and {str(files[i + 1])!r} lie at the same position",
                     case_id, str(files[i + 1]))


def _check_spacing(pos: np.ndarray, files: list[Path], case_id: str, tolerance: float) -> DataError | None:
    """An error naming the first slice whose gap to the previous one departs from the median gap, if any."""
    gaps = np.diff(pos)
    if (gaps < 1e-6).any():
        return _duplicate(files, int(np.argmax(gaps < 1e-6)), case_id)
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > tolerance * median
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return DataError(f"case {case_id!r}: inconsistent slice spacing: {str(files[i + 1])!r} lies {gaps[i]:.3f} mm "
                     f"from the previous slice, the series' median gap is {median:.3f} mm (tolerance "
                     f"{tolerance:.0%}, data.options.spacing_tolerance)", case_id, str(files[i + 1]))


def read_hu_slices(files: list[Path], case_id: str) -> np.ndarray:
    """Decode single-frame DICOM files to a ``(len(files), H, W)`` float32 array in Hounsfield units.

    HU = stored value × RescaleSlope + RescaleIntercept (slope 1, intercept 0 where the tags are absent).

    Raises:
        DataError: a file cannot be decoded or its image size differs from the first one (naming case and file).
    """
    import pydicom

    out = None
    for i, f in enumerate(files):
        try:
            ds = pydicom.dcmread(f)
            px = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the case and file
            raise DataError(f"case {case_id!r}: cannot decode DICOM file {str(f)!r}: {type(e).__name__}: {e}",
                            case_id, str(f)) from e
        if px.ndim != 2:
            raise DataError(f"case {case_id!r}: DICOM file {str(f)!r} holds an image of shape {px.shape}; expected "
                            f"one 2D slice", case_id, str(f))
        if out is None:
            out = np.empty((len(files), *px.shape), dtype=np.float32)
        elif px.shape != out.shape[1:]:
            raise DataError(f"case {case_id!r}: DICOM file {str(f)!r} is {px.shape}, the series' first slice "
                            f"{out.shape[1:]}", case_id, str(f))
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        out[i] = px.astype(np.float32) * slope + intercept
    if out is None:
        raise DataError(f"case {case_id!r}: no slices to read", case_id)
    return out
