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
import re
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

__all__ = ["heading", "plot_roc", "plot_confusion", "training_series", "plot_training_curves", "save_figure",
           "safe_name"]

DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> None:
    """Render ``fig`` as PNG bytes on the Agg canvas and write them atomically to ``path``."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def safe_name(text: str) -> str:
    """``text`` usable in a file name: every run of characters other than letters, digits, ``.``, ``_``, ``-``
    becomes ``_`` (case ids may hold path separators or spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def heading(what: str, model: str | None, split: str | None, n: int | str | None) -> str:
    """A figure title: ``what`` on line 1, then the model, the split and the number of cases on line 2."""
    facts = [f for f in (model, f"{split} split" if split else None, f"n = {n}" if n is not None else None) if f]
    return what + ("\n" + ", ".join(facts) if facts else "")


def _macro_roc(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Macro-average ROC: the mean of the classes' TPRs, each interpolated on the union of their FPRs."""
    grid = np.unique(np.concatenate([fpr for fpr, _ in curves]))
    return grid, np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves], axis=0)


def plot_roc(
    task_name: str,
    task_type: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    model: str | None = None,
    split: str | None = None,
) -> Figure:
    """ROC curves of one task: the positive class for a binary task, one-vs-rest per class (label) otherwise.

    Each legend entry gives the class's positives and AUC; with two or more curves a macro-average curve (mean TPR
    over the classes' curves, its AUC = the area under that mean curve) is drawn in black. A class without positive
    or without negative cases gets a legend entry but no curve. The title names the task, ``model``, ``split`` and
    the number of cases with a known label.

    Args:
        task_name: the task.
        task_type: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"ordinal"``.
        y_true: labels as in :func:`mmdiag.evaluation.metrics.task_metrics` (unknown ones are left out).
        y_prob: ``(N, C)`` probabilities.
        class_names: the ``C`` class names.
        path: the PNG file to write.
        model: model name for the title.
        split: split name for the title.

    Returns:
        The figure (already written), for inspection.

    Raises:
        DataError: invalid labels or probabilities (see :func:`~mmdiag.evaluation.metrics.validate_predictions`).
    """
    y, p = validate_predictions(task_type, y_true, y_prob, class_names, task_name)
    curves = list(zip(class_names, one_vs_rest(task_type, y, p)))
    if task_type == "binary":
        curves = curves[1:]
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    drawn, n = [], 0
    for name, (truth, _, score) in curves:
        n = max(n, len(truth))
        pos = int(truth.sum())
        if 0 < pos < len(truth):
            fpr, tpr, _ = roc_curve(truth, score)
            drawn.append((fpr, tpr))
            ax.plot(fpr, tpr, lw=1.2, label=f"{name}: {pos} pos., AUC {auc(fpr, tpr):.3f}")
        else:
            ax.plot([], [], " ", label=f"{name}: {pos} pos. of {len(truth)}, no curve")
    if len(drawn) > 1:
        fpr, tpr = _macro_roc(drawn)
        ax.plot(fpr, tpr, lw=2.2, color="black", label=f"macro average ({len(drawn)} classes), AUC {auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=heading(f"ROC: {task_name}", model, split, n))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="x-small")
    save_figure(fig, path)
    return fig


def _draw_matrix(fig: Figure, ax, cm: np.ndarray, labels: Sequence[str], title: str) -> None:
    """One confusion matrix: colour = fraction of its row (truth), text = count, row totals in the y tick labels;
    colour bar beside it."""
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(int(count)), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, [f"{name} ({int(r)})" for name, r in zip(labels, rows[:, 0])])
    ax.set(xlabel="predicted", ylabel="true (cases)", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")


def plot_confusion(
    task_name: str, cm: np.ndarray | Sequence, class_names: Sequence[str], path: str | os.PathLike, *,
    model: str | None = None, split: str | None = None,
) -> Figure:
    """Confusion matrix of one task: counts in the cells, colour = fraction of the true class (colour bar).

    The title names the task, ``model``, ``split`` and n (the cases the matrix counts).

    Args:
        task_name: the task.
        cm: ``(C, C)`` counts (rows = truth, columns = prediction) or, for a multi-label task, ``(C, 2, 2)``: one
            ``[[tn, fp], [fn, tp]]`` per label, drawn side by side (the ``"confusion_matrix"`` of ``task_metrics``).
        class_names: the ``C`` class (label) names.
        path: the PNG file to write.
        model: model name for the title.
        split: split name for the title.

    Returns:
        The figure (already written), for inspection.

    Raises:
        DataError: ``cm`` has neither shape.
    """
    cm = np.asarray(cm)
    k = len(class_names)
    if cm.shape == (k, k):
        panels = [(task_name, cm, list(class_names))]
    elif cm.shape == (k, 2, 2):
        panels = [(f"{name} (n = {int(m.sum())})", m, ["no", "yes"]) for name, m in zip(class_names, cm)]
    else:
        raise DataError(
            f"task {task_name!r}: the confusion matrix must have shape ({k}, {k}) or, multi-label, ({k}, 2, 2) for "
            f"classes {list(class_names)}; got {cm.shape}"
        )
    side = max(3.8, 0.6 * cm.shape[-1] + 2.4)
    fig = Figure(figsize=(side * len(panels) + 0.6, side + 0.4), layout="constrained")
    n = int(cm.sum()) if cm.ndim == 2 else int(cm.sum(axis=(1, 2)).max())
    if len(panels) == 1:
        _draw_matrix(fig, fig.add_subplot(), cm, panels[0][2], heading(f"Confusion: {task_name}", model, split, n))
    else:
        for i, (title, matrix, labels) in enumerate(panels):
            _draw_matrix(fig, fig.add_subplot(1, len(panels), i + 1), matrix, labels, title)
        fig.suptitle(heading(f"Confusion: {task_name}", model, split, n))
    save_figure(fig, path)
    return fig


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
Y_LABELS = {"loss": "loss", "acc": "accuracy", "auc": "AUC (macro, one-vs-rest)", "map": "mAP", "f1": "F1 (macro)",
            "balanced_acc": "balanced accuracy", "sensitivity": "sensitivity", "specificity": "specificity"}


def _without_duplicates(curves: list[tuple[str, pd.Series]]) -> list[tuple[str, pd.Series]]:
    """Drop ``<split>/mean/<metric>`` where ``<split>`` logs a single task: it is that task's curve again."""
    def split_of(col: str) -> str:
        return col.split("/", 1)[0]

    singles = {split_of(c) for c, _ in curves
               if sum(split_of(o) == split_of(c) and "/mean/" not in o for o, _ in curves) == 1}
    return [(c, v) for c, v in curves if not ("/mean/" in c and split_of(c) in singles)]


def plot_training_curves(metrics_csv_path: str | os.PathLike, path: str | os.PathLike,
                         panels: Sequence[str] | None = CURVE_PANELS, *, model: str | None = None,
                         cases: str | None = None, best: tuple[str, float] | None = None) -> Figure:
    """Logged series of a Lightning ``CSVLogger`` ``metrics.csv`` against epoch (see :func:`training_series`).

    Series sharing the part after the last ``/`` (``train/loss`` and ``val/loss``) share one panel, with that
    metric as y label. Learning-rate series (``lr-*``) always get a panel. A ``<split>/mean/<metric>`` series of a
    split that logs a single task is left out (it would hide exactly under the task's curve). With ``best``, a
    dashed line marks the best epoch in every panel and a star the monitored value.

    Args:
        metrics_csv_path: the ``metrics.csv`` file.
        path: the PNG file to write.
        panels: which metric names get a panel (None: every logged series; rendering ~10 panels takes seconds).
        model: model name for the title.
        cases: the cases behind the curves for the title (e.g. ``"train 80 / val 20"``).
        best: ``(monitored series, its best value)``; the best epoch is the one whose logged value is closest.

    Returns:
        The figure (already written), for inspection.

    Raises:
        DataError: the file cannot be read, has no ``epoch`` column, or holds no logged values.
    """
    series = training_series(metrics_csv_path)
    groups: dict[str, list[tuple[str, pd.Series]]] = {}
    for col, values in series.items():
        name = col.rsplit("/", 1)[-1]
        if panels is None or name in panels or name.startswith("lr-"):
            groups.setdefault(name, []).append((col, values))
    if not groups:
        raise DataError(f"{metrics_csv_path} holds none of the series {list(panels or [])}", path=str(metrics_csv_path))
    order = [*(p for p in (panels or ()) if p in groups), *(g for g in groups if g not in (panels or ()))]
    groups = {name: groups[name] for name in order}  # the panels' order, learning rates last
    best_epoch = None
    if best is not None and best[0] in series and not math.isnan(best[1]):
        monitored = series[best[0]]
        best_epoch = monitored.index[int(np.argmin(np.abs(monitored.to_numpy() - best[1])))]
    epochs = np.concatenate([v.index.to_numpy() for v in series.values()])
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.5), layout="constrained")
    for i, (name, curves) in enumerate(groups.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for col, values in _without_duplicates(curves):
            ax.plot(values.index, values.to_numpy(), marker="o", ms=3, label=col)
            if best_epoch is not None and col == best[0]:
                ax.plot([best_epoch], [values[best_epoch]], marker="*", ms=14, color="gold", mec="black", ls="",
                        label=f"best: epoch {int(best_epoch)}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(epochs.min() - 0.3, epochs.max() + 0.3)
        ylabel = "learning rate" if name.startswith("lr-") else Y_LABELS.get(name, name)
        ax.set(title=name, xlabel="epoch", ylabel=ylabel)
        if name.startswith("lr-"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    what = "Training curves" + (f" (best epoch {int(best_epoch)} by {best[0]})" if best_epoch is not None else "")
    fig.suptitle(heading(what, model, None, cases))
    save_figure(fig, path)
    return fig
