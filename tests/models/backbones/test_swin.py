"""Swin / CLS-Swin: forward against an independent loop reference (shift regions, padding, class token, S^attn),
padded-vs-unpadded agreement, official and timm checkpoint layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmdiag import create_model
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.models.backbones.swin import SwinBlock, SwinTransformer, checkpoint_filter_fn
from mmdiag.models.layers.windows import window_attention_mask

LAYOUTS = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts"


# ----------------------------------------------------------------------------------------------------------------------
# Reference: per window, the keys are listed explicitly (real tokens of the same shift region); no masks, no padding.

def _region(hp, wp, ws, shift):
    """Region label of each position of the rolled (shifted) frame, as in the Swin paper's Fig. 4."""
    lab = torch.zeros(hp, wp, dtype=torch.long)
    if shift:
        cut = lambda n: [0] * (n - ws) + [1] * (ws - shift) + [2] * shift  # noqa: E731
        lab = torch.tensor(cut(hp))[:, None] * 3 + torch.tensor(cut(wp))[None, :]
    return lab


def ref_block(p, x, cls, ws, shift, heads):
    """One block on ``x`` (H, W, C) and optional ``cls`` (C,); returns (x, cls, S^attn or None)."""
    h, w, c = x.shape
    d = c // heads
    shift = shift if min(h, w) > ws else 0
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    ln = lambda t, n: F.layer_norm(t, (c,), p[f"{n}.weight"], p[f"{n}.bias"])  # noqa: E731
    xn = ln(x, "norm1")
    qkv = lambda t: F.linear(t, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(*t.shape[:-1], 3, heads, d)  # noqa
    q, k, v = qkv(xn).unbind(-3)  # (H, W, heads, d)
    table = p["attn.relative_position_bias_table"]
    region = _region(hp, wp, ws, shift)
    # original coordinates of every real token, and their position in the rolled, padded frame
    coords = [(i, j) for i in range(h) for j in range(w)]
    rolled = {(i, j): ((i - shift) % hp, (j - shift) % wp) for i, j in coords}
    out = torch.zeros(h, w, c)
    if cls is not None:
        cn = ln(cls, "norm1")
        qc, kc, vc = qkv(cn).unbind(-3)  # (heads, d)
    for (i, j) in coords:
        ri, rj = rolled[(i, j)]
        keys = [(a, b) for (a, b) in coords if rolled[(a, b)][0] // ws == ri // ws and rolled[(a, b)][1] // ws == rj // ws
                and region[rolled[(a, b)]] == region[ri, rj]]
        heads_out = []
        for hd in range(heads):
            logits, vals = [], []
            if cls is not None:
                logits.append(q[i, j, hd] @ kc[hd] / d ** 0.5)
                vals.append(vc[hd])
            for (a, b) in keys:
                ra, rb = rolled[(a, b)]
                dy, dx = ri % ws - ra % ws, rj % ws - rb % ws
                bias = table[(dy + ws - 1) * (2 * ws - 1) + dx + ws - 1, hd]
                logits.append(q[i, j, hd] @ k[a, b, hd] / d ** 0.5 + bias)
                vals.append(v[a, b, hd])
            heads_out.append(torch.stack(logits).softmax(0) @ torch.stack(vals))
        out[i, j] = torch.cat(heads_out)
    proj = lambda t: F.linear(t, p["attn.proj.weight"], p["attn.proj.bias"])  # noqa: E731
    mlp = lambda t: F.linear(F.gelu(F.linear(t, p["mlp.fc1.weight"], p["mlp.fc1.bias"])),  # noqa: E731
                             p["mlp.fc2.weight"], p["mlp.fc2.bias"])
    x = x + proj(out)
    x = x + mlp(ln(x, "norm2"))
    s_attn = None
    if cls is not None:
        kall, vall, qall = k.reshape(h * w, heads, d), v.reshape(h * w, heads, d), q.reshape(h * w, heads, d)
        o1 = torch.einsum("hd,nhd->hn", qc, kall) / d ** 0.5
        self_l = (qc * kc).sum(-1, keepdim=True) / d ** 0.5
        att = torch.cat([self_l, o1], 1).softmax(1)
        zc = att[:, :1] * vc + torch.einsum("hn,nhd->hd", att[:, 1:], vall)
        o2 = torch.einsum("nhd,hd->hn", qall, kc) / d ** 0.5
        s_attn = (o1.softmax(1) * o2.softmax(1)).mean(0).reshape(h, w)
        cls = cls + proj(zc.reshape(c))
        cls = cls + mlp(ln(cls, "norm2"))
    return x, cls, s_attn


def ref_swin(sd, img, cfg):
    """Whole network on one image ``(3, H, W)`` from a state dict in mmdiag (timm) names."""
    ws, heads = cfg["window_size"], cfg["num_heads"]
    x = F.pad(img, (0, -img.shape[-1] % 4, 0, -img.shape[-2] % 4))
    x = F.conv2d(x[None], sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)[0].permute(1, 2, 0)
    x = F.layer_norm(x, x.shape[-1:], sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"])
    cls = sd["cls_token"][0, 0] if "cls_token" in sd else None
    s_attn = None
    for s, depth in enumerate(cfg["depths"]):
        if s:
            x = F.pad(x, (0, 0, 0, x.shape[1] % 2, 0, x.shape[0] % 2))
            x = torch.cat([x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]], -1)
            pre = f"layers.{s}.downsample."
            x = F.linear(F.layer_norm(x, x.shape[-1:], sd[pre + "norm.weight"], sd[pre + "norm.bias"]),
                         sd[pre + "reduction.weight"])
            if cls is not None:
                cls = F.linear(cls, sd[f"layers.{s}.cls_downsample.weight"], sd[f"layers.{s}.cls_downsample.bias"])
        for b in range(depth):
            pre = f"layers.{s}.blocks.{b}."
            p = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            x, cls, s_attn = ref_block(p, x, cls, ws, 0 if b % 2 == 0 else ws // 2, heads[s])
    x = F.layer_norm(x, x.shape[-1:], sd["norm.weight"], sd["norm.bias"])
    if cls is not None:
        cls = F.layer_norm(cls, cls.shape, sd["norm.weight"], sd["norm.bias"])
    return x, cls, s_attn


TINY = dict(window_size=4, num_heads=(1, 2, 2, 4), depths=(2, 2, 2, 2))


@pytest.mark.parametrize("name,size", [("tiny_swin", (64, 64)), ("tiny_swin", (44, 60)),
                                       ("tiny_swin_cls", (64, 64)), ("tiny_swin_cls", (52, 36))])
def test_forward_matches_loop_reference(name, size):
    """Window-multiple grids (16x16: shifted stage 1, stage 4 at 2x2 padded to the window) and grids that need
    padding in every stage; the reference only ever attends to real tokens, so agreement shows that padded keys
    receive zero attention, that the shift regions are right and that the [CLS] follows eqs. 1-5."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial LayerNorm / bias values
            p.add_(0.05 * torch.randn_like(p))
    img = torch.randn(1, 3, *size)
    sd = model.state_dict()
    with torch.no_grad():
        x, cls, s_attn = model.forward_tokens(img, scores=name.endswith("cls"))
        rx, rcls, rs = ref_swin(sd, img[0], TINY)
    torch.testing.assert_close(x[0], rx, atol=1e-4, rtol=1e-4)
    if cls is not None:
        torch.testing.assert_close(cls[0, 0], rcls, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s_attn[0], rs, atol=1e-6, rtol=1e-4)
        logits = model.forward_head(model.forward_features(img))
        torch.testing.assert_close(logits[0], F.linear(rcls, sd["head.fc.weight"], sd["head.fc.bias"]),
                                   atol=1e-4, rtol=1e-4)


def test_padded_window_equals_unpadded():
    """A W-MSA block on a 4x6 map (second window padded to 4x4) gives, on its first 4x4 window, exactly the result
    on the 4x4 map alone; and padded keys get -inf (zero attention) only from real queries."""
    torch.manual_seed(0)
    blk = SwinBlock(8, 2, window_size=4, shift_size=0).eval()
    x = torch.randn(1, 4, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(blk(x)[0][:, :, :4], blk(x[:, :, :4])[0])
    mask = window_attention_mask(4, 6, 4, 8, 4, 0)
    pad_cols = torch.tensor([j % 4 >= 2 for j in range(16)])
    assert torch.isinf(mask[1][~pad_cols][:, pad_cols]).all() and (mask[1][pad_cols] == 0).all()
    assert (mask[0] == 0).all()


def test_shift_mask_matches_official_values():
    """The official shift mask: -100 between different regions, 0 within (8x8 map, window 4, shift 2)."""
    mask = window_attention_mask(8, 8, 8, 8, 4, 2)
    region = _region(8, 8, 4, 2)
    lab = region.reshape(2, 4, 2, 4).permute(0, 2, 1, 3).reshape(4, 16)
    expected = torch.where(lab[:, :, None] == lab[:, None, :], 0.0, -100.0)
    torch.testing.assert_close(mask, expected)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint layouts

def _synth(layout: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    info = json.loads((LAYOUTS / f"{layout}_swin_tiny_patch4_window7_224.json").read_text())
    buffers = info.get("non_float_or_buffer_entries", {})
    out = {}
    for k, shape in info["state_dict"].items():
        if buffers.get(k, {}).get("dtype") == "int64":
            out[k] = torch.randint(0, 169, shape, generator=generator)
        else:
            out[k] = torch.randn(shape, generator=generator) * 0.02
    return out


def _official_to_timm_by_hand(sd):
    """The documented renames, written out independently of the converter."""
    out = {}
    for k, v in sd.items():
        if k.endswith("relative_position_index") or k.endswith("attn_mask"):
            continue
        for i in range(3):
            k = k.replace(f"layers.{i}.downsample.", f"LAYERS.{i + 1}.downsample.")
        out[k.replace("LAYERS.", "layers.").replace("head.", "head.fc.")] = v
    return out


@pytest.mark.slow
def test_official_and_timm_layouts_load_strictly(tmp_path):
    g = torch.Generator().manual_seed(0)
    official = _synth("official", g)
    assert any(k.endswith("attn_mask") for k in official)  # buffers present in the file, ignored by the loader
    torch.save({"model": official}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    timm_sd = _official_to_timm_by_hand(official)
    assert set(timm_sd) == set(json.loads((LAYOUTS / "timm_swin_tiny_patch4_window7_224.json").read_text())["state_dict"])
    torch.save(timm_sd, tmp_path / "timm.pth")
    a = create_model("swin_t", num_classes=1000, checkpoint=tmp_path / "swin_tiny_patch4_window7_224.pth").eval()
    b = create_model("swin_t", num_classes=1000, checkpoint=tmp_path / "timm.pth").eval()
    for k, v in timm_sd.items():
        torch.testing.assert_close(a.state_dict()[k], v)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_official_layout_fits_cls_swin_without_head():
    """CLS-Swin without classifier takes the official file: buffers and head dropped, class-token parts fresh."""
    official = _synth("official", torch.Generator().manual_seed(0))
    with torch.device("meta"):
        model = SwinTransformer(class_token=True, num_classes=0)
    state = checkpoint_filter_fn(official, model)
    own = model.state_dict()
    assert set(state) == set(own) and all(state[k].shape == own[k].shape for k in own)
    assert state["layers.2.downsample.reduction.weight"] is official["layers.1.downsample.reduction.weight"]


def test_wrong_window_size_names_the_key(tmp_path):
    torch.save(_synth("timm", torch.Generator().manual_seed(0)), tmp_path / "timm.pth")
    with pytest.raises(CheckpointError, match="relative_position_bias_table"):
        create_model("swin_t", num_classes=1000, window_size=8, checkpoint=tmp_path / "timm.pth")


def test_bad_input_and_options():
    model = create_model("tiny_swin", num_classes=2)
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="class_token=True"):
        model.forward_tokens(torch.randn(1, 3, 32, 32), scores=True)
    with pytest.raises(ConfigError, match="same length"):
        create_model("tiny_swin", num_classes=2, depths=(2, 2))


def test_intermediates_are_channels_first():
    model = create_model("tiny_swin_cls", num_classes=0)
    maps = model.forward_intermediates(torch.randn(1, 3, 40, 40), indices=2)
    assert [tuple(m.shape) for m in maps] == [(1, 64, 3, 3), (1, 128, 2, 2)]
