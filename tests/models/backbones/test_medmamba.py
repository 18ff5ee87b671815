"""MedMamba: official parameter counts, state-dict layouts, strict weight loading, model contract, ablations, MACs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

import mmdiag.models.layers.ss2d as ss2d_module
from mmdiag import create_model, list_models
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models.backbones.medmamba import MedMamba, SSConvSSM, channel_shuffle, count_macs

LAYOUTS = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts"


def layout(variant: str) -> list[tuple[str, list[int]]]:
    return [(k, shape) for k, shape in json.loads((LAYOUTS / f"medmamba_{variant}.json").read_text())["state_dict"]]


def meta_model(name: str, **kwargs) -> MedMamba:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_state(spec: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    """A state dict with exactly ``spec``'s keys and shapes and random values (valid BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in spec:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out


def spec_of(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


# --- Parameter counts and layouts (meta device: no memory, no init cost) -------------------------------------------

@pytest.mark.parametrize(
    "name,num_classes,expected",
    [
        ("medmamba_t", 1000, 15_221_608),
        ("medmamba_s", 1000, 19_389_544),
        ("medmamba_b", 1000, 40_883_688),
        ("medmamba_t", 7, 14_457_991),
        ("medmamba_s", 7, 18_625_927),
        ("medmamba_b", 6, 39_864_838),
    ],
)
def test_parameter_counts_equal_official_code(name, num_classes, expected):
    assert n_params(meta_model(name, num_classes=num_classes)) == expected


@pytest.mark.parametrize(
    "kwargs,expected",
    [(dict(depths=(2, 2, 12, 2), dims=96), 23_557_480), (dict(depths=(2, 2, 16, 2), dims=128), 48_144_872)],
)
def test_paper_table1_s_b_counts_come_from_deeper_stage3(kwargs, expected):
    """The paper's S 23.5M / B 48.1M are the official code with 4 more stage-3 blocks (module docstring)."""
    assert n_params(meta_model("medmamba", **kwargs)) == expected


@pytest.mark.parametrize("variant", ["t", "s", "b"])
def test_state_dict_layout_equals_official(variant):
    assert spec_of(meta_model(f"medmamba_{variant}")) == layout(variant)


# --- Loading weights -----------------------------------------------------------------------------------------------

def test_official_t_checkpoint_loads_strictly_from_both_formats(tmp_path):
    """T is built once: through create_model from .safetensors, then the same loader reads a .pth into it."""
    spec = layout("t")
    sd_st, sd_pth = random_state(spec, 0), random_state(spec, 1)
    save_file(sd_st, tmp_path / "t.safetensors")
    torch.save(sd_pth, tmp_path / "t.pth")
    model = create_model("medmamba_t", checkpoint=tmp_path / "t.safetensors").eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd_st.items())
    x = torch.randn(1, 3, 32, 32)
    out = model(x)
    load_checkpoint(model, tmp_path / "t.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd_pth.items())
    model.load_state_dict(sd_st, strict=True)
    assert out.shape == (1, 1000) and torch.equal(model(x), out)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_create_model_checkpoint_equals_load_state_dict(tmp_path, fmt):
    sd = random_state(spec_of(create_model("tiny_medmamba")), seed=2)
    path = tmp_path / f"w.{fmt}"
    save_file(sd, path) if fmt == "safetensors" else torch.save({"model": sd}, path)
    loaded = create_model("tiny_medmamba", checkpoint=path).eval()
    reference = create_model("tiny_medmamba").eval()
    reference.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)


def test_bad_checkpoint_error_names_file_and_keys(tmp_path):
    sd = create_model("tiny_medmamba").state_dict()
    sd["layers.0.blocks.0.self_attention.A_log"] = sd.pop("layers.0.blocks.0.self_attention.A_logs")
    sd["norm.weight"] = torch.ones(128)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        create_model("tiny_medmamba", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): layers.0.blocks.0.self_attention.A_logs" in msg
    assert "unexpected keys (2): layers.0.blocks.0.self_attention.A_log, norm.weight" in msg


def test_other_num_classes_reinitialises_head(tmp_path, caplog):
    sd = random_state(spec_of(create_model("tiny_medmamba", num_classes=10)), seed=3)
    path = tmp_path / "w.safetensors"
    save_file(sd, path)
    with caplog.at_level(logging.INFO, logger="mmdiag.io.checkpoint"):
        model = create_model("tiny_medmamba", num_classes=3, checkpoint=path).eval()
    assert "re-initialised" in caplog.text
    own = model.state_dict()
    assert own["head.weight"].shape == (3, 128) and own["head.bias"].shape == (3,)
    assert all(torch.equal(own[k], v) for k, v in sd.items() if not k.startswith("head."))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


# --- Model contract ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs,size,expected_map",
    [
        (dict(), (32, 32), (128, 1, 1)),
        (dict(num_classes=4), (64, 96), (128, 2, 3)),
        (dict(in_chans=1), (36, 44), (128, 1, 1)),  # odd 9x11 grid: patch merging drops the last row/column
        (dict(patch_size=2, dims=8, num_classes=2), (16, 16), (64, 1, 1)),
    ],
)
def test_forward_shapes(kwargs, size, expected_map):
    model = create_model("tiny_medmamba", **kwargs).eval()
    x = torch.randn(2, kwargs.get("in_chans", 3), *size)
    feats = model.forward_features(x)
    assert feats.shape == (2, *expected_map) and model.num_features == expected_map[0]
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()


def test_bad_input_and_options_raise():
    model = create_model("tiny_medmamba")
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        model(torch.randn(1, 3, 34, 32))
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\), got shape \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="block_variant must be one of"):
        create_model("tiny_medmamba", block_variant="split")
    with pytest.raises(ConfigError, match="same length"):
        create_model("medmamba", depths=(1, 1), dims=(8, 16, 32))


def test_official_constructor_kwargs():
    kwargs = dict(drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.2, patch_norm=False, scan_impl="ref")
    model = create_model("medmamba", depths=[1, 1, 1, 1], dims=16, d_state=4, num_classes=5, in_chans=1, **kwargs)
    model.eval()
    assert model.dims == [16, 32, 64, 128] and model.num_classes == 5
    assert isinstance(model.patch_embed.norm, torch.nn.Identity)
    ss2ds = [m for m in model.modules() if isinstance(m, ss2d_module.SS2D)]
    assert len(ss2ds) == 4 and all(m.scan_impl == "ref" and m.d_state == 4 for m in ss2ds)
    rates = [blk.drop_path.drop_prob for stage in model.layers for blk in stage.blocks]
    assert rates == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_model("tiny_medmamba", num_classes=3, drop_path_rate=0.0).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # Conv biases right before a training-mode BatchNorm get a zero gradient by construction; all else must move.
    before_bn = (".conv33conv33conv11.1.bias", ".conv33conv33conv11.4.bias")
    zero = [n for n, p in model.named_parameters() if not n.endswith(before_bn) and not p.grad.abs().sum() > 0]
    assert not zero


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = create_model("tiny_medmamba", num_classes=3, drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_forward_intermediates():
    model = create_model("tiny_medmamba").eval()
    x = torch.randn(2, 3, 64, 32)
    feats = model.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 8), (2, 32, 8, 4), (2, 64, 4, 2), (2, 128, 2, 1)]
    assert [info["num_chs"] for info in model.feature_info] == [16, 32, 64, 128]
    torch.testing.assert_close(feats[-1], model.forward_features(x))
    picked = model.forward_intermediates(x, indices=[0, 2])
    torch.testing.assert_close(picked[1], feats[2])
    assert [f.shape[1] for f in model.forward_intermediates(x, indices=2)] == [64, 128]
    with pytest.raises(ValueError, match="indices must select stages 0..3"):
        model.forward_intermediates(x, indices=[4])


def test_reset_classifier():
    model = create_model("tiny_medmamba").eval()
    x = torch.randn(1, 3, 32, 32)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (1, 128)
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    model.reset_classifier(7)
    assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7


def test_tiny_variant_is_hidden():
    assert "tiny_medmamba" not in list_models("*medmamba*")
    assert {"medmamba", "medmamba_t", "medmamba_s", "medmamba_b"} <= set(list_models("medmamba*"))
    assert "tiny_medmamba" in list_models(include_hidden=True)


# --- Table 7 ablation variants -------------------------------------------------------------------------------------

def test_ablation_variants_parameter_counts_match_table7():
    """MedMamba-T rows of Table 7 (3 classes): SSM 16.2M, SSM+Conv 51.6M, +SP 14.5M, +SF 14.5M."""
    counts = {v: n_params(meta_model("medmamba_t", num_classes=3, block_variant=v))
              for v in ("ssm", "ssm_conv", "ssm_conv_split", "full")}
    assert counts == {"ssm": 16_146_339, "ssm_conv": 51_550_179, "ssm_conv_split": 14_454_915, "full": 14_454_915}
    assert counts["ssm_conv"] > counts["ssm"] > counts["full"] == counts["ssm_conv_split"]


@pytest.mark.parametrize("variant", ["ssm", "ssm_conv", "ssm_conv_split", "full"])
def test_ablation_variants_run(variant):
    model = create_model("tiny_medmamba", block_variant=variant, num_classes=2).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_channel_shuffle_interleaves_conv_and_ssm_channels():
    torch.manual_seed(0)
    full = SSConvSSM(8, d_state=2, scan_impl="ref").eval()
    no_shuffle = SSConvSSM(8, d_state=2, shuffle=False, scan_impl="ref").eval()
    no_shuffle.load_state_dict(full.state_dict(), strict=True)
    x = torch.randn(2, 3, 5, 8)
    branch_full, branch_cat = full(x) - x, no_shuffle(x) - x
    torch.testing.assert_close(branch_full, channel_shuffle(branch_cat, 2))
    torch.testing.assert_close(branch_full[..., 0::2], branch_cat[..., :4])  # channel 2j = conv branch j
    torch.testing.assert_close(branch_full[..., 1::2], branch_cat[..., 4:])  # channel 2j+1 = SSM branch j
    with pytest.raises(ConfigError, match="shuffle=True needs split=True"):
        SSConvSSM(8, split=False)


# --- MACs ----------------------------------------------------------------------------------------------------------

def test_count_macs_conv_linear_agrees_with_torch_flop_counter(monkeypatch):
    """Hooks count the same conv + Linear + projection MACs as torch's FlopCounterMode (without the scan)."""

    def delta_projection_only(x, dt_raw, dt_weight, *args, **kwargs):
        # The fused kernels apply the Δ projection inside, where FlopCounterMode does not look: count it as the
        # unfused path computes it, and leave out the scan.
        torch.einsum("bhwkr,kdr->bhwkd", dt_raw, dt_weight)
        return torch.zeros_like(x)

    monkeypatch.setattr(ss2d_module, "cross_selective_scan", delta_projection_only)
    # dims 40: every dt_rank > 1 (torch lowers a rank-1 einsum to a multiply, which FlopCounterMode skips).
    model = create_model("tiny_medmamba", dims=40, num_classes=10).eval()
    macs = count_macs(model, img_size=(64, 32))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 32))
    assert counter.get_total_flops() // 2 == macs.conv + macs.linear + macs.ssm_proj
    assert macs.scan > 0 and macs.total == macs.conv_linear + macs.ssm_proj + macs.scan


def test_count_macs_medmamba_t_224(monkeypatch):
    """MedMamba-T at 224²: conv+Linear 2.006G (the paper's 2.0G), total with the scan 2.534G (notes §1b)."""
    # The counts depend on shapes only: skip the sequential scan's 3136 steps on the meta device.
    monkeypatch.setattr(ss2d_module, "cross_selective_scan", lambda x, *args, **kwargs: torch.zeros_like(x))
    macs = count_macs(meta_model("medmamba_t"))
    assert (macs.conv, macs.linear, macs.ssm_proj, macs.scan) == (1_398_781_440, 607_696_896, 236_027_904, 291_723_264)
    assert round(macs.conv_linear / 1e9, 3) == 2.006 and round(macs.total / 1e9, 3) == 2.534


def test_too_small_input_is_a_named_error():
    from mmdiag.errors import ConfigError

    model = create_model("tiny_medmamba", num_classes=2)
    with pytest.raises(ConfigError, match="28x28 is smaller than its total stride 32"):
        model(torch.rand(1, 3, 28, 28))
