"""Derm7pt Table VIII Avg1 / Avg2: independent recomputation from scikit-learn, positive classes by name."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score, roc_auc_score

from mmdiag.data.adapters.derm7pt import DIAGNOSIS_ORDERS, TASK_GROUPS
from mmdiag.errors import DataError
from mmdiag.evaluation.protocols.derm7pt import AVG2_POSITIVES, derm7pt_table8


def _data(order, seed=0, n=120):
    rng = np.random.default_rng(seed)
    classes = {t: tuple(TASK_GROUPS[t]) for t in AVG2_POSITIVES}
    classes["diagnosis"] = DIAGNOSIS_ORDERS[order]
    y, p = {}, {}
    for t, cls in classes.items():
        k = len(cls)
        y[t] = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        prob = rng.dirichlet(np.ones(k), n)
        prob[np.arange(n // 2), y[t][: n // 2]] += 1.0
        p[t] = prob / prob.sum(1, keepdims=True)
    return y, p, classes


def _ovr(y, p, c):
    truth, pred = (y == c).astype(int), (p.argmax(1) == c).astype(int)
    return {"sensitivity": recall_score(truth, pred), "specificity": recall_score(1 - truth, 1 - pred),
            "auc": roc_auc_score(truth, p[:, c]), "f1": f1_score(truth, pred)}


@pytest.mark.parametrize("order", ["kawahara", "mm"])
def test_avg1_avg2_match_sklearn(order):
    y, p, classes = _data(order)
    out = derm7pt_table8(y, p, classes)
    diag = [_ovr(y["diagnosis"], p["diagnosis"], c) for c in range(5)]
    pos = [_ovr(y[t], p[t], classes[t].index(cls)) for t, cls in AVG2_POSITIVES.items()]
    for m in ("sensitivity", "specificity", "auc", "f1"):
        assert out["avg1"][m] == pytest.approx(np.mean([d[m] for d in diag]))
        assert out["avg2"][m] == pytest.approx(np.mean([d[m] for d in pos]))
    mel = classes["diagnosis"].index("MEL")
    assert out["diagnosis"]["MEL"]["f1"] == pytest.approx(diag[mel]["f1"])
    assert out["positives"]["pigment_network"] == pytest.approx(
        _ovr(y["pigment_network"], p["pigment_network"], classes["pigment_network"].index("atypical")))


def test_missing_task_or_positive_class_named():
    y, p, classes = _data("kawahara")
    del y["streaks"]
    with pytest.raises(DataError, match="streaks"):
        derm7pt_table8(y, p, classes)
    y, p, classes = _data("kawahara")
    classes["blue_whitish_veil"] = ("absent", "yes")
    with pytest.raises(DataError, match="blue_whitish_veil.*'present'"):
        derm7pt_table8(y, p, classes)
