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
      findings:  {type: multilabel, classes: [acl, meniscus]}   # cell: "acl|meniscus", "none" or empty

One CSV row per case. An empty path cell means the modality is missing for that case; an empty label cell means the
label is unknown (masked out of the loss and the metrics). A multi-label cell lists the positive labels joined by
``multilabel_separator``; the word ``none`` (:data:`NONE_LABEL`) means that no label is positive, which is a known
label (every class negative), not an unknown one. A declared column the CSV lacks is an error naming its key.
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
from mmdiag.errors import ConfigError, DataError, close_matches

__all__ = ["ManifestDataset", "load_manifest_dataset", "encode_label", "read_manifest_csv", "read_dataset_yaml",
           "NONE_LABEL"]

NONE_LABEL = "none"
"""A multi-label cell holding this word: no label is positive (an empty cell: unknown)."""

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
    """Encode one raw label cell: class index (-1 if blank) or a multi-hot vector (NaN if blank, zeros if ``none``).

    Raises:
        DataError: the value is not one of the task's classes (the message lists them), or ``none`` is combined with
            a label.
    """
    if task.type == "multilabel":
        out = np.zeros(len(task.classes), dtype=np.float32)
        if _blank(value):
            return np.full(len(task.classes), np.nan, dtype=np.float32)
        names = [p.strip() for p in str(value).split(sep) if p.strip()]
        if NONE_LABEL not in task.classes and any(n.lower() == NONE_LABEL for n in names):
            if len(names) > 1:
                raise DataError(f"case {case_id!r}: task {task_name!r} has label {str(value)!r}; {NONE_LABEL!r} "
                                "cannot be combined with other labels", case_id)
            return out
        for name in names:
            if name not in task.classes:
                raise DataError(f"case {case_id!r}: task {task_name!r} has label {name!r}; allowed: "
                                f"{list(task.classes)} joined by {sep!r}, {NONE_LABEL!r} (no positive label) or an "
                                "empty cell (unknown)", case_id)
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
    desc, csv, root = read_dataset_yaml(Path(path))
    return table_from_frame(read_manifest_csv(csv), desc, root, source=str(csv))


def read_dataset_yaml(path: Path) -> tuple[ManifestDataset, Path, Path]:
    """Validate a ``dataset.yaml``; returns it, its CSV manifest's path and the root of relative file paths.

    Raises:
        DataError: the YAML or its manifest does not exist. ConfigError: the YAML is invalid or breaks the schema.
    """
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
    return desc, csv, (path.parent / desc.root).resolve() if desc.root else csv.parent


def read_manifest_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV manifest with every cell as a string (blank cells stay ``""``).

    Raises:
        DataError: the file is empty, has a header but no rows, or is not parseable CSV (naming the file).
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"manifest {str(path)!r} is empty (no header, no cases)", path=str(path)) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"manifest {str(path)!r} is not a readable CSV file: {e}", path=str(path)) from None
    if df.empty:
        raise DataError(f"manifest {str(path)!r} has a header {list(df.columns)} but no cases", path=str(path))
    return df


def _declared_columns(desc: ManifestDataset, labels_required: bool) -> dict[str, str]:
    """Dotted dataset.yaml key -> the CSV column it names, for every column the manifest must have."""
    cols = {"case_id_column": desc.case_id_column}
    for key in ("patient_id_column", "split_column"):
        value = getattr(desc, key)
        if value is not None and key in desc.model_fields_set:  # the defaults are optional columns
            cols[key] = value
    for name, m in desc.modalities.items():
        if isinstance(m, TabularModality):
            cols.update({f"modalities.{name}.fields.{f_name}.column": f.column or f_name
                         for f_name, f in m.fields.items()})
        else:
            cols[f"modalities.{name}.column"] = m.column or name
    if labels_required:
        cols.update({f"tasks.{name}.column": t.column or name for name, t in desc.tasks.items()})
    return cols


def table_from_frame(df: pd.DataFrame, desc: ManifestDataset, root: Path, *, source: str,
                     labels_required: bool = True) -> CaseTable:
    """Build the :class:`CaseTable` of a manifest already read into a data frame (all cells as strings).

    With ``labels_required=False`` (prediction), a task without a column has unknown labels.
    """
    absent = [(key, col) for key, col in _declared_columns(desc, labels_required).items() if col not in df.columns]
    if absent:
        parts = []
        for key, col in absent:
            hint = close_matches(col, df.columns)
            parts.append(f"{key}: {col!r}" + (f" (did you mean {', '.join(map(repr, hint))}?)" if hint else ""))
        raise DataError(f"manifest {source!r} lacks declared column(s): {'; '.join(parts)}; it has "
                        f"{list(df.columns)}", path=source)
    if df.empty:
        raise DataError(f"manifest {source!r} has a header {list(df.columns)} but no cases", path=source)
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
