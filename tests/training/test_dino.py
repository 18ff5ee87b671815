"""DINO: loss pieces against hand computations, schedules, weight-normalised head, and a tiny run whose loss falls and
whose backbone checkpoint loads into ``create_model``."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmdiag
from mmdiag.errors import ConfigError, DataError
from mmdiag.testing.writers import write_png
from mmdiag.training.dino import DINOHead, DINOLoss, MultiCrop, cosine_schedule
from mmdiag.training.pretrain_dino import DINOConfig, WindowImages, folder_images, pretrain_dino


def test_loss_matches_pairwise_cross_entropy_and_centre_update():
    torch.manual_seed(0)
    n_views, b, k = 4, 3, 5
    loss_fn = DINOLoss(k, n_views, epochs=10, warmup_teacher_temp_epochs=5)
    loss_fn.center.fill_(0.1)
    s, t = torch.randn(n_views * b, k), torch.randn(2 * b, k)
    got = loss_fn(s, t, epoch=2)
    tau_t = 0.04 + 2 * (0.07 - 0.04) / 4  # linspace(0.04, 0.07, 5)[2]
    terms = []
    for i in range(2):
        q = F.softmax((t[i * b:(i + 1) * b] - 0.1) / tau_t, -1)
        for v in range(n_views):
            if v != i:
                terms.append((-q * F.log_softmax(s[v * b:(v + 1) * b] / 0.1, -1)).sum(-1).mean())
    assert got == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    assert len(terms) == 2 * n_views - 2
    assert torch.allclose(loss_fn.center, 0.9 * 0.1 + 0.1 * t.mean(0, keepdim=True))
    assert loss_fn.teacher_temp(0) == pytest.approx(0.04) and loss_fn.teacher_temp(50) == pytest.approx(0.07)


def test_cosine_schedule_warmup_and_ends():
    s = cosine_schedule(1.0, 0.0, epochs=4, steps_per_epoch=5, warmup_epochs=1)
    assert len(s) == 20 and s[0] == 0.0 and s[4] == pytest.approx(1.0) and s[5] == pytest.approx(1.0)
    assert np.all(np.diff(s[5:]) <= 0) and s[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 14 / 15)))
    m = cosine_schedule(0.996, 1.0, epochs=2, steps_per_epoch=3)
    assert m[0] == pytest.approx(0.996) and np.all(np.diff(m) > 0)


def test_head_last_layer_is_weight_normalised_with_frozen_norm():
    head = DINOHead(8, out_dim=12, hidden_dim=16, bottleneck_dim=4)
    g = head.last_layer.parametrizations.weight.original0
    assert torch.all(g == 1) and not g.requires_grad
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(12), atol=1e-5)
    assert head(torch.randn(2, 8)).shape == (2, 12)
    assert DINOHead(8, 12, 16, 4, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def test_multicrop_views():
    views = MultiCrop(global_size=24, local_size=12, n_local=3)(torch.rand(2, 3, 32, 32))
    assert [tuple(v.shape) for v in views] == [(2, 3, 24, 24)] * 2 + [(2, 3, 12, 12)] * 3


def _images(folder, n=6, size=64):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
        img[:, : size // 2] //= 3
        write_png(folder / f"ISIC_{i:07d}.png", img)
    write_png(folder / "ISIC_0000000_superpixels.png", np.zeros((4, 4, 3), np.uint8))
    return folder


def test_windows_native_and_resized(tmp_path):
    paths = folder_images(_images(tmp_path))
    assert len(paths) == 6  # the superpixel decoy is skipped
    native = WindowImages(paths, window=32, resize=0)
    assert len(native) == 6 * 2 * 2  # 64x72 -> 2x2 windows (8 px remainder dropped)
    resized = WindowImages(paths, window=32, resize=96)
    assert len(resized) == 6 * 9 and resized[0].shape == (3, 32, 32)
    mixed = WindowImages(paths, window=32, resize=96, native_fraction=0.5)
    assert len(mixed) == 3 * 4 + 3 * 9
    from PIL import Image
    tile = np.asarray(Image.open(paths[0]).convert("RGB"))[32:64, 0:32] / 255.0
    assert np.allclose(native[2].permute(1, 2, 0).numpy(), tile, atol=1e-6)  # row 1, column 0
    with pytest.raises(ConfigError, match="resize"):
        WindowImages(paths, window=32, resize=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        folder_images(tmp_path / "empty")


def _patterns(folder, n=8, size=32):
    """Distinct images (stripes of different frequency, orientation and colour): a set a tiny ViT can tell apart."""
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[..., i % 3] = 255 * ((xx * (1 + i // 3) // 8 + yy * (i % 2)) % 2)
        img[..., (i + 1) % 3] = 30 * (i + 1)
        write_png(folder / f"{i}.png", img)
    return folder


@pytest.mark.slow
def test_tiny_run_loss_falls_and_checkpoint_loads(tmp_path):
    """6 steps on 8 windows: the student learns to predict the teacher's global-view output from every other view.

    (On so tiny a set, continued training later flattens the centred teacher and the loss rises towards ln(out_dim);
    the fall asserted here is the early phase, seeded and deterministic.)
    """
    paths = folder_images(_patterns(tmp_path / "img"))
    cfg = DINOConfig(model="tiny_dino", window=32, resize=0, global_size=32, local_size=16, n_local=2, epochs=6,
                     batch_size=8, lr=0.128, warmup_epochs=0, out_dim=1024, hidden_dim=64, bottleneck_dim=64,
                     warmup_teacher_temp=0.04, teacher_temp=0.04, momentum_teacher=0.99, freeze_last_layer=0,
                     accelerator="cpu")
    result = pretrain_dino(paths, tmp_path / "out", cfg)
    losses = np.array(result.losses)
    assert len(losses) == 6 and np.isfinite(losses).all()
    assert losses[-2:].mean() < 0.5 * losses[0], losses
    model = mmdiag.create_model("tiny_dino", checkpoint=result.teacher)
    mmdiag.create_model("tiny_dino", checkpoint=result.student)
    from safetensors.torch import load_file
    saved = load_file(result.teacher)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "out" / "dino_config.json").is_file()
    with pytest.raises(ConfigError, match="exists"):
        pretrain_dino(paths, tmp_path / "out", cfg)


def test_cli_needs_one_image_source_and_json_options(tmp_path, capsys):
    from mmdiag.cli.main import main

    assert main(["pretrain", "dino", "--output", str(tmp_path / "o")]) == 2
    assert "either --images" in capsys.readouterr().err
    assert main(["pretrain", "dino", "--images", str(tmp_path), "--model-options", "{bad", "--output", "o"]) == 2
    assert "--model-options" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_pretrains_on_a_dataset_modality(tmp_path, capsys):
    from mmdiag.cli.main import main
    from mmdiag.testing.isic import write_isic2019

    root = write_isic2019(tmp_path / "isic", per_class=1, size=32)
    out = tmp_path / "dino"
    rc = main(["pretrain", "dino", "--dataset", "isic2019", "--root", str(root), "--dataset-options",
               '{"metadata": false}', "--model", "tiny_dino", "--window", "32", "--resize", "64",
               "--global-size", "32", "--local-size", "16", "--local-crops", "1", "--batch-size", "16",
               "--epochs", "1", "--max-steps", "1", "--out-dim", "32", "--num-workers", "0", "--accelerator", "cpu",
               "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "teacher backbone" in capsys.readouterr().out
    cfg = __import__("json").loads((out / "dino_config.json").read_text())
    assert cfg["images"] == 8 and cfg["windows"] == 8 * 4
    mmdiag.create_model("tiny_dino", checkpoint=out / "teacher_backbone.safetensors")
