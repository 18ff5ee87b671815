"""A run's report: ``metrics.json``, ``predictions.csv``, ``report.md`` and PNG plots, each written atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmdiag.data.manifest import NONE_LABEL
from mmdiag.data.schema import DatasetSpec
from mmdiag.evaluation.metrics import evaluate_tasks, rank_auc
from mmdiag.evaluation.plots import plot_confusion, plot_roc, plot_training_curves
from mmdiag.evaluation.predict import Predictions
from mmdiag.evaluation.stats import bootstrap_ci
from mmdiag.io.atomic import atomic_write_text

__all__ = ["evaluate_predictions", "write_predictions_csv", "write_report", "fmt"]

_TABLE = ("n", "acc", "balanced_acc", "auc", "f1", "precision", "sensitivity", "specificity", "s2", "map", "ppv",
          "npv")


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _acc(task_type: str):
    def fn(y: np.ndarray, p: np.ndarray) -> float:
        if task_type == "multilabel":
            known = ~np.isnan(y)
            return float(((p > 0.5) == (y > 0.5))[known].mean())
        keep = y >= 0
        return float((p[keep].argmax(1) == y[keep]).mean())
    return fn


def _auc(task_type: str):
    def fn(y: np.ndarray, p: np.ndarray) -> float:
        if task_type == "multilabel":
            return float(np.nanmean([rank_auc(y[~np.isnan(y[:, j]), j], p[~np.isnan(y[:, j]), j])
                                     for j in range(y.shape[1])]))
        keep = y >= 0
        y, p = y[keep], p[keep]
        if task_type == "binary":
            return rank_auc(y == 1, p[:, 1])
        return float(np.nanmean([rank_auc(y == c, p[:, c]) for c in np.unique(y)]))
    return fn


def evaluate_predictions(spec: DatasetSpec, preds: Predictions, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of ``preds``, plus percentile-bootstrap 95 % CIs of ACC and AUC for every task.

    In the bootstrap, AUC is the macro one-vs-rest AUC over the classes present in the resample.
    """
    tasks = {t: (s.type, list(s.classes)) for t, s in spec.tasks.items()}
    result = evaluate_tasks(tasks, preds.y_true, preds.y_prob)
    for t, (ttype, _) in tasks.items():
        result["tasks"][t]["ci95"] = {
            name: list(bootstrap_ci(fn(ttype), preds.y_true[t], preds.y_prob[t], n_boot=n_boot, seed=seed))
            for name, fn in (("acc", _acc), ("auc", _auc))}
    return result


def write_predictions_csv(spec: DatasetSpec, preds: Predictions, path: str | Path, split: str = "test") -> None:
    """One row per case: id, split, true label per task, probability per task and class.

    Labels are written as a manifest writes them (empty = unknown; multi-label: positives joined by ``|``, or
    ``none``), and scores with the digits that round-trip them exactly (9 for float32, 17 for float64), so the metrics
    recomputed from this file equal ``metrics.json``.
    """
    cols: dict[str, Any] = {"case_id": preds.case_ids, "split": [split] * len(preds.case_ids)}
    for t, task in spec.tasks.items():
        y = preds.y_true[t]
        if task.type == "multilabel":
            cols[f"{t}.true"] = ["" if np.isnan(r).any() else
                                 "|".join(c for c, v in zip(task.classes, r) if v > 0.5) or NONE_LABEL for r in y]
        else:
            cols[f"{t}.true"] = [task.classes[int(v)] if v >= 0 else "" for v in y]
        for j, c in enumerate(task.classes):
            p = np.asarray(preds.y_prob[t][:, j])
            digits = 9 if p.dtype == np.float32 else 17  # enough to round-trip the value exactly
            cols[f"{t}.prob.{c}"] = [f"{v:.{digits}g}" for v in p]
    buf = io.StringIO()
    pd.DataFrame(cols).to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def write_report(run_dir: str | Path, spec: DatasetSpec, preds: Predictions, metrics: dict[str, Any],
                 summary: dict[str, Any], split: str = "test") -> Path:
    """Write ``metrics.json``, ``predictions.csv``, plots and ``report.md`` into ``run_dir``; returns the report path.

    Args:
        summary: run facts shown at the top (model, dataset, epochs, parameters, time, skipped cases...).
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    atomic_write_text(run_dir / "metrics.json", json.dumps({"split": split, **metrics, "run": summary}, indent=2,
                                                           default=float))
    write_predictions_csv(spec, preds, run_dir / "predictions.csv", split)
    model = summary.get("model")
    for t, task in spec.tasks.items():
        plot_roc(t, task.type, preds.y_true[t], preds.y_prob[t], list(task.classes), plots / f"roc_{t}.png",
                 model=model, split=split)
        plot_confusion(t, np.asarray(metrics["tasks"][t]["confusion_matrix"]), list(task.classes),
                       plots / f"confusion_{t}.png", model=model, split=split)
    curves = run_dir / "logs" / "csv" / "metrics.csv"
    if curves.is_file():
        best = next(((k[len("best "):], v) for k, v in summary.items()
                     if k.startswith("best ") and isinstance(v, float)), None)
        counts = str(summary.get("cases train/val/test", "")).split("/")
        cases = f"train {counts[0]} / val {counts[1]}" if len(counts) == 3 else None
        plot_training_curves(curves, plots / "training_curves.png", model=model, cases=cases, best=best)

    lines = [f"# Report — {summary.get('name', run_dir.name)}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {f'{v:g}' if isinstance(v, float) else fmt(v)} |"
                                       for k, v in summary.items() if k != "skipped_cases"]
    lines += ["", f"## Metrics on the {split} split ({len(preds.case_ids)} cases)", ""]
    lines += ["| task | " + " | ".join(_TABLE) + " |", "|---" * (len(_TABLE) + 1) + "|"]
    for t, m in metrics["tasks"].items():
        lines.append(f"| {t} | " + " | ".join(fmt(m.get(k)) for k in _TABLE) + " |")
    if len(metrics["tasks"]) > 1:
        lines.append("| **mean** | " + " | ".join(fmt(metrics["mean"].get(k)) for k in _TABLE) + " |")
    lines += ["", "Bootstrap 95 % confidence intervals (cases resampled):", ""]
    for t, m in metrics["tasks"].items():
        ci = m["ci95"]
        lines.append(f"- {t}: ACC {fmt(m['acc'])} [{fmt(ci['acc'][0])}, {fmt(ci['acc'][1])}], "
                     f"AUC {fmt(m['auc'])} [{fmt(ci['auc'][0])}, {fmt(ci['auc'][1])}]")
    per_class_keys = ("support", "sensitivity", "specificity", "precision", "f1", "s2", "auc", "ap", "ppv", "npv")
    for t, m in metrics["tasks"].items():
        lines += ["", f"### {t}: per class", "", "| class | " + " | ".join(per_class_keys) + " |",
                  "|---" * (len(per_class_keys) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(fmt(r.get(k)) for k in per_class_keys) + " |"
                  for c, r in m["per_class"].items()]
        lines += ["", f"![ROC {t}](plots/roc_{t}.png) ![confusion {t}](plots/confusion_{t}.png)"]
    if curves.is_file():
        lines += ["", "## Training curves", "", "![training curves](plots/training_curves.png)"]
    skipped = summary.get("skipped_cases") or []
    lines += ["", "## Skipped cases", ""]
    lines += ([f"- `{b['case_id']}` ({b.get('split', '?')}): {b['error']}" for b in skipped] if skipped
              else ["None."])
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
