"""ISIC BMCA / AP / AUC: agreement with scikit-learn without ties, the scorer's tie / absent-category / weight rules."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from mmdiag.errors import DataError
from mmdiag.evaluation.protocols.isic import (UNDECIDED, balanced_multiclass_accuracy, decided_labels, isic_metrics,
                                              score_csv)


@pytest.mark.parametrize("seed", range(5))
def test_bmca_equals_sklearn_without_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 200)
    p = rng.dirichlet(np.ones(7), 200)
    p[np.arange(200)[:120], y[:120]] += 0.5  # some skill
    assert balanced_multiclass_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    m = isic_metrics(np.eye(7)[y], p, list("ABCDEFG"))
    assert m["bmca"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    assert m["acc"] == pytest.approx(np.mean(y == p.argmax(1)))
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y == c, p[:, c]) for c in range(7)]))
    assert m["ap"] == pytest.approx(np.mean([average_precision_score(y == c, p[:, c]) for c in range(7)]))


def test_tied_maximum_is_undecided_and_wrong():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.5, 0.5, 0.0],    # tie between the true class and another: wrong (argmax would say right)
                  [0.9, 0.1, 0.0],
                  [0.2, 0.4, 0.4],    # class 1 ties class 2: wrong (argmax: class 1, right)
                  [0.1, 0.8, 0.1]])
    assert decided_labels(p).tolist() == [UNDECIDED, 0, UNDECIDED, 1]
    # class 0: 1 of 2 right, class 1: 1 of 2 right; class 2 absent from the truth: skipped
    assert balanced_multiclass_accuracy(y, p) == pytest.approx(0.5)
    assert balanced_accuracy_score(y, p.argmax(1)) == pytest.approx(1.0)  # plain argmax takes the first tied column
    assert isic_metrics(y, p, ["a", "b", "c"])["n_undecided"] == 2


def test_all_equal_row_is_undecided_and_unknown_category_skipped():
    # ISIC 2019: UNK (last column) never in the truth; predicting it is wrong, its recall is skipped
    y = np.array([0, 1, 1])
    p = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.0, 0.7], [0.0, 0.9, 0.05, 0.05]])
    m = isic_metrics(y, p, ["MEL", "NV", "BCC", "UNK"])
    assert math.isnan(m["per_class"]["UNK"]["recall"]) and math.isnan(m["per_class"]["BCC"]["recall"])
    assert m["bmca"] == pytest.approx((0.0 + 0.5) / 2)


def test_weights_zero_row_is_ignored():
    y = np.array([0, 0, 1])
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    assert balanced_multiclass_accuracy(y, p, weights=np.array([1.0, 0.0, 1.0])) == pytest.approx(1.0)
    assert balanced_multiclass_accuracy(y, p) == pytest.approx(0.75)


def _csvs(tmp_path, pred_edit=None):
    truth = pd.DataFrame({"image": ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4"], "MEL": [1.0, 0, 0, 1], "NV": [0, 1.0, 0, 0],
                          "BCC": [0, 0, 1.0, 0], "score_weight": [1.0, 1.0, 1.0, 0.0]})
    pred = pd.DataFrame({"image": [f"ISIC_{i}.jpg" for i in (4, 3, 2, 1)], "MEL": [0.0, 0.1, 0.3, 0.6],
                         "NV": [1.0, 0.1, 0.3, 0.4], "BCC": [0.0, 0.8, 0.4, 0.0]})
    if pred_edit:
        pred = pred_edit(pred)
    truth.to_csv(tmp_path / "t.csv", index=False)
    pred.to_csv(tmp_path / "p.csv", index=False)
    return tmp_path / "t.csv", tmp_path / "p.csv"


def test_score_csv_rows_by_image_suffix_stripped_weights(tmp_path):
    m = score_csv(*_csvs(tmp_path))
    # ISIC_1 MEL right, ISIC_2 NV wrong (BCC), ISIC_3 BCC right, ISIC_4 weight 0
    assert m["bmca"] == pytest.approx((1 + 0 + 1) / 3)


def test_score_csv_errors(tmp_path):
    with pytest.raises(DataError, match="missing images \\['ISIC_4'\\]"):
        score_csv(*_csvs(tmp_path, lambda d: d.iloc[1:]))
    with pytest.raises(DataError, match="extra columns \\['UNK'\\]"):
        score_csv(*_csvs(tmp_path, lambda d: d.assign(UNK=0.0)))
    with pytest.raises(DataError, match="ISIC_2.*NV.*\\[0, 1\\]"):
        score_csv(*_csvs(tmp_path, lambda d: d.assign(NV=[1.0, 0.1, 1.3, 0.4])))
    with pytest.raises(DataError, match="one-hot"):
        isic_metrics(np.array([[1, 1, 0]]), np.array([[0.2, 0.3, 0.5]]), list("abc"))
