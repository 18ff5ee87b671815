"""RemixFormer++ dermoscopy branch: windows, MSTA vs an explicit loop, chunking, checkpointing, parameter counts."""

from __future__ import annotations

import pytest
import torch

from mmdiag.errors import ConfigError
from mmdiag.models import create_model
from mmdiag.models.backbones.remixformer_dermoscopy import MSTA, DermoscopyBranch, OursD, window_partition
from mmdiag.models.backbones.vit import VisionTransformer, checkpoint_filter_fn

TINY = dict(img_size=64, window_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, region_depth=1,
            num_templates=4)


def test_window_partition_is_row_major_slicing():
    x = torch.randn(2, 3, 64, 96)
    win, grid = window_partition(x, 32)
    assert grid == (2, 3) and win.shape == (2, 6, 3, 32, 32)
    for r in range(2):
        for c in range(3):
            assert torch.equal(win[:, r * 3 + c], x[:, :, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32])


def test_msta_matches_explicit_equations():
    torch.manual_seed(0)
    m = MSTA(8, num_templates=3)
    y = torch.randn(2, 5, 8)
    out = m(y)
    ref = torch.zeros(2, 3, 8)
    for n in range(2):
        for j in range(5):
            a = torch.stack([y[n, j] @ m.templates[k] for k in range(3)])  # eq. 15
            e = torch.exp(-m.scales * a)
            c = e / e.sum()  # eq. 16
            for k in range(3):
                ref[n, k] += c[k] * y[n, j]  # eq. 17
    expect = m.proj(ref.flatten(1))
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(MSTA(8, 3, proj="mean").forward(y).shape, torch.Size([2, 8]))


def test_chunked_equals_unchunked_and_windows_are_independent():
    torch.manual_seed(0)
    a = DermoscopyBranch(**TINY, chunk_size=1).eval()
    b = DermoscopyBranch(**TINY, chunk_size=64).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 3, 64, 64)
    ga, la = a(x)
    gb, lb = b(x)
    assert ga.shape == (3, 32) and la.shape == (3, 4, 32)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    # each window embedding depends on its window only (one window encoded alone gives the same embedding)
    emb, _ = a.hrwe(x)
    torch.testing.assert_close(emb[1, 3], a.hrwe.encode_windows(x[1:2, :, 32:, 32:])[0], rtol=1e-5, atol=1e-6)


def test_grad_checkpoint_gives_the_same_gradients():
    torch.manual_seed(0)
    a = DermoscopyBranch(**TINY, chunk_size=2).train()
    b = DermoscopyBranch(**TINY, chunk_size=2, grad_checkpoint=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for m in (a, b):
        g, lt = m(x)
        (g.square().sum() + lt.sum()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_other_window_grid_resamples_region_positions():
    m = DermoscopyBranch(**TINY).eval()
    g, lt = m(torch.randn(1, 3, 96, 128))  # 3x4 windows, table built for 2x2
    assert g.shape == (1, 32) and lt.shape == (1, 12, 32)


def test_paper_parameter_counts():
    """Table XII/XIV "ViT-S/16+HRWE 43.0M" at 2048² (65-row region table, 12 classes); MSTA's literal size."""
    m = OursD(num_classes=12, img_size=2048, msta=False)
    assert sum(p.numel() for p in m.parameters()) == 43_013_004
    msta = MSTA(384, 32)
    assert sum(p.numel() for p in msta.parameters()) == 4_731_296


def test_dino_vit_s_weights_load_strictly_into_the_window_encoder():
    src = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    m = DermoscopyBranch(img_size=512, depth=12, region_depth=1, msta=False)
    state = checkpoint_filter_fn(src.state_dict(), m.window_encoder)
    m.window_encoder.load_state_dict(state, strict=True)
    assert m.window_encoder.pos_embed.shape == (1, 257, 384)


def test_registered_classifier_and_bad_options():
    m = create_model("tiny_remixformer_d", num_classes=5)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ConfigError, match="window_size"):
        DermoscopyBranch(img_size=100, window_size=32)
    with pytest.raises(ConfigError, match="msta_proj"):
        MSTA(8, 2, proj="sum")
