"""IIMGF-Net: used parameters, the authors' layout, ablations, the head-reshape switch, presence, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mmdiag import create_model
from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.errors import ConfigError
from mmdiag.models.nets.iimgf_net import OFFICIAL_HEADS, derm7pt_8task_spec

LAYOUTS = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts"
SPEC = derm7pt_8task_spec(image_size=64)


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("iimgf_net", spec=SPEC, backbone="tiny_vmamba", **kw).eval()


def batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, 3, 64, 64, generator=g) for m in ("clinical", "dermoscopy")}


def test_defaults_are_the_authors_and_used_parameters_match():
    with torch.device("meta"):
        model = create_model("iimgf_net")
    assert model.modalities == ("clinical", "dermoscopy")
    assert list(model.spec.tasks) == list(OFFICIAL_HEADS.values())
    assert [h.out_features for h in model.heads.heads.values()] == [5, 3, 2, 3, 3, 3, 3, 2]
    assert sum(p.numel() for p in model.parameters()) == 30_292_528


def test_official_state_dict_loads_strictly_and_reports_unused(tmp_path, caplog):
    layout = json.loads((LAYOUTS / "iimgf_net_official.json").read_text())["state_dict"]
    g = torch.Generator().manual_seed(0)
    state = {k: 0.02 * torch.randn(s, generator=g) for k, s in layout}
    path = tmp_path / "best.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO):
        model = create_model("iimgf_net", checkpoint=path)
    assert "68 tensors" in caplog.text and "mamba.layers.3" in caplog.text and "C2F_cross.0.A_log_2" in caplog.text
    assert torch.equal(model.heads.heads["blue_whitish_veil"].weight, state["fc_bwn.weight"])
    assert torch.equal(model.mgc.F2C_cross[1].x_proj_2.weight, state["F2C_cross.1.x_proj_2.weight"])
    assert torch.equal(model.merge_y[1].reduction.weight, state["downsample_der.reduction.weight"])
    assert torch.equal(model.streams[0].pos_embed, state["pos_embed"])


def test_backbone_checkpoint_option_loads_vmamba_file(tmp_path):
    layout = json.loads((LAYOUTS / "vmamba_tiny_0230s.json").read_text())["state_dict"]
    state = {k: torch.full(s, 0.01) for k, s in layout}
    path = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    torch.save({"model": state}, path)
    model = create_model("iimgf_net", backbone_checkpoint=str(path), separate_streams=True)
    for s in model.streams:
        assert torch.equal(s.mamba.layers[2].blocks[7].op.Ds, state["layers.2.blocks.7.op.Ds"])


def test_ablations_change_structure_and_output():
    x = batch()
    full = tiny()
    with torch.no_grad():
        ref = full(x)["diagnosis"]
        for kw, absent in [(dict(use_cmigf=False), "fusion"), (dict(use_mgc=False), "mgc")]:
            model = tiny(**kw)
            assert not hasattr(model, absent)
            out = model(x)
            assert set(out) == set(SPEC.tasks) and not torch.allclose(out["diagnosis"], ref)
            assert torch.isfinite(out["diagnosis"]).all()
        assert not torch.allclose(tiny(mgc_pooling="2d")(x)["diagnosis"], ref)


def test_head_reshape_switch_reproduces_the_authors_scramble():
    x = batch()
    model = tiny(official_head_reshape=True)
    seen = {}
    model.fusion[2].register_forward_hook(lambda m, i, o: seen.__setitem__("f", o))
    model.streams[0].mamba.layers[2].register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    with torch.no_grad():
        feats = model.forward_features(x)
    f, h = seen["f"][0], seen["h"]  # clinical f_3 / h_3, channels-last (B, 2, 2, 64)
    b, hh, ww, c = f.shape
    want = f.transpose(1, 2).reshape(b, c, hh, ww).mean(dim=(2, 3)) + h.mean(dim=(1, 2))
    assert torch.allclose(feats[:, :c], want, atol=1e-5)
    correct = (f + h).mean(dim=(1, 2))
    assert not torch.allclose(feats[:, :c], correct, atol=1e-3)
    model.official_head_reshape = False
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x)[:, :c], correct, atol=1e-5)


def test_missing_modality_tensor_does_not_change_output():
    model = tiny()
    x, present = batch(), {"clinical": torch.tensor([True, True]), "dermoscopy": torch.tensor([True, False])}
    y = {k: v.clone() for k, v in x.items()}
    y["dermoscopy"][1] = 100.0
    with torch.no_grad():
        a, b = model(x, present)["diagnosis"], model(y, present)["diagnosis"]
    assert torch.allclose(a, b, atol=1e-6)


def test_tasks_from_spec_and_gradients_reach_all_parameters():
    img = ImageModality(channels=1, size=(64, 64))
    spec = DatasetSpec(name="dect", modalities={"kev100": img, "kev150": img},
                       tasks={"lnm": TaskSpec(type="binary", classes=("neg", "pos"))})
    model = create_model("iimgf_net", spec=spec, backbone="tiny_vmamba", drop_path_rate=0.0)
    out = model({"kev100": torch.randn(2, 1, 64, 64), "kev150": torch.randn(2, 1, 64, 64)})
    out["lnm"].sum().backward()
    assert out["lnm"].shape == (2, 2)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_errors_name_the_problem():
    img = ImageModality(channels=3, size=(64, 64))
    three = DatasetSpec(name="tri", modalities={"a": img, "b": img, "c": img},
                        tasks={"t": TaskSpec(type="binary", classes=("n", "p"))})
    with pytest.raises(ConfigError, match="exactly two image modalities.*'a', 'b', 'c'"):
        create_model("iimgf_net", spec=three, backbone="tiny_vmamba")
    assert create_model("iimgf_net", spec=three, backbone="tiny_vmamba", modalities=["a", "c"]).modalities == ("a", "c")
    with pytest.raises(ConfigError, match="backbone"):
        create_model("iimgf_net", spec=SPEC, backbone="resnet")
    odd = DatasetSpec(name="odd", modalities={"a": ImageModality(size=(48, 48)), "b": ImageModality(size=(48, 48))},
                      tasks={"t": TaskSpec(type="binary", classes=("n", "p"))})
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_model("iimgf_net", spec=odd, backbone="tiny_vmamba")
