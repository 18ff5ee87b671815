"""Every registered model through the model contract (``mmdiag.models.contract``): builds, runs without NaN,
reaches every trainable parameter, ``forward_features`` has ``num_features`` columns, explain layers exist,
round-trips safetensors."""

import inspect

import pytest
import torch
from safetensors.torch import load, save

from mmdiag import create_model, list_models
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import MmdiagError
from mmdiag.models._registry import model_options
from mmdiag.models.contract import ImageModel, MultimodalModel
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY

SPEC = synthetic(n_cases=20).spec
MULTIMODAL = list_models(include_hidden=True, multimodal=True)
IMAGE = list_models("tiny_*", multimodal=False)
VOLUME_SPEC = synthetic(n_cases=20, with_volume=True, volume_size=(12, 32, 32)).spec.restrict(["ct", "record"])
VOLUME = {  # CT + record families (MMCAF-Net's table): built on a CT window with a tiny PENet
    "mmcaf_net": {"backbone": "tiny_penet"}, "mmcaf_cross_attention": {"backbone": "tiny_penet"},
    "mmcaf_clip": {"backbone": "tiny_penet"}, "tiny_mmcaf_net": {}, "daft": {}, "mmtm": {"backbone": "tiny_penet"}}


def _x(spec, b=2, seed=None):
    """A batch for ``spec``: images / volumes in [0, 1], records standard normal."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return {m: (torch.randn(b, mod.width, generator=g) if mod.kind == "tabular"
                else torch.rand(b, *mod.shape, generator=g)) for m, mod in spec.modalities.items()}


TINY = {  # families whose defaults are paper-sized get tiny settings that fit 32 x 32 inputs
    "remixformer_pp": dict(clinical_branch="vit", clinical_options=dict(patch_size=16, embed_dim=48, depth=1,
                                                                        num_heads=2),
                           dermoscopy_options=dict(window_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                                   region_depth=1, num_templates=4),
                           fusion_dim=32, fusion_heads=4),
}


def _build(name):
    """Tiny settings: foundation-model families get a 2-block ViT and the image modalities only (they take images)."""
    valid = model_options(name)
    options, spec = dict(TINY.get(name, {})), SPEC
    if name in VOLUME:
        options, spec = dict(VOLUME[name]), VOLUME_SPEC
    if "vfm" in valid:
        options["vfm"], spec = "tiny_dinov2", SPEC.restrict(["clinical", "dermoscopy"])
    if valid.get("modality", None) is inspect.Parameter.empty:
        options["modality"] = "clinical"
    return create_model(name, spec=spec, **options)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_multimodal_contract(name):
    torch.manual_seed(0)
    model = _build(name)
    assert isinstance(model, MultimodalModel) and set(model.modalities) <= set(model.spec.modalities)
    out = model(_x(model.spec))
    assert torch.isfinite(out["diagnosis"]).all() and out["diagnosis"].shape == (2, 8)
    with torch.no_grad():
        assert model.forward_features(_x(model.spec)).shape == (2, model.num_features)
    modules = dict(model.named_modules())
    assert all(layer in modules for layer in model.explain_layers.values()), model.explain_layers
    total = out["diagnosis"].sum()  # plus the auxiliary terms: some branches learn only through them (EI)
    total = total + sum(v.sum() for _, logits in out.get(AUX_KEY, {}).values() for v in logits.values())
    total = total + sum(w * v for w, v in out.get(AUX_LOSS_KEY, {}).values())
    total.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_multimodal_safetensors_round_trip(name):
    torch.manual_seed(0)
    model = _build(name).eval()
    buf = save({k: v.contiguous() for k, v in model.state_dict().items()})
    torch.manual_seed(1)
    copy = _build(name).eval()
    copy.load_state_dict(load(buf))
    torch.testing.assert_close(model(_x(model.spec, seed=1))["diagnosis"], copy(_x(model.spec, seed=1))["diagnosis"])


@pytest.mark.parametrize("name", IMAGE)
def test_image_classifier_contract(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    assert isinstance(model, ImageModel) and model.explain_layer in dict(model.named_modules())
    size = {"tiny_dinov2": 28, "tiny_dinov2_reg": 28, "tiny_clip": 64}.get(name, 32)  # CLIP: fixed at build
    x = torch.rand(2, 3, size, size)
    if getattr(model, "output_fmt", "") == "NCDHW":  # volume models (PENet)
        model = create_model(name, num_classes=3, in_chans=3)
        x = torch.rand(2, 3, 8, size, size)
    y = model(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (2, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_unknown_model_name():
    with pytest.raises(MmdiagError, match="did you mean"):
        create_model("medmamba_tt", num_classes=2)
