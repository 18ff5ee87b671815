"""MMCAF-Net's evaluation (paper 002 §3.2, Tables 1-3): series-level scores, a validation-chosen threshold, and
AUROC, ACC, F1, specificity, sensitivity, PPV, NPV of the positive class (squamous-cell carcinoma).

* A series' score is the maximum of its windows' positive-class probabilities (the authors' ``agg_method max``); the
  grouping key is the Lung-PET-CT-Dx adapter's :func:`~mmdiag.data.adapters.lung_pet_ct_dx.series_key`
  (``case_id`` up to its last ``@``); case ids without ``@`` are their own series.
* The paper does not give its decision threshold; the notes (§8) show Table 2 is reproduced at ≈0.70, not 0.5.
  Choice: the threshold is chosen on the validation series (``criterion``: Youden's J by default, or F1 / accuracy)
  and reported with the metrics; the metrics at 0.5 are reported too.
* A series is positive when its score is strictly above the threshold. The rates come from
  :func:`mmdiag.evaluation.metrics.task_metrics` on scores moved so that the threshold lands on 0.5 (a monotone map:
  AUROC is unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mmdiag.data.adapters.lung_pet_ct_dx import series_key
from mmdiag.errors import ConfigError, DataError
from mmdiag.evaluation.metrics import task_metrics
from mmdiag.io.atomic import atomic_write_text

__all__ = ["METRICS", "binary_metrics", "choose_threshold", "series_level", "evaluate_mmcaf_run"]

METRICS = ("auc", "acc", "f1", "specificity", "sensitivity", "ppv", "npv")
Criterion = Literal["youden", "f1", "acc"]


def _at_threshold(score: np.ndarray, threshold: float) -> np.ndarray:
    """Probabilities moved by a monotone map so that ``score > threshold`` ⇔ result > 0.5."""
    eps = 1e-12
    s = np.clip(score, eps, 1 - eps)
    t = min(max(threshold, eps), 1 - eps)
    logit = np.log(s / (1 - s)) - np.log(t / (1 - t))
    p = 1 / (1 + np.exp(-logit))
    return np.where(score > threshold, np.maximum(p, np.nextafter(0.5, 1)), np.minimum(p, 0.5))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The seven metrics of the positive class at ``threshold`` (``score > threshold`` is positive).

    Args:
        y: labels ``(N,)`` in {0, 1}.
        score: positive-class probabilities ``(N,)``.
    """
    p = _at_threshold(np.asarray(score, float), threshold)
    m = task_metrics("binary", np.asarray(y, int), np.stack([1 - p, p], 1), ["negative", "positive"])
    return {k: float(m[k]) for k in METRICS}


def choose_threshold(y: np.ndarray, score: np.ndarray, criterion: Criterion = "youden") -> float:
    """The threshold that maximises ``criterion`` on ``(y, score)`` (validation), midway between adjacent scores.

    Ties go to the threshold closest to 0.5.

    Raises:
        ConfigError: an unknown criterion. DataError: the labels hold one class only.
    """
    if criterion not in ("youden", "f1", "acc"):
        raise ConfigError(f"threshold criterion {criterion!r}; choose 'youden', 'f1' or 'acc'")
    y, score = np.asarray(y, int), np.asarray(score, float)
    if len(np.unique(y)) < 2:
        raise DataError(f"choosing a threshold needs both classes in the validation series; labels: {np.unique(y)}")
    s = np.unique(score)
    candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1]]])
    best, best_t = -np.inf, 0.5
    for t in sorted(candidates, key=lambda c: abs(c - 0.5)):
        m = binary_metrics(y, score, float(t))
        value = m["sensitivity"] + m["specificity"] - 1 if criterion == "youden" else m[criterion]
        if value > best + 1e-12:
            best, best_t = value, float(t)
    return best_t


def series_level(predictions: pd.DataFrame, positive: str, task: str = "diagnosis") -> pd.DataFrame:
    """One row per series (``series``, ``y``, ``score``, ``windows``): max over windows of the positive probability.

    Raises:
        DataError: the predictions lack the task's columns, or a series' windows disagree on the label.
    """
    prob, true = f"{task}.prob.{positive}", f"{task}.true"
    missing = [c for c in ("case_id", prob, true) if c not in predictions.columns]
    if missing:
        raise DataError(f"predictions lack columns {missing}; columns: {list(predictions.columns)}")
    df = predictions.assign(series=predictions["case_id"].astype(str).map(series_key),
                            y=(predictions[true].astype(str) == positive).astype(int))
    mixed = df.groupby("series")["y"].nunique()
    if (mixed > 1).any():
        raise DataError(f"series {list(mixed[mixed > 1].index)[:5]} have windows with different labels")
    return df.groupby("series", sort=True).agg(y=("y", "first"), score=(prob, "max"),
                                               windows=(prob, "size")).reset_index()


def _split_predictions(run_dir: Path, split: str) -> pd.DataFrame:
    """Window predictions of ``split`` by the run's best weights."""
    import torch

    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.predict import predict_loader
    from mmdiag.evaluation.report import write_predictions_csv
    from mmdiag.evaluation.robustness import load_run_data

    predictor = Predictor(run_dir)
    loader, _ = load_run_data(predictor, run_dir, split)
    preds = predict_loader(predictor.model, predictor.spec, loader, predictor.transform,
                           "cuda" if torch.cuda.is_available() else "cpu", score=predictor.cfg.eval.score)
    path = run_dir / f"predictions_{split}.csv"
    write_predictions_csv(predictor.spec, preds, path, split)
    return pd.read_csv(path)


def evaluate_mmcaf_run(run_dir: str | Path, criterion: Criterion = "youden", threshold: float | None = None,
                       task: str = "diagnosis") -> dict[str, Any]:
    """The protocol on a finished binary run: series scores of val and test, threshold from val, test metrics.

    Writes ``mmcaf_metrics.json`` (and ``predictions_val.csv`` / ``predictions_test.csv``) into the run folder.

    Args:
        threshold: a fixed threshold instead of the validation-chosen one.

    Raises:
        ConfigError: the run's task is not binary.
    """
    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "dataset_spec.json").read_text())
    t_spec = spec["tasks"].get(task)
    if t_spec is None or t_spec["type"] != "binary":
        raise ConfigError(f"the MMCAF protocol scores a binary task; run {str(run_dir)!r} has tasks "
                          f"{ {k: v['type'] for k, v in spec['tasks'].items()} }")
    positive = t_spec["classes"][1]
    val = series_level(_split_predictions(run_dir, "val"), positive, task)
    test = series_level(_split_predictions(run_dir, "test"), positive, task)
    chosen = threshold if threshold is not None else choose_threshold(val["y"], val["score"], criterion)
    result = {"threshold": chosen, "criterion": None if threshold is not None else criterion,
              "series": {"val": len(val), "test": len(test)},
              "test": binary_metrics(test["y"], test["score"], chosen),
              "test_at_0.5": binary_metrics(test["y"], test["score"], 0.5),
              "val": binary_metrics(val["y"], val["score"], chosen)}
    atomic_write_text(run_dir / "mmcaf_metrics.json", json.dumps(result, indent=2))
    return result
