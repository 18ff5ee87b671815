"""DINOv2 / CLIP Vision Transformer: forward against an independent functional reference, checkpoint layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import mmdiag
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.io.checkpoint import save_weights
from mmdiag.models.layers.attention import Attention
from mmdiag.models.layers.mlp import QuickGELU, get_act_layer

LAYOUTS = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts"

# Structure of each variant, written out here (not read from the model) so the reference stays independent.
DINO = dict(patch=14, eps=1e-6, act="gelu", pre_norm=False, reg=0, ls=True, antialias=False, offset=0.1)
DINO_REG = dict(DINO, reg=4, antialias=True, offset=0.0)
CLIP = dict(patch=16, eps=1e-5, act="quick_gelu", pre_norm=True, reg=0, ls=False, antialias=False, offset=0.0)
CFG = {"tiny_dinov2": dict(DINO, heads=2), "tiny_dinov2_reg": dict(DINO_REG, heads=2), "tiny_clip": dict(CLIP, heads=2),
       "dinov2_vits14": dict(DINO, heads=6)}


# ----------------------------------------------------------------------------------------------------------------------
# Independent reference: plain functional ops on a dict in official-DINOv2 / mmdiag names, explicit softmax attention.

def ref_attention(h, w_qkv, b_qkv, w_o, b_o, heads):
    b, n, c = h.shape
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in F.linear(h, w_qkv, b_qkv).chunk(3, -1))
    att = (q @ k.transpose(-1, -2) / math.sqrt(c // heads)).softmax(-1)
    return F.linear((att @ v).transpose(1, 2).reshape(b, n, c), w_o, b_o)


def ref_pos(pos, grid, cfg):
    m = math.isqrt(pos.shape[1] - 1)
    if grid == (m, m):  # the DINOv2 hub returns the table untouched on its own grid
        return pos
    table = pos[0, 1:].reshape(m, m, -1).permute(2, 0, 1)[None]
    kw = {"scale_factor": tuple((g + cfg["offset"]) / m for g in grid)} if cfg["offset"] else {"size": grid}
    table = F.interpolate(table, mode="bicubic", antialias=cfg["antialias"], **kw)
    return torch.cat([pos[:, :1], table[0].permute(1, 2, 0).reshape(1, grid[0] * grid[1], -1)], 1)


def ref_tokens(c, x, cfg):
    p, eps = cfg["patch"], cfg["eps"]
    x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
    t = F.conv2d(x, c["patch_embed.proj.weight"], c.get("patch_embed.proj.bias"), stride=p)
    grid = tuple(t.shape[-2:])
    t = t.flatten(2).transpose(1, 2)
    width = t.shape[-1]
    t = torch.cat([c["cls_token"].expand(len(t), -1, -1), t], 1) + ref_pos(c["pos_embed"], grid, cfg)
    if cfg["reg"]:
        t = torch.cat([t[:, :1], c["reg_token"].expand(len(t), -1, -1), t[:, 1:]], 1)
    if cfg["pre_norm"]:
        t = F.layer_norm(t, (width,), c["norm_pre.weight"], c["norm_pre.bias"], eps)
    depth = 1 + max(int(k.split(".")[1]) for k in c if k.startswith("blocks."))
    for i in range(depth):
        g = {k.removeprefix(f"blocks.{i}."): v for k, v in c.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(t, (width,), g["norm1.weight"], g["norm1.bias"], eps)
        h = ref_attention(h, g["attn.qkv.weight"], g["attn.qkv.bias"], g["attn.proj.weight"], g["attn.proj.bias"],
                          cfg["heads"])
        t = t + (h * g["ls1.gamma"] if cfg["ls"] else h)
        h = F.linear(F.layer_norm(t, (width,), g["norm2.weight"], g["norm2.bias"], eps), g["mlp.fc1.weight"],
                     g["mlp.fc1.bias"])
        h = F.gelu(h) if cfg["act"] == "gelu" else h * torch.sigmoid(1.702 * h)
        h = F.linear(h, g["mlp.fc2.weight"], g["mlp.fc2.bias"])
        t = t + (h * g["ls2.gamma"] if cfg["ls"] else h)
    return F.layer_norm(t, (width,), c["norm.weight"], c["norm.bias"], eps)


def canonical(name, seed=0, **kwargs):
    """Random weights in mmdiag names (LayerNorm weights near 1) for ``name``'s structure."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        own = mmdiag.create_model(name, **kwargs).state_dict()
    return {k: (1.0 if "norm" in k and k.endswith("weight") else 0.0) + 0.2 * torch.randn(v.shape, generator=g)
            for k, v in own.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Writers: canonical weights -> each published layout (the reverse of what the model's converter does).

def to_official_dinov2(c):
    d = {k: v for k, v in c.items() if k != "reg_token"}
    d["mask_token"] = torch.randn(1, c["cls_token"].shape[-1])
    if "reg_token" in c:
        d["register_tokens"] = c["reg_token"]
    return d


def to_timm_dinov2(c):
    """timm's DINOv2-with-registers layout: [CLS] position row folded into cls_token, pos_embed without it."""
    d = dict(c)
    d["cls_token"] = c["cls_token"] + c["pos_embed"][:, :1]
    d["pos_embed"] = c["pos_embed"][:, 1:]
    return d


def _blocks(c):
    return sorted({int(k.split(".")[1]) for k in c if k.startswith("blocks.")})


def to_hf_dinov2(c, prefix=""):
    d = {"embeddings.cls_token": c["cls_token"], "embeddings.mask_token": torch.randn(1, c["cls_token"].shape[-1]),
         "embeddings.position_embeddings": c["pos_embed"], "layernorm.weight": c["norm.weight"],
         "layernorm.bias": c["norm.bias"],
         "embeddings.patch_embeddings.projection.weight": c["patch_embed.proj.weight"],
         "embeddings.patch_embeddings.projection.bias": c["patch_embed.proj.bias"]}
    if "reg_token" in c:
        d["embeddings.register_tokens"] = c["reg_token"]
    for i in _blocks(c):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            q, k, v = c[f"{b}attn.qkv.{p}"].chunk(3, 0)
            d.update({f"{h}attention.attention.query.{p}": q, f"{h}attention.attention.key.{p}": k,
                      f"{h}attention.attention.value.{p}": v,
                      f"{h}attention.output.dense.{p}": c[f"{b}attn.proj.{p}"],
                      f"{h}norm1.{p}": c[f"{b}norm1.{p}"], f"{h}norm2.{p}": c[f"{b}norm2.{p}"],
                      f"{h}mlp.fc1.{p}": c[f"{b}mlp.fc1.{p}"], f"{h}mlp.fc2.{p}": c[f"{b}mlp.fc2.{p}"]})
        d[f"{h}layer_scale1.lambda1"], d[f"{h}layer_scale2.lambda1"] = c[f"{b}ls1.gamma"], c[f"{b}ls2.gamma"]
    return {prefix + k: v for k, v in d.items()}


def to_openai_clip(c, proj, prefix="visual."):
    d = {"class_embedding": c["cls_token"].reshape(-1), "positional_embedding": c["pos_embed"][0],
         "conv1.weight": c["patch_embed.proj.weight"], "proj": proj.t().contiguous()}
    for p in ("weight", "bias"):
        d[f"ln_pre.{p}"], d[f"ln_post.{p}"] = c[f"norm_pre.{p}"], c[f"norm.{p}"]
        for i in _blocks(c):
            b, r = f"blocks.{i}.", f"transformer.resblocks.{i}."
            d.update({f"{r}attn.in_proj_{p}": c[f"{b}attn.qkv.{p}"], f"{r}attn.out_proj.{p}": c[f"{b}attn.proj.{p}"],
                      f"{r}ln_1.{p}": c[f"{b}norm1.{p}"], f"{r}ln_2.{p}": c[f"{b}norm2.{p}"],
                      f"{r}mlp.c_fc.{p}": c[f"{b}mlp.fc1.{p}"], f"{r}mlp.c_proj.{p}": c[f"{b}mlp.fc2.{p}"]})
    d = {prefix + k: v for k, v in d.items()}
    if prefix:  # a full CLIP archive also holds the text tower
        d.update({"token_embedding.weight": torch.randn(10, 8), "ln_final.weight": torch.ones(8),
                  "logit_scale": torch.tensor(4.6)})
    return d


def to_hf_clip(c, proj=None):
    v = "vision_model."
    d = {f"{v}embeddings.class_embedding": c["cls_token"].reshape(-1),
         f"{v}embeddings.position_embedding.weight": c["pos_embed"][0],
         f"{v}embeddings.patch_embedding.weight": c["patch_embed.proj.weight"],
         f"{v}embeddings.position_ids": torch.arange(c["pos_embed"].shape[1])[None]}
    for p in ("weight", "bias"):
        d[f"{v}pre_layrnorm.{p}"], d[f"{v}post_layernorm.{p}"] = c[f"norm_pre.{p}"], c[f"norm.{p}"]
        for i in _blocks(c):
            b, h = f"blocks.{i}.", f"{v}encoder.layers.{i}."
            q, k, val = c[f"{b}attn.qkv.{p}"].chunk(3, 0)
            d.update({f"{h}self_attn.q_proj.{p}": q, f"{h}self_attn.k_proj.{p}": k, f"{h}self_attn.v_proj.{p}": val,
                      f"{h}self_attn.out_proj.{p}": c[f"{b}attn.proj.{p}"],
                      f"{h}layer_norm1.{p}": c[f"{b}norm1.{p}"], f"{h}layer_norm2.{p}": c[f"{b}norm2.{p}"],
                      f"{h}mlp.fc1.{p}": c[f"{b}mlp.fc1.{p}"], f"{h}mlp.fc2.{p}": c[f"{b}mlp.fc2.{p}"]})
    if proj is not None:
        d["visual_projection.weight"] = proj
        d["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
    return d


def to_timm_clip(c, proj):
    return dict(c, **{"head.weight": proj, "head.bias": torch.zeros(proj.shape[0])})


def _save(state, tmp_path, fmt):
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


PROJ = torch.randn(12, 32)  # a CLIP-style image projection for the 32-wide tiny models

# (model, writer, model kwargs, expects the projection to be loaded)
LAYOUT_CASES = {
    "official_dinov2": ("tiny_dinov2", to_official_dinov2, {}, False),
    "official_dinov2_reg": ("tiny_dinov2_reg", to_official_dinov2, {}, False),
    "timm_dinov2_reg": ("tiny_dinov2_reg", to_timm_dinov2, {}, False),
    "hf_dinov2": ("tiny_dinov2", to_hf_dinov2, {}, False),
    "hf_dinov2_reg_classifier_prefix": ("tiny_dinov2_reg", lambda c: dict(
        to_hf_dinov2(c, "dinov2."), **{"classifier.weight": torch.randn(3, 64)}), {}, False),
    "openai_clip_full": ("tiny_clip", lambda c: to_openai_clip(c, PROJ), {"proj_dim": 12}, True),
    "openai_clip_visual_no_proj": ("tiny_clip", lambda c: to_openai_clip(c, PROJ, prefix=""), {}, False),
    "hf_clip_vision": ("tiny_clip", to_hf_clip, {}, False),
    "hf_clip_with_projection": ("tiny_clip", lambda c: to_hf_clip(c, PROJ), {"proj_dim": 12}, True),
    "timm_clip": ("tiny_clip", lambda c: to_timm_clip(c, PROJ), {"proj_dim": 12}, True),
    "timm_clip_no_proj": ("tiny_clip", lambda c: to_timm_clip(c, PROJ), {}, False),
    "mmdiag_native": ("tiny_dinov2_reg", dict, {}, False),
}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layout_loads_strictly_and_matches_reference(case, fmt, tmp_path):
    name, writer, kwargs, has_proj = LAYOUT_CASES[case]
    canon = canonical(name)
    path = _save(writer(canon), tmp_path, fmt)
    model = mmdiag.create_model(name, num_classes=5, checkpoint=path, **kwargs).eval()
    x = torch.randn(2, 3, 50, 80) if name.startswith("tiny_dinov2") else torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = ref_tokens(canon, x, CFG[name])
        torch.testing.assert_close(tokens, expected, atol=2e-5, rtol=1e-4)
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, expected[:, 0] @ PROJ.t() if has_proj else expected[:, 0],
                                   atol=2e-5, rtol=1e-4)
        assert model(x).shape == (2, 5)


def test_manual_mapping_equals_converted_load(tmp_path):
    """OpenAI CLIP converted by the model == the same weights mapped by hand and loaded with load_state_dict."""
    canon = canonical("tiny_clip", seed=3)
    converted = mmdiag.create_model("tiny_clip", proj_dim=12, checkpoint=_save(to_openai_clip(canon, PROJ),
                                                                               tmp_path, "pth")).eval()
    manual = mmdiag.create_model("tiny_clip", proj_dim=12).eval()
    manual.load_state_dict(dict(canon, **{"projection.weight": PROJ}), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), manual(x), atol=0, rtol=0)


def test_hf_dinov2_first_block_attention_by_hand(tmp_path):
    canon = canonical("tiny_dinov2_reg", seed=1)
    hf = to_hf_dinov2(canon)
    model = mmdiag.create_model("tiny_dinov2_reg", checkpoint=_save(hf, tmp_path, "safetensors")).eval()
    with torch.no_grad():
        h = model.blocks[0].norm1(model.embed(torch.randn(2, 3, 56, 56)))
        a = "encoder.layer.0.attention."
        heads = [F.linear(h, hf[f"{a}attention.{n}.weight"], hf[f"{a}attention.{n}.bias"]).reshape(2, -1, 2, 16)
                 .transpose(1, 2) for n in ("query", "key", "value")]
        probs = torch.softmax(heads[0] @ heads[1].transpose(-1, -2) / 4.0, dim=-1)
        out = F.linear((probs @ heads[2]).transpose(1, 2).reshape(2, -1, 32), hf[f"{a}output.dense.weight"],
                       hf[f"{a}output.dense.bias"])
        torch.testing.assert_close(model.blocks[0].attn(h), out, atol=1e-5, rtol=1e-4)


def test_clip_in_proj_and_hf_qkv_round_trip():
    """OpenAI's packed in_proj and HF's q/k/v land in the same qkv; splitting it gives HF's q/k/v back."""
    canon = canonical("tiny_clip", seed=2)
    model = mmdiag.create_model("tiny_clip")
    from_openai = model.checkpoint_filter_fn(to_openai_clip(canon, PROJ), model)
    hf = to_hf_clip(canon)
    from_hf = model.checkpoint_filter_fn(hf, model)
    for i in range(2):
        qkv = from_openai[f"blocks.{i}.attn.qkv.weight"]
        assert torch.equal(qkv, from_hf[f"blocks.{i}.attn.qkv.weight"])
        for part, n in zip(qkv.chunk(3, 0), "qkv"):
            assert torch.equal(part, hf[f"vision_model.encoder.layers.{i}.self_attn.{n}_proj.weight"])
    assert set(from_openai) == set(from_hf) == set(model.state_dict())


def test_clip_pos_embed_resized_once_at_load(tmp_path):
    """EI trains CLIP at 448/512/256: a 4x4 table loaded into a 6x6 model is resized bicubically without antialias."""
    canon = canonical("tiny_clip", seed=4)
    model = mmdiag.create_model("tiny_clip", img_size=96, checkpoint=_save(to_openai_clip(canon, PROJ), tmp_path,
                                                                          "pth")).eval()
    assert model.pos_embed.shape == (1, 37, 32)
    resized = dict(canon, pos_embed=ref_pos(canon["pos_embed"], (6, 6), CLIP))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), ref_tokens(resized, x, CFG["tiny_clip"]), atol=2e-5,
                                   rtol=1e-4)
    with pytest.raises(ConfigError, match="img_size=96"):
        model(torch.randn(1, 3, 64, 64))


def test_full_size_dinov2_vits14_small_input_matches_reference():
    """The real ViT-S/14 structure at 56x56: 37x37 table interpolated at run time (hub offset 0.1 mode)."""
    model = mmdiag.create_model("dinov2_vits14").eval()
    canon = {k: v + 0.2 * torch.randn(v.shape) if v.numel() < 10**5 else v for k, v in model.state_dict().items()}
    model.load_state_dict(canon)  # random norms, LayerScale, biases and pos_embed; the init's matrices
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(tokens, ref_tokens(canon, x, CFG["dinov2_vits14"]), atol=5e-5, rtol=1e-4)
    assert tokens.shape == (1, 1 + 16, 384) and model.num_features == 384


def test_zero_padding_to_patch_multiple():
    model = mmdiag.create_model("tiny_dinov2_reg").eval()
    x = torch.randn(1, 3, 50, 45)
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(tokens, model.forward_features(F.pad(x, (0, 11, 0, 6))), atol=0, rtol=0)
    assert tokens.shape == (1, 5 + 4 * 4, 32)


def test_ei_token_injection_api():
    """embed -> blocks -> norm reproduces forward_features; appended tokens flow through the blocks."""
    model = mmdiag.create_model("tiny_clip", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.embed(x)
        torch.testing.assert_close(model.forward_tokens(tokens), model.forward_features(x), atol=0, rtol=0)
        extra = torch.cat([tokens, torch.randn(2, 1, 32)], 1)
        out = model.forward_tokens(extra)
    assert out.shape == (2, 1 + 16 + 1, 32)
    assert not torch.allclose(out[:, 0], model.forward_features(x)[:, 0])
    assert model.forward_head(out).shape == (2, 3)


@pytest.mark.parametrize("name,prefix", [("tiny_dinov2", 1), ("tiny_dinov2_reg", 5), ("tiny_clip", 1)])
def test_peft_contract_and_training(name, prefix, tmp_path):
    model = mmdiag.create_model(name, num_classes=4)
    assert model.num_prefix_tokens == prefix and model.classifier_name == "head"
    assert isinstance(model.blocks, nn.ModuleList)
    for blk in model.blocks:
        assert all(isinstance(m, nn.Linear) for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2))
    side = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, side, side)
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    save_weights(model, tmp_path / "w.safetensors")
    again = mmdiag.create_model(name, num_classes=4, checkpoint=tmp_path / "w.safetensors")
    model.eval(), again.eval()
    torch.testing.assert_close(model(x), again(x), atol=0, rtol=0)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)


def test_dropped_keys_are_logged(tmp_path, caplog):
    caplog.set_level("INFO", logger="mmdiag.models.backbones.vit")
    mmdiag.create_model("tiny_dinov2", checkpoint=_save(to_official_dinov2(canonical("tiny_dinov2")), tmp_path, "pth"))
    mmdiag.create_model("tiny_clip", checkpoint=_save(to_openai_clip(canonical("tiny_clip"), PROJ), tmp_path, "pth"))
    assert "dropped mask_token" in caplog.text
    assert "CLIP projection (12, 32) dropped" in caplog.text and "proj_dim=12" in caplog.text
    assert "dropped 3 keys outside 'visual.'" in caplog.text


def test_stochastic_depth_rises_linearly():
    model = mmdiag.create_model("tiny_dinov2", drop_path_rate=0.2, depth=3)
    assert [blk.drop_path.drop_prob for blk in model.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_head_of_other_size_is_reinitialised(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(mmdiag.create_model("tiny_dinov2", num_classes=3), path)
    model = mmdiag.create_model("tiny_dinov2", num_classes=7, checkpoint=path)
    assert model.head.weight.shape == (7, 32)


def test_pretrained_cfg_preprocessing():
    assert mmdiag.create_model("tiny_clip").pretrained_cfg["mean"] == (0.48145466, 0.4578275, 0.40821073)
    cfg = mmdiag.create_model("tiny_dinov2").pretrained_cfg
    assert cfg["std"] == (0.229, 0.224, 0.225) and cfg["input_size"] == (3, 56, 56)


# ----------------------------------------------------------------------------------------------------------------------
# Full-size key/shape maps on the meta device, against the published layouts in tests/fixtures.

META_CASES = [
    ("official_dinov2_vits14_pretrain", "dinov2_vits14", {}),
    ("official_dinov2_vitb14_pretrain", "dinov2_vitb14", {}),
    ("official_dinov2_vits14_reg4_pretrain", "dinov2_vits14_reg", {}),
    ("official_dinov2_vitb14_reg4_pretrain", "dinov2_vitb14_reg", {"num_classes": 2}),
    ("hf_hub_dinov2_small", "dinov2_vits14", {}),
    ("hf_hub_dinov2_base", "dinov2_vitb14", {}),
    ("hf_hub_dinov2_with_registers_base", "dinov2_vitb14_reg", {}),
    ("hf_hub_clip_vit_base_patch16_CLIPVisionModel", "clip_vit_b16", {}),
    ("hf_hub_clip_vit_base_patch16_CLIPVisionModelWithProjection", "clip_vit_b16", {"proj_dim": 512}),
    ("hf_hub_clip_vit_base_patch16_CLIPVisionModelWithProjection", "clip_vit_b16", {"num_classes": 3}),
    ("openai_clip_vit_b16_visual", "clip_vit_b16", {"proj_dim": 512}),
    ("openai_clip_vit_b16_visual", "clip_vit_b16", {}),
    ("timm_vit_base_patch16_clip_224_openai", "clip_vit_b16", {"proj_dim": 512}),
    ("timm_vit_base_patch16_clip_224_openai", "clip_vit_b16", {"img_size": 448}),
]


@pytest.mark.parametrize("layout,name,kwargs", META_CASES, ids=[f"{c[0]}-{c[2]}" for c in META_CASES])
def test_full_size_layout_maps_every_key(layout, name, kwargs):
    spec = json.loads((LAYOUTS / f"{layout}.json").read_text())["state_dict"]
    state = {k: torch.empty(shape, device="meta") for k, shape in spec.items()}
    if "head.bias" in state:  # timm's zero projection bias is inspected, so it must hold values
        state["head.bias"] = torch.zeros(spec["head.bias"])
    with torch.device("meta"):
        model = mmdiag.create_model(name, **kwargs)
    out = model.checkpoint_filter_fn(state, model)
    own = model.state_dict()
    assert sorted(out) == sorted(own)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in own.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Errors and small layers.

def test_incomplete_hf_qkv_names_the_block(tmp_path):
    hf = to_hf_dinov2(canonical("tiny_dinov2"))
    del hf["encoder.layer.1.attention.attention.key.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.1 weight.*\['query', 'value'\]"):
        mmdiag.create_model("tiny_dinov2", checkpoint=_save(hf, tmp_path, "pth"))


def test_wrong_family_checkpoint_lists_keys_and_file(tmp_path):
    path = _save(to_official_dinov2(canonical("tiny_dinov2")), tmp_path, "pth")
    with pytest.raises(CheckpointError, match=r"(?s)ckpt\.pth.*missing keys.*norm_pre"):
        mmdiag.create_model("tiny_clip", checkpoint=path)


def test_bad_inputs_and_options():
    model = mmdiag.create_model("tiny_dinov2")
    with pytest.raises(ConfigError, match=r"in_chans=1"):
        model(torch.randn(1, 1, 56, 56))
    with pytest.raises(ConfigError, match="patch_size=14"):
        mmdiag.create_model("tiny_dinov2", img_size=50)
    with pytest.raises(ConfigError, match="num_heads=5"):
        Attention(32, num_heads=5)
    with pytest.raises(ConfigError, match="quick_gelu"):
        get_act_layer("swish")


def test_quick_gelu_and_attention_layer():
    x = torch.randn(4, 7, 32)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    attn = Attention(32, num_heads=4).eval()
    with torch.no_grad():
        expected = ref_attention(x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias, 4)
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-4)


def test_grad_checkpointing_gives_the_same_gradients():
    import torch

    from mmdiag import create_model

    torch.manual_seed(0)
    plain = create_model("tiny_dinov2_reg", num_classes=3).train()
    ckpt = create_model("tiny_dinov2_reg", num_classes=3, grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 28, 28)
    plain(x).square().sum().backward()
    ckpt(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert all(blk.grad_checkpointing for blk in ckpt.blocks)
    ei = create_model("ei_unimodal", spec=_two_views(), modality="a", vfm="tiny_dinov2", grad_checkpointing=True)
    assert all(blk.grad_checkpointing for blk in ei.encoder.vit.blocks)  # EI's option reaches every VFM block


def _two_views():
    from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec

    return DatasetSpec(name="toy", modalities={"a": ImageModality(size=(28, 28)), "b": ImageModality(size=(28, 28))},
                       tasks={"dx": TaskSpec(type="binary", classes=("no", "yes"))})
