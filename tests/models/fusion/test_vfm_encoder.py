import pytest
import torch

from mmdiag import create_model
from mmdiag.errors import ConfigError
from mmdiag.models.fusion.vfm_encoder import VFMEncoder


def test_frozen_by_default_and_peft_trains_only_adapters():
    frozen = VFMEncoder("tiny_dinov2_reg")
    assert frozen.num_features == 32 and not any(p.requires_grad for p in frozen.parameters())
    mor = VFMEncoder("tiny_dinov2_reg", peft="mor")
    trained = {n for n, p in mor.named_parameters() if p.requires_grad}
    assert trained and all(".experts." in n or ".router." in n for n in trained)
    assert all(p.requires_grad for p in VFMEncoder("tiny_clip", peft="fpt").parameters())


def test_cls_features_equal_the_vit_and_slices_are_mean_pooled():
    torch.manual_seed(0)
    enc = VFMEncoder("tiny_dinov2_reg", peft="fpt").eval()
    a, b = torch.rand(2, 3, 28, 28), torch.rand(2, 3, 28, 28)
    ref = create_model("tiny_dinov2_reg", num_classes=0)
    ref.load_state_dict({k.replace(".base_layer", ""): v for k, v in enc.vit.state_dict().items()})
    torch.testing.assert_close(enc(a), ref.eval()(a))
    stack = torch.cat([a, b], 1)  # 6 channels = 2 RGB slices
    torch.testing.assert_close(enc(stack), (ref(a) + ref(b)) / 2)
    assert enc.tokens(stack).shape == (2, 1 + 4 + 4, 32) and enc.slice_tokens(stack).shape == (2, 2, 9, 32)
    grey = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(enc(grey), enc(grey.expand(-1, 3, -1, -1)))
    greys = torch.rand(2, 4, 28, 28)  # 4 grey slices (MRNet with slice_channels=1)
    expected = torch.stack([ref(greys[:, j : j + 1].expand(-1, 3, -1, -1)) for j in range(4)]).mean(0)
    torch.testing.assert_close(enc(greys), expected)


def test_input_norm_applies_clip_or_vfm_statistics():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 28, 28)
    plain = VFMEncoder("tiny_dinov2", peft="fpt").eval()
    for norm, mean, std in [("clip", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                            ("vfm", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]:
        enc = VFMEncoder("tiny_dinov2", peft="fpt", input_norm=norm).eval()
        enc.vit.load_state_dict(plain.vit.state_dict())
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(enc(x), plain((x - m) / s))
    with pytest.raises(ConfigError, match="input_norm='imagenet'"):
        VFMEncoder("tiny_dinov2", input_norm="imagenet")


def test_img_size_builds_fixed_grid_vfms_and_leaves_dinov2_table():
    assert VFMEncoder("tiny_clip", img_size=32).vit.pos_embed.shape[1] == 1 + 2 * 2
    assert VFMEncoder("tiny_dinov2", img_size=32).vit.pos_embed.shape[1] == 1 + 4 * 4  # its own 56 px table
    assert VFMEncoder("tiny_dinov2", img_size=32)(torch.rand(1, 3, 32, 32)).shape == (1, 32)


def test_prompts_are_inserted_per_block_and_removed():
    torch.manual_seed(0)
    enc = VFMEncoder("tiny_dinov2_reg").eval()
    tokens, k = enc.embed(torch.rand(2, 3, 28, 28))
    prompts = torch.randn(2, 1, 3, 32)
    out = enc.run(tokens, prompts)
    assert out.shape == tokens.shape
    n = enc.num_prefix_tokens
    manual = enc.vit.blocks[0](torch.cat([tokens[:, :n], prompts[:, 0], tokens[:, n:]], 1))
    manual = enc.vit.norm(enc.vit.blocks[1](torch.cat([manual[:, :n], manual[:, n + 3:]], 1)))
    torch.testing.assert_close(out, manual)
    assert not torch.allclose(out, enc.run(tokens))


def test_errors_name_the_problem():
    enc = VFMEncoder("tiny_clip")
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\), got shape \(5, 64, 64\)"):
        enc(torch.rand(5, 64, 64))
    with pytest.raises(ConfigError, match="not a VisionTransformer"):
        VFMEncoder("medmamba_t")
