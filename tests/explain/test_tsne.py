"""t-SNE: which features are embedded for each model kind, the embedding, and the written plot and table."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmdiag import create_model
from mmdiag.data.schema import TaskSpec
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import ConfigError, DataError
from mmdiag.explain.tsne import class_labels, penultimate_features, tsne_embedding, write_tsne
from mmdiag.models._builder import build_for_dataset
from mmdiag.models.contract import MultimodalModel

SPEC = synthetic(n_cases=20).spec
X = {"clinical": torch.rand(3, 3, 32, 32), "dermoscopy": torch.rand(3, 3, 32, 32), "record": torch.randn(3, 9)}
PRESENT = {m: torch.tensor([True, False, True]) for m in X}


def test_medmamba_features_are_the_pooled_last_stage():
    torch.manual_seed(0)
    model = build_for_dataset(SPEC, "tiny_medmamba", {"modality": "clinical"})
    feats = penultimate_features(model, X)
    assert model.training  # mode restored
    net = model.net.eval()
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(X["clinical"]), pre_logits=True)
    assert feats.shape == (3, net.num_features)
    torch.testing.assert_close(feats, expected)
    torch.testing.assert_close(penultimate_features(net, X["clinical"]), expected)  # the bare image model


@pytest.mark.parametrize("name,options", [("unimodal", {"modality": "dermoscopy"}), ("early_fusion", {})])
def test_fusion_features_are_the_heads_input(name, options):
    torch.manual_seed(0)
    model = create_model(name, spec=SPEC, **options).eval()
    feats = penultimate_features(model, X, PRESENT)
    assert feats.shape == (3, model.num_features)
    with torch.no_grad():
        logits = model(X, PRESENT)["diagnosis"]
        head = model.heads.heads["diagnosis"]
        torch.testing.assert_close(head(feats), logits)  # the logits are a linear function of these features


class _Gated(MultimodalModel):
    """Features = the record's projection, zeroed where the record is missing; heads with no linear layer of their own
    that a hook could find (the old head-guessing could not take features from this model)."""

    def __init__(self, spec):
        super().__init__(spec, ["record"])
        self.proj = torch.nn.Linear(9, 5)
        self.num_features = 5

    def forward_features(self, inputs, present=None):
        return self.proj(inputs["record"]) * present["record"].float()[:, None]

    def forward_head(self, features, pre_logits=False):
        return features if pre_logits else {"diagnosis": torch.cat([features, -features[:, :3]], 1)}


def test_features_come_from_forward_features_with_presence():
    model = _Gated(SPEC)
    feats = penultimate_features(model, X, PRESENT)
    with torch.no_grad():
        expected = model.proj(X["record"])
    torch.testing.assert_close(feats[[0, 2]], expected[[0, 2]])
    assert torch.equal(feats[1], torch.zeros(5))  # the missing record contributes nothing


def test_a_model_breaking_the_contract_is_named():
    model = _Gated(SPEC)
    model.forward_features = lambda inputs, present=None: torch.zeros(3, 2, 2)
    with pytest.raises(ConfigError, match=r"_Gated.forward_features returned shape \(3, 2, 2\).*\(3, F\)"):
        penultimate_features(model, X, PRESENT)


def test_embedding_keeps_separated_classes_apart():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (15, 10)), rng.normal(12, 1, (15, 10))])
    emb = tsne_embedding(feats, perplexity=30, seed=0)  # perplexity capped at (30 - 1) / 3
    assert emb.shape == (30, 2)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    assert ((nearest < 15) == (np.arange(30) < 15)).all()
    np.testing.assert_array_equal(emb, tsne_embedding(feats, perplexity=30, seed=0))  # seeded
    with pytest.raises(DataError, match="at least 4 cases; got 3"):
        tsne_embedding(feats[:3])


def test_labels_for_every_task_type():
    binary = TaskSpec(type="binary", classes=("neg", "pos"))
    assert class_labels(binary, np.array([1, 0, -1])) == ["pos", "neg", "unknown"]
    multi = TaskSpec(type="multilabel", classes=("a", "b"))
    y = np.array([[1, 1], [0, 0], [np.nan, 1], [0, 1]], dtype=np.float32)
    assert class_labels(multi, y) == ["a+b", "none", "unknown", "b"]


def test_write_tsne_plots_every_task_and_the_coordinates(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(12, 5))
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, -1, 2])
    paths = write_tsne(SPEC, feats, {"diagnosis": y}, [f"c{i}" for i in range(12)], tmp_path, prefix="tsne_test")
    assert [p.name for p in paths] == ["tsne_test_diagnosis.png", "tsne_test.csv"]
    assert Image.open(paths[0]).format == "PNG"
    table = pd.read_csv(paths[1])
    assert list(table.columns) == ["case_id", "x", "y", "diagnosis"]
    assert table["case_id"].tolist()[:2] == ["c0", "c1"] and table["diagnosis"][10] == "unknown"
    assert table["diagnosis"][2] == SPEC.tasks["diagnosis"].classes[2]
    with pytest.raises(ConfigError, match=r"\['grade'\] not in the run; tasks: \['diagnosis'\]"):
        write_tsne(SPEC, feats, {"diagnosis": y}, list(range(12)), tmp_path, tasks=["grade"])
