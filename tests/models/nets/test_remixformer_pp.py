"""RemixFormer++ whole net: every modality subset, presence mask, metadata branch, option errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mmdiag.data.schema import CategoricalField, DatasetSpec, ImageModality, TabularModality, TaskSpec
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models import create_model
from mmdiag.models.nets.remixformer_pp import CrossModalUnit, MetadataBranch

TINY_D = dict(window_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, region_depth=1, num_templates=4,
              chunk_size=3)
TINY_C = dict(patch_size=16, embed_dim=48, depth=1, num_heads=2)
SPEC = DatasetSpec(
    name="toy",
    modalities={"clinical": ImageModality(size=(64, 64)), "dermoscopy": ImageModality(size=(64, 64)),
                "record": TabularModality(fields={"sex": CategoricalField(values=("f", "m")),
                                                  "site": CategoricalField(values=("a", "b", "c"))})},
    tasks={"diag": TaskSpec(type="multiclass", classes=("x", "y", "z")),
           "pn": TaskSpec(type="binary", classes=("abs", "typ"))})


def _model(use: str, **kw):
    torch.manual_seed(0)
    return create_model("remixformer_pp", spec=SPEC, use=use, clinical_branch="vit", clinical_options=TINY_C,
                        dermoscopy_options=TINY_D, fusion_dim=32, fusion_heads=4, **kw).eval()


def _inputs(b: int = 4):
    g = torch.Generator().manual_seed(1)
    rec = torch.zeros(b, 5)
    rec[torch.arange(b), torch.arange(b) % 2] = 1
    rec[torch.arange(b), 2 + torch.arange(b) % 3] = 1
    return {"clinical": torch.rand(b, 3, 64, 64, generator=g), "dermoscopy": torch.rand(b, 3, 64, 64, generator=g),
            "record": rec}


@pytest.mark.parametrize("use,slots", [("C", 1), ("D", 1), ("M", 1), ("CD", 2), ("CM", 2), ("DM", 2), ("CDM", 4)])
def test_every_subset_from_one_class(use, slots):
    m = _model(use)
    assert m.num_features == 32 * slots
    out = m(_inputs())
    assert out["diag"].shape == (4, 3) and out["pn"].shape == (4, 2)
    assert set(m.modalities) == {{"C": "clinical", "D": "dermoscopy", "M": "record"}[k] for k in use}


@pytest.mark.parametrize("missing", ["clinical", "dermoscopy", "record"])
def test_missing_modality_tensor_does_not_change_the_output(missing):
    m = _model("CDM")
    x = _inputs()
    present = {k: torch.ones(4, dtype=torch.bool) for k in x}
    present[missing] = torch.tensor([True, False, True, False])
    a = m(x, present)
    y = dict(x)
    y[missing] = x[missing].clone()
    y[missing][~present[missing]] = torch.randn_like(y[missing][~present[missing]]) * 5
    b = m(y, present)
    for t in a:
        torch.testing.assert_close(a[t], b[t])
    # the present cases still read their tensor, and a missing case differs from the same case present
    c = m(x)
    assert not torch.allclose(a["diag"][1], c["diag"][1])
    y[missing][0] += 1
    assert not torch.allclose(m(y, present)["diag"][0], a["diag"][0])


def test_metadata_branch_statistics_ignore_missing_rows():
    torch.manual_seed(0)
    m = MetadataBranch(5, 8).train()
    x = torch.rand(6, 5)
    present = torch.tensor([True, True, False, True, False, True])
    out = m(x, present)
    ref = MetadataBranch(5, 8).train()
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(out[present], ref(x[present]))
    assert torch.equal(out[~present], torch.zeros(2, 8))


def test_cross_modal_unit_matches_manual_attention():
    torch.manual_seed(0)
    u = CrossModalUnit(8, 2).eval()
    q, k = torch.randn(3, 8), torch.randn(3, 5, 8)
    out = u(q, k, torch.tensor([True, True, False]))
    qn, kn = u.norm(q), u.norm(k)
    w, b = u.attn.qkv.weight, u.attn.qkv.bias
    qq = (qn @ w[:8].t() + b[:8]).reshape(3, 2, 4)
    kk = (kn @ w[8:16].t() + b[8:16]).reshape(3, 5, 2, 4)
    vv = (kn @ w[16:].t() + b[16:]).reshape(3, 5, 2, 4)
    a = torch.softmax(torch.einsum("bhd,blhd->bhl", qq, kk) / 2.0, -1)
    att = u.proj(u.attn.proj(torch.einsum("bhl,blhd->bhd", a, vv).reshape(3, 8)))
    torch.testing.assert_close(out[:2], qn[:2] + att[:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[2], qn[2])


def test_option_errors_name_the_key():
    with pytest.raises(ConfigError, match="use='CX'"):
        _model("CX")
    spec = SPEC.restrict(["clinical", "record"])
    with pytest.raises(ConfigError, match="dermoscopy"):
        create_model("remixformer_pp", spec=spec, use="CD", clinical_branch="vit")
    with pytest.raises(ConfigError, match="clinical_branch"):
        create_model("remixformer_pp", spec=spec, use="C", clinical_branch="resnet")
    m = create_model("remixformer_pp", spec=spec, clinical_branch="vit", clinical_options=TINY_C, fusion_dim=32,
                     fusion_heads=4)
    assert m.use == "CM"


def test_with_the_cls_swin_clinical_branch_missing_images_are_ignored():
    from mmdiag.models.backbones.remixformer_clinical import _TINY

    torch.manual_seed(0)
    m = create_model("remixformer_pp", spec=SPEC, use="CDM", clinical_branch="cls_swin", clinical_options=_TINY,
                     dermoscopy_options=TINY_D, fusion_dim=32, fusion_heads=4).eval()
    x = _inputs(3)
    present = {k: torch.tensor([True, False, True]) for k in x}
    a = m(x, present)
    y = {k: v.clone() for k, v in x.items()}
    for k in y:
        y[k][1] = torch.rand_like(y[k][1])
    b = m(y, present)
    torch.testing.assert_close(a["diag"], b["diag"])
    assert m.clinical.num_features == 128 and isinstance(m.proj["C"], torch.nn.Linear)


def test_multihead_attention_runs_load_and_keep_their_outputs(tmp_path):
    """Runs written when CMF units held an ``nn.MultiheadAttention`` load strictly (``checkpoint_filter_fn``) and
    every unit gives the earlier output, computed with ``nn.MultiheadAttention`` on the same weights."""
    model = _model("CDM")
    state = dict(model.state_dict())
    mhas = {}
    for slot in model.cmf.units:
        p = f"cmf.units.{slot}.attn."
        for k in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
            del state[p + k]
        mhas[slot] = nn.MultiheadAttention(32, 4, batch_first=True).eval()
        torch.nn.init.normal_(mhas[slot].in_proj_bias)
        state.update({p + k: v for k, v in mhas[slot].state_dict().items()})
    assert len(mhas) == 4 and any(k.endswith("attn.in_proj_weight") for k in state)
    save_file(state, tmp_path / "model.safetensors")
    load_checkpoint(model, tmp_path / "model.safetensors")  # strict: every key converted
    g = torch.Generator().manual_seed(2)
    q, keys = torch.randn(3, 32, generator=g), torch.randn(3, 6, 32, generator=g)
    for slot, unit in model.cmf.units.items():
        qn, kn = unit.norm(q).unsqueeze(1), unit.norm(keys)
        want = qn[:, 0] + unit.proj(mhas[slot](qn, kn, kn, need_weights=False)[0])[:, 0]
        torch.testing.assert_close(unit(q, keys, torch.ones(3, dtype=torch.bool)), want, rtol=1e-5, atol=1e-6)
