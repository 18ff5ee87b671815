"""PEFT family: injection, trainable sets, identity at init, MoR routing, adapter checkpoints, LoRA merge, Table 7."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import mmdiag
from mmdiag.errors import CheckpointError, ConfigError, UnknownNameError
from mmdiag.models.peft import (
    PEFT_METHODS,
    LoRALinear,
    LoRAMoE,
    MoR,
    NoMatchingModuleError,
    VPTBlock,
    adapter_state_dict,
    apply_peft,
    load_adapter_state_dict,
    merge_lora,
    trainable_parameter_report,
)

METHODS = ["lp", "fpt", "vpt", "bitfit", "lora", "loramoe", "mor", "mor_nobypass"]
WIDTH, DEPTH = 32, 2


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT-shaped test model with the module names PEFT targets: [CLS], one register token, 16 patches."""

    classifier_name = "head"

    def __init__(self, dim: int = WIDTH, depth: int = DEPTH, num_classes: int = 3):
        super().__init__()
        self.embed_dim = self.num_features = dim
        self.num_prefix_tokens = 2
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.reg_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        prefix = torch.cat([self.cls_token, self.reg_token], dim=1).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


@pytest.fixture
def base() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _randomise_adapters(model: nn.Module) -> None:
    """Give every trainable tensor random values so that checks cannot pass on zero-initialised adapters."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _expected_trainable(method: str, base_names: list[str]) -> set[str]:
    head = {"head.weight", "head.bias"}
    fcs = [f"blocks.{i}.mlp.{fc}" for i in range(DEPTH) for fc in ("fc1", "fc2")]
    lora_keys = ("lora_A.weight", "lora_B.weight")
    if method == "lp":
        return head
    if method == "fpt":
        return set(base_names)
    if method == "bitfit":
        return head | {n for n in base_names if n.endswith(".bias")}
    if method == "vpt":
        return head | {f"blocks.{i}.prompts" for i in range(DEPTH)}
    if method == "lora":
        return head | {f"{fc}.lora.{k}" for fc in fcs for k in lora_keys}
    return head | {f"{fc}.router.{k}" for fc in fcs for k in ("weight", "bias")} | {
        f"{fc}.experts.{e}.{k}" for fc in fcs for e in range(3) for k in lora_keys}


# --- registry, trainable sets, report ---------------------------------------------------------------------------------


def test_registry_lists_every_method():
    assert sorted(PEFT_METHODS) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_trainable_set_and_report(method, base, images):
    base_names = [n for n, _ in base.named_parameters()]
    model = apply_peft(copy.deepcopy(base), method)
    assert _trainable_names(model) == _expected_trainable(method, base_names)
    report = trainable_parameter_report(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report["method"] == method
    assert report["trainable"] == trainable == report["adapter"] + report["head"]
    assert report["head"] == WIDTH * 3 + 3
    assert report["total"] == sum(p.numel() for p in model.parameters())
    # backward reaches exactly the trainable parameters
    model(images).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable_names(model)


def test_report_counts_match_hand_arithmetic(base):
    mor = trainable_parameter_report(apply_peft(copy.deepcopy(base), "mor"))
    fc1 = 14 * WIDTH + 14 * 4 * WIDTH + 4 * WIDTH + 4      # A's + B's + 4-way router (with bias)
    fc2 = 14 * 4 * WIDTH + 14 * WIDTH + 4 * 4 * WIDTH + 4
    assert mor["adapter"] == DEPTH * (fc1 + fc2)
    assert mor["adapter_layers"] == {"MoR": 2 * DEPTH}
    plain = trainable_parameter_report(copy.deepcopy(base))
    assert plain["method"] is None and plain["adapter"] == 0 and plain["head"] == WIDTH * 3 + 3


# --- identity at init, MoR / LoRAMoE routing ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "loramoe", "mor", "mor_nobypass", "bitfit", "lp", "fpt"])
def test_identity_at_init(method, base, images):
    expected = base(images)
    model = apply_peft(copy.deepcopy(base), method).eval()
    assert torch.equal(model(images), expected)


@pytest.mark.parametrize("method, layer_cls, outputs, offset", [
    ("mor", MoR, 4, 1), ("mor_nobypass", MoR, 3, 0), ("loramoe", LoRAMoE, 3, 0)])
def test_mixture_matches_eq4_reference(method, layer_cls, outputs, offset, base):
    model = apply_peft(copy.deepcopy(base), method)
    _randomise_adapters(model)
    layer = model.blocks[0].mlp.fc1
    assert type(layer) is layer_cls and layer.router.out_features == outputs
    x = torch.randn(2, 5, WIDTH)
    weights = layer.routing_weights(x)
    assert weights.shape == (2, 5, outputs)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    # per-token reference: w = softmax(W_r h + b_r); h' = W h + b + sum_k w_k (alpha_k / r_k) B_k A_k h
    w = torch.softmax(x @ layer.router.weight.T + layer.router.bias, dim=-1)[..., offset:]
    ref = x @ layer.base_layer.weight.T + layer.base_layer.bias
    for k, e in enumerate(layer.experts):
        ref = ref + w[..., k:k + 1] * (x @ e.lora_A.weight.T @ e.lora_B.weight.T) * (e.alpha / e.r)
    torch.testing.assert_close(layer(x), ref)
    if method == "mor":
        assert [e.r for e in layer.experts] == [2, 4, 8] and [e.scaling for e in layer.experts] == [2.0, 2.0, 2.0]


def test_mor_bypass_weight_routes_to_zero_update(base):
    model = apply_peft(copy.deepcopy(base), "mor")
    _randomise_adapters(model)
    layer = model.blocks[1].mlp.fc2
    x = torch.randn(3, 7, 4 * WIDTH)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([1000.0, 0.0, 0.0, 0.0]))  # all mass on the bypass w0
    assert torch.equal(layer.routing_weights(x)[..., 0], torch.ones(3, 7))
    assert torch.equal(layer(x), layer.base_layer(x))
    with torch.no_grad():
        layer.router.bias.copy_(torch.tensor([-1000.0, 0.0, 0.0, 0.0]))  # bypass closed: experts share 1/3 each
    update = sum(e(x) for e in layer.experts) / 3
    torch.testing.assert_close(layer(x), layer.base_layer(x) + update)
    assert update.abs().max() > 1e-3


# --- VPT -------------------------------------------------------------------------------------------------------------


def test_vpt_inserts_prompts_after_prefix_and_removes_them(base, images):
    model = apply_peft(copy.deepcopy(base), "vpt", num_virtual_tokens=3)
    wrapper = model.blocks[1]
    assert isinstance(wrapper, VPTBlock) and wrapper.prompts.shape == (3, WIDTH)
    assert wrapper.attn is wrapper.base_layer.attn  # attributes reach the wrapped block
    seen = {}
    wrapper.base_layer.register_forward_hook(lambda m, a, out: seen.update(inp=a[0], out=out))
    x = torch.randn(2, 18, WIDTH)
    y = wrapper(x)
    assert seen["inp"].shape == (2, 21, WIDTH) and y.shape == x.shape
    torch.testing.assert_close(seen["inp"][:, :2], x[:, :2])
    torch.testing.assert_close(seen["inp"][:, 2:5], wrapper.prompts.expand(2, -1, -1))
    torch.testing.assert_close(seen["inp"][:, 5:], x[:, 2:])
    torch.testing.assert_close(y, torch.cat([seen["out"][:, :2], seen["out"][:, 5:]], dim=1))
    assert model(images).shape == (2, 3)


def test_vpt_needs_token_layout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="token_dim and num_prefix_tokens"):
        apply_peft(model, "vpt", target_modules=["0"], modules_to_save=["1"])
    apply_peft(model, "vpt", target_modules=["0"], modules_to_save=["1"], token_dim=4, num_prefix_tokens=1)
    assert isinstance(model[0], VPTBlock)


# --- injection rules and errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets, exclude, expected", [
    (["qkv"], None, ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]),
    (["blocks.1.mlp.fc2"], None, ["blocks.1.mlp.fc2"]),
    (r"blocks\.0\.attn\.(qkv|proj)", None, ["blocks.0.attn.proj", "blocks.0.attn.qkv"]),
    (["mlp.fc1", "mlp.fc2"], ["blocks.0.mlp.fc1"], ["blocks.0.mlp.fc2", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]),
    (["fc2"], r".*1\.mlp\.fc2", ["blocks.0.mlp.fc2"]),
])
def test_target_matching(targets, exclude, expected, base):
    model = apply_peft(copy.deepcopy(base), "lora", target_modules=targets, exclude_modules=exclude)
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == expected


@pytest.mark.parametrize("targets, exclude, message", [
    (["mlp.fc3"], None, r"\['mlp.fc3'\] matched no module"),
    (["mlp.fc1", "attn.qvk"], None, r"\['attn.qvk'\] matched no module"),
    (r"blocks\.9\..*", None, r"matched no module"),
    (["fc1"], ["fc1"], r"excluded by exclude_modules"),
])
def test_no_matching_module_lists_patterns_and_names(targets, exclude, message, base):
    model = copy.deepcopy(base)
    with pytest.raises(NoMatchingModuleError, match=message) as info:
        apply_peft(model, "lora", target_modules=targets, exclude_modules=exclude)
    assert "blocks.*.mlp.fc1" in str(info.value)
    assert all(p.requires_grad for p in model.parameters())  # model untouched


def test_non_linear_target_raises_and_leaves_model_untouched(base):
    model = copy.deepcopy(base)
    with pytest.raises(ConfigError, match=r"'blocks.0.norm1' is a LayerNorm"):
        apply_peft(model, "mor", target_modules=["fc1", "blocks.0.norm1"])
    assert not any(isinstance(m, LoRAMoE) for m in model.modules())


@pytest.mark.parametrize("method, options, error, message", [
    ("lora", {"r": 0}, ConfigError, r"option 'r' = 0"),
    ("lora", {"rank": 8}, ConfigError, r"unknown option 'rank' \(did you mean 'r'\?\)"),
    ("lora", {"dropout": 1.5}, ConfigError, r"option 'dropout' = 1.5"),
    ("lora", {"target_modules": "blocks.(["}, ConfigError, r"not a valid regular expression"),
    ("lora", {"target_modules": []}, ConfigError, r"option 'target_modules'"),
    ("mor", {"r": [2, 4], "alpha": [4, 8, 16]}, ConfigError, r"'alpha' = \[4.0, 8.0, 16.0\] must give one value"),
    ("loramoe", {"num_experts": -1}, ConfigError, r"option 'num_experts' = -1"),
    ("lroa", {}, UnknownNameError, r"did you mean 'lora'"),
])
def test_bad_options(method, options, error, message, base):
    with pytest.raises(error, match=message):
        apply_peft(base, method, **options)


def test_head_resolution_and_double_application(base):
    model = apply_peft(copy.deepcopy(base), "lora")
    with pytest.raises(ConfigError, match="already has peft method 'lora'"):
        apply_peft(model, "mor")
    with pytest.raises(ConfigError, match=r"'classifier' is not a submodule .*head"):
        apply_peft(copy.deepcopy(base), "lp", modules_to_save=["classifier"])
    with pytest.raises(ConfigError, match="no `classifier_name`"):
        apply_peft(nn.Sequential(nn.Linear(4, 4)), "lp")
    none = apply_peft(copy.deepcopy(base), "lp", modules_to_save=[])
    assert _trainable_names(none) == set()


# --- adapter checkpoints, merge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_adapter_state_dict_round_trip(method, base, images):
    trained = apply_peft(copy.deepcopy(base), method).eval()
    _randomise_adapters(trained)
    state = adapter_state_dict(trained)
    assert set(state) == _trainable_names(trained)
    fresh = apply_peft(copy.deepcopy(base), method).eval()
    load_adapter_state_dict(fresh, st_load(st_save(state)))
    torch.testing.assert_close(fresh(images), trained(images), rtol=0, atol=0)


def test_load_adapter_state_dict_names_bad_keys(base):
    model = apply_peft(copy.deepcopy(base), "lora")
    state = adapter_state_dict(model)
    state.pop("blocks.0.mlp.fc1.lora.lora_A.weight")
    state["blocks.0.mlp.fc9.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(5, WIDTH)
    with pytest.raises(CheckpointError) as info:
        load_adapter_state_dict(model, state)
    text = str(info.value)
    assert "missing keys (1): blocks.0.mlp.fc1.lora.lora_A.weight" in text
    assert "unexpected keys (1): blocks.0.mlp.fc9.weight" in text and "head.weight (5, 32) vs (3, 32)" in text
    with pytest.raises(ConfigError, match="no peft method applied"):
        adapter_state_dict(copy.deepcopy(base))


def test_merge_lora_gives_same_output(base, images):
    model = apply_peft(copy.deepcopy(base), "lora", target_modules=["qkv", "proj", "fc1", "fc2"], alpha=16)
    _randomise_adapters(model)
    model.eval()
    before = model(images)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert type(merged.blocks[0].attn.qkv) is nn.Linear
    assert (before - base(images)).abs().max() > 1e-3  # the adapters did change the output
    torch.testing.assert_close(merged(images), before, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="no LoRA layer to merge .*'mor'"):
        merge_lora(apply_peft(copy.deepcopy(base), "mor"))


# --- paper Table 7 trainable counts on CLIP ViT-B/16 and DINOv2 ViT-B/14 (4 classes) ----------------------------------

TABLE7 = {"lp": 3_076, "vpt": 49_156, "bitfit": 105_988, "lora": 371_716, "loramoe": 1_247_308, "mor": 1_477_732,
          "mor_nobypass": 1_431_628}
TABLE7_K = {"lp": 3, "vpt": 49, "bitfit": 106, "lora": 372, "loramoe": 1_247, "mor": 1_478, "mor_nobypass": 1_432}


@pytest.mark.parametrize("backbone", ["clip_vit_b16", "dinov2_vitb14_reg"])
@pytest.mark.parametrize("method", sorted(TABLE7))
def test_table7_trainable_counts(backbone, method):
    with torch.device("meta"):
        model = mmdiag.create_model(backbone, num_classes=4, peft=method)
    report = trainable_parameter_report(model)
    assert report["trainable"] == TABLE7[method]
    assert round(report["trainable"] / 1000) == TABLE7_K[method]


def test_table7_fpt_count_is_mean_over_resolutions():
    counts = []
    for size in (448, 512, 256):  # MMC-AMD, Derm7pt, MRNet; the position table grows with the grid
        with torch.device("meta"):
            model = mmdiag.create_model("clip_vit_b16", num_classes=4, img_size=size, peft="fpt")
        counts.append(trainable_parameter_report(model)["trainable"])
    assert sum(counts) / 3 == 86_180_356  # Table 7: FPT 86,180K


@pytest.mark.parametrize("method", METHODS)
def test_methods_on_registered_vit_with_registers(method):
    torch.manual_seed(0)
    base = mmdiag.create_model("tiny_dinov2_reg", num_classes=3).eval()  # 5 prefix tokens: [CLS] + 4 registers
    x = torch.randn(2, 3, 56, 56)
    model = apply_peft(copy.deepcopy(base), method).eval()
    out = model(x)
    assert out.shape == (2, 3)
    if method == "vpt":
        assert all(isinstance(b, VPTBlock) and b.num_prefix_tokens == 5 for b in model.blocks)
    else:
        assert torch.equal(out, base(x))


def test_run_level_adapter_checkpoint_covers_every_adapted_part():
    """A model holding two adapted sub-models (as EI does) saves and reloads only their adapters and heads."""
    from mmdiag.models.peft import adapter_checkpoint, load_adapter_checkpoint

    def build(seed):
        torch.manual_seed(seed)
        pair = nn.ModuleDict({"a": mmdiag.create_model("tiny_dinov2", num_classes=2),
                              "b": mmdiag.create_model("tiny_dinov2", num_classes=2)})
        torch.manual_seed(0)  # same base weights in both copies
        for m in pair.values():
            for p in m.parameters():
                p.data.normal_()
        for m in pair.values():
            apply_peft(m, "lora")
        return pair

    src = build(1)
    for p in src.parameters():
        if p.requires_grad:
            p.data.uniform_()
    state, meta = adapter_checkpoint(src)
    assert all(k.startswith(("a.", "b.")) for k in state) and "lora" in meta["peft"]
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in src.parameters() if p.requires_grad)
    dst = load_adapter_checkpoint(build(2), state)
    x = torch.rand(1, 3, 28, 28)
    for k in ("a", "b"):
        torch.testing.assert_close(dst[k](x), src[k](x))
    with pytest.raises(CheckpointError, match="belongs to no PEFT-adapted part"):
        load_adapter_checkpoint(build(2), {"c.x": torch.zeros(1)})
