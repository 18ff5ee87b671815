"""ISIC 2018/2019 scoring (RemixFormer++ Table IV, §V-B): balanced multi-class accuracy (BMCA), AP, AUC.

Rules of the official scorer (``ImageMarkup/isic-challenge-scoring``), reproduced here:

* Labels are the argmax of each row, for the truth and for the prediction. A prediction row whose maximum is tied
  between two or more categories gets the label ``undecided``, which matches no category: the case counts as wrong.
  (Plain ``argmax`` would give it to the first tied column.)
* Rows carry an optional weight (``score_weight``; e.g. ``ISIC_0035068`` has weight 0 in 2018); the confusion matrix
  sums weights, not counts.
* BMCA = mean over categories of (weighted correct of the category) / (weighted truth of the category). A category
  with no truth (ISIC 2019's ``UNK``) gives 0/0 and is skipped by the mean, so predicting it is only ever wrong.
  Without ties and weights this is scikit-learn's ``balanced_accuracy_score``.
* AUC and AP per category from the category's probability column (weighted), NaN for a category without positive or
  without negative truth; the reported AUC / AP (RemixFormer++ Table IV) are their macro means over the defined
  categories (Choice: the paper does not say which average; macro one-vs-rest as the notes recommend).
* Accuracy (Table IV's Acc) = weighted share of rows whose decided label equals the truth (ties are wrong).

CSV scoring (:func:`score_csv`) reads a truth and a prediction CSV as the scorer does: rows keyed by ``image`` (a
``.jpg`` suffix is stripped), one float column per category in [0, 1], optional ``score_weight`` in the truth;
missing or extra rows or category columns are an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from mmdiag.errors import DataError

__all__ = ["UNDECIDED", "decided_labels", "balanced_multiclass_accuracy", "isic_metrics", "score_csv"]

UNDECIDED = -1


def decided_labels(y_prob: np.ndarray) -> np.ndarray:
    """Argmax per row, :data:`UNDECIDED` (-1) where the row's maximum is reached by more than one column."""
    p = np.asarray(y_prob, dtype=float)
    tied = (p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1
    labels = p.argmax(axis=1)
    labels[tied] = UNDECIDED
    return labels


def _truth_labels(y_true: np.ndarray, k: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape[1] != k or not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
            raise DataError(f"truth must be one-hot over {k} categories (one 1 per row); got shape {y.shape}")
        return y.argmax(axis=1)
    if y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= k)):
        raise DataError(f"truth must be (N,) class indices in 0..{k - 1} or (N, {k}) one-hot; got shape {y.shape}")
    return y.astype(int)


def _check(y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    p = np.asarray(y_prob, dtype=float)
    if p.ndim != 2:
        raise DataError(f"probabilities must be (N, C); got shape {p.shape}")
    y = _truth_labels(y_true, p.shape[1])
    if len(y) != len(p):
        raise DataError(f"truth has {len(y)} rows but the prediction has {len(p)}")
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != y.shape or (w < 0).any():
        raise DataError(f"weights must be (N,) = ({len(y)},) and non-negative; got shape {w.shape}")
    return y, p, w


def balanced_multiclass_accuracy(y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The official ISIC BMCA (module docstring): mean per-category recall, tied predictions wrong, absent skipped.

    Args:
        y_true: ``(N,)`` class indices or ``(N, C)`` one-hot truth.
        y_prob: ``(N, C)`` scores (any monotone scale: only the argmax and its ties matter).
        weights: ``(N,)`` row weights (``score_weight``); default 1.

    Raises:
        DataError: shapes disagree or the truth is not one category per row.
    """
    y, p, w = _check(y_true, y_prob, weights)
    pred = decided_labels(p)
    recalls = []
    for c in range(p.shape[1]):
        total = w[y == c].sum()
        recalls.append(w[(y == c) & (pred == c)].sum() / total if total > 0 else math.nan)
    r = np.array(recalls)
    return float(np.nanmean(r)) if np.isfinite(r).any() else math.nan


def isic_metrics(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str],
                 weights: np.ndarray | None = None) -> dict[str, Any]:
    """BMCA, accuracy, macro AUC and macro AP, with the per-category values.

    Returns:
        ``{"bmca", "acc", "auc", "ap", "n_undecided", "per_class": {name: {"recall", "auc", "ap", "support"}}}``.

    Raises:
        DataError: shapes disagree, the truth is not one category per row, or ``classes`` has the wrong length.
    """
    y, p, w = _check(y_true, y_prob, weights)
    if len(classes) != p.shape[1]:
        raise DataError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    pred = decided_labels(p)
    per_class = {}
    for c, name in enumerate(classes):
        truth = (y == c).astype(int)
        support = float(w[truth == 1].sum())
        recall = float(w[(truth == 1) & (pred == c)].sum() / support) if support > 0 else math.nan
        auc = ap = math.nan
        keep = w > 0
        if 0 < truth[keep].sum() < keep.sum():
            auc = float(roc_auc_score(truth[keep], p[keep, c], sample_weight=w[keep]))
            ap = float(average_precision_score(truth[keep], p[keep, c], sample_weight=w[keep]))
        per_class[name] = {"recall": recall, "auc": auc, "ap": ap, "support": support}

    def mean(key: str) -> float:
        v = np.array([r[key] for r in per_class.values()])
        return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan

    return {"bmca": mean("recall"), "acc": float(w[pred == y].sum() / w.sum()) if w.sum() > 0 else math.nan,
            "auc": mean("auc"), "ap": mean("ap"), "n_undecided": int((pred == UNDECIDED).sum()),
            "per_class": per_class}


def _read(path: Path, what: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(f"{what} CSV {str(path)!r} does not exist", path=str(path))
    df = pd.read_csv(path, dtype={"image": str})
    if "image" not in df.columns:
        raise DataError(f"{what} CSV {str(path)!r} has no 'image' column; it has {list(df.columns)}", path=str(path))
    df["image"] = df["image"].str.strip().str.replace(r"\.jpg$", "", regex=True)
    if df["image"].duplicated().any():
        dup = df["image"][df["image"].duplicated()].tolist()
        raise DataError(f"{what} CSV {str(path)!r}: image repeats: {dup[:5]}", path=str(path))
    return df.set_index("image")


def score_csv(truth_csv: str | Path, prediction_csv: str | Path) -> dict[str, Any]:
    """Score an ISIC 2018/2019 prediction CSV against the ground-truth CSV (module docstring for the rules).

    Raises:
        DataError: a file or column is missing, rows or category columns differ between the files, or a prediction
            is not a number in [0, 1] (each naming the rows or columns).
    """
    truth = _read(Path(truth_csv), "truth")
    pred = _read(Path(prediction_csv), "prediction")
    weights = truth.pop("score_weight").to_numpy(float) if "score_weight" in truth.columns else None
    truth = truth.drop(columns=[c for c in ("validation_weight",) if c in truth.columns])
    classes = list(truth.columns)
    missing_cols = [c for c in classes if c not in pred.columns]
    extra_cols = [c for c in pred.columns if c not in classes]
    if missing_cols or extra_cols:
        raise DataError(f"prediction CSV {str(prediction_csv)!r}: missing columns {missing_cols}, extra columns "
                        f"{extra_cols}; expected {classes}", path=str(prediction_csv))
    missing_rows = truth.index.difference(pred.index).tolist()
    extra_rows = pred.index.difference(truth.index).tolist()
    if missing_rows or extra_rows:
        raise DataError(f"prediction CSV {str(prediction_csv)!r}: missing images {missing_rows[:5]}, extra images "
                        f"{extra_rows[:5]}", path=str(prediction_csv))
    p = pred.loc[truth.index, classes]
    values = pd.DataFrame({c: pd.to_numeric(p[c], errors="coerce") for c in classes}).to_numpy(float)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"prediction CSV {str(prediction_csv)!r}: image {truth.index[r]!r}, column {classes[c]!r} "
                        f"holds {p.iloc[r, c]!r}; predictions must be numbers in [0, 1]", path=str(prediction_csv))
    return isic_metrics(truth.to_numpy(float), values, classes, weights)
