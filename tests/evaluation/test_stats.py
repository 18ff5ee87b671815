"""mmdiag.evaluation.stats against numpy/scipy, and the behaviour of the bootstrap."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy.stats import ttest_rel
from sklearn.metrics import roc_auc_score

from mmdiag.evaluation.metrics import task_metrics
from mmdiag.evaluation.stats import bootstrap_ci, fold_summary, mean_std, paired_ttest


def scored_cases(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and a noisy score that separates them (AUC about 0.8)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y + rng.normal(scale=1.0, size=n)


def test_mean_std_is_sample_std():
    values = [0.81, 0.77, 0.85, 0.79, 0.83]
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.mean(values)) and std == pytest.approx(statistics.stdev(values))
    assert std == pytest.approx(np.std(values, ddof=1))


def test_mean_std_skips_nan_folds_and_handles_one_fold():
    assert mean_std([0.5, np.nan, 0.7]) == pytest.approx((0.6, statistics.stdev([0.5, 0.7])))
    mean, std = mean_std([0.4])
    assert mean == 0.4 and math.isnan(std)
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_fold_summary_flattens_nested_scalars():
    folds = [
        {"auc": 0.8, "n": 10, "per_class": {"a": {"ap": 0.5}}, "confusion_matrix": [[1, 2], [3, 4]]},
        {"auc": 0.9, "n": 12, "per_class": {"a": {"ap": 0.7}}, "confusion_matrix": [[1, 2], [3, 4]]},
        {"auc": 0.7, "n": 11, "per_class": {"a": {"ap": 0.6}}, "confusion_matrix": [[1, 2], [3, 4]]},
    ]
    summary = fold_summary(folds)
    assert list(summary) == ["auc", "n", "per_class/a/ap"]
    assert summary["auc"]["values"] == [0.8, 0.9, 0.7]
    assert summary["auc"]["mean"] == pytest.approx(0.8) and summary["auc"]["std"] == pytest.approx(0.1)
    assert summary["per_class/a/ap"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))


def test_fold_summary_of_task_metrics_and_missing_key():
    rng = np.random.default_rng(0)
    folds = [task_metrics("binary", rng.integers(0, 2, 40), rng.dirichlet([1, 1], 40), ["neg", "pos"]) for _ in "abc"]
    summary = fold_summary(folds)
    assert summary["auc"]["values"] == [f["auc"] for f in folds]
    assert summary["per_class/pos/s2"]["mean"] == pytest.approx(np.mean([f["per_class"]["pos"]["s2"] for f in folds]))
    with pytest.raises(ValueError, match=r"fold 1 lacks metric\(s\) \['auc'\]"):
        fold_summary([{"auc": 0.5, "f1": 0.4}, {"f1": 0.3}])


def test_paired_ttest_matches_scipy():
    a = [0.81, 0.77, 0.85, 0.79, 0.83]
    b = [0.78, 0.75, 0.80, 0.80, 0.79]
    res = ttest_rel(a, b)
    assert paired_ttest(a, b) == pytest.approx({"t": res.statistic, "p": res.pvalue, "n": 5})


@pytest.mark.parametrize(
    "a, b, match",
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4], "got 5 and 4 scores"),
        ([0.1], [0.2], "at least 2 folds; got 1"),
        ([0.1, np.nan, 0.3], [0.2, 0.2, 0.2], r"fold\(s\) \[1\] have a NaN score"),
    ],
)
def test_paired_ttest_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_ttest(a, b)


def test_bootstrap_ci_contains_estimate_and_narrows():
    y_small, s_small = scored_cases(80, seed=1)
    y_big, s_big = scored_cases(1600, seed=1)
    low, high = bootstrap_ci(roc_auc_score, y_small, s_small, n_boot=200)
    assert low < roc_auc_score(y_small, s_small) < high
    low_big, high_big = bootstrap_ci(roc_auc_score, y_big, s_big, n_boot=200)
    assert low_big < roc_auc_score(y_big, s_big) < high_big
    assert (high_big - low_big) < 0.5 * (high - low)
    assert bootstrap_ci(roc_auc_score, y_small, s_small, n_boot=200) == (low, high)  # seeded
    assert bootstrap_ci(roc_auc_score, y_small, s_small, n_boot=200, seed=1) != (low, high)
    low90, high90 = bootstrap_ci(roc_auc_score, y_small, s_small, n_boot=200, alpha=0.1)
    assert low <= low90 and high90 <= high


def test_bootstrap_ci_skips_single_class_resamples():
    # 1 positive in 6 cases: about a third of the resamples hold no positive, where roc_auc_score would raise
    y = np.array([0, 0, 0, 0, 0, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8])
    low, high = bootstrap_ci(roc_auc_score, y, score, n_boot=200)
    assert 0.0 <= low <= high <= 1.0


def test_bootstrap_ci_multilabel_with_task_metrics():
    rng = np.random.default_rng(2)
    y = (rng.random((60, 3)) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(size=(60, 3)) + 2 * (y - 0.5))))
    y[rng.random((60, 3)) < 0.1] = np.nan

    def map_fn(yt, yp):
        return task_metrics("multilabel", yt, yp, ["a", "b", "c"])["map"]

    low, high = bootstrap_ci(map_fn, y, p, n_boot=50)
    assert low < map_fn(y, p) < high


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="y_true has 3 cases but y_prob has 2"):
        bootstrap_ci(roc_auc_score, np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.warns(UserWarning, match="none of 20 resamples of 3 cases had two classes"):  # one-class split
        assert np.isnan(bootstrap_ci(roc_auc_score, np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]), n_boot=20)).all()
    with pytest.raises(ValueError, match="alpha=1.5"):
        bootstrap_ci(roc_auc_score, np.array([0, 1]), np.array([0.1, 0.2]), alpha=1.5)


def test_summarize_runs_means_and_names_bad_metrics(tmp_path):
    import json

    import pytest

    from mmdiag.errors import ConfigError, DataError
    from mmdiag.evaluation.stats import summarize_runs

    for name, acc in (("a", 0.5), ("b", 0.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"run": {"dataset": name},
                                                                  "mean": {"acc": acc, "auc": 0.9}}))
    rows, mean = summarize_runs([tmp_path / "a", tmp_path / "b"], ["acc", "auc"])
    assert [r["acc"] for r in rows] == [0.5, 0.7] and mean["acc"] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match=r"'acuracy' is not a metric.*did you mean .*'acc'"):
        summarize_runs([tmp_path / "a"], ["acuracy"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no metrics.json"):
        summarize_runs([tmp_path / "empty"], ["acc"])
