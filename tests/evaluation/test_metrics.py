"""mmdiag.evaluation.metrics against direct scikit-learn computations on seeded random inputs."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from mmdiag.data.schema import TaskSpec
from mmdiag.errors import DataError, UnknownNameError
from mmdiag.evaluation.metrics import SCALAR_METRICS, evaluate_tasks, nanmean, task_metrics

BIN = ["benign", "malignant"]
MC = ["a", "b", "c", "d"]
ML = ["abnormal", "acl", "meniscus"]


def single_label(n: int, k: int, seed: int, unknown: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Labels (-1 = unknown for a fraction) and softmax probabilities that lean towards the true class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y[rng.random(n) < unknown] = -1
    return y, p


def multi_label(n: int, k: int, seed: int, unknown: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """0/1 targets with NaN = unknown and sigmoid probabilities correlated with them."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=(n, k)) + 2.0 * (y - 0.5))))
    y[rng.random((n, k)) < unknown] = np.nan
    return y, p


def assert_close(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12), (a, b)


def test_binary_matches_sklearn():
    y_all, p_all = single_label(300, 2, seed=0)
    res = task_metrics("binary", y_all, p_all, BIN, task_name="malignancy")
    m = y_all >= 0
    y, p = y_all[m], p_all[m]
    pred = p.argmax(axis=1)
    assert res["n"] == m.sum() and 0 < (~m).sum()
    expected = {
        "acc": accuracy_score(y, pred),
        "balanced_acc": balanced_accuracy_score(y, pred),
        "auc": roc_auc_score(y, p[:, 1]),
        "sensitivity": recall_score(y, pred),
        "specificity": recall_score(y, pred, pos_label=0),
        "precision": precision_score(y, pred),
        "ppv": precision_score(y, pred),
        "npv": precision_score(y, pred, pos_label=0),
        "f1": f1_score(y, pred),
        "ap": average_precision_score(y, p[:, 1]),
        "map": (average_precision_score(y, p[:, 1]) + average_precision_score(1 - y, p[:, 0])) / 2,
    }
    for key, value in expected.items():
        assert_close(res[key], value)
    sens, spec = expected["sensitivity"], expected["specificity"]
    assert_close(res["s2"], 2 * sens * spec / (sens + spec))
    assert res["per_class"]["malignant"]["support"] == int(y.sum())
    assert_close(res["per_class"]["benign"]["auc"], roc_auc_score(1 - y, p[:, 0]))
    assert res["confusion_matrix"] == confusion_matrix(y, pred).tolist()


@pytest.mark.parametrize("task_type", ["multiclass", "ordinal"])
def test_multiclass_matches_sklearn(task_type):
    y_all, p_all = single_label(400, 4, seed=1)
    res = task_metrics(task_type, y_all, p_all, MC, task_name="diag")
    m = y_all >= 0
    y, p = y_all[m], p_all[m]
    pred = p.argmax(axis=1)
    labels = list(range(4))
    onehot = label_binarize(y, classes=labels)
    per_class = {
        "support": np.bincount(y, minlength=4),
        "sensitivity": recall_score(y, pred, labels=labels, average=None),
        "specificity": [recall_score(y != c, pred != c) for c in labels],
        "precision": precision_score(y, pred, labels=labels, average=None, zero_division=0),
        "ppv": precision_score(y, pred, labels=labels, average=None, zero_division=0),
        "npv": [precision_score(y != c, pred != c, zero_division=0) for c in labels],
        "f1": f1_score(y, pred, labels=labels, average=None, zero_division=0),
        "auc": roc_auc_score(onehot, p, average=None),
        "ap": average_precision_score(onehot, p, average=None),
    }
    for key, values in per_class.items():
        for name, value in zip(MC, values):
            assert_close(res["per_class"][name][key], float(value))
        if key != "support":
            assert_close(res[key], float(np.mean(values)))
    assert res["n"] == len(y)
    assert_close(res["acc"], accuracy_score(y, pred))
    assert_close(res["balanced_acc"], balanced_accuracy_score(y, pred))
    assert_close(res["auc"], roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert_close(res["f1"], f1_score(y, pred, average="macro"))
    assert_close(res["precision"], precision_score(y, pred, average="macro", zero_division=0))
    assert_close(res["map"], average_precision_score(onehot, p, average="macro"))
    assert_close(res["ap"], res["map"])
    for name in MC:
        sens, spec = res["per_class"][name]["sensitivity"], res["per_class"][name]["specificity"]
        assert_close(res["per_class"][name]["s2"], 2 * sens * spec / (sens + spec))
    assert res["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()


def test_multilabel_matches_sklearn_per_known_label():
    y_all, p_all = multi_label(300, 3, seed=2)
    res = task_metrics("multilabel", y_all, p_all, ML, task_name="mrnet")
    assert np.isnan(y_all).any()
    assert res["n"] == int((~np.isnan(y_all)).any(axis=1).sum())
    accs, baccs = [], []
    for j, name in enumerate(ML):
        known = ~np.isnan(y_all[:, j])
        t, s = y_all[known, j].astype(int), p_all[known, j]
        pred = (s > 0.5).astype(int)
        row = res["per_class"][name]
        assert row["support"] == t.sum()
        assert_close(row["sensitivity"], recall_score(t, pred))
        assert_close(row["specificity"], recall_score(t, pred, pos_label=0))
        assert_close(row["precision"], precision_score(t, pred, zero_division=0))
        assert_close(row["npv"], precision_score(t, pred, pos_label=0, zero_division=0))
        assert_close(row["f1"], f1_score(t, pred, zero_division=0))
        assert_close(row["auc"], roc_auc_score(t, s))
        assert_close(row["ap"], average_precision_score(t, s))
        assert res["confusion_matrix"][j] == confusion_matrix(t, pred, labels=[0, 1]).tolist()
        accs.append(accuracy_score(t, pred))
        baccs.append(balanced_accuracy_score(t, pred))
    assert_close(res["acc"], float(np.mean(accs)))
    assert_close(res["balanced_acc"], float(np.mean(baccs)))
    for key in ("sensitivity", "specificity", "f1", "auc", "s2"):
        assert_close(res[key], float(np.mean([res["per_class"][n][key] for n in ML])))
    assert_close(res["map"], float(np.mean([res["per_class"][n]["ap"] for n in ML])))


def test_multilabel_threshold_is_strictly_above_half():
    y = np.array([[1.0], [0.0], [1.0], [0.0]])
    p = np.array([[0.5], [0.5], [0.51], [0.2]])
    res = task_metrics("multilabel", y, p, ["x"])
    assert res["confusion_matrix"] == [[[2, 0], [1, 1]]]


def test_unknown_labels_are_dropped():
    y, p = single_label(200, 4, seed=3, unknown=0.25)
    m = y >= 0
    full, known = task_metrics("multiclass", y, p, MC), task_metrics("multiclass", y[m], p[m], MC)
    assert json.dumps(full, sort_keys=True) == json.dumps(known, sort_keys=True)
    yml, pml = multi_label(50, 3, seed=4)
    yml[7] = np.nan  # a case with no known label does not count in n
    res = task_metrics("multilabel", yml, pml, ML)
    assert res["n"] == int((~np.isnan(yml)).any(axis=1).sum()) < 50


def test_s2_matches_hand_computation():
    # truth 0 0 0 0 1 1 1 2 2 2, predicted 0 0 0 1 1 1 2 2 0 0
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 0])
    p = np.full((10, 3), 0.1)
    p[np.arange(10), pred] = 0.8
    res = task_metrics("multiclass", y, p, ["x", "y", "z"])
    # class x: tp 3 fn 1 fp 2 tn 4 -> sens 3/4, spec 4/6; y: tp 2 fn 1 fp 1 tn 6; z: tp 1 fn 2 fp 1 tn 6
    expected = {"x": 12 / 17, "y": 3 / 4, "z": 12 / 25}
    for name, s2 in expected.items():
        assert res["per_class"][name]["s2"] == pytest.approx(s2)
    assert res["s2"] == pytest.approx(sum(expected.values()) / 3)
    assert res["per_class"]["x"]["specificity"] == pytest.approx(4 / 6)
    # binary: positive class sens 1/2, spec 1/3 -> S2 = 2/5
    yb = np.array([0, 0, 0, 1, 1])
    pb = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4]])
    assert task_metrics("binary", yb, pb, BIN)["s2"] == pytest.approx(2 / 5)


def test_never_predicted_class_has_zero_precision_like_sklearn():
    y, p = single_label(120, 4, seed=5, unknown=0.0)
    p[:, 2] = 0.0  # class c is never the argmax
    res = task_metrics("multiclass", y, p, MC)
    pred = p.argmax(axis=1)
    assert res["per_class"]["c"]["precision"] == 0.0 and res["per_class"]["c"]["sensitivity"] == 0.0
    assert_close(res["precision"], precision_score(y, pred, average="macro", zero_division=0))
    assert_close(res["f1"], f1_score(y, pred, average="macro", zero_division=0))


def test_one_class_warns_and_is_nan():
    y, p = single_label(200, 4, seed=6, unknown=0.0)
    y[y == 3] = 0
    with pytest.warns(UserWarning, match=r"task 'diag', class 'd': no positive cases among 200 labelled"):
        res = task_metrics("multiclass", y, p, MC, task_name="diag")
    row = res["per_class"]["d"]
    assert math.isnan(row["auc"]) and math.isnan(row["ap"]) and math.isnan(row["sensitivity"]) and row["support"] == 0
    assert_close(res["auc"], float(np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)])))
    assert_close(res["map"], float(np.mean([average_precision_score(y == c, p[:, c]) for c in range(3)])))

    yml, pml = multi_label(60, 3, seed=7)
    yml[:, 1] = np.where(np.isnan(yml[:, 1]), np.nan, 1.0)
    with pytest.warns(UserWarning, match=r"task 'mrnet', class 'acl': no negative cases"):
        res = task_metrics("multilabel", yml, pml, ML, task_name="mrnet")
    assert math.isnan(res["per_class"]["acl"]["auc"]) and math.isnan(res["per_class"]["acl"]["specificity"])
    assert math.isfinite(res["auc"])


def test_no_labelled_case_warns_and_gives_nan():
    _, p = single_label(5, 2, seed=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = task_metrics("binary", np.full(5, -1), p, BIN, task_name="x")
    assert any("task 'x': no labelled cases" in str(w.message) for w in caught)
    assert res["n"] == 0 and math.isnan(res["acc"]) and math.isnan(res["auc"])


def test_result_is_json_serialisable():
    y, p = single_label(50, 4, seed=9)
    res = task_metrics("multiclass", y, p, MC)
    back = json.loads(json.dumps(res))
    scalars = {"acc", "balanced_acc", "auc", "sensitivity", "specificity", "precision", "f1", "ppv", "npv", "s2", "ap"}
    assert set(back) == {"n", *scalars, "map", "per_class", "confusion_matrix"}
    per_class_keys = {"support", "sensitivity", "specificity", "precision", "f1", "ppv", "npv", "s2", "auc", "ap"}
    assert set(back["per_class"]["a"]) == per_class_keys


def test_evaluate_tasks_means_over_tasks():
    yb, pb = single_label(100, 2, seed=10)
    ym, pm = single_label(100, 4, seed=11)
    yl, pl = multi_label(100, 3, seed=12)
    ym[ym == 3] = 0  # class d absent: its AUC is NaN, the task's macro AUC stays finite
    tasks = {"mal": ("binary", BIN), "diag": TaskSpec(type="multiclass", classes=tuple(MC)), "mr": ("multilabel", ML)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_tasks(tasks, {"mal": yb, "diag": ym, "mr": yl}, {"mal": pb, "diag": pm, "mr": pl})
        diag = task_metrics("multiclass", ym, pm, MC)
    assert math.isnan(res["tasks"]["diag"]["per_class"]["d"]["auc"]) and res["tasks"]["diag"]["auc"] == diag["auc"]
    assert res["tasks"]["mal"]["auc"] == task_metrics("binary", yb, pb, BIN)["auc"]
    assert res["tasks"]["mr"]["map"] == task_metrics("multilabel", yl, pl, ML)["map"]
    for key in SCALAR_METRICS:
        assert_close(res["mean"][key], nanmean([res["tasks"][t][key] for t in tasks]))
    assert set(res["mean"]) == set(SCALAR_METRICS)


def test_evaluate_tasks_names_missing_task():
    y, p = single_label(10, 2, seed=13)
    with pytest.raises(DataError, match=r"y_prob has no entry for task\(s\) \['mal'\]"):
        evaluate_tasks({"mal": ("binary", BIN)}, {"mal": y}, {"malignancy": p})


@pytest.mark.parametrize(
    "task_type, y, p, classes, match",
    [
        ("multiclass", np.array([0, 1]), np.full((2, 3), 1 / 3), MC, r"task 'T': y_prob must have shape \(N, 4\)"),
        ("multiclass", np.array([0, 4]), np.full((2, 4), 0.25), MC, r"'T': y_true holds 4 \(row 1\); allowed: .*0..3"),
        ("multiclass", np.array([0, 1, 2]), np.full((2, 4), 0.25), MC, r"y_true must have shape \(2,\)"),
        ("binary", np.array([0, 1]), np.array([[2.0, -1.0], [0.1, 0.9]]), BIN, "not logits"),
        ("binary", np.array([0, 1]), np.array([[np.nan, 1.0], [0.1, 0.9]]), BIN, "non-finite values .*row 0"),
        ("binary", np.array([0, 1]), np.full((2, 3), 1 / 3), MC[:3], "binary task has 2 classes"),
        ("multilabel", np.array([[0.0, 2.0, 1.0]]), np.full((1, 3), 0.5), ML, r"holds 2 \(row 0, label 'acl'\)"),
    ],
)
def test_bad_input_names_task_and_value(task_type, y, p, classes, match):
    with pytest.raises(DataError, match=match):
        task_metrics(task_type, y, p, classes, task_name="T")


def test_unknown_task_type_offers_close_match():
    with pytest.raises(UnknownNameError, match=r"unknown task type 'multiclas'; did you mean 'multiclass'"):
        task_metrics("multiclas", np.array([0]), np.full((1, 4), 0.25), MC)
