"""predictions.csv reproduces metrics.json: labels (unknown vs none) and scores survive the round trip exactly."""

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from mmdiag.data.manifest import encode_label
from mmdiag.data.schema import DatasetSpec
from mmdiag.evaluation.metrics import evaluate_tasks
from mmdiag.evaluation.predict import Predictions
from mmdiag.evaluation.report import write_predictions_csv

SPEC = DatasetSpec.model_validate({
    "name": "t", "modalities": {"x": {"kind": "image", "channels": 1, "size": [4, 4]}},
    "tasks": {"findings": {"type": "multilabel", "classes": ["acl", "meniscus", "tear"]},
              "dx": {"type": "multiclass", "classes": ["a", "b", "c"]}}})


def _preds(n: int = 60, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    y_ml = (rng.random((n, 3)) < 0.4).astype(np.float32)
    y_ml[:8] = 0.0  # "none": known, all negative
    y_ml[8:12] = np.nan  # unknown
    # probabilities closer than 1e-6 apart: rounding to 6 decimals would tie them and move AUC / AP
    base = rng.random((n, 3)).astype(np.float32)
    p_ml = (0.5 + (base - 0.5) * 1e-5).astype(np.float32)
    y_dx = rng.integers(-1, 3, n)
    z = rng.normal(size=(n, 3))
    p_dx = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(np.float32)
    return Predictions([f"c{i}" for i in range(n)], {"findings": y_ml, "dx": y_dx}, {"findings": p_ml, "dx": p_dx})


def _read_back(path) -> tuple[dict, dict]:
    df = pd.read_csv(path, dtype={"findings.true": str, "dx.true": str}, keep_default_na=False)
    y_ml = np.stack([encode_label("findings", SPEC.tasks["findings"], v, case_id="?") for v in df["findings.true"]])
    y_dx = np.array([encode_label("dx", SPEC.tasks["dx"], v, case_id="?") for v in df["dx.true"]])
    probs = {t: df[[f"{t}.prob.{c}" for c in SPEC.tasks[t].classes]].to_numpy(float) for t in SPEC.tasks}
    return {"findings": y_ml, "dx": y_dx}, probs


def test_predictions_csv_reproduces_metrics_exactly(tmp_path):
    preds = _preds()
    write_predictions_csv(SPEC, preds, tmp_path / "predictions.csv")
    truth, probs = _read_back(tmp_path / "predictions.csv")
    text = (tmp_path / "predictions.csv").read_text().splitlines()
    assert text[1].split(",")[2] == "none" and text[9].split(",")[2] == ""  # none vs unknown written apart
    np.testing.assert_array_equal(truth["findings"], preds.y_true["findings"])  # NaN == NaN here
    np.testing.assert_array_equal(truth["dx"], preds.y_true["dx"])
    original = evaluate_tasks(SPEC.tasks, preds.y_true, preds.y_prob)
    again = evaluate_tasks(SPEC.tasks, truth, probs)
    assert original == again or repr(original) == repr(again)
    # independent check with scikit-learn on the CSV alone
    y, p = truth["findings"], probs["findings"]
    for j, c in enumerate(SPEC.tasks["findings"].classes):
        known = ~np.isnan(y[:, j])
        assert original["tasks"]["findings"]["per_class"][c]["auc"] == roc_auc_score(y[known, j], p[known, j])
        assert original["tasks"]["findings"]["per_class"][c]["ap"] == average_precision_score(y[known, j], p[known, j])
    assert original["tasks"]["findings"]["n"] == 60 - 4  # "none" rows count, unknown rows do not
