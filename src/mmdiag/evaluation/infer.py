"""Prediction with a finished run: one case given on the command line, or a CSV manifest of cases.

Only the run folder is needed (its ``config.yaml``, ``dataset_spec.json``, ``splits.json`` with the fitted tabular
encoders, and ``model.safetensors``), not the training data.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from mmdiag.config.load import load_config
from mmdiag.data.dataset import CaseDataset, collate_cases
from mmdiag.data.manifest import ManifestDataset, read_dataset_yaml, read_manifest_csv, table_from_frame
from mmdiag.data.schema import DatasetSpec, TabularModality
from mmdiag.data.tabular import TabularEncoder
from mmdiag.data.transforms import BatchTransform
from mmdiag.errors import ConfigError, DataError, did_you_mean
from mmdiag.evaluation.predict import predict_loader
from mmdiag.evaluation.report import write_predictions_csv
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._builder import build_for_dataset

__all__ = ["Predictor", "predict_cases", "manifest_frame", "case_frame"]


class Predictor:
    """A trained model with everything needed to encode new cases exactly as in training."""

    def __init__(self, run_dir: str | Path):
        run_dir = self.run_dir = Path(run_dir)
        needed = ["config.yaml", "dataset_spec.json", "splits.json", "model.safetensors"]
        absent = [n for n in needed if not (run_dir / n).is_file()]
        if absent:
            raise ConfigError(f"{str(run_dir)!r} is not a finished run folder: missing {absent}")
        self.cfg = load_config(run_dir / "config.yaml")
        self.spec = DatasetSpec.model_validate_json((run_dir / "dataset_spec.json").read_text())
        stats = json.loads((run_dir / "splits.json").read_text())["encoders"]
        self.encoders = {m: TabularEncoder(self.spec.modalities[m], {k: tuple(v) for k, v in stats.get(m, {}).items()})
                         for m in self.spec.of_kind("tabular")}
        # the run's own weights hold everything: no VFM checkpoint or stage-1 run outside the folder is read
        self.model = build_for_dataset(self.spec, self.cfg.model.name, self.cfg.model.options,
                                       peft=self.cfg.model.peft, peft_options=self.cfg.model.peft_options,
                                       pretrained=False)
        load_checkpoint(self.model, run_dir / "model.safetensors")
        self.transform = BatchTransform(self.spec)

    def predict(self, case: Mapping[str, Any] | pd.DataFrame, root: str | Path = ".") -> dict[str, dict[str, float]]:
        """Probabilities of one case, ``{task: {class: probability}}`` (rounded to 6 decimals).

        Args:
            case: ``{modality: file path, "record.field": value}`` (missing modalities left out), or a one-row
                manifest frame.
            root: folder that relative file paths start from.
        """
        df = case if isinstance(case, pd.DataFrame) else case_frame(self.spec, case)
        preds = self.predict_frame(df, Path(root), "<case>")
        return {t: {c: round(float(p), 6) for c, p in zip(self.spec.tasks[t].classes, preds.y_prob[t][0])}
                for t in self.spec.tasks}

    def predict_manifest(self, manifest: str | Path, output: str | Path | None = None) -> Path:
        """Predict every case of a CSV manifest or ``dataset.yaml`` and write ``predictions.csv``-style rows.

        Returns:
            The written CSV (default ``RUN/predictions_<manifest stem>.csv``).
        """
        path = Path(manifest)
        df, root, source = manifest_frame(path)
        preds = self.predict_frame(df, root, source)
        out = Path(output) if output else self.run_dir / f"predictions_{path.stem}.csv"
        write_predictions_csv(self.spec, preds, out, split="predict")
        return out

    def dataset(self, df: pd.DataFrame, root: Path, source: str) -> CaseDataset:
        """The cases of a data frame whose columns follow the run's modalities (paths and fields), encoded as in
        training (labels optional)."""
        if "case_id" not in df.columns:
            df = df.assign(case_id=[f"case{i}" for i in range(len(df))])
        desc = ManifestDataset(name=self.spec.name, modalities=self.spec.modalities, tasks=self.spec.tasks,
                               manifest=source, patient_id_column=None, split_column=None)
        table = table_from_frame(df, desc, root, source=source, labels_required=False)
        return CaseDataset(table, range(len(table)), self.encoders)

    def predict_frame(self, df: pd.DataFrame, root: Path, source: str):
        """Predictions for the cases of a data frame (see :meth:`dataset`)."""
        loader = DataLoader(self.dataset(df, root, source),
                            batch_size=self.cfg.data.eval_batch_size or self.cfg.data.batch_size,
                            collate_fn=collate_cases)
        return predict_loader(self.model, self.spec, loader, self.transform,
                              "cuda" if torch.cuda.is_available() else "cpu", score=self.cfg.eval.score)


def case_frame(spec: DatasetSpec, case: Mapping[str, Any], where: str = "case") -> pd.DataFrame:
    """A one-row manifest frame for one case: ``{modality: path, "record.field": value}``; anything not given is
    missing.

    Raises:
        DataError: a key that is not a modality (or a record field) of the run, naming the close ones.
    """
    row: dict[str, Any] = {"case_id": "case"}
    for key, value in case.items():
        name = key.split(".", 1)[0]
        if name not in spec.modalities:
            raise DataError(f"{where} {key!r}: the run has modalities {list(spec.modalities)}"
                            + did_you_mean(name, spec.modalities))
        m = spec.modalities[name]
        if isinstance(m, TabularModality):
            field = key.split(".", 1)[1] if "." in key else ""
            if field not in m.fields:
                raise DataError(f"{where} {key!r}: record {name!r} has fields {list(m.fields)} (write "
                                f"{name}.FIELD)" + did_you_mean(field, m.fields))
            row[m.fields[field].column or field] = str(value)
        else:
            row[m.column or name] = str(value)
    for name, m in spec.modalities.items():
        if isinstance(m, TabularModality):
            for f_name, f in m.fields.items():
                row.setdefault(f.column or f_name, "")
        else:
            row.setdefault(m.column or name, "")
    return pd.DataFrame([row])



def _cli_case(items: list[str]) -> dict[str, str]:
    """``--input MODALITY=PATH`` / ``MODALITY.FIELD=VALUE`` items as a case mapping."""
    case = {}
    for item in items:
        if "=" not in item:
            raise DataError(f"--input {item!r} is not MODALITY=PATH or MODALITY.FIELD=VALUE")
        key, value = item.split("=", 1)
        case[key] = value
    return case


def manifest_frame(path: Path) -> tuple[pd.DataFrame, Path, str]:
    """The cases to predict, their path root and source: a ``dataset.yaml`` (its manifest, ``root`` and
    ``case_id_column``) or a CSV manifest (paths relative to its folder).

    Raises:
        DataError: the file is missing, empty, or not a valid dataset.yaml / CSV (naming it).
    """
    path = path.resolve()
    if not path.is_file():
        raise DataError(f"manifest {str(path)!r} does not exist", path=str(path))
    if path.suffix.lower() not in (".yaml", ".yml"):
        return read_manifest_csv(path), path.parent, str(path)
    desc, csv, root = read_dataset_yaml(path)
    df = read_manifest_csv(csv)
    if desc.case_id_column != "case_id" and desc.case_id_column in df.columns:
        df = df.drop(columns=["case_id"], errors="ignore").rename(columns={desc.case_id_column: "case_id"})
    return df, root, str(csv)


def predict_cases(run_dir: str | Path, manifest: str | None = None, case: list[str] | None = None,
                  output: str | None = None) -> dict[str, Any] | str:
    """The CLI's ``predict``: one case (``case``: ``MODALITY=PATH`` / ``MODALITY.FIELD=VALUE`` items) or a manifest.

    Returns:
        For one case, ``{task: {class: probability}}``; for a manifest, the path of the written CSV.
    """
    predictor = Predictor(run_dir)
    if case is not None:
        return predictor.predict(case_frame(predictor.spec, _cli_case(case), "--input"))
    return str(predictor.predict_manifest(manifest, output))
