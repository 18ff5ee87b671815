"""A tiny Lung-PET-CT-Dx download: NBIA patient/study/series folders of pydicom-written slices, VOC XMLs, the XLSX.

Every patient has one study with a long CT series (annotated on a few slices), a shorter CT series and a PET series.
Slice ``i`` in position order (ascending along the normal) holds ``HU = -1000 + 20 * i`` in its first row, so a test
can tell the order slices were read in; file names (``1-<InstanceNumber>.dcm``) and instance numbers are shuffled
against the positions. The CT series store HU with RescaleSlope/RescaleIntercept that differ per series (unsigned
with intercept -1024 or slope 2 / intercept -2048, signed with intercept 0), so a reader that skips the rescale sees
different numbers. Tumour slices hold a bright box (the VOC box) at +40 HU (A) or
+200 HU (G). The clinical spreadsheet spells its headers as the release does, one with a full-width letter and the
M-stage with a Cyrillic "М".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["write_lung_pet_ct_dx", "FixturePatient", "PATIENTS", "ANNOTATIONS_DIR", "CLINICAL_XLSX"]

ANNOTATIONS_DIR = "Lung-PET-CT-Dx-Annotations-XML-Files-rev12222020/Annotation"
CLINICAL_XLSX = "statistics-clinical-20201221.xlsx"
_IMAGES = "manifest-1608669183333/Lung-PET-CT-Dx"
_HEADERS = ["No.", "NewPatientID", "Sex", "Age", "weight (kg)", "\uff34-Stage", "N-Stage", "\u041c-Stage",
            "Histopathological grading", "Smoking History"]


@dataclass(frozen=True)
class FixturePatient:
    """One fixture patient: id, long-series length, annotated slice range (position order), clinical row."""

    pid: str
    n_slices: int
    tumour: tuple[int, int]
    sex: str
    age: object
    weight: object
    t: object
    n: object
    m: object
    smoking: object


PATIENTS = (
    FixturePatient("Lung_Dx-A0001", 18, (7, 9), "M", 61, 70.5, "2a", 1, "0", 1),
    FixturePatient("Lung_Dx-A0002", 16, (2, 3), "F", 55, None, "1", 0, "x", 0),
    FixturePatient("Lung_Dx-A0003", 20, (14, 17), "F", "72", 58, "is", 2, "1b", 0),
    FixturePatient("Lung_Dx-G0001", 19, (5, 8), "M", 66, 80, "3", 2, "0", 1),
    FixturePatient("Lung_Dx-G0002", 17, (10, 11), "M", 70, 75, "4", 3, "1a", 1),
    FixturePatient("Lung_Dx-G0003", 20, (0, 2), "F", 59, 62, "T2b", 1, "0", 0),
    FixturePatient("Lung_Dx-B0001", 16, (6, 7), "M", 64, 68, "2", 1, "0", 1),
)
_RESCALE = ((1.0, -1024.0), (2.0, -2048.0), (1.0, 0.0))  # (slope, intercept) per series, cycled


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix="1.2.826.0.1.3680043.10.1138.", entropy_srcs=[str(p) for p in parts])


def _write_series(folder: Path, p: FixturePatient, series_no: int, n: int, modality: str, size: int,
                  rescale: tuple[float, float], spacing: float, tumour: tuple[int, int] | None,
                  rng: np.random.Generator) -> list[str]:
    """Write one series; returns the SOPInstanceUIDs in position order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage

    folder.mkdir(parents=True, exist_ok=True)
    slope, intercept = rescale
    signed = intercept == 0  # HU stored as is needs signed integers (PixelRepresentation 1)
    series_uid, study_uid = _uid(p.pid, series_no), _uid(p.pid, "study")
    instance = rng.permutation(n) + 1  # instance numbers (and so file names) shuffled against positions
    uids = []
    for i in range(n):
        hu = rng.integers(-900, -700, (size, size)).astype(np.float64)
        hu -= hu % 2
        if tumour is not None and tumour[0] <= i <= tumour[1]:
            hu[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = 40 if p.pid[8] == "A" else 200
        hu[0, :] = -1000 + 20 * i
        stored = np.round((hu - intercept) / slope).astype(np.int16 if signed else np.uint16)
        sop = _uid(p.pid, series_no, i)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
        ds.PatientID, ds.Modality = p.pid, modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.InstanceNumber = series_no, int(instance[i])
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -120.0, -300.0 + spacing * i]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], spacing
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"1-{int(instance[i]):02d}.dcm", enforce_file_format=True)
        uids.append(sop)
    return uids


def _write_voc(path: Path, size: int, name: str, box: tuple[int, int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x0, y0, x1, y1 = box
    path.write_text(f"<annotation><folder>{path.parent.name}</folder><filename>{path.stem}</filename>"
                    f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
                    f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                    f"<ymax>{y1}</ymax></bndbox></object></annotation>")


def write_lung_pet_ct_dx(root: str | Path, patients: tuple[FixturePatient, ...] = PATIENTS, size: int = 24,
                         seed: int = 0) -> Path:
    """Write the tiny download below ``root`` and return ``root``.

    Args:
        root: the download folder (``data.root``).
        patients: which patients (default :data:`PATIENTS`: three A, three G, one B).
        size: rows and columns of every slice.
        seed: seed of the noise and of the instance-number shuffles.
    """
    import pandas as pd

    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for k, p in enumerate(patients):
        study = root / _IMAGES / p.pid / f"04-0{k + 1}-2009-NA-lungc-{10000 + k}"
        long_uids = _write_series(study / f"2.000000-5mm-{20000 + k}", p, 2, p.n_slices, "CT", size,
                                  _RESCALE[k % 3], 5.0, p.tumour, rng)
        _write_series(study / f"3.000000-10mm-{30000 + k}", p, 3, 7, "CT", size, _RESCALE[(k + 1) % 3], 10.0,
                      None, rng)
        _write_series(study / f"4.000000-PET-{40000 + k}", p, 4, 5, "PT", size, (1.0, 0.0), 3.0, None, rng)
        for i in range(p.tumour[0], p.tumour[1] + 1):
            third = size // 3
            _write_voc(root / ANNOTATIONS_DIR / p.pid[8:] / f"{long_uids[i]}.xml", size, p.pid[8],
                       (third, third, 2 * third, 2 * third))
        rows.append([k + 1, p.pid, p.sex, p.age, p.weight, p.t, p.n, p.m, "", p.smoking])
    pd.DataFrame(rows, columns=_HEADERS).to_excel(root / CLINICAL_XLSX, index=False)
    return root
