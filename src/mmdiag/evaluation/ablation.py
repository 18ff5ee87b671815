"""Modality ablation at test time: a finished run evaluated with each modality it reads removed (no retraining).

This is the test-time modality ablation of the EI and RemixFormer++ papers: the trained model sees the split's cases
once with every modality and once per removed modality, where the removed one is missing in every case exactly as a
modality absent from the data is (``present[m]`` False and its tensor all zeros, see
:class:`~mmdiag.data.dataset.CaseDataset`), so a model that honours ``present`` falls back on the others.

Written under ``RUN/eval/<split>/``: ``without_<modality>/metrics.json`` + ``predictions.csv`` per removed modality,
and the table ``modality_ablation.md`` / ``.csv`` (rows: all modalities, then without each one). ``RUN/report.md`` is
never touched.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError, did_you_mean
from mmdiag.evaluation.predict import Predictions, predict_loader
from mmdiag.evaluation.report import evaluate_predictions, fmt, write_predictions_csv
from mmdiag.io.atomic import atomic_write_text

__all__ = ["ALL", "TABLE_METRICS", "WithoutModalities", "without_modalities", "resolve_without",
           "modality_ablation"]

_log = logging.getLogger(__name__)

ALL = "all"
"""``--without all``: every modality the model reads, one at a time."""
TABLE_METRICS = ("acc", "balanced_acc", "auc", "f1")
"""Metrics of the ablation table (main task, and the mean over tasks when there are several)."""
_FULL = "all modalities"


def without_modalities(batch: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A collated batch with the modalities ``names`` missing in every case: ``present`` False, tensor zeroed.

    The input batch is not modified.
    """
    inputs, present = dict(batch["inputs"]), dict(batch["present"])
    for m in names:
        inputs[m] = torch.zeros_like(inputs[m])
        present[m] = torch.zeros_like(present[m], dtype=torch.bool)
    return {**batch, "inputs": inputs, "present": present}


class WithoutModalities:
    """A loader wrapper whose batches have ``names`` missing (:func:`without_modalities`); feeds ``predict_loader``."""

    def __init__(self, loader: Iterable[Mapping[str, Any]], names: Sequence[str]):
        self.loader, self.names = loader, tuple(names)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield without_modalities(batch, self.names)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def resolve_without(names: Sequence[str] | None, read: Sequence[str], spec: DatasetSpec) -> list[str]:
    """The modalities to remove, in the model's order: ``names`` (``"all"`` or ``None`` = every one it reads).

    Raises:
        ConfigError: a name that is not a modality of the run (naming it, the close matches and the valid ones), or
            one of the run's modalities that the model does not read.
    """
    if not names or ALL in names:
        return list(read)
    for n in names:
        if n not in spec.modalities:
            raise ConfigError(f"--without {n!r} is not a modality of the run" + did_you_mean(n, [*read, ALL])
                              + f" (the model reads {list(read)}; or give {ALL!r})")
        if n not in read:
            raise ConfigError(f"--without {n!r}: the model does not read modality {n!r}, so removing it changes "
                              f"nothing; it reads {list(read)}")
    return [m for m in read if m in names]


def _row(spec: DatasetSpec, label: str, metrics: dict[str, Any], n: int) -> dict[str, Any]:
    main = spec.main_task
    row: dict[str, Any] = {"condition": label, "n": n}
    row.update({f"{main}.{k}": metrics["tasks"][main][k] for k in TABLE_METRICS})
    if len(spec.tasks) > 1:
        row.update({f"mean.{k}": metrics["mean"][k] for k in TABLE_METRICS})
    return row


def _markdown(table: pd.DataFrame, title: str, read: Sequence[str], note: str) -> str:
    cols = [c for c in table.columns if c != "condition"]
    lines = [f"# Modality ablation — {title}", "",
             "Each modality the model reads removed at test time, in every case (present = False and its tensor "
             "zeroed, as a modality missing from the data); the model is not retrained.", "",
             f"Modalities the model reads: {', '.join(read)}.", ""]
    if note:
        lines += [note, ""]
    lines += ["| condition | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {r['condition']} | " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in table.to_dict("records")]
    return "\n".join(lines) + "\n"


def modality_ablation(run_dir: str | Path, split: str = "test", without: Sequence[str] | None = None,
                      batch_size: int | None = None) -> pd.DataFrame:
    """Evaluate a finished run on ``split`` with all modalities and with each modality of ``without`` removed.

    The model is rebuilt from the run folder alone (:class:`~mmdiag.evaluation.infer.Predictor`). Only modalities the
    model reads (``model.modalities``) are ablated; a model that reads a single modality gets the full-data row only,
    and the table says why.

    Args:
        run_dir: The run folder.
        split: The run's split (``train``, ``val``, ``test``).
        without: Modalities to remove one at a time (``None`` or ``["all"]``: every one the model reads).
        batch_size: Evaluation batch size (default: the run's).

    Returns:
        The table written to ``RUN/eval/<split>/modality_ablation.csv``: one row per condition (``condition``,
        ``n`` cases, then ``<main task>.<metric>`` and, with several tasks, ``mean.<metric>`` for
        :data:`TABLE_METRICS`). ``table.attrs["files"]`` lists the written paths.

    Raises:
        ConfigError: not a finished run folder, an unknown split, or a modality the run does not have (or the model
            does not read).
    """
    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.robustness import load_run_data, resolve_run

    run_dir, _ = resolve_run(run_dir)
    predictor = Predictor(run_dir)
    spec, model, cfg = predictor.spec, predictor.model, predictor.cfg
    read = list(getattr(model, "modalities", spec.modalities))
    names = resolve_without(without, read, spec)
    note = ""
    if len(read) < 2:
        names, note = [], (f"The model reads a single modality ({read[0]!r}): removing it leaves no input, so there "
                           "is nothing to ablate.")
    loader, described = load_run_data(predictor, run_dir, split, batch_size=batch_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = run_dir / "eval" / split
    files: list[Path] = []

    def evaluate(dropped: Sequence[str]) -> tuple[Predictions, dict[str, Any]]:
        preds = predict_loader(model, spec, WithoutModalities(loader, dropped), predictor.transform, device,
                               score=cfg.eval.score)
        return preds, evaluate_predictions(spec, preds, seed=cfg.seed)

    full_preds, full = evaluate([])
    rows = [_row(spec, _FULL, full, len(full_preds.case_ids))]
    for m in names:
        preds, metrics = evaluate([m])
        folder = out / f"without_{m}"
        atomic_write_text(folder / "metrics.json", json.dumps(
            {"split": split, "without": [m], "data": described, **metrics}, indent=2, default=float))
        write_predictions_csv(spec, preds, folder / "predictions.csv", split)
        files += [folder / "metrics.json", folder / "predictions.csv"]
        rows.append(_row(spec, f"without {m}", metrics, len(preds.case_ids)))
        _log.info("without %s: %s", m, {k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)})
    table = pd.DataFrame(rows)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(out / "modality_ablation.csv", buf.getvalue())
    title = f"{cfg.name}, {described}, {len(full_preds.case_ids)} cases"
    atomic_write_text(out / "modality_ablation.md", _markdown(table, title, read, note))
    files += [out / "modality_ablation.csv", out / "modality_ablation.md"]
    table.attrs["files"] = [str(f) for f in files]
    return table
