"""Integrated Gradients per modality: completeness against the model's own logits, the other modality held."""

from __future__ import annotations

import pytest
import torch

from mmdiag import create_model
from mmdiag.errors import ConfigError
from mmdiag.explain.integrated_gradients import integrated_gradients, make_baseline, save_ig_panel
from mmdiag.models.nets.iimgf_net import derm7pt_8task_spec


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_attributions_sum_to_the_logit_difference(baseline):
    torch.manual_seed(0)
    spec = derm7pt_8task_spec(image_size=32)
    model = create_model("iimgf_net", spec=spec, backbone="tiny_vmamba", drop_path_rate=0.0).eval()
    x = {"clinical": torch.rand(1, 3, 32, 32), "dermoscopy": torch.rand(1, 3, 32, 32)}
    res = integrated_gradients(model, x, None, "dermoscopy", "diagnosis", baseline=baseline, steps=48)
    with torch.no_grad():
        z = model(x)["diagnosis"]
        z0 = model({**x, "dermoscopy": make_baseline(x["dermoscopy"], baseline)})["diagnosis"]
    idx = torch.arange(1)
    want = z[idx, res.targets] - z0[idx, res.targets]
    assert torch.allclose(res.attributions.sum(dim=(1, 2, 3)), want, atol=0.05 * want.abs().max() + 1e-3)
    assert torch.equal(res.targets, z.argmax(-1))
    assert torch.allclose(res.probs, z.softmax(-1)[idx, res.targets], atol=1e-5)


def test_panel_is_written_and_errors_name_the_input(tmp_path):
    path = save_ig_panel(tmp_path / "p.png", torch.rand(3, 32, 32), torch.randn(3, 32, 32), "case | task: MEL (p = 0.5)")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="'ct' is not an input"):
        integrated_gradients(torch.nn.Identity(), {"a": torch.rand(1, 1, 8, 8)}, None, "ct", "t")
    with pytest.raises(ConfigError, match="baseline"):
        make_baseline(torch.rand(1, 1, 8, 8), "white")
