"""Classification metrics per task and averaged over tasks.

Conventions (one task):

* ``y_prob`` is ``(N, C)`` probabilities, one column per class (binary tasks: ``C = 2``, column 1 = positive class;
  multi-label: one independent sigmoid probability per label).
* ``y_true`` is ``(N,)`` int with ``-1`` = unknown (those rows are dropped) for binary, multi-class and ordinal tasks,
  and ``(N, C)`` float in {0, 1} with ``NaN`` = unknown (masked per label) for multi-label tasks.
* Predicted class = argmax for single-label tasks (ties go to the first class); multi-label: ``prob > 0.5``, the
  sigmoid form of ``logit > 0`` that the EI code and torchmetrics use.
* Every class is scored one-vs-rest from its 2x2 counts (tn, fp, fn, tp); AUC and AP come from scikit-learn's
  ``roc_auc_score`` / ``average_precision_score`` on the class's probability column, the single-label confusion
  matrix from its ``confusion_matrix`` (the tests pin every rate to scikit-learn's own functions). Ordinal tasks are
  scored like multi-class ones.
* Quantities conditioned on the truth (sensitivity, specificity, AUC, AP, S2) are NaN for a class without positive
  or without negative cases; AUC and AP then also raise a warning naming the task and class. Quantities conditioned on
  the prediction (precision = PPV, NPV) are 0 when the class is never predicted positive (negative), and F1 is 0 when
  it is undefined: scikit-learn's ``zero_division=0``, so a class the model never predicts lowers the macro mean
  instead of leaving it. Every mean skips NaN.
* S2 is the harmonic mean of a class's sensitivity and specificity, ``2·sens·spec / (sens + spec)`` (0 when both are
  0), computed per class; mS2 is its mean over classes (EI paper, "Evaluation Criteria").
* Scalar metrics are macro means over classes, except for binary tasks, where sensitivity, specificity, precision, F1,
  PPV, NPV, S2, AUC and AP are those of the positive class (``classes[1]``); ``map`` is always the mean of the
  per-class APs (for a binary task, of both classes).

Results are plain Python dicts of floats, ints, strings and lists (``json.dumps`` accepts them; undefined values are
``float('nan')``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from mmdiag.errors import DataError, UnknownNameError

__all__ = [
    "TASK_TYPES",
    "SCALAR_METRICS",
    "CLASS_METRICS",
    "MULTILABEL_THRESHOLD",
    "nanmean",
    "s2_score",
    "validate_predictions",
    "one_vs_rest",
    "task_metrics",
    "evaluate_tasks",
]

TASK_TYPES = ("binary", "multiclass", "multilabel", "ordinal")
CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1", "ppv", "npv", "s2", "auc", "ap")
SCALAR_METRICS = ("acc", "balanced_acc", *CLASS_METRICS, "map")
MULTILABEL_THRESHOLD = 0.5


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean over the non-NaN values; NaN (without a warning) when there are none."""
    a = np.asarray(values, dtype=float).ravel()
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den > 0 else empty


def rank_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC from ranks (the Mann-Whitney U identity, ties averaged): equal to scikit-learn's
    ``roc_auc_score`` without its input checks, for the thousands of calls a bootstrap makes. NaN with one class."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def s2_score(sensitivity: float, specificity: float) -> float:
    """S2 of one class: the harmonic mean of its sensitivity and specificity (EI paper, "Evaluation Criteria").

    Returns NaN when either input is NaN, and 0 when both are 0.
    """
    if math.isnan(sensitivity) or math.isnan(specificity):
        return math.nan
    return _ratio(2.0 * sensitivity * specificity, sensitivity + specificity, 0.0)


def validate_predictions(
    task_type: str, y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], task_name: str = "<task>"
) -> tuple[np.ndarray, np.ndarray]:
    """Check one task's labels and probabilities and drop unknown single-label rows.

    Args:
        task_type: one of :data:`TASK_TYPES`.
        y_true: ``(N,)`` int (``-1`` = unknown) or, for multi-label, ``(N, C)`` float (``NaN`` = unknown).
        y_prob: ``(N, C)`` probabilities in [0, 1].
        class_names: the ``C`` class (label) names.
        task_name: used in error messages.

    Returns:
        ``(y, p)``: single-label tasks: the labelled rows, ``y`` int ``(n,)``; multi-label: the float arrays unchanged.

    Raises:
        UnknownNameError: ``task_type`` is not a known task type.
        DataError: a shape, label value or probability is invalid; the message names the task.
    """
    if task_type not in TASK_TYPES:
        raise UnknownNameError("task type", task_type, TASK_TYPES)
    n_cls = len(class_names)
    if task_type == "binary" and n_cls != 2:
        raise DataError(
            f"task {task_name!r}: a binary task has 2 classes (negative, positive); got {list(class_names)}"
        )
    p = np.asarray(y_prob, dtype=float)
    if p.ndim != 2 or p.shape[1] != n_cls:
        raise DataError(
            f"task {task_name!r}: y_prob must have shape (N, {n_cls}) for classes {list(class_names)}; got {p.shape}"
        )
    if not np.isfinite(p).all():
        row = int(np.argwhere(~np.isfinite(p))[0, 0])
        raise DataError(f"task {task_name!r}: y_prob has non-finite values (first in row {row})")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise DataError(
            f"task {task_name!r}: y_prob has values in [{p.min():.4g}, {p.max():.4g}], outside [0, 1]; pass "
            "probabilities (softmax or sigmoid of the logits), not logits"
        )
    y = np.asarray(y_true, dtype=float)
    expected = p.shape if task_type == "multilabel" else p.shape[:1]
    if y.shape != expected:
        raise DataError(f"task {task_name!r}: y_true must have shape {expected} to match y_prob; got {y.shape}")
    if task_type == "multilabel":
        bad = ~np.isnan(y) & (y != 0) & (y != 1)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(
                f"task {task_name!r}: multi-label y_true holds {y[row, col]:g} (row {row}, label "
                f"{class_names[col]!r}); allowed: 0, 1 or NaN (unknown)"
            )
        return y, p
    bad = np.isnan(y) | (y != np.round(y)) | (y < -1) | (y >= n_cls)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"task {task_name!r}: y_true holds {y[row]:g} (row {row}); allowed: class indices 0..{n_cls - 1} or -1 "
            "(unknown)"
        )
    known = y >= 0
    return y[known].astype(int), p[known]


def one_vs_rest(task_type: str, y: np.ndarray, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Split validated predictions into one binary problem per class.

    Args:
        task_type: one of :data:`TASK_TYPES`.
        y, p: the output of :func:`validate_predictions`.

    Returns:
        Per class, ``(truth, predicted, score)``: 0/1 int truth and prediction and the class's probability, over the
        cases whose label for that class is known.
    """
    if task_type == "multilabel":
        views = []
        for j in range(p.shape[1]):
            known = ~np.isnan(y[:, j])
            score = p[known, j]
            views.append((y[known, j].astype(int), (score > MULTILABEL_THRESHOLD).astype(int), score))
        return views
    pred = p.argmax(axis=1)
    return [((y == c).astype(int), (pred == c).astype(int), p[:, c]) for c in range(p.shape[1])]


def _class_metrics(
    truth: np.ndarray, pred: np.ndarray, score: np.ndarray, where: str
) -> tuple[dict[str, Any], list[list[int]]]:
    """Metrics and ``[[tn, fp], [fn, tp]]`` of one class scored one-vs-rest; ``where`` names it in warnings."""
    tn, fp, fn, tp = (int(v) for v in np.bincount(2 * truth + pred, minlength=4))
    sens = _ratio(tp, tp + fn, math.nan)
    spec = _ratio(tn, tn + fp, math.nan)
    out: dict[str, Any] = {
        "support": tp + fn,
        "sensitivity": sens,
        "specificity": spec,
        "precision": _ratio(tp, tp + fp, 0.0),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, 0.0),
        "ppv": _ratio(tp, tp + fp, 0.0),
        "npv": _ratio(tn, tn + fn, 0.0),
        "s2": s2_score(sens, spec),
        "auc": math.nan,
        "ap": math.nan,
    }
    if 0 < tp + fn < len(truth):
        out["auc"] = float(roc_auc_score(truth, score))
        out["ap"] = float(average_precision_score(truth, score))
    else:
        missing = "positive" if tp + fn == 0 else "negative"
        warnings.warn(
            f"{where}: no {missing} cases among {len(truth)} labelled; its AUC and AP are NaN and left out of means",
            stacklevel=2,
        )
    return out, [[tn, fp], [fn, tp]]


def task_metrics(
    task_type: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    task_name: str = "<task>",
) -> dict[str, Any]:
    """Metrics of one task: overall scalars, a per-class table and the confusion matrix.

    See the module docstring for the conventions (binary tasks report their positive class, macro means elsewhere;
    NaN handling; S2).

    Args:
        task_type: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"ordinal"``.
        y_true: ``(N,)`` int with ``-1`` = unknown, or ``(N, C)`` float with ``NaN`` = unknown for multi-label.
        y_prob: ``(N, C)`` probabilities.
        class_names: the ``C`` class (label) names, in column order.
        task_name: names the task in warnings and errors.

    Returns:
        ``{"n", "acc", "balanced_acc", "auc", "sensitivity", "specificity", "precision", "f1", "ppv", "npv", "s2",
        "ap", "map", "per_class": {name: {"support", "sensitivity", "specificity", "precision", "f1", "ppv", "npv",
        "s2", "auc", "ap"}}, "confusion_matrix"}``. ``n`` counts the cases with at least one known label; the
        confusion matrix is ``C x C`` (rows = truth) or, for multi-label, one ``[[tn, fp], [fn, tp]]`` per label.
        Multi-label ``acc`` / ``balanced_acc`` are means of the per-label values.

    Raises:
        UnknownNameError: unknown ``task_type``.
        DataError: invalid shapes, labels or probabilities.
    """
    y, p = validate_predictions(task_type, y_true, y_prob, class_names, task_name)
    per_class, class_cms = {}, []
    # inputs are validated above; skipping scikit-learn's own checks makes bootstrap loops ~30 % faster
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for name, (truth, pred, score) in zip(class_names, one_vs_rest(task_type, y, p)):
            per_class[name], class_cm = _class_metrics(truth, pred, score, f"task {task_name!r}, class {name!r}")
            class_cms.append(class_cm)
    rows = list(per_class.values())
    if task_type == "multilabel":
        n = int((~np.isnan(y)).any(axis=1).sum())
        acc = nanmean([_ratio(c[0][0] + c[1][1], np.sum(c), math.nan) for c in class_cms])
        balanced = nanmean([nanmean([r["sensitivity"], r["specificity"]]) for r in rows])
        cm = class_cms
    else:
        n, k = len(y), len(class_names)
        cm_arr = confusion_matrix(y, p.argmax(axis=1), labels=list(range(k))) if n else np.zeros((k, k), dtype=int)
        acc = _ratio(np.trace(cm_arr), n, math.nan)
        cm = cm_arr.tolist()
        balanced = nanmean([r["sensitivity"] for r in rows])
    if n == 0:
        warnings.warn(f"task {task_name!r}: no labelled cases; every metric is NaN", stacklevel=2)
    result: dict[str, Any] = {"n": n, "acc": acc, "balanced_acc": balanced}
    for key in CLASS_METRICS:
        result[key] = rows[1][key] if task_type == "binary" else nanmean([r[key] for r in rows])
    result["map"] = nanmean([r["ap"] for r in rows])
    result["per_class"] = per_class
    result["confusion_matrix"] = cm
    return result


def evaluate_tasks(
    tasks: Mapping[str, tuple[str, Sequence[str]]],
    y_true: Mapping[str, np.ndarray],
    y_prob: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Metrics of every task and their mean over tasks.

    Args:
        tasks: task name -> ``(task_type, class_names)`` (a :class:`mmdiag.data.schema.TaskSpec` works too).
        y_true: task name -> labels, as in :func:`task_metrics`.
        y_prob: task name -> probabilities, as in :func:`task_metrics`.

    Returns:
        ``{"tasks": {name: task_metrics(...)}, "mean": {metric: NaN-skipping mean over tasks}}`` for every metric in
        :data:`SCALAR_METRICS`.

    Raises:
        DataError: a task lacks labels or probabilities, or has invalid ones.
    """
    for what, given in (("y_true", y_true), ("y_prob", y_prob)):
        missing = [name for name in tasks if name not in given]
        if missing:
            raise DataError(f"{what} has no entry for task(s) {missing}; it has {sorted(given)}")
    results = {}
    for name, spec in tasks.items():
        task_type, classes = (spec.type, spec.classes) if hasattr(spec, "classes") else spec
        results[name] = task_metrics(task_type, y_true[name], y_prob[name], list(classes), task_name=name)
    mean = {key: nanmean([r[key] for r in results.values()]) for key in SCALAR_METRICS}
    return {"tasks": results, "mean": mean}
