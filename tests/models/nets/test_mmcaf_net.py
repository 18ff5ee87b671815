"""MMCAF-Net: module parameter counts of the notes, stages and their weight hand-over, frozen parts, presence,
the one-token attention degeneracy and the multi-token mode."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mmdiag import create_model
from mmdiag.data.schema import CategoricalField, DatasetSpec, NumericField, TabularModality, TaskSpec, VolumeModality
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.models.fusion.msca import BSF, MSCA
from mmdiag.models.nets.mmcaf_net import record_columns

SPEC = DatasetSpec(name="toy", modalities={
    "ct": VolumeModality(channels=1, size=(12, 32, 32)),
    "record": TabularModality(fields={"age": NumericField(), "sex": CategoricalField(values=("F", "M")),
                                      "t_stage": NumericField()})},
    tasks={"diagnosis": TaskSpec(type="binary", classes=("A", "G"))})


def _x(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"ct": torch.rand(b, 1, 12, 32, 32, generator=g), "record": torch.randn(b, 6, generator=g)}


def _n(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_model_counts_match_the_notes():
    with torch.device("meta"):
        model = create_model("mmcaf_net", num_classes=2)
    pyr = model.image.pyramid
    assert [_n(m.cab) for m in pyr.msca] == [8192, 32768, 131072]
    assert [_n(m.dcfb) for m in pyr.msca] == [345088, 1214464, 4526080]  # notes: 0.35M / 1.21M / 4.53M
    assert [_n(u) for u in pyr.ucb] == [146176, 554496] and _n(pyr.sab) == 686
    assert _n(model.tabular) == 1680 and _n(model.fusion) == 4848
    assert model.heads.heads["diagnosis"].in_features == 24


def test_record_columns_drop_missing_flags():
    assert record_columns(SPEC.modalities["record"], False) == [0, 2, 3, 4]
    assert record_columns(SPEC.modalities["record"], True) == [0, 1, 2, 3, 4, 5]


def test_forward_backward_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = create_model("tiny_mmcaf_net", spec=SPEC, fusion_tokens="pyramid")
    out = model(_x())["diagnosis"]
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    out.sum().backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("image.") for n in trainable)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_single_token_attention_is_value_plus_query():
    torch.manual_seed(0)
    msca = MSCA().eval()
    img, tab = torch.randn(3, 1, 24), torch.randn(3, 1, 24)
    msca(img, tab).sum().backward()
    grad = msca.attn[0].qkv.weight.grad  # rows [q; k; v]
    v_grad = grad[48:].abs().max()
    for rows in (grad[:24], grad[24:48]):  # softmax over one key is 1: zero up to rounding
        assert rows.abs().max() < 1e-5 * v_grad
    attn = msca.attn[0]
    q, c = torch.randn(3, 1, 24), torch.randn(3, 1, 24)
    torch.testing.assert_close(attn(q, context=c), F.linear(c, attn.qkv.weight[48:], attn.qkv.bias[48:]))


def test_multi_token_attention_trains_queries_and_keys():
    torch.manual_seed(0)
    msca = MSCA().eval()
    msca(torch.randn(3, 4, 24), torch.randn(3, 1, 24)).sum().backward()
    grad = msca.attn[0].qkv.weight.grad
    assert grad[:24].abs().max() > 0 and grad[24:48].abs().max() > 0


def test_bsf_formula():
    torch.manual_seed(0)
    bsf = BSF(12)
    x, y = torch.randn(2, 12), torch.randn(2, 6)
    xa, ya = bsf.align_x(x), bsf.align_y(y)
    a = torch.exp(xa * ya) / torch.exp(xa * ya).sum(-1, keepdim=True)
    torch.testing.assert_close(bsf(x, y), xa * (1 + a) + ya * (1 + a))


def test_missing_record_does_not_depend_on_its_tensor():
    torch.manual_seed(0)
    model = create_model("tiny_mmcaf_net", spec=SPEC).eval()
    x = _x()
    present = {"ct": torch.tensor([True, True]), "record": torch.tensor([False, True])}
    a = model(x, present)["diagnosis"]
    x["record"][0] = 100.0
    torch.testing.assert_close(model(x, present)["diagnosis"], a)


def test_frozen_parts_stay_in_eval_mode_unless_asked():
    model = create_model("tiny_mmcaf_net", spec=SPEC)
    assert not model.image.training and model.fusion.training  # from construction on
    model.train()
    assert not model.image.training and model.fusion.training
    authors = create_model("tiny_mmcaf_net", spec=SPEC, frozen_mode="train").train()
    assert authors.image.backbone.training


def test_stages_hand_over_weights(tmp_path):
    torch.manual_seed(0)
    penet = create_model("tiny_mmcaf_net", spec=SPEC, stage="penet")
    assert penet.modalities == ("ct",) and penet.num_features == 64
    save_file(penet.state_dict(), tmp_path / "model.safetensors")
    image = create_model("tiny_mmcaf_net", spec=SPEC, stage="image", init_run=str(tmp_path))
    for k, v in penet.image.backbone.state_dict().items():
        torch.testing.assert_close(image.image.backbone.state_dict()[k], v)
    assert not any(p.requires_grad for p in image.image.backbone.parameters())
    (tmp_path / "s2").mkdir()
    save_file(image.state_dict(), tmp_path / "s2" / "model.safetensors")
    fused = create_model("tiny_mmcaf_net", spec=SPEC, stage="fusion", init_run=str(tmp_path / "s2"))
    x = _x()["ct"]
    torch.testing.assert_close(fused.image.eval()(x), image.image.eval()(x))


def test_init_run_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="init_run"):
        create_model("tiny_mmcaf_net", spec=SPEC, stage="image", init_run=str(tmp_path))
    save_file({"heads.heads.diagnosis.weight": torch.zeros(2, 24)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        create_model("tiny_mmcaf_net", spec=SPEC, stage="fusion", init_run=str(tmp_path))


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="stage='pe'"):
        create_model("tiny_mmcaf_net", spec=SPEC, stage="pe")
    with pytest.raises(ConfigError, match="volume modalities"):
        create_model("tiny_mmcaf_net", spec=SPEC.restrict(["record"]))


def test_four_classes():
    spec = SPEC.model_copy(update={"tasks": {"diagnosis": TaskSpec(type="multiclass", classes=("A", "B", "E", "G"))}})
    assert create_model("tiny_mmcaf_net", spec=spec).eval()(_x())["diagnosis"].shape == (2, 4)
