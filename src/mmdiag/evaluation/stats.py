"""Statistics over folds and cases: mean ± std over folds, paired t-test between methods, bootstrap CIs."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ttest_rel

from mmdiag.errors import ConfigError, DataError, did_you_mean

__all__ = ["mean_std", "fold_summary", "paired_ttest", "bootstrap_ci"]

logger = logging.getLogger(__name__)


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of one metric over folds.

    NaN values (folds where the metric was undefined) are skipped.

    Args:
        values: one value per fold.

    Returns:
        ``(mean, std)``; ``std`` is NaN with fewer than two non-NaN values, both are NaN with none.

    Raises:
        ValueError: ``values`` is empty.
    """
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        raise ValueError("mean_std needs at least one value (one per fold); got none")
    a = a[~np.isnan(a)]
    mean = float(a.mean()) if a.size else math.nan
    std = float(a.std(ddof=1)) if a.size > 1 else math.nan
    return mean, std


def _scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metric dict, nested keys joined with ``/``; lists and strings are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def fold_summary(fold_metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± std over folds of every scalar metric.

    Nested dicts are flattened with ``/``, so the output of :func:`~mmdiag.evaluation.metrics.evaluate_tasks` gives
    keys such as ``"mean/auc"``, ``"tasks/diagnosis/auc"`` and ``"tasks/diagnosis/per_class/MEL/ap"`` (per-class
    tables over folds); lists (confusion matrices) are left out.

    Args:
        fold_metrics: one metric dict per fold, all with the same keys.

    Returns:
        metric -> ``{"mean", "std", "values"}`` (see :func:`mean_std`), in the key order of the first fold.

    Raises:
        ValueError: no folds, or a fold lacks a metric that the first fold has.
    """
    if not fold_metrics:
        raise ValueError("fold_summary needs at least one fold's metrics; got an empty list")
    flat = [_scalars(m) for m in fold_metrics]
    for i, fold in enumerate(flat[1:], start=1):
        missing = [key for key in flat[0] if key not in fold]
        if missing:
            raise ValueError(f"fold {i} lacks metric(s) {missing[:5]} that fold 0 has; evaluate every fold alike")
    summary = {}
    for key in flat[0]:
        values = [fold[key] for fold in flat]
        mean, std = mean_std(values)
        summary[key] = {"mean": mean, "std": std, "values": values}
    return summary


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Paired t-test between two methods' per-fold scores (``scipy.stats.ttest_rel``, two-sided).

    Args:
        a: method A's score on each fold.
        b: method B's score on the same folds, in the same order.

    Returns:
        ``{"t", "p", "n"}``: the t statistic (positive when A scores higher), the p-value and the number of folds.

    Raises:
        ValueError: the lists differ in length, hold fewer than two folds, or hold NaN.
    """
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"paired_ttest needs one score per fold from both methods; got {x.size} and {y.size} scores")
    if x.size < 2:
        raise ValueError(f"paired_ttest needs at least 2 folds; got {x.size}")
    nan = np.flatnonzero(np.isnan(x) | np.isnan(y))
    if nan.size:
        raise ValueError(f"paired_ttest: fold(s) {nan.tolist()} have a NaN score; drop those folds from both lists")
    res = ttest_rel(x, y)
    return {"t": float(res.statistic), "p": float(res.pvalue), "n": int(x.size)}


def _single_class(y_true: np.ndarray) -> bool:
    """Whether some task column has fewer than two distinct known labels (``-1`` / NaN = unknown)."""
    if y_true.ndim == 1:
        return np.unique(y_true[y_true >= 0]).size < 2
    return any(np.unique(col[~np.isnan(col)]).size < 2 for col in y_true.T)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_prob: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric, resampling cases with replacement.

    A resample in which the labels hold a single class (for multi-label ``y_true``: any label with a single known
    class) is skipped, as is one where ``metric_fn`` returns NaN; warnings raised by ``metric_fn`` inside the
    resamples are silenced.

    Args:
        metric_fn: ``metric_fn(y_true, y_prob) -> float``.
        y_true: ``(N,)`` labels (``-1`` = unknown) or ``(N, C)`` multi-label targets (``NaN`` = unknown).
        y_prob: ``(N, ...)`` predictions, resampled along the first axis together with ``y_true``.
        n_boot: number of resamples.
        alpha: 1 - confidence level (0.05: 95 % CI).
        seed: seed of the resampling generator.

    Returns:
        ``(low, high)``: the ``alpha/2`` and ``1 - alpha/2`` percentiles of the resampled metric.

    Raises:
        ValueError: bad ``n_boot`` / ``alpha``, or ``y_true`` and ``y_prob`` differ in length. (No usable resample gives
            ``(nan, nan)`` with a warning.)
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci needs n_boot >= 1 and 0 < alpha < 1; got n_boot={n_boot}, alpha={alpha}")
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    n = len(y_true)
    if len(y_prob) != n:
        raise ValueError(f"bootstrap_ci: y_true has {n} cases but y_prob has {len(y_prob)}")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        if _single_class(y_true[idx]):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = float(metric_fn(y_true[idx], y_prob[idx]))
        if not math.isnan(value):
            scores.append(value)
    if not scores:  # e.g. a test split with one class: the interval is undefined, not an error
        warnings.warn(f"bootstrap CI undefined: none of {n_boot} resamples of {n} cases had two classes and a "
                      "defined metric; reported as NaN", stacklevel=2)
        return math.nan, math.nan
    if len(scores) < n_boot:
        logger.info("bootstrap_ci: %d of %d resamples skipped (single class or NaN)", n_boot - len(scores), n_boot)
    low, high = np.percentile(scores, [100.0 * alpha / 2, 100.0 * (1.0 - alpha / 2)])
    return float(low), float(high)


def summarize_runs(run_dirs: Sequence[str | os.PathLike], metrics: Sequence[str] = ("map", "auc", "s2", "acc")
                   ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Each run's mean-over-tasks metrics (from its ``metrics.json``) and their mean over runs — EI's "MEAN" column
    when the runs are one per dataset. A folder without ``metrics.json`` (a recipe's) uses its last stage's.

    Raises:
        DataError: a folder holds no finished run.
        ConfigError: a metric that is not a key of the run's ``metrics.json`` ``mean`` (close matches offered).
    """
    rows = []
    for run in map(Path, run_dirs):
        found = sorted(run.glob("*/metrics.json")) if not (run / "metrics.json").is_file() else [run / "metrics.json"]
        if not found:
            raise DataError(f"{str(run)!r} holds no metrics.json (is it a finished run?)")
        data = json.loads(found[-1].read_text())
        for m in metrics:
            if m not in data["mean"]:
                raise ConfigError(f"--metrics {m!r} is not a metric of {found[-1]}" + did_you_mean(m, data["mean"])
                                  + f" (its mean metrics: {', '.join(sorted(data['mean']))})")
        rows.append({"run": run.name, "dataset": data.get("run", {}).get("dataset", "?"),
                     **{m: data["mean"].get(m, math.nan) for m in metrics}})
    return rows, {m: float(np.nanmean([r[m] for r in rows])) for m in metrics}
