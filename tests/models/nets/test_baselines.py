import pytest
import torch

from mmdiag import create_model, list_models
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import ConfigError, UnknownNameError

SPEC = synthetic(n_cases=20, multitask=True).spec
X = {"clinical": torch.rand(3, 3, 32, 32), "dermoscopy": torch.rand(3, 3, 32, 32), "record": torch.randn(3, 9)}

CASES = [
    ("unimodal", {"modality": "clinical"}),
    ("unimodal", {"modality": "clinical", "backbone": "resnet10"}),
    ("tabular_mlp", {}),
    ("early_fusion", {}),
    ("late_fusion", {"mode": "logits"}),
    ("late_fusion", {"mode": "features"}),
    ("middle_fusion", {}),
]


@pytest.mark.parametrize("name,options", CASES)
def test_forward_shapes_and_backward_reaches_every_parameter(name, options):
    torch.manual_seed(0)
    model = create_model(name, spec=SPEC, **options)
    out = model(X, {m: torch.tensor([True, False, True]) for m in X})
    assert out["diagnosis"].shape == (3, 8) and out["findings"].shape == (3, 3)
    assert all(torch.isfinite(v).all() for v in out.values())
    model(X)["diagnosis"].sum().add(model(X)["findings"].sum()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused


def test_late_fusion_averages_only_present_modalities():
    torch.manual_seed(0)
    model = create_model("late_fusion", spec=SPEC).eval()
    present = {"clinical": torch.tensor([True] * 3), "dermoscopy": torch.tensor([False] * 3),
               "record": torch.tensor([True] * 3)}
    fused = model(X, present)["diagnosis"]
    own = [model.heads[m](model.encoders[m](X[m]))["diagnosis"] for m in ("clinical", "record")]
    torch.testing.assert_close(fused, (own[0] + own[1]) / 2)


@pytest.mark.parametrize("name", ["late_fusion", "middle_fusion", "early_fusion"])
def test_missing_modality_content_is_ignored(name):
    """Whatever a missing modality's tensor holds, the output is the same: the mask, not the zeros, decides."""
    torch.manual_seed(0)
    model = create_model(name, spec=SPEC).eval()
    present = {m: torch.tensor([True, True, True]) for m in X}
    present["dermoscopy"] = torch.tensor([False, False, False])
    noisy = {**X, "dermoscopy": torch.rand(3, 3, 32, 32)}
    zeros = {**X, "dermoscopy": torch.zeros(3, 3, 32, 32)}
    torch.testing.assert_close(model(noisy, present)["diagnosis"], model(zeros, present)["diagnosis"])


def test_registry_errors_offer_close_names():
    assert {"unimodal", "late_fusion", "early_fusion", "middle_fusion", "tabular_mlp"} <= set(list_models())
    with pytest.raises(UnknownNameError, match="did you mean 'late_fusion'.*mmdiag models"):
        create_model("late_fusoin", spec=SPEC)
    with pytest.raises(ConfigError, match="'skin'.*clinical"):
        create_model("unimodal", spec=SPEC, modality="skin")
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("unimodal", spec=SPEC, modality="clinical", backbone="resnet81")
