"""PNG plots: ROC curves per task, confusion matrices, training curves from Lightning's CSVLogger.

Figures are drawn on matplotlib's Agg canvas through :class:`matplotlib.figure.Figure`, never through pyplot: nothing
is shown, no figure stays registered in pyplot's global state (so there is nothing to close), and the backend a user
chose for their own session is left alone. Each PNG is rendered to memory and written with
:func:`mmdiag.io.atomic.atomic_write_bytes`, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc, roc_curve

from mmdiag.errors import DataError
from mmdiag.evaluation.metrics import one_vs_rest, validate_predictions
from mmdiag.io.atomic import atomic_write_bytes

__all__ = ["plot_roc", "plot_confusion", "training_series", "plot_training_curves"]

DPI = 120


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """Render ``fig`` as PNG bytes on the Agg canvas and write them atomically to ``path``."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def plot_roc(
    task_name: str,
    task_type: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """ROC curves of one task: the positive class for a binary task, one-vs-rest per class (label) otherwise.

    A class without positive or without negative cases gets a legend entry but no curve.

    Args:
        task_name: plot title.
        task_type: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"ordinal"``.
        y_true: labels as in :func:`mmdiag.evaluation.metrics.task_metrics` (unknown ones are left out).
        y_prob: ``(N, C)`` probabilities.
        class_names: the ``C`` class names.
        path: the PNG file to write.

    Raises:
        DataError: invalid labels or probabilities (see :func:`~mmdiag.evaluation.metrics.validate_predictions`).
    """
    y, p = validate_predictions(task_type, y_true, y_prob, class_names, task_name)
    curves = list(zip(class_names, one_vs_rest(task_type, y, p)))
    if task_type == "binary":
        curves = curves[1:]
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for name, (truth, _, score) in curves:
        if 0 < truth.sum() < len(truth):
            fpr, tpr, _ = roc_curve(truth, score)
            ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {auc(fpr, tpr):.3f}, n={len(truth)})")
        else:
            ax.plot([], [], " ", label=f"{name} (no curve: one class only)")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {task_name}")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def _draw_matrix(ax, cm: np.ndarray, labels: Sequence[str], title: str) -> None:
    """One confusion matrix: colour = fraction of its row (truth), text = count."""
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(int(count)), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def plot_confusion(
    task_name: str, cm: np.ndarray | Sequence, class_names: Sequence[str], path: str | os.PathLike
) -> None:
    """Confusion matrix of one task, cells coloured by the fraction of their true class.

    Args:
        task_name: plot title.
        cm: ``(C, C)`` counts (rows = truth, columns = prediction) or, for a multi-label task, ``(C, 2, 2)``: one
            ``[[tn, fp], [fn, tp]]`` per label, drawn side by side (the ``"confusion_matrix"`` of ``task_metrics``).
        class_names: the ``C`` class (label) names.
        path: the PNG file to write.

    Raises:
        DataError: ``cm`` has neither shape.
    """
    cm = np.asarray(cm)
    k = len(class_names)
    if cm.shape == (k, k):
        panels = [(task_name, cm, list(class_names))]
    elif cm.shape == (k, 2, 2):
        panels = [(f"{task_name}: {name}", m, ["no", "yes"]) for name, m in zip(class_names, cm)]
    else:
        raise DataError(
            f"task {task_name!r}: the confusion matrix must have shape ({k}, {k}) or, multi-label, ({k}, 2, 2) for "
            f"classes {list(class_names)}; got {cm.shape}"
        )
    side = max(3.5, 0.6 * cm.shape[-1] + 2.0)
    fig = Figure(figsize=(side * len(panels), side), layout="constrained")
    for i, (title, matrix, labels) in enumerate(panels):
        _draw_matrix(fig.add_subplot(1, len(panels), i + 1), matrix, labels, title)
    _save(fig, path)


def training_series(metrics_csv_path: str | os.PathLike) -> dict[str, pd.Series]:
    """Every logged series of a Lightning ``CSVLogger`` ``metrics.csv``, as its mean value per epoch.

    Values logged several times per epoch (per step) are averaged. A row without an epoch (a learning-rate monitor
    logs through the logger directly) takes the epoch logged at the same step, else that of the previous step.

    Args:
        metrics_csv_path: the ``metrics.csv`` file (columns ``epoch``, ``step`` and one per logged key; empty cells
            where a key was not logged at that step).

    Returns:
        column -> series indexed by epoch, in column order; columns never logged are left out.

    Raises:
        DataError: the file cannot be read, has no ``epoch`` column, or holds no logged values.
    """
    try:
        df = pd.read_csv(metrics_csv_path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read training log {metrics_csv_path}: {err}", path=str(metrics_csv_path)) from err
    if "epoch" not in df.columns:
        raise DataError(
            f"{metrics_csv_path} has no 'epoch' column (columns: {list(df.columns)}); pass the metrics.csv that "
            "Lightning's CSVLogger writes",
            path=str(metrics_csv_path),
        )
    if "step" in df.columns:
        df = df.sort_values("step", kind="stable")
        df["epoch"] = df["epoch"].fillna(df.groupby("step")["epoch"].transform("max"))
    df["epoch"] = df["epoch"].ffill().bfill()
    series = {
        str(col): df[["epoch", col]].dropna().groupby("epoch")[col].mean()
        for col in df.columns
        if col not in ("epoch", "step") and df[col].notna().any()
    }
    if not series:
        raise DataError(f"{metrics_csv_path} holds no logged values besides epoch/step", path=str(metrics_csv_path))
    return series


CURVE_PANELS = ("loss", "acc", "auc", "map", "f1")


def plot_training_curves(metrics_csv_path: str | os.PathLike, path: str | os.PathLike,
                         panels: Sequence[str] | None = CURVE_PANELS) -> None:
    """Logged series of a Lightning ``CSVLogger`` ``metrics.csv`` against epoch (see :func:`training_series`).

    Series sharing the part after the last ``/`` (``train/loss`` and ``val/loss``) share one panel. Learning-rate
    series (``lr-*``) always get a panel.

    Args:
        metrics_csv_path: the ``metrics.csv`` file.
        path: the PNG file to write.
        panels: which metric names get a panel (None: every logged series; rendering ~10 panels takes seconds).

    Raises:
        DataError: the file cannot be read, has no ``epoch`` column, or holds no logged values.
    """
    groups: dict[str, list[tuple[str, pd.Series]]] = {}
    for col, values in training_series(metrics_csv_path).items():
        name = col.rsplit("/", 1)[-1]
        if panels is None or name in panels or name.startswith("lr-"):
            groups.setdefault(name, []).append((col, values))
    if not groups:
        raise DataError(f"{metrics_csv_path} holds none of the series {list(panels or [])}", path=str(metrics_csv_path))
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.0 * nrows), layout="constrained")
    for i, (name, curves) in enumerate(groups.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for col, values in curves:
            ax.plot(values.index, values.to_numpy(), marker="o", ms=3, label=col)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)
