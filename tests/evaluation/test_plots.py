"""mmdiag.evaluation.plots writes valid PNG files atomically, without leaving pyplot figures open."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from mmdiag.errors import DataError
from mmdiag.evaluation.metrics import task_metrics
from mmdiag.evaluation.plots import plot_confusion, plot_roc, plot_training_curves, training_series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > min_bytes, (path, len(data))
    with Image.open(path) as img:
        img.verify()
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def task_data(task_type: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    if task_type == "multilabel":
        y = (rng.random((80, 3)) < 0.4).astype(float)
        y[rng.random((80, 3)) < 0.1] = np.nan
        return y, rng.random((80, 3)), ["abnormal", "acl", "meniscus"]
    k = 2 if task_type == "binary" else 4
    y = rng.integers(-1, k, 80)
    return y, rng.dirichlet(np.ones(k), 80), ["c0", "c1", "c2", "c3"][:k]


@pytest.mark.parametrize("task_type", ["binary", "multiclass", "multilabel"])
def test_roc_and_confusion_write_png(tmp_path, task_type):
    y, p, classes = task_data(task_type)
    plot_roc("task", task_type, y, p, classes, tmp_path / "roc.png")
    assert_png(tmp_path / "roc.png")
    cm = task_metrics(task_type, y, p, classes)["confusion_matrix"]
    plot_confusion("task", cm, classes, tmp_path / "sub" / "cm.png")
    assert_png(tmp_path / "sub" / "cm.png")
    assert plt.get_fignums() == []


def test_roc_with_one_class_label_still_plots(tmp_path):
    y, p, classes = task_data("multilabel")
    y[:, 0] = np.where(np.isnan(y[:, 0]), np.nan, 0.0)
    plot_roc("mrnet", "multilabel", y, p, classes, tmp_path / "roc.png")
    assert_png(tmp_path / "roc.png")


def test_plot_overwrites_atomically(tmp_path):
    y, p, classes = task_data("multiclass")
    target = tmp_path / "cm.png"
    target.write_bytes(b"old")
    plot_confusion("diag", np.arange(16).reshape(4, 4), classes, target)
    assert_png(target)


def test_confusion_rejects_wrong_shape(tmp_path):
    with pytest.raises(DataError, match=r"task 'diag': the confusion matrix must have shape \(3, 3\).*got \(2, 2\)"):
        plot_confusion("diag", [[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def write_lightning_csv(path) -> None:
    """A sparse metrics.csv as CSVLogger writes it: per-step train/loss, per-epoch val/*, lr rows without epoch."""
    rows = ["epoch,step,lr-AdamW,train/loss,val/auc,val/loss"]
    for epoch in range(4):
        rows.append(f",{3 * epoch},{1e-3 / (epoch + 1)},,,")
        rows += [f"{epoch},{step},,{1.0 / (step + 1):.4f},," for step in range(3 * epoch, 3 * epoch + 3)]
        rows.append(f"{epoch},{3 * epoch + 2},,,{0.6 + 0.05 * epoch},{0.9 - 0.1 * epoch}")
    path.write_text("\n".join(rows) + "\n")


def test_training_series_per_epoch(tmp_path):
    csv = tmp_path / "metrics.csv"
    write_lightning_csv(csv)
    series = training_series(csv)
    assert list(series) == ["lr-AdamW", "train/loss", "val/auc", "val/loss"]
    assert series["lr-AdamW"].to_dict() == pytest.approx({0: 1e-3, 1: 5e-4, 2: 1e-3 / 3, 3: 2.5e-4})
    assert series["train/loss"][1] == pytest.approx(np.mean([round(1 / s, 4) for s in (4, 5, 6)]))
    assert series["val/auc"].to_dict() == pytest.approx({0: 0.6, 1: 0.65, 2: 0.7, 3: 0.75})


def test_training_curves_from_lightning_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    write_lightning_csv(csv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_training_curves(csv, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png", min_bytes=10000)
    with Image.open(tmp_path / "curves.png") as img:
        assert img.size[0] > img.size[1]  # three panels side by side: lr-AdamW, loss, auc


def test_training_curves_bad_files(tmp_path):
    no_epoch = tmp_path / "no_epoch.csv"
    no_epoch.write_text("step,train/loss\n0,1.0\n")
    with pytest.raises(DataError, match=r"no_epoch.csv has no 'epoch' column"):
        plot_training_curves(no_epoch, tmp_path / "x.png")
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step,val/auc\n0,0,\n")
    with pytest.raises(DataError, match="empty.csv holds no logged values"):
        plot_training_curves(empty, tmp_path / "x.png")
    with pytest.raises(DataError, match="cannot read training log .*missing.csv"):
        plot_training_curves(tmp_path / "missing.csv", tmp_path / "x.png")


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_roc_content_names_model_split_n_positives_auc_and_macro(tmp_path):
    y, p, classes = task_data("multiclass")
    fig = plot_roc("diag", "multiclass", y, p, classes, tmp_path / "roc.png", model="late_fusion", split="test")
    ax = fig.axes[0]
    known = int((y >= 0).sum())
    assert "diag" in ax.get_title() and "late_fusion" in ax.get_title() and "test split" in ax.get_title()
    assert f"n = {known}" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    texts = legend_texts(ax)
    for c, name in enumerate(classes):
        pos = int((y == c).sum())
        from sklearn.metrics import roc_auc_score
        expected = roc_auc_score(y[y >= 0] == c, p[y >= 0, c])
        assert f"{name}: {pos} pos., AUC {expected:.3f}" in texts
    assert texts[-1].startswith("macro average (4 classes), AUC ")
    macro = ax.get_lines()[len(classes)]  # drawn after the class curves
    assert macro.get_xdata()[0] == 0 and macro.get_ydata()[-1] == pytest.approx(1.0)


def test_roc_binary_has_one_curve_no_macro(tmp_path):
    y, p, classes = task_data("binary")
    fig = plot_roc("mel", "binary", y, p, classes, tmp_path / "roc.png", model="m", split="val")
    texts = legend_texts(fig.axes[0])
    assert len(texts) == 1 and texts[0].startswith(f"c1: {int((y == 1).sum())} pos., AUC ")


def test_confusion_has_colour_bar_and_title_facts(tmp_path):
    y, p, classes = task_data("multiclass")
    cm = task_metrics("multiclass", y, p, classes)["confusion_matrix"]
    fig = plot_confusion("diag", cm, classes, tmp_path / "cm.png", model="late_fusion", split="test")
    matrix_ax, bar_ax = fig.axes
    assert bar_ax.get_ylabel() == "fraction of the true class"
    title = matrix_ax.get_title()
    assert "late_fusion" in title and "test split" in title and f"n = {int(np.sum(cm))}" in title
    assert (matrix_ax.get_xlabel(), matrix_ax.get_ylabel()) == ("predicted", "true (cases)")
    ym, pm, labels = task_data("multilabel")
    cmm = task_metrics("multilabel", ym, pm, labels)["confusion_matrix"]
    fig = plot_confusion("mrnet", cmm, labels, tmp_path / "cmm.png", model="ei", split="val")
    assert len(fig.axes) == 6  # a matrix and its colour bar per label
    assert "ei, val split" in fig._suptitle.get_text()
    assert f"abnormal (n = {int((~np.isnan(ym[:, 0])).sum())})" in fig.axes[0].get_title()


def write_single_task_csv(path) -> None:
    """A metrics.csv as mmdiag logs a single-task run: train/<task>/acc, val/<task>/* and identical val/mean/*."""
    rows = ["epoch,step,lr-AdamW,train/loss,train/diag/acc,val/diag/acc,val/loss,val/mean/acc"]
    accs = [0.5, 0.7, 0.65]
    for e, a in enumerate(accs):
        rows.append(f",{e},0.001,,,,,")
        rows.append(f"{e},{e},,{1.0 - 0.2 * e},{0.4 + 0.1 * e},,,")
        rows.append(f"{e},{e},,,,{a},{0.9 - 0.1 * e},{a}")
    path.write_text("\n".join(rows) + "\n")


def test_training_curves_single_task_labels_best_epoch_and_no_duplicates(tmp_path):
    csv = tmp_path / "metrics.csv"
    write_single_task_csv(csv)
    fig = plot_training_curves(csv, tmp_path / "curves.png", model="late_fusion", cases="train 80 / val 20",
                               best=("val/diag/acc", 0.7))
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"lr-AdamW", "loss", "acc"}
    assert axes["acc"].get_ylabel() == "accuracy" and axes["loss"].get_ylabel() == "loss"
    assert axes["lr-AdamW"].get_ylabel() == "learning rate"
    assert legend_texts(axes["acc"]) == ["train/diag/acc", "val/diag/acc", "best: epoch 1"]
    star = [line for line in axes["acc"].get_lines() if line.get_marker() == "*"][0]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (1, pytest.approx(0.7))
    assert all(any(line.get_xdata()[0] == 1 and line.get_linestyle() == "--" for line in ax.get_lines())
               for ax in fig.axes)
    suptitle = fig._suptitle.get_text()
    assert "late_fusion" in suptitle and "n = train 80 / val 20" in suptitle and "best epoch 1" in suptitle


def test_training_curves_keep_the_mean_of_several_tasks(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,val/a/auc,val/b/auc,val/mean/auc\n0,0,0.6,0.8,0.7\n1,1,0.7,0.9,0.8\n")
    fig = plot_training_curves(csv, tmp_path / "curves.png")
    assert legend_texts(fig.axes[0]) == ["val/a/auc", "val/b/auc", "val/mean/auc"]
    assert fig.axes[0].get_ylabel() == "AUC (macro, one-vs-rest)"
