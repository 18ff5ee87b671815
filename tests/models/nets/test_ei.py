"""EI (paper 003): [INT] injection, branches, fusion, loss terms, missing modalities, slices, init, parameter counts."""

import re

import pytest
import torch

from mmdiag import create_model
from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.io.checkpoint import save_weights
from mmdiag.models.layers.input_norm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY
from mmdiag.models.peft import trainable_parameter_report

S = 28  # tiny_dinov2: patch 14 -> 2x2 grid, 1 [CLS] + 4 patches


def _spec(**modalities):
    mods = {m: {"kind": "image", "channels": c, "size": [S, S]} for m, c in modalities.items()}
    return DatasetSpec.model_validate({"name": "toy", "modalities": mods, "tasks": {
        "dx": {"type": "multiclass", "classes": ["a", "b", "c"]},
        "findings": {"type": "multilabel", "classes": ["f1", "f2"]}}})


SPEC2 = _spec(photo=3, scope=1)
SPEC3 = _spec(axial=3, coronal=12, sagittal=4)  # RGB, 4 RGB slices, 4 grey slices


def _inputs(spec, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(b, v.channels, S, S, generator=g) for m, v in spec.modalities.items()}


def _ei(spec=SPEC2, **kw):
    torch.manual_seed(0)
    return create_model("ei", spec=spec, vfm="tiny_dinov2", **kw).eval()


def test_outputs_and_weighted_loss_terms():
    model = _ei(SPEC2, prior_modality="scope")
    out = model(_inputs(SPEC2))
    assert out["dx"].shape == (3, 3) and out["findings"].shape == (3, 2)
    terms = out[AUX_KEY]
    assert set(terms) == {"primary_photo", "primary_scope", "aux_photo", "aux_scope"}
    assert {n: w for n, (w, _) in terms.items()} == {"primary_photo": 1.0, "primary_scope": 1.0, "aux_photo": 0.3,
                                                     "aux_scope": 0.3}
    assert all(z["dx"].shape == (3, 3) and z["findings"].shape == (3, 2) for _, z in terms.values())
    weight, gate = out[AUX_LOSS_KEY]["gate"]
    assert weight == 0.1 and gate.ndim == 0 and gate > 0
    assert AUX_LOSS_KEY not in _ei(SPEC2)(_inputs(SPEC2))  # no prior, no gate loss
    custom = _ei(SPEC2, aux_weight=0.5, gate_weight=0.2, prior_modality="photo")(_inputs(SPEC2))
    assert custom[AUX_KEY]["aux_photo"][0] == 0.5 and custom[AUX_LOSS_KEY]["gate"][0] == 0.2


def test_fusion_is_the_gate_weighted_sum_of_primary_predictions_and_gate_loss_is_ce_on_prior():
    model = _ei(SPEC2, prior_modality="scope")
    x = _inputs(SPEC2)
    out = model(x)
    br = model.forward_branches(x)
    cls = {m: br.tokens[m][:, :, 0].mean(1) for m in model.modalities}
    alpha = model.gate(torch.cat([cls["photo"], cls["scope"]], 1)).softmax(1)
    expected = alpha[:, :1] * model.primary["photo"].heads(cls["photo"])["dx"] + \
        alpha[:, 1:] * model.primary["scope"].heads(cls["scope"])["dx"]
    torch.testing.assert_close(out["dx"], expected)
    torch.testing.assert_close(out[AUX_KEY]["primary_scope"][1]["dx"], model.primary["scope"].heads(cls["scope"])["dx"])
    torch.testing.assert_close(out[AUX_LOSS_KEY]["gate"][1], -alpha[:, 1].log().mean())


def test_detached_fusion_trains_only_the_gate_through_the_fused_loss():
    for detach, reaches_heads in ((True, False), (False, True)):
        model = _ei(SPEC2, detach_fusion=detach).train()
        model(_inputs(SPEC2))["dx"].sum().backward()
        assert model.gate.weight.grad is not None
        assert (model.primary["photo"].heads.heads["dx"].weight.grad is not None) == reaches_heads


@pytest.mark.parametrize("int_layer", [0, 1])
def test_int_tokens_join_the_target_sequence_at_the_configured_layer(int_layer):
    model = _ei(SPEC3, int_layer=int_layer)
    seen, aux_len = {}, []

    def record(i):
        def hook(mod, args):
            seen[i] = args[0].shape[1]
        return hook

    hooks = [blk.register_forward_pre_hook(record(i)) for i, blk in enumerate(model.primary["axial"].encoder.vit.blocks)]
    hooks.append(model.aux["axial"].encoder.vit.blocks[1].register_forward_pre_hook(
        lambda mod, args: aux_len.append(args[0].shape[1]) and None))
    x = _inputs(SPEC3, b=2)
    with_int = model(x)["dx"]
    base = 1 + 4  # [CLS] + 2x2 patches
    assert seen == {i: base + (2 if i >= int_layer else 0) for i in range(2)}  # 2 references -> 2 [INT] tokens
    assert aux_len == [base]  # auxiliary VFMs see no [INT]
    seen.clear()
    tokens = model.forward_branches(x, intervene=False).tokens
    assert seen == {0: base, 1: base} and tokens["axial"].shape == (2, 1, base, 32)
    for h in hooks:
        h.remove()
    br = model.forward_branches(x)
    assert not torch.allclose(br.tokens["axial"], tokens["axial"])  # [INT] changes the target's embedding
    assert with_int.shape == (2, 3)


def test_int_source_layer_takes_the_normalised_cls_of_that_block():
    model = _ei(SPEC2, int_source_layer=1)
    grabbed = []
    model.aux["scope"].encoder.vit.blocks[0].register_forward_hook(lambda mod, args, out: grabbed.append(out[:, 0]))
    x = _inputs(SPEC2)
    source = model.forward_branches(x).int_source["scope"]
    torch.testing.assert_close(source, model.aux["scope"].encoder.vit.norm(grabbed[0]))
    last = _ei(SPEC2).forward_branches(x).int_source["scope"]
    final = model.aux["scope"].encode(x["scope"])[0][:, 0, 0]
    torch.testing.assert_close(last, final)
    for bad in ({"int_layer": 2}, {"int_layer": -1}, {"int_source_layer": 0}, {"int_source_layer": 3}):
        with pytest.raises(ConfigError, match=f"model.options.{next(iter(bad))}"):
            _ei(SPEC2, **bad)


def test_only_adapters_heads_int_adapters_and_gate_train():
    model = _ei(SPEC2).train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    pattern = re.compile(r"\.(experts|router)\.|\.heads\.|^int_adapters\.|^gate\.")
    assert trainable and all(pattern.search(n) for n in trainable), [n for n in trainable if not pattern.search(n)]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(".encoder.vit." in n for n in frozen) and any("base_layer" in n for n in frozen)
    assert {n.split(".")[0] for n in trainable} == {"aux", "primary", "int_adapters", "gate"}
    out = model(_inputs(SPEC2))
    loss = out["dx"].sum() + sum(w * sum(z.sum() for z in t.values()) for w, t in out[AUX_KEY].values())
    # B = 0 at init: push the heads/adapters once so that every adapter parameter receives a gradient
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    report = trainable_parameter_report(model)
    assert report["method"] == "mor" and report["adapter_layers"] == {"MoR": 2 * 2 * 2 * 2}
    assert report["trainable"] == report["adapter"] + report["head"] == len(torch.nn.utils.parameters_to_vector(
        [p for p in model.parameters() if p.requires_grad]))
    frozen_vfm = _ei(SPEC2, vfm_peft="lp")
    assert {n.split(".")[0] for n, p in frozen_vfm.named_parameters() if p.requires_grad} == {
        "aux", "primary", "int_adapters", "gate"}
    assert all(".heads." in n for n, p in frozen_vfm.named_parameters() if p.requires_grad and ".encoder.vit." not in n
               and n.startswith(("aux", "primary")))


@pytest.mark.parametrize("method,layers", [("lora", {"LoRALinear": 16}), ("loramoe", {"LoRAMoE": 16}),
                                           ("vpt", {"VPTBlock": 8})])
def test_other_peft_methods_inside_ei(method, layers):  # Table 8 compares LoRA / LoRAMoE / MoR / frozen inside EI
    model = _ei(SPEC2, vfm_peft=method)  # 2 modalities x 2 VFMs x 2 blocks (x fc1, fc2)
    assert trainable_parameter_report(model)["adapter_layers"] == layers
    assert model(_inputs(SPEC2))["dx"].shape == (3, 3)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "patch_embed" in n or ".norm1." in n)


@pytest.mark.parametrize("method", ["mor", "lora", "vpt"])
def test_grad_checkpointing_keeps_outputs_and_gradients(method):
    """Every VFM block (with its adapters and the [INT] tokens it carries) is recomputed, nothing else changes."""
    plain = _ei(SPEC2, vfm_peft=method, prior_modality="photo").train()
    ckpt = _ei(SPEC2, vfm_peft=method, prior_modality="photo", grad_checkpointing=True).train()
    assert all(b.grad_checkpointing for v in (*ckpt.aux.values(), *ckpt.primary.values()) for b in v.encoder.vit.blocks)
    with torch.no_grad():  # B = 0 at init would leave the adapters' A matrices without gradient
        for p in plain.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    ckpt.load_state_dict(plain.state_dict())
    inputs = _inputs(SPEC2)
    present = {"photo": torch.tensor([True, True, False]), "scope": torch.tensor([True, False, True])}
    grads = []
    for model in (plain, ckpt):
        out = model(inputs, present)
        loss = out["dx"].square().sum() + out[AUX_LOSS_KEY]["gate"][1]
        loss = loss + sum(w * sum(z.square().sum() for z in t.values()) for w, t in out[AUX_KEY].values())
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        if model is plain:
            expected = out
    torch.testing.assert_close(out["dx"], expected["dx"])
    torch.testing.assert_close(out[AUX_KEY], expected[AUX_KEY])
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[0].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_missing_modality_content_is_ignored_and_takes_no_gate_weight():
    model = _ei(SPEC2, prior_modality="scope")
    x = _inputs(SPEC2)
    present = {"photo": torch.tensor([True, True, False]), "scope": torch.tensor([True, False, False])}
    noisy = {**x, "scope": torch.cat([x["scope"][:1], torch.rand(2, 1, S, S)])}
    a, b = model(x, present), model(noisy, present)
    torch.testing.assert_close(a["dx"][1:], b["dx"][1:])  # scope missing in cases 1 and 2
    for name, (_, terms) in a[AUX_KEY].items():
        torch.testing.assert_close(terms["dx"][1:] if "scope" in name else terms["dx"],
                                   b[AUX_KEY][name][1]["dx"][1:] if "scope" in name else b[AUX_KEY][name][1]["dx"])
    # case 1 has only the photo: the fused prediction is the photo's primary prediction, computed without [INT]
    alone = model.primary["photo"].encode(x["photo"][1:2])[0][:, :, 0].mean(1)
    torch.testing.assert_close(a["dx"][1:2], model.primary["photo"].heads(alone)["dx"])
    assert torch.equal(a["dx"][2], torch.zeros(3))  # nothing present
    assert torch.equal(a[AUX_KEY]["aux_scope"][1]["dx"][1:], torch.zeros(2, 3))
    # the gate loss averages over the cases that have the prior modality (case 0 only)
    single = model({m: v[:1] for m, v in x.items()})
    torch.testing.assert_close(a[AUX_LOSS_KEY]["gate"][1], single[AUX_LOSS_KEY]["gate"][1])


def test_missing_reference_adds_no_int_token_to_that_case():
    model = _ei(SPEC3)
    lengths = []
    model.primary["axial"].encoder.vit.blocks[0].register_forward_pre_hook(
        lambda m, a: lengths.append(tuple(a[0].shape[:2])) and None)
    x = _inputs(SPEC3, b=3)
    present = {"axial": torch.tensor([True, True, True]), "coronal": torch.tensor([True, False, False]),
               "sagittal": torch.tensor([True, True, False])}
    out = model(x, present)["dx"]
    assert sorted(lengths) == [(1, 5), (1, 6), (1, 7)]  # one case each with 0, 1 and 2 [INT] tokens
    lengths.clear()
    solo = model({m: v[2:] for m, v in x.items()}, {m: p[2:] for m, p in present.items()})["dx"]
    torch.testing.assert_close(out[2:], solo)


def test_slices_are_encoded_one_by_one_and_max_pooled_in_the_unimodal_model():
    torch.manual_seed(0)
    spec = _spec(stack=6)  # two RGB slices
    model = create_model("ei_unimodal", spec=spec, modality="stack", vfm="tiny_dinov2").eval()
    assert tuple(model.encoder.layout[:2]) == (2, 3)
    x = torch.rand(2, 6, S, S)
    norm = [model.encoder.input_norm(x[:, 3 * i: 3 * i + 3]) for i in range(2)]
    per_slice = [model.heads(model.encoder.vit.forward_features(n)[:, 0])["dx"] for n in norm]
    torch.testing.assert_close(model({"stack": x})["dx"], torch.maximum(*per_slice))
    grey = create_model("ei_unimodal", spec=_spec(g=4), modality="g", vfm="tiny_dinov2")
    assert tuple(grey.encoder.layout[:2]) == (4, 1)
    assert grey.encoder.to_slices(torch.rand(2, 4, S, S)).shape == (8, 3, S, S)
    vol = DatasetSpec.model_validate({"name": "v", "modalities": {"v": {"kind": "volume", "size": [3, S, S]}},
                                      "tasks": {"dx": {"type": "binary", "classes": ["n", "p"]}}})
    vm = create_model("ei_unimodal", spec=vol, modality="v", vfm="tiny_dinov2")
    assert vm.encoder.num_slices == 3 and vm({"v": torch.rand(2, 1, 3, S, S)})["dx"].shape == (2, 2)
    with pytest.raises(ConfigError, match=r"slices.stack=4.*6 channels"):
        create_model("ei_unimodal", spec=spec, modality="stack", vfm="tiny_dinov2", slices={"stack": 4})


def test_inputs_are_normalised_with_clip_statistics_inside_the_model():
    model = _ei(SPEC2)
    x = torch.rand(2, 3, S, S)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model.aux["photo"].encoder.to_slices(x), (x - mean) / std)
    grey = torch.rand(2, 1, S, S)
    torch.testing.assert_close(model.aux["scope"].encoder.to_slices(grey), (grey.expand(-1, 3, -1, -1) - mean) / std)
    normed = DatasetSpec.model_validate({**SPEC2.model_dump(), "modalities": {
        "photo": {"kind": "image", "size": [S, S], "mean": [0.5] * 3, "std": [0.2] * 3},
        "scope": {"kind": "image", "channels": 1, "size": [S, S]}}})
    with pytest.raises(ConfigError, match=r"'photo' is already normalised.*input_norm=none"):
        _ei(normed)
    _ei(normed, input_norm="none")


def test_clip_vfm_is_built_for_the_input_size_from_the_base_checkpoint(tmp_path):
    spec = DatasetSpec.model_validate({**SPEC2.model_dump(), "modalities": {
        m: {"kind": "image", "channels": c, "size": [32, 32]} for m, c in (("photo", 3), ("scope", 1))}})
    torch.manual_seed(0)
    published = create_model("tiny_clip", num_classes=0)  # 64 px: 4x4 position grid
    save_weights(published, tmp_path / "clip.safetensors")
    model = create_model("ei", spec=spec, vfm="tiny_clip", vfm_options={"act_layer": "gelu"},
                         vfm_checkpoint=str(tmp_path / "clip.safetensors"))
    for branch in (model.aux["photo"], model.primary["scope"]):
        assert branch.encoder.vit.grid_size == (2, 2) and branch.encoder.vit.pos_embed.shape == (1, 5, 32)
        torch.testing.assert_close(branch.encoder.vit.patch_embed.proj.weight, published.patch_embed.proj.weight)
        torch.testing.assert_close(branch.encoder.vit.blocks[1].mlp.fc2.base_layer.weight, published.blocks[1].mlp.fc2.weight)
    assert model({m: torch.rand(2, v.channels, 32, 32) for m, v in spec.modalities.items()})["dx"].shape == (2, 3)


def test_configuration_errors_name_the_option():
    with pytest.raises(ConfigError, match=r"two or more image modalities.*\['photo'\].*'record'"):
        create_model("ei", spec=DatasetSpec.model_validate({**SPEC2.model_dump(), "modalities": {
            "photo": {"kind": "image"}, "record": {"kind": "tabular", "fields": {"age": {"type": "numeric"}}}}}))
    with pytest.raises(ConfigError, match="prior_modality names 'skin'"):
        _ei(SPEC2, prior_modality="skin")
    with pytest.raises(ConfigError, match=r"model 'ei' has no option 'lr'"):
        _ei(SPEC2, lr=1)
    with pytest.raises(ConfigError, match="vfm=.medmamba_t. is a MedMamba.*ViT"):
        create_model("ei", spec=SPEC2, vfm="medmamba_t")
    with pytest.raises(ConfigError, match="already has peft method 'mor'"):
        create_model("ei", spec=SPEC2, vfm="tiny_dinov2", peft="lora")


def test_init_from_unimodal_runs(tmp_path):
    torch.manual_seed(1)
    uni = create_model("ei_unimodal", spec=SPEC2.restrict(["photo"]), modality="photo", vfm="tiny_dinov2")
    with torch.no_grad():
        for p in uni.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # as if trained (MoR's B leaves zero)
    save_weights(uni, tmp_path / "model.safetensors")
    model = _ei(SPEC2, init_runs={"photo": str(tmp_path)})
    uni_state = uni.state_dict()
    for k, v in model.aux["photo"].state_dict().items():
        torch.testing.assert_close(v, uni_state[k], msg=k)
    primary = model.primary["photo"].state_dict()
    for k, v in uni_state.items():
        if k.startswith("vfm."):
            torch.testing.assert_close(primary[k], v, msg=k)
    assert not torch.equal(primary["heads.heads.dx.weight"], uni_state["heads.heads.dx.weight"])  # fresh heads
    assert model.primary["photo"].heads.heads["dx"].weight.requires_grad
    assert not model.primary["photo"].encoder.vit.blocks[0].mlp.fc1.base_layer.weight.requires_grad
    with pytest.raises(CheckpointError, match="does not fit UnimodalVFM"):
        _ei(SPEC2, init_runs={"photo": str(tmp_path)}, vfm_peft="lora")
    with pytest.raises(ConfigError, match="init_runs names 'ct'"):
        _ei(SPEC2, init_runs={"ct": str(tmp_path)})


# Tables 3, 5 and 8 of the paper: EI's trainable parameters (DINOv2 ViT-B/14, MoR on mlp.fc1/fc2; M modalities,
# C classes). MMC-AMD M=2 C=4, Derm7pt M=2 C=5, MRNet M=3 C=3 (multi-label).
def _count(m, c, peft):
    spec = DatasetSpec.model_validate({"name": "x", "modalities": {f"m{i}": {"kind": "image", "size": [448, 448]}
                                                                   for i in range(m)},
                                       "tasks": {"y": {"type": "multiclass", "classes": [str(i) for i in range(c)]}}})
    with torch.device("meta"):
        model = create_model("ei", spec=spec, vfm="dinov2_vitb14_reg", vfm_peft=peft)
    return trainable_parameter_report(model)["trainable"]


def test_trainable_counts_match_the_paper():
    mor = [_count(2, 4, "mor"), _count(2, 5, "mor"), _count(3, 3, "mor")]
    assert mor == [7_099_026, 7_102_102, 12_423_765]
    assert [round(n / 1e5) / 10 for n in mor] == [7.1, 7.1, 12.4]  # Table 5
    assert round(sum(mor) / 3 / 1e5) / 10 == 8.9  # Tables 3 and 8 (MoR)
    frozen = [_count(2, 4, "lp"), _count(2, 5, "lp"), _count(3, 3, "lp")]
    assert round(sum(frozen) / 3 / 1e5) / 10 == 2.0  # Table 8 "Frozen": [INT] adapters, heads and gate
