"""The one VFM wrapper (EI and the Table 3 baselines): freezing/PEFT, slice layouts, input norm, prompts, errors."""

import pytest
import torch

from mmdiag import create_model
from mmdiag.data.schema import ImageModality, TabularModality, VolumeModality
from mmdiag.errors import ConfigError
from mmdiag.models.backbones.vfm import VFMEncoder


def _img(c=3, s=28):
    return ImageModality(channels=c, size=(s, s))


def test_frozen_by_default_and_peft_trains_only_adapters():
    frozen = VFMEncoder("tiny_dinov2_reg", _img())
    assert frozen.num_features == 32 and not any(p.requires_grad for p in frozen.parameters())
    mor = VFMEncoder("tiny_dinov2_reg", _img(), peft="mor")
    trained = {n for n, p in mor.named_parameters() if p.requires_grad}
    assert trained and all(".experts." in n or ".router." in n for n in trained)
    assert all(p.requires_grad for p in VFMEncoder("tiny_clip", _img(s=64), peft="fpt").parameters())


def test_cls_features_equal_the_vit_and_slices_are_mean_pooled():
    torch.manual_seed(0)
    enc = VFMEncoder("tiny_dinov2_reg", _img(6), peft="fpt").eval()  # 6 channels = 2 RGB slices
    ref = create_model("tiny_dinov2_reg", num_classes=0)
    ref.load_state_dict({k.replace(".base_layer", ""): v for k, v in enc.vit.state_dict().items()})
    ref.eval()
    a, b = torch.rand(2, 3, 28, 28), torch.rand(2, 3, 28, 28)
    stack = torch.cat([a, b], 1)
    torch.testing.assert_close(enc(stack), (ref(a) + ref(b)) / 2)
    assert enc.tokens(stack).shape == (2, 1 + 4 + 4, 32) and enc.encode(stack)[0].shape == (2, 2, 9, 32)
    greys = VFMEncoder("tiny_dinov2_reg", _img(4), peft="fpt").eval()  # 4 grey slices (MRNet, one channel each)
    greys.vit.load_state_dict(enc.vit.state_dict())
    g = torch.rand(2, 4, 28, 28)
    expected = torch.stack([ref(g[:, j: j + 1].expand(-1, 3, -1, -1)) for j in range(4)]).mean(0)
    torch.testing.assert_close(greys(g), expected)
    vol = VFMEncoder("tiny_dinov2_reg", VolumeModality(channels=1, size=(3, 28, 28)), peft="fpt").eval()
    vol.vit.load_state_dict(enc.vit.state_dict())
    v = torch.rand(2, 1, 3, 28, 28)
    expected = torch.stack([ref(v[:, :, j].expand(-1, 3, -1, -1)) for j in range(3)]).mean(0)
    torch.testing.assert_close(vol(v), expected)


def test_input_norm_applies_clip_or_vfm_statistics():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 28, 28)
    plain = VFMEncoder("tiny_dinov2", _img(), peft="fpt").eval()
    for norm, mean, std in [("clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                            ("vfm", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]:
        enc = VFMEncoder("tiny_dinov2", _img(), peft="fpt", input_norm=norm).eval()
        enc.vit.load_state_dict(plain.vit.state_dict())
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(enc(x), plain((x - m) / s))
    with pytest.raises(ConfigError, match="input_norm='imagenet'"):
        VFMEncoder("tiny_dinov2", _img(), input_norm="imagenet")
    normalised = ImageModality(size=(28, 28), mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ConfigError, match="already normalised"):
        VFMEncoder("tiny_dinov2", normalised, input_norm="clip")


def test_img_size_builds_fixed_grid_vfms_and_leaves_dinov2_table():
    assert VFMEncoder("tiny_clip", _img(s=32)).vit.pos_embed.shape[1] == 1 + 2 * 2
    assert VFMEncoder("tiny_clip", _img(s=28), img_size=32).vit.pos_embed.shape[1] == 1 + 2 * 2
    dino = VFMEncoder("tiny_dinov2", _img(s=32), img_size=32)
    assert dino.vit.pos_embed.shape[1] == 1 + 4 * 4  # its own 56 px table, resampled at run time
    assert dino(torch.rand(1, 3, 32, 32)).shape == (1, 32)


def test_prompts_are_inserted_per_block_and_removed():
    torch.manual_seed(0)
    enc = VFMEncoder("tiny_dinov2_reg", _img()).eval()
    tokens = enc.embed(torch.rand(2, 3, 28, 28))
    prompts = torch.randn(2, 1, 3, 32)
    out = enc.run(tokens, prompts)
    assert out.shape == tokens.shape
    n = enc.num_prefix_tokens
    manual = enc.vit.blocks[0](torch.cat([tokens[:, :n], prompts[:, 0], tokens[:, n:]], 1))
    manual = enc.vit.norm(enc.vit.blocks[1](torch.cat([manual[:, :n], manual[:, n + 3:]], 1)))
    torch.testing.assert_close(out, manual)
    assert not torch.allclose(out, enc.run(tokens))


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="not a ViT foundation model"):
        VFMEncoder("tiny_medmamba", _img())
    with pytest.raises(ConfigError, match="reads images; modality 'rec' is tabular"):
        VFMEncoder("tiny_dinov2", TabularModality(fields={"age": {"type": "numeric"}}), name="rec")
    with pytest.raises(ConfigError, match="slices.scan=2: image modality 'scan' has 5 channels"):
        VFMEncoder("tiny_dinov2", _img(5), name="scan", slices=2)
    with pytest.raises(ConfigError, match="square inputs; modality 'wide' is 32x64"):
        VFMEncoder("tiny_clip", ImageModality(size=(32, 64)), name="wide")
