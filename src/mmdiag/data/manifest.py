"""Bring-your-own data with no code: a CSV manifest plus a small YAML that declares modalities and tasks.

The YAML (``dataset.yaml``)::

    name: my_study
    manifest: cases.csv          # relative to this YAML
    root: images                 # base of relative file paths (default: the manifest's folder)
    case_id_column: case_id      # defaults shown
    patient_id_column: patient_id  # optional column; default: each case is its own patient
    split_column: split          # optional column with train / val / test
    modalities:
      clinical:   {kind: image, channels: 3, size: [224, 224]}          # column defaults to the name
      dermoscopy: {kind: image, channels: 3, size: [224, 224], column: derm_path}
      ct:         {kind: volume, channels: 1, size: [32, 96, 96], intensity_range: [-1000, 400]}
      record:     {kind: tabular, fields: {age: {type: numeric}, sex: {type: categorical, values: [f, m]}}}
    tasks:
      diagnosis: {type: multiclass, classes: [nevus, melanoma, bcc]}
      findings:  {type: multilabel, classes: [acl, meniscus]}   # cell: "acl|meniscus", empty = none

One CSV row per case. An empty path cell means the modality is missing for that case; an empty label cell means the
label is unknown (masked out of the loss and the metrics).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, ValidationError

from mmdiag.data.schema import DatasetSpec, TabularModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError, DataError

__all__ = ["ManifestDataset", "load_manifest_dataset", "encode_label"]

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test"}


class ManifestDataset(DatasetSpec):
    """The ``dataset.yaml`` schema: a :class:`DatasetSpec` plus where the manifest and its columns are."""

    manifest: str
    root: str | None = None
    case_id_column: str = "case_id"
    patient_id_column: str | None = "patient_id"
    split_column: str | None = "split"
    multilabel_separator: str = Field("|", min_length=1)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def encode_label(task_name: str, task: TaskSpec, value: Any, *, case_id: str, sep: str = "|") -> int | np.ndarray:
    """Encode one raw label cell: class index (-1 if blank) or a multi-hot vector (NaN if blank).

    Raises:
        DataError: the value is not one of the task's classes (the message lists them).
    """
    if task.type == "multilabel":
        out = np.zeros(len(task.classes), dtype=np.float32)
        if _blank(value):
            return np.full(len(task.classes), np.nan, dtype=np.float32)
        for name in (p.strip() for p in str(value).split(sep) if p.strip()):
            if name not in task.classes:
                raise DataError(f"case {case_id!r}: task {task_name!r} has label {name!r}; allowed: "
                                f"{list(task.classes)}", case_id)
            out[task.classes.index(name)] = 1.0
        return out
    if _blank(value):
        return -1
    key = str(value).strip()
    if key not in task.classes and isinstance(value, float) and value.is_integer():
        key = str(int(value))  # pandas reads an integer column with blanks as floats
    if key not in task.classes:
        raise DataError(f"case {case_id!r}: task {task_name!r} has label {key!r}; allowed: {list(task.classes)}",
                        case_id)
    return task.classes.index(key)


def load_manifest_dataset(path: str | os.PathLike) -> CaseTable:
    """Read a ``dataset.yaml`` and its CSV manifest into a :class:`CaseTable`.

    Raises:
        ConfigError: the YAML is invalid (naming the file and the key).
        DataError: the manifest is missing, lacks a declared column, or holds a bad label or duplicate case id.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        desc = ManifestDataset.model_validate(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except ValidationError as e:
        from mmdiag.config.load import format_validation_error

        raise ConfigError(format_validation_error(e, str(path), ManifestDataset)) from e
    csv = (path.parent / desc.manifest).resolve()
    if not csv.is_file():
        raise DataError(f"{path}: manifest {str(csv)!r} does not exist", path=str(csv))
    root = (path.parent / desc.root).resolve() if desc.root else csv.parent
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    return table_from_frame(df, desc, root, source=str(csv))


def table_from_frame(df: pd.DataFrame, desc: ManifestDataset, root: Path, *, source: str,
                     labels_required: bool = True) -> CaseTable:
    """Build the :class:`CaseTable` of a manifest already read into a data frame (all cells as strings).

    With ``labels_required=False`` (prediction), a task without a column has unknown labels.
    """
    needed = {desc.case_id_column}
    for name, m in desc.modalities.items():
        if isinstance(m, TabularModality):
            needed |= {f.column or f_name for f_name, f in m.fields.items()}
        else:
            needed.add(m.column or name)
    if labels_required:
        needed |= {t.column or name for name, t in desc.tasks.items()}
    absent = sorted(c for c in needed if c not in df.columns)
    if absent:
        raise DataError(f"manifest {source!r} lacks column(s) {absent}; it has {list(df.columns)}", path=source)
    ids = df[desc.case_id_column]
    dup = ids[ids.duplicated()].tolist()
    if dup:
        raise DataError(f"manifest {source!r}: case ids repeat: {dup[:5]}", path=source)
    has_patient = desc.patient_id_column is not None and desc.patient_id_column in df.columns
    has_split = desc.split_column is not None and desc.split_column in df.columns
    spec = DatasetSpec(name=desc.name, modalities=desc.modalities, tasks=desc.tasks, primary_task=desc.primary_task)
    cases = []
    for row in df.to_dict("records"):
        cid = str(row[desc.case_id_column])
        inputs: dict[str, Any] = {}
        for name, m in desc.modalities.items():
            if isinstance(m, TabularModality):
                inputs[name] = {f_name: row[f.column or f_name] for f_name, f in m.fields.items()}
            else:
                cell = row[m.column or name]
                inputs[name] = None if _blank(cell) else str(root / cell)
        labels = {t: encode_label(t, task, row.get(task.column or t), case_id=cid, sep=desc.multilabel_separator)
                  for t, task in desc.tasks.items()}
        split = None
        if has_split and not _blank(row[desc.split_column]):
            split = _SPLIT_NAMES.get(str(row[desc.split_column]).strip().lower())
            if split is None:
                raise DataError(f"case {cid!r}: split {row[desc.split_column]!r} is not one of train/val/test", cid)
        pid = str(row[desc.patient_id_column]) if has_patient and not _blank(row[desc.patient_id_column]) else cid
        cases.append(CaseRecord(cid, pid, inputs, labels, split))
    return CaseTable(spec, cases, root=root, official_split=has_split)
