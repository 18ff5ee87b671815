"""Every registered model: builds, runs without NaN, reaches every trainable parameter, round-trips safetensors."""

import inspect

import pytest
import torch
from safetensors.torch import load, save

from mmdiag import create_model, list_models
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import MmdiagError
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY
from mmdiag.registry import MODELS

SPEC = synthetic(n_cases=20).spec
VOLUME_FAMILIES = ("mmcaf_net", "mmcaf_baselines")  # CT + record models: contract tested in tests/models/nets/
MULTIMODAL = [n for n in list_models(include_hidden=True) if "spec" in inspect.signature(MODELS.get(n)).parameters
              and MODELS.get(n).__module__.rsplit(".", 1)[-1] not in VOLUME_FAMILIES]
IMAGE = [n for n in list_models("tiny_*") if n not in MULTIMODAL and not MODELS.tags(n)["multimodal"]]


def _x(b=2):
    return {"clinical": torch.rand(b, 3, 32, 32), "dermoscopy": torch.rand(b, 3, 32, 32), "record": torch.randn(b, 9)}


def _build(name):
    """Tiny settings: foundation-model families get a 2-block ViT and the image modalities only (they take images)."""
    fn = MODELS.get(name)
    params = inspect.signature(fn).parameters
    options, spec = {}, SPEC
    if fn.__module__.rsplit(".", 1)[-1] in ("ei", "vfm_baselines"):
        options["vfm"], spec = "tiny_dinov2", SPEC.restrict(["clinical", "dermoscopy"])
    if "modality" in params and params["modality"].default is inspect.Parameter.empty:
        options["modality"] = "clinical"
    return create_model(name, spec=spec, **options)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_multimodal_contract(name):
    torch.manual_seed(0)
    model = _build(name)
    out = model(_x())
    assert torch.isfinite(out["diagnosis"]).all() and out["diagnosis"].shape == (2, 8)
    total = out["diagnosis"].sum()  # plus the auxiliary terms: some branches learn only through them (EI)
    total = total + sum(v.sum() for _, logits in out.get(AUX_KEY, {}).values() for v in logits.values())
    total = total + sum(w * v for w, v in out.get(AUX_LOSS_KEY, {}).values())
    total.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _x_fixed():
    g = torch.Generator().manual_seed(1)
    return {"clinical": torch.rand(2, 3, 32, 32, generator=g), "dermoscopy": torch.rand(2, 3, 32, 32, generator=g),
            "record": torch.randn(2, 9, generator=g)}


@pytest.mark.parametrize("name", MULTIMODAL)
def test_multimodal_safetensors_round_trip(name):
    torch.manual_seed(0)
    model = _build(name).eval()
    buf = save({k: v.contiguous() for k, v in model.state_dict().items()})
    torch.manual_seed(1)
    copy = _build(name).eval()
    copy.load_state_dict(load(buf))
    torch.testing.assert_close(model(_x_fixed())["diagnosis"], copy(_x_fixed())["diagnosis"])


@pytest.mark.parametrize("name", IMAGE)
def test_image_classifier_contract(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
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
