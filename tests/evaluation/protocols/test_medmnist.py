"""The official MedMNIST evaluator, reproduced: ACC/AUC against hand-computed values, result file name and content."""

import numpy as np
import pytest

from mmdiag.errors import DataError, UnknownNameError
from mmdiag.evaluation.protocols.medmnist import (MedMNISTMetrics, evaluate, get_acc, get_auc, read_result_file,
                                                  result_filename, write_result_file)

# multi-class: argmax = [0, 1, 2, 0] → ACC 3/4. One-vs-rest AUC: class 0 and 1 separate perfectly (1.0); class 2:
# positives 0.7, 0.25 vs negatives 0.1, 0.3 → 3 of 4 pairs → 0.75. Mean over the 3 columns: 2.75 / 3.
Y_MC = np.array([[0], [1], [2], [2]], dtype=np.uint8)
S_MC = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.25]])
# binary: the score is the last column [0.2, 0.65, 0.65, 0.7, 0.5]; > 0.5 strictly → [0, 1, 1, 1, 0] vs
# [0, 0, 1, 1, 1] → ACC 3/5. AUC: positives {0.65, 0.7, 0.5} vs negatives {0.2, 0.65}: pairs 1, .5, 1, 1, 1, 0 → 4.5/6.
Y_BIN = np.array([[0], [0], [1], [1], [1]], dtype=np.uint8)
S_BIN = np.array([[0.8, 0.2], [0.35, 0.65], [0.9, 0.65], [0.3, 0.7], [0.5, 0.5]])
# multi-label: label 0 predicted [1, 0, 1, 0] = truth → ACC 1, AUC 1; label 1 predicted [1, 0, 1, 0] (0.5 is not
# > 0.5) vs [0, 1, 1, 0] → ACC 0.5; AUC positives {0.5, 0.7} vs negatives {0.6, 0.1} → 3/4.
Y_ML = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.uint8)
S_ML = np.array([[0.9, 0.6], [0.4, 0.5], [0.6, 0.7], [0.5, 0.1]])

CASES = [
    ("multi-class", Y_MC, S_MC, 2.75 / 3, 0.75),
    ("ordinal-regression", Y_MC, S_MC, 2.75 / 3, 0.75),
    ("binary-class", Y_BIN, S_BIN, 0.75, 0.6),
    ("binary-class", Y_BIN, S_BIN[:, -1], 0.75, 0.6),  # a score vector is used as is
    ("multi-label, binary-class", Y_ML, S_ML, 0.875, 0.75),
]


@pytest.mark.parametrize("task, y, s, auc, acc", CASES)
def test_acc_and_auc_match_hand_computed_values(task, y, s, auc, acc):
    assert get_auc(y, s, task) == pytest.approx(auc, abs=1e-12)
    assert get_acc(y, s, task) == pytest.approx(acc, abs=1e-12)
    m = evaluate(y, s, task)
    assert m == pytest.approx((auc, acc)) and m._fields == ("AUC", "ACC")  # AUC first, as the official Metrics


def test_binary_uses_the_last_column_not_the_argmax():
    s = S_BIN.copy()
    s[:, 0] = 1.0  # argmax would say class 0 everywhere; the official evaluator ignores column 0
    assert get_acc(Y_BIN, s, "binary-class") == pytest.approx(0.6)


def test_multiclass_auc_averages_every_column_and_names_a_class_without_cases():
    with pytest.raises(DataError, match="class 2"):
        get_auc(np.array([[0], [1], [0], [1]]), S_MC, "multi-class")
    with pytest.raises(DataError, match="label 1"):
        get_auc(np.array([[1, 0], [0, 0], [1, 0], [0, 0]]), S_ML, "multi-label, binary-class")
    with pytest.raises(UnknownNameError, match="multi-class"):
        get_auc(Y_MC, S_MC, "multiclass")
    with pytest.raises(DataError, match="3 rows.*4 cases"):
        evaluate(Y_MC, S_MC[:3], "multi-class")


def test_result_file_name_and_content_follow_the_official_format(tmp_path):
    m = MedMNISTMetrics(2.75 / 3, 0.75)
    assert result_filename("dermamnist", 28, "test", m, "run1") == "dermamnist_test_[AUC]0.917_[ACC]0.750@run1.csv"
    assert result_filename("pathmnist", 224, "val", m, "7") == "pathmnist_224_val_[AUC]0.917_[ACC]0.750@7.csv"
    path = write_result_file(tmp_path, "dermamnist", 28, "test", S_MC, m, "run1")
    assert path.name == "dermamnist_test_[AUC]0.917_[ACC]0.750@run1.csv"
    assert path.read_text().splitlines() == ["0,0.6,0.3,0.1", "1,0.2,0.5,0.3", "2,0.1,0.2,0.7", "3,0.5,0.1,0.25"]
    name, scores = read_result_file(path)
    assert name == ("dermamnist", 28, "test", "run1")
    np.testing.assert_array_equal(scores, S_MC)
    name, scores = read_result_file(write_result_file(tmp_path, "chestmnist", 64, "val", S_ML, m, "a_b"))
    assert name == ("chestmnist", 64, "val", "a_b")
    np.testing.assert_array_equal(scores, S_ML)
    with pytest.raises(DataError, match="official MedMNIST result file"):
        read_result_file(tmp_path / "dermamnist_holdout.csv")
