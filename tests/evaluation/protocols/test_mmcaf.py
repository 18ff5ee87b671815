"""MMCAF protocol: metrics at a threshold against scikit-learn, threshold choice, series max pooling."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from mmdiag.errors import ConfigError, DataError
from mmdiag.evaluation.protocols.mmcaf import binary_metrics, choose_threshold, series_level


def test_metrics_at_threshold_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.clip(0.35 * y + rng.uniform(0, 0.7, 60), 0, 1)
    for t in (0.5, 0.7):
        m = binary_metrics(y, s, t)
        pred = (s > t).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
        assert m["auc"] == pytest.approx(roc_auc_score(y, s))
        assert m["acc"] == pytest.approx((tp + tn) / 60)
        assert m["f1"] == pytest.approx(f1_score(y, pred))
        assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["ppv"] == pytest.approx(tp / (tp + fp))
        assert m["npv"] == pytest.approx(tn / (tn + fn))


def test_threshold_separates_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.6, 0.65, 0.69, 0.71, 0.9])
    t = choose_threshold(y, s)
    assert 0.69 < t < 0.71 and binary_metrics(y, s, t)["acc"] == 1.0


def test_threshold_errors_are_named():
    with pytest.raises(ConfigError, match="'auc'"):
        choose_threshold([0, 1], [0.1, 0.9], "auc")
    with pytest.raises(DataError, match="both classes"):
        choose_threshold([1, 1], [0.1, 0.9])


def test_series_score_is_max_over_windows():
    df = pd.DataFrame({"case_id": ["P1/S1@0000", "P1/S1@0006", "P2/S9@0000", "P3/S3@tumour"],
                       "diagnosis.true": ["squamous_cell", "squamous_cell", "adenocarcinoma", "adenocarcinoma"],
                       "diagnosis.prob.squamous_cell": [0.2, 0.8, 0.4, 0.1]})
    out = series_level(df, "squamous_cell")
    assert out["series"].tolist() == ["P1/S1", "P2/S9", "P3/S3"]
    assert out["score"].tolist() == [0.8, 0.4, 0.1] and out["y"].tolist() == [1, 0, 0]
    assert out["windows"].tolist() == [2, 1, 1]
