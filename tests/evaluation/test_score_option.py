"""eval.score: per-class AUC / AP ranked on softmax probabilities (default) or on each class's sigmoid (EI)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader

from mmdiag.config.load import load_config, resolve_config_path
from mmdiag.data.schema import DatasetSpec
from mmdiag.data.transforms import BatchTransform
from mmdiag.errors import ConfigError
from mmdiag.evaluation.metrics import evaluate_tasks
from mmdiag.evaluation.predict import predict_loader
from mmdiag.training.system import probabilities

SPEC = DatasetSpec.model_validate({
    "name": "t", "modalities": {"x": {"kind": "tabular", "fields": {"a": {"type": "numeric"}}}},
    "tasks": {"dx": {"type": "multiclass", "classes": ["a", "b", "c", "d"]}}})


def _logits(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.normal(size=(n, 4)) * 3 + np.eye(4)[y] * 1.5 + rng.normal(size=(n, 1)) * 4  # per-case offsets
    return y, torch.tensor(z, dtype=torch.float32)


def test_sigmoid_score_ranks_as_raw_logits_and_softmax_differs():
    y, z = _logits()
    tasks = {"dx": SPEC.tasks["dx"]}
    sig = evaluate_tasks(tasks, {"dx": y}, {"dx": probabilities(SPEC, {"dx": z}, score="sigmoid")["dx"].numpy()})
    soft = evaluate_tasks(tasks, {"dx": y}, {"dx": probabilities(SPEC, {"dx": z})["dx"].numpy()})
    for c, name in enumerate("abcd"):
        assert sig["tasks"]["dx"]["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == c, z[:, c].numpy()))
        assert sig["tasks"]["dx"]["per_class"][name]["ap"] == pytest.approx(
            average_precision_score(y == c, z[:, c].numpy()))
    assert abs(sig["tasks"]["dx"]["map"] - soft["tasks"]["dx"]["map"]) > 1e-3
    assert sig["tasks"]["dx"]["acc"] == soft["tasks"]["dx"]["acc"]  # the predicted class is the same argmax


def test_sigmoid_score_does_not_saturate_large_logits():
    z = torch.tensor([[30.0, 0.0], [31.0, 0.0]])
    spec = SPEC.model_copy(update={"tasks": {"dx": SPEC.tasks["dx"].model_copy(update={"classes": ("a", "b")})}})
    p = probabilities(spec, {"dx": z}, score="sigmoid")["dx"]
    assert p[1, 0] > p[0, 0]  # float32 sigmoid would tie both at 1.0


class _Echo(torch.nn.Module):
    def forward(self, inputs, present):
        return {"dx": inputs["x"][:, :1] * torch.tensor([1.0, -1.0, 0.5, 2.0])}


def test_predict_loader_takes_the_score_and_config_key():
    batch = {"case_id": ["a", "b"], "inputs": {"x": torch.tensor([[1.0, 0.0], [-2.0, 0.0]])},
             "present": {"x": torch.tensor([True, True])}, "labels": {"dx": torch.tensor([0, 1])}}
    loader = DataLoader([batch], batch_size=None)
    preds = predict_loader(_Echo(), SPEC, loader, BatchTransform(SPEC), score="sigmoid")
    np.testing.assert_allclose(preds.y_prob["dx"][0], 1 / (1 + np.exp(-np.array([1.0, -1.0, 0.5, 2.0]))))
    assert load_config(resolve_config_path("ei/ei_mrnet")).eval.score == "sigmoid"
    assert load_config().eval.score == "probability"
    with pytest.raises(ConfigError, match="eval.score"):
        load_config(overrides=["eval.score=logits"])
