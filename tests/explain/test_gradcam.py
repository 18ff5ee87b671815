"""Grad-CAM / Grad-CAM++: hand computations, MONAI agreement, channels-last MedMamba stages, multimodal inputs."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmdiag import create_model
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import ConfigError, UnknownNameError
from mmdiag.explain.gradcam import (GradCAM, gradcam_panel, infer_layout, overlay_heatmap, save_gradcam_panel,
                                   save_overlay, spatial_layers)
from mmdiag.models._builder import build_for_dataset
from mmdiag.models.contract import MultimodalModel
from mmdiag.models.layers.heads import TaskHeads

SPEC = synthetic(n_cases=20).spec


class _Tiny(nn.Module):
    """conv (1 → K) → global mean → linear: dS_c/dA_kij = W[c, k] / (h w), so both CAMs have closed forms."""

    def __init__(self, channels_last: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.layout = _NHWC() if channels_last else nn.Identity()
        self.fc = nn.Linear(4, 3)
        self.channels_last = channels_last

    def forward(self, x):
        a = self.layout(self.conv(x))
        return self.fc(a.mean((1, 2)) if self.channels_last else a.mean((2, 3)))


class _NHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def _hand(model: _Tiny, x: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        a = model.conv(x)  # (B, K, h, w)
        c = model(x).argmax(1)
    hw = a.shape[2] * a.shape[3]
    g = model.fc.weight[c] / hw  # (B, K): the gradient, constant over positions
    if method == "gradcam":
        w = g
    else:  # a = g² / (2 g² + Σ A g³) at every position, w = Σ_ij a ReLU(g)
        alpha = g**2 / (2 * g**2 + a.sum((2, 3)) * g**3)
        w = hw * alpha * g.clamp_min(0)
    return torch.relu((w[:, :, None, None] * a).sum(1)).detach(), c


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_the_hand_computation(method, channels_last):
    model = _Tiny(channels_last).eval()
    x = torch.rand(3, 1, 6, 10)  # non-square: the channels-last output (B, 6, 10, 4) is recognised by its shape
    layer = "layout" if channels_last else "conv"
    result = GradCAM(model, layer, method=method)(x)
    expected, c = _hand(model, x, method)
    assert result.layout == ("channels_last" if channels_last else "channels_first")
    torch.testing.assert_close(result.raw, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(result.targets, c)
    assert result.maps.shape == (3, 6, 10)
    flat = result.maps.flatten(1)
    assert torch.allclose(flat.max(1).values, torch.ones(3)) and torch.allclose(flat.min(1).values, torch.zeros(3))
    other = GradCAM(model, layer, method=method)(x, target=(c + 1) % 3)
    assert not torch.allclose(other.raw, result.raw)


def _late_fusion():
    torch.manual_seed(0)
    model = create_model("late_fusion", spec=SPEC).eval()
    inputs = {"clinical": torch.rand(2, 3, 32, 32), "dermoscopy": torch.rand(2, 3, 32, 32), "record": torch.randn(2, 9)}
    present = {m: torch.ones(2, dtype=torch.bool) for m in inputs}
    return model, inputs, present


class _OneInput(nn.Module):
    """The late-fusion model as MONAI wants it: one tensor in (the dermoscopy image), one logit tensor out."""

    def __init__(self, model, inputs, present):
        super().__init__()
        self.model, self.inputs, self.present = model, inputs, present

    def forward(self, x):
        return self.model({**self.inputs, "dermoscopy": x}, self.present)["diagnosis"]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_agrees_with_monai_on_one_modality_of_a_multimodal_model(method):
    from monai.visualize import GradCAM as MonaiGradCAM
    from monai.visualize import GradCAMpp as MonaiGradCAMpp

    model, inputs, present = _late_fusion()
    with torch.no_grad():  # MONAI's Grad-CAM++ adds 1e-7 to a ~g² denominator: make g large enough to ignore it
        model.heads["dermoscopy"].heads["diagnosis"].weight.mul_(300)
    # one image: MONAI scores logits[:, argmax of every image] and broadcasts Grad-CAM++'s exp(score) over the width
    inputs = {k: v[:1] for k, v in inputs.items()}
    present = {k: v[:1] for k, v in present.items()}
    ours = GradCAM(model, "encoders.dermoscopy.body.body", modality="dermoscopy", method=method)(inputs, present)
    wrapped = _OneInput(copy.deepcopy(model), inputs, present)  # MONAI leaves hooks on the model it is given
    monai_cls = MonaiGradCAM if method == "gradcam" else MonaiGradCAMpp
    theirs = monai_cls(wrapped, "model.encoders.dermoscopy.body.body").compute_map(inputs["dermoscopy"])[:, 0]
    scale = ours.scores.exp().view(-1, 1, 1) if method == "gradcampp" else 1.0  # MONAI keeps Y = exp(S)
    assert ours.scores.abs().max() < 80  # exp(score) stays finite in float32
    torch.testing.assert_close(ours.raw * scale, theirs, rtol=1e-4, atol=1e-6 * float(theirs.detach().max()))
    assert ours.maps.shape == (1, 32, 32) and ours.modality == "dermoscopy"


def test_layer_followed_by_an_inplace_relu_keeps_its_own_activation():
    torch.manual_seed(0)
    model = create_model("unimodal", spec=SPEC, modality="clinical").eval()
    x = torch.rand(2, 3, 32, 32)
    body = model.encoder.body.body
    a = body[:2](x).detach().requires_grad_(True)  # conv → BatchNorm output (negative values included)
    logits = model.heads(body[2:](a.clone()).flatten(2).mean(-1))["diagnosis"]
    c = logits.argmax(1)
    g = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), a)[0]
    expected = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1)).detach()
    result = GradCAM(model, "encoder.body.body.1")({"clinical": x, "record": torch.zeros(2, 9)})
    assert result.modality == "clinical" and result.layout == "channels_first"
    torch.testing.assert_close(result.raw, expected, rtol=1e-5, atol=1e-6)


def test_medmamba_channels_last_stage_matches_autograd_through_forward_features():
    torch.manual_seed(0)
    net = create_model("tiny_medmamba", num_classes=3).eval()
    x = torch.rand(2, 3, 64, 64)
    a = net.forward_features(x)  # channels-first view of the last stage's channels-last output
    logits = net.forward_head(a)
    c = logits.argmax(1)
    g = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), a)[0]
    expected = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1)).detach()
    result = GradCAM(net, "layers.3")(x)  # the last stage: its output_fmt says channels-last
    assert result.layer == "layers.3" and result.layout == "channels_last"
    torch.testing.assert_close(result.raw, expected, rtol=1e-4, atol=1e-6)
    assert result.maps.shape == (2, 64, 64)


def test_medmamba_in_a_single_image_classifier_by_short_name():
    torch.manual_seed(0)
    model = build_for_dataset(SPEC, "tiny_medmamba", {"modality": "clinical"}).eval()
    inputs = {"clinical": torch.rand(1, 3, 64, 64)}
    result = GradCAM(model, "layers.1.blocks.0", modality="clinical", method="gradcampp")(inputs)
    assert result.layer == "net.layers.1.blocks.0" and result.raw.shape == (1, 8, 8)
    assert torch.isfinite(result.maps).all()


def test_volumes_get_a_3d_map_and_the_overlay_shows_the_middle_slice():
    torch.manual_seed(0)
    spec = synthetic(n_cases=20, with_volume=True, volume_size=(8, 16, 16)).spec
    model = create_model("unimodal", spec=spec, modality="ct").eval()
    ct = torch.rand(2, 1, 8, 16, 16)
    result = GradCAM(model, "encoder.body.body", method="gradcampp")({"ct": ct})
    assert result.layer == "encoder.body.body" and result.maps.shape == (2, 8, 16, 16)
    assert result.raw.shape == (2, 1, 2, 2)  # small_cnn: strides 1, 2, 2, 2
    picture = overlay_heatmap(ct[0], result.maps[0], min_side=0)
    np.testing.assert_array_equal(picture, overlay_heatmap(ct[0, :, 4], result.maps[0, 4], min_side=0))


def test_layout_from_type_when_the_shape_is_ambiguous():
    net = create_model("tiny_medmamba", num_classes=2).eval()
    shape, size = (1, 16, 16, 16), (64, 64)  # patch embedding of a 64² image: C = H = W = 16
    assert infer_layout(net.patch_embed.proj, shape, size) == "channels_first"
    assert infer_layout(net.patch_embed.norm, shape, size) == "channels_last"
    assert infer_layout(net.patch_embed, shape, size) == "channels_last"  # its output_fmt
    with pytest.raises(ConfigError, match=r"'pos_drop'.*layout='channels_first' or 'channels_last'"):
        GradCAM(net, "pos_drop")(torch.rand(1, 3, 64, 64))
    explicit = GradCAM(net, "pos_drop", layout="channels_last")(torch.rand(1, 3, 64, 64))
    assert explicit.raw.shape == (1, 16, 16)
    listed = {info.name: info for info in spatial_layers(net, torch.rand(1, 3, 64, 64))}
    assert listed["pos_drop"].layout is None and listed["layers.2"].layout == "channels_last"
    assert listed["layers.0.blocks.0.conv33conv33conv11"].layout == "channels_first"


def test_errors_name_the_layer_and_the_fix():
    model, inputs, present = _late_fusion()
    with pytest.raises(UnknownNameError, match=r"'encoders.dermoscopy.body.bdy'.*did you mean"):
        GradCAM(model, "encoders.dermoscopy.body.bdy")
    with pytest.raises(ConfigError, match=r"does not see input 'clinical': choose a layer of that input's encoder"):
        GradCAM(model, "encoders.dermoscopy.body.body", modality="clinical")(inputs, present)
    with pytest.raises(ConfigError, match=r"image/volume inputs \['clinical', 'dermoscopy'\]"):
        GradCAM(model, "encoders.dermoscopy.body.body")(inputs, present)
    with pytest.raises(ConfigError, match=r"out of range.*8 logits"):
        GradCAM(model, "encoders.dermoscopy.body.body", modality="dermoscopy")(inputs, present, target=8)
    with pytest.raises(ConfigError, match=r"not a 2D feature map"):
        GradCAM(model, "encoders.dermoscopy", modality="dermoscopy")(inputs, present)
    net = create_model("tiny_medmamba", num_classes=2)
    with pytest.raises(ConfigError, match=r"'layers.0.blocks' did not run"):
        GradCAM(net, "layers.0.blocks")(torch.rand(1, 3, 64, 64))
    assert net.training  # the model's mode is restored


def test_overlay_is_the_blend_with_jet_and_written_atomically(tmp_path):
    from matplotlib import colormaps

    image = torch.rand(1, 8, 12)
    cam = torch.linspace(0, 1, 96).view(8, 12)
    full = overlay_heatmap(image, cam, alpha=1.0, min_side=0)
    np.testing.assert_array_equal(full, np.round(255 * colormaps["jet"](cam.numpy())[..., :3]).astype(np.uint8))
    none = overlay_heatmap(image, cam, alpha=0.0, min_side=0)
    np.testing.assert_array_equal(none[..., 0], np.round(255 * image[0].numpy()).astype(np.uint8))
    path = save_overlay(tmp_path / "case.png", image, cam)
    saved = np.asarray(Image.open(path))
    assert saved.shape == (8 * 28, 12 * 28, 3)  # enlarged until the shorter side reaches 224
    np.testing.assert_array_equal(saved[::28, ::28], overlay_heatmap(image, cam, min_side=0))
    assert [p.name for p in tmp_path.iterdir()] == ["case.png"]
    with pytest.raises(ValueError, match="differ in size"):
        overlay_heatmap(image, cam[:4])


class _NoFmt(nn.Module):
    """A channels-last block that does not declare its layout: conv, then (B, H, W, C)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


class _TwoImages(MultimodalModel):
    """Two image encoders (``a`` channels-last, ``b`` channels-first) → mean-pooled, concatenated → heads; it names its
    Grad-CAM layers and the layout of ``a``'s, whose shape (B, 8, 8, 8) fits both layouts."""

    def __init__(self, spec, declare_fmt: bool = True):
        super().__init__(spec, ["clinical", "dermoscopy"])
        torch.manual_seed(0)
        self.enc_a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), _NoFmt(8, 8))
        self.enc_b = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.num_features = 14
        self.heads = TaskHeads(14, spec.tasks)
        self.explain_layers = {"clinical": "enc_a.1", "dermoscopy": "enc_b.0"}
        if declare_fmt:
            self.output_fmts = {"clinical": "NHWC"}

    def forward_features(self, inputs, present=None):
        return torch.cat([self.enc_a(inputs["clinical"]).mean((1, 2)), self.enc_b(inputs["dermoscopy"]).mean((2, 3))], 1)


def _two_image_batch():
    return {"clinical": torch.rand(2, 3, 32, 32), "dermoscopy": torch.rand(2, 3, 16, 16), "record": torch.randn(2, 9)}


def test_default_layer_and_its_layout_come_from_the_model_contract():
    model = _TwoImages(SPEC).eval()
    inputs = _two_image_batch()
    result = GradCAM(model, modality="clinical")(inputs)
    assert result.layer == "enc_a.1" and result.layout == "channels_last"  # from output_fmts: the shape is ambiguous
    # the channels-first view of the same activation, by hand
    a = model.enc_a(inputs["clinical"]).permute(0, 3, 1, 2).detach().requires_grad_(True)
    logits = model.heads(torch.cat([a.mean((2, 3)), model.enc_b(inputs["dermoscopy"]).mean((2, 3))], 1))["diagnosis"]
    c = logits.argmax(1)
    g = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), a)[0]
    torch.testing.assert_close(result.raw, torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1)).detach())
    other = GradCAM(model, modality="dermoscopy")(inputs)
    assert other.layer == "enc_b.0" and other.layout == "channels_first" and other.raw.shape == (2, 8, 8)


def test_without_a_named_layer_or_layout_gradcam_asks_instead_of_guessing():
    inputs = _two_image_batch()
    undeclared = _TwoImages(SPEC, declare_fmt=False).eval()  # same layer, no output_fmts: the shape decides nothing
    with pytest.raises(ConfigError, match=r"'enc_a.1' \(_NoFmt\).*could be channels-first or channels-last"):
        GradCAM(undeclared, modality="clinical")(inputs)
    undeclared.explain_layers = {"dermoscopy": "enc_b.0"}
    with pytest.raises(ConfigError, match=r"names no layer to explain for modality 'clinical'.*\['dermoscopy'\].*"
                                          r"pass layer="):
        GradCAM(undeclared, modality="clinical")(inputs)
    net = create_model("tiny_medmamba", num_classes=2).eval()
    with pytest.raises(ConfigError, match=r"MedMamba takes one tensor and names no layer.*pass layer="):
        GradCAM(net)(torch.rand(1, 3, 64, 64))


def test_default_modality_is_the_only_image_the_model_reads():
    model = _TwoImages(SPEC).eval()
    model.modalities = ("dermoscopy", "record")
    assert GradCAM(model).resolve_modality(_two_image_batch()) == "dermoscopy"


def test_channels_last_blocks_declare_output_fmt():
    from mmdiag.models.backbones.medmamba import MedMambaStage, SSConvSSM
    from mmdiag.models.layers.patch_embed import PatchMerging
    from mmdiag.models.layers.ss2d import SS2D
    from mmdiag.models.layers.vss import VSSBlock

    net = create_model("tiny_medmamba", num_classes=2).eval()
    shape, size = (1, 16, 16, 16), (64, 64)  # C = H = W: only the declaration decides
    seen = set()
    for name, module in net.named_modules():
        if isinstance(module, (SS2D, VSSBlock, SSConvSSM, MedMambaStage, PatchMerging)):
            seen.add(type(module))
            assert infer_layout(module, shape, size, name) == "channels_last", name
    assert seen == {SS2D, SSConvSSM, MedMambaStage, PatchMerging}  # VSSBlock: MedMamba's ablation only
    block = VSSBlock(8)
    assert block.output_fmt == "NHWC" and infer_layout(block, (1, 8, 8, 8), (32, 32)) == "channels_last"
    assert infer_layout(nn.BatchNorm2d(16), shape, size) == "channels_first"
    assert infer_layout(nn.Linear(16, 16), shape, size) == "channels_last"  # acts on the last dim


class _Tokens(MultimodalModel):
    """ViT-shaped: 4 x 4 patches of a 16² image, a [CLS] token in front, a token-wise Linear (``NLC`` output), mean of
    all tokens → heads; it names the token layer and declares its layout."""

    def __init__(self, spec):
        super().__init__(spec, ["clinical"])
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 6, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.tok = nn.Linear(6, 6)
        self.num_features = 6
        self.heads = TaskHeads(6, spec.tasks)
        self.explain_layers, self.output_fmts = {"clinical": "tok"}, {"clinical": "NLC"}

    def forward_features(self, inputs, present=None):
        x = self.patch(inputs["clinical"]).flatten(2).transpose(1, 2)
        return torch.tanh(self.tok(torch.cat([self.cls.expand(len(x), -1, -1), x], 1))).mean(1)


def test_tokens_are_laid_out_on_their_patch_grid_without_the_prefix():
    model = _Tokens(SPEC).eval()
    x = torch.rand(2, 3, 16, 16)
    result = GradCAM(model)({"clinical": x})
    assert result.layout == "tokens" and result.raw.shape == (2, 4, 4) and result.maps.shape == (2, 16, 16)
    tokens = torch.cat([model.cls.expand(2, -1, -1), model.patch(x).flatten(2).transpose(1, 2)], 1)
    a = model.tok(tokens).detach().requires_grad_(True)
    logits = model.heads(torch.tanh(a).mean(1))["diagnosis"]
    c = logits.argmax(1)
    g = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), a)[0]
    grid_a, grid_g = a[:, 1:].reshape(2, 4, 4, 6).permute(0, 3, 1, 2), g[:, 1:].reshape(2, 4, 4, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(result.raw, torch.relu((grid_g.mean((2, 3))[:, :, None, None] * grid_a).sum(1)).detach())
    with pytest.raises(ConfigError, match=r"'patch'.*not tokens \(B, L, C\)"):
        GradCAM(model, "patch", layout="tokens")({"clinical": x})


def test_token_grid_of_vit_layouts():
    from mmdiag.explain.gradcam import token_grid

    assert token_grid(1 + 4 + 16 * 16, (224, 224)) == (16, 16)  # DINOv2 with registers, patch 14
    assert token_grid(1 + 14 * 7, (224, 112)) == (14, 7)  # non-square input, patch 16
    assert token_grid(197, (224, 224)) == (14, 14)  # CLIP ViT-B/16
    assert token_grid(3, (224, 224)) == (1, 1) and token_grid(10, (8, 8, 8)) is None


def test_a_declared_layout_that_does_not_fit_the_output_is_named():
    model = _TwoImages(SPEC).eval()
    model.output_fmts = {"dermoscopy": "NDHWC"}  # a 3D layout for a 2D map: a bug in the model, named
    with pytest.raises(ConfigError, match=r"_TwoImages.output_fmts\['dermoscopy'\] = 'NDHWC'.*'enc_b.0'"):
        GradCAM(model, modality="dermoscopy")(_two_image_batch())


def test_gradcam_panel_image_overlay_colour_bar_and_title(tmp_path):
    image, cam = torch.rand(3, 20, 24), torch.rand(20, 24)
    title = "late_fusion, test case c1 | photo | task diagnosis: mel (p = 0.812)"
    fig = gradcam_panel(image, cam, title)
    image_ax, overlay_ax, bar_ax = fig.axes
    assert (image_ax.get_title(), overlay_ax.get_title()) == ("image", "overlay")
    np.testing.assert_allclose(image_ax.get_images()[0].get_array(), image.permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_array_equal(overlay_ax.get_images()[0].get_array(), overlay_heatmap(image, cam, 0.5, 1))
    assert bar_ax.get_ylabel().startswith("Grad-CAM") and fig._suptitle.get_text() == title
    path = save_gradcam_panel(tmp_path / "p.png", image, cam, title)
    assert Image.open(path).size[0] > Image.open(path).size[1]


def test_gradcam_panel_says_when_the_map_is_zero():
    fig = gradcam_panel(torch.rand(1, 16, 16), torch.zeros(16, 16), "t")
    assert fig.axes[1].get_title() == "overlay (map is zero: no positive evidence)"
