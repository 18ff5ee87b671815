import json

import pytest
import torch

from mmdiag import create_model
from mmdiag.cli.main import main
from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError

NAMES = ["coscat", "mm_mil", "sfusion", "raddiag", "dynmm", "mmrad", "unimodel", "mm_mil_mor", "mmrad_mor"]
# What each method trains inside its VFMs (everything outside the VFMs is trained by all of them).
VFM_TRAINING = {"coscat": "all", "mm_mil": "all", "sfusion": "all", "raddiag": "all", "dynmm": "all",
                "mmrad": "none", "unimodel": "mor", "mm_mil_mor": "mor", "mmrad_mor": "mor"}
SMALL = {"sfusion": {"depth": 1, "grid": 2}, "mmrad": {"decoder_dim": 16, "decoder_mlp_dim": 32},
         "mmrad_mor": {"decoder_dim": 16, "decoder_mlp_dim": 32}, "mm_mil": {"attention_dim": 16},
         "mm_mil_mor": {"attention_dim": 16}, "raddiag": {"ff_dim": 64}}

SPEC = DatasetSpec.model_validate({
    "name": "tiny_vfm",
    "modalities": {"photo": {"kind": "image", "channels": 3, "size": [32, 32]},
                   "scope": {"kind": "image", "channels": 1, "size": [32, 32]},
                   "views": {"kind": "image", "channels": 6, "size": [32, 32]}},  # 2 RGB slices
    "tasks": {"diagnosis": {"type": "binary", "classes": ["benign", "malignant"]},
              "findings": {"type": "multilabel", "classes": ["a", "b", "c"]}}})


def _inputs(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(b, mod.channels, 32, 32, generator=g) for m, mod in SPEC.modalities.items()}


def _build(name, vfm="tiny_dinov2_reg", **options):
    torch.manual_seed(0)
    return create_model(name, spec=SPEC, vfm=vfm, **SMALL.get(name, {}), **options)


@pytest.mark.parametrize("vfm", ["tiny_dinov2_reg", "tiny_clip"])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_frozen_bases_and_backward_reaches_every_trainable_parameter(name, vfm):
    model = _build(name, vfm)
    for n, p in model.named_parameters():
        in_vfm = ".vit." in n
        adapter = ".experts." in n or ".router." in n
        expected = {"all": True, "none": False, "mor": adapter}[VFM_TRAINING[name]] if in_vfm else True
        assert p.requires_grad == expected, n
    present = {"photo": torch.tensor([True, True, False]), "scope": torch.tensor([True, False, False]),
               "views": torch.tensor([True, True, True])}
    out = model(_inputs(), present)
    assert out["diagnosis"].shape == (3, 2) and out["findings"].shape == (3, 3)
    assert all(torch.isfinite(v).all() for v in out.values())
    out = model(_inputs())
    (out["diagnosis"].sum() + out["findings"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_missing_modality_content_is_ignored_and_cases_are_independent(name):
    model = _build(name).eval()
    present = {"photo": torch.tensor([True, True, False]), "scope": torch.tensor([True, False, False]),
               "views": torch.tensor([True, True, True])}
    x = _inputs()
    noisy = {m: v.clone() for m, v in x.items()}
    noisy["scope"][1:] = torch.rand(2, 1, 32, 32)
    noisy["photo"][2] = torch.rand(3, 32, 32)
    with torch.no_grad():
        out = model(x, present)["diagnosis"]
        torch.testing.assert_close(model(noisy, present)["diagnosis"], out)
        for i in range(3):  # a case's output does not depend on the other cases of the batch
            alone = model({m: v[i : i + 1] for m, v in x.items()}, {m: p[i : i + 1] for m, p in present.items()})
            torch.testing.assert_close(alone["diagnosis"], out[i : i + 1], atol=1e-5, rtol=1e-4)


def _dynmm_experts(model, x, mask):
    from mmdiag.models.nets.ei_baselines import _concat

    uni = model.features(x, mask)
    experts = [model.uni_heads[m](uni[:, i])["diagnosis"] for i, m in enumerate(model.modalities)]
    fused = _concat(model.features(x, mask, model.fusion_encoders), mask)
    return uni, torch.stack(experts + [model.fusion_heads(fused)["diagnosis"]], 1)


def test_dynmm_gate_is_soft_in_training_and_hard_at_inference():
    model = _build("dynmm")
    x = _inputs()
    present = {"photo": torch.tensor([True, True, False]), "scope": torch.tensor([True, False, True]),
               "views": torch.tensor([True, True, True])}
    mask = model.presence(x, present)
    uni, experts = _dynmm_experts(model, x, mask)
    soft = model.gate_weights(uni, mask)
    torch.testing.assert_close(soft.sum(1), torch.ones(3))
    assert (soft[:, :3][~mask] == 0).all() and (soft[:, :3][mask] > 0).all() and (soft < 1).all()
    model.eval()
    with torch.no_grad():
        hard = model.gate_weights(uni, mask)
        assert ((hard == 0) | (hard == 1)).all() and (hard.sum(1) == 1).all() and not hard[:, :3][~mask].any()
        chosen = experts[torch.arange(3), hard.argmax(1)]
        torch.testing.assert_close(model(x, present)["diagnosis"], chosen)


def test_dynmm_runs_the_fusion_expert_only_for_cases_that_chose_it():
    model = _build("dynmm").eval()
    with torch.no_grad():  # the gate prefers photo's expert, then fusion: cases without photo go to fusion
        model.gate[-1].weight.zero_()
        model.gate[-1].bias.copy_(torch.tensor([10.0, 0.0, 0.0, 5.0]))
    seen = []
    model.fusion_encoders["views"].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    present = {"photo": torch.tensor([True, False, True]), "views": torch.tensor([True, True, True])}
    x = _inputs()
    with torch.no_grad():
        out = model(x, present)["diagnosis"]
        assert seen == [1]
        _, experts = _dynmm_experts(model, x, model.presence(x, present))
    torch.testing.assert_close(out, experts[torch.arange(3), torch.tensor([0, 3, 0])])


def test_dynmm_hard_training_is_straight_through_and_resource_loss_is_reported():
    model = _build("dynmm", hard_train=True, resource_weight=0.5)
    x = _inputs()
    mask = model.presence(x, None)
    w = model.gate_weights(model.features(x, mask), mask)
    assert ((w.detach() - w.detach().round()).abs() < 1e-6).all()
    out = model(x)
    weight, cost = out["aux_loss"]["resource"]
    assert weight == 0.5 and 0 <= cost.item() <= 1
    (out["diagnosis"].sum() + cost).backward()
    assert model.gate[0].weight.grad.abs().sum() > 0
    assert "aux_loss" not in model.eval()(x)


def test_configuration_errors_name_the_fix():
    raw = SPEC.model_dump()
    tabular = DatasetSpec.model_validate({**raw, "modalities": {**raw["modalities"], "record": {
        "kind": "tabular", "fields": {"age": {"type": "numeric"}}}}})
    with pytest.raises(ConfigError, match=r"record.*data.modalities=\['photo', 'scope', 'views'\]"):
        create_model("coscat", spec=tabular, vfm="tiny_dinov2")
    sizes = DatasetSpec.model_validate({**SPEC.model_dump(), "modalities": {
        "photo": {"kind": "image", "size": [32, 32]}, "scope": {"kind": "image", "size": [28, 28]}}})
    with pytest.raises(ConfigError, match="sfusion fuses patch grids.*same"):
        create_model("sfusion", spec=sizes, vfm="tiny_dinov2")
    normed = DatasetSpec.model_validate({**SPEC.model_dump(), "modalities": {
        "photo": {"kind": "image", "size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}})
    with pytest.raises(ConfigError, match="input_norm=none"):
        create_model("mmrad", spec=normed, vfm="tiny_dinov2")
    assert create_model("mmrad", spec=normed, vfm="tiny_dinov2", input_norm="none") is not None


def test_trains_end_to_end_through_the_cli(tmp_path, manifest_yaml):
    """photo (RGB) + scope (grey, repeated to RGB by the VFM encoder) through mmdiag train."""
    run = tmp_path / "run"
    args = ["train", "--output", str(run), f"data.dataset={manifest_yaml}", "data.modalities=[photo,scope]",
            "model.name=mm_mil_mor", "model.options.vfm=tiny_dinov2", "trainer.max_epochs=1", "data.batch_size=8",
            "trainer.enable_progress_bar=false", "data.split.folds=3"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and "diagnosis" in metrics["tasks"]
