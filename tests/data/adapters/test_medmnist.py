"""MedMNIST adapter on official-format .npz fixtures: splits, task types, class names, arrays, errors, training."""

import json
import os

import numpy as np
import pytest

import mmdiag.data.adapters.medmnist  # noqa: F401  (registers the dataset)
from mmdiag.cli.main import main
from mmdiag.data.adapters.medmnist import FLAGS, case_index, medmnist, npz_path
from mmdiag.data.splits import make_split
from mmdiag.errors import ConfigError, DataError, UnknownNameError
from mmdiag.testing.medmnist import write_medmnist

# flag: (task type, channels, number of classes, a class name by index)
EXPECTED = {
    "dermamnist": ("multiclass", 3, 7, (4, "melanoma")),
    "chestmnist": ("multilabel", 1, 14, (13, "hernia")),
    "retinamnist": ("ordinal", 3, 5, (4, "4")),
    "breastmnist": ("binary", 1, 2, (1, "normal, benign")),
    "organamnist": ("multiclass", 1, 11, (10, "spleen")),
    "pneumoniamnist": ("binary", 1, 2, (0, "normal")),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("medmnist")
    for flag in EXPECTED:
        write_medmnist(d, flag)
    write_medmnist(d, "dermamnist", size=64, n=(7, 7, 7))
    return d


def test_all_twelve_2d_flags_are_known():
    assert len(FLAGS) == 12 and "tissuemnist" in FLAGS and "organmnist3d" not in FLAGS


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_reads_splits_labels_task_and_class_names(root, flag):
    ttype, channels, n_classes, (idx, name) = EXPECTED[flag]
    table = medmnist(str(root), flag=flag, normalize=False)
    z = np.load(npz_path(root, flag))
    task = table.spec.tasks[flag]
    assert (task.type, len(task.classes), task.classes[idx]) == (ttype, n_classes, name)
    assert table.official_split and table.spec.modalities["image"].shape == (channels, 28, 28)
    assert table.spec.modalities["image"].mean is None
    split = make_split(table, "auto")
    for s in ("train", "val", "test"):
        assert len(split[s]) == len(z[f"{s}_labels"])
        cases = [table.cases[i] for i in split[s]]
        assert [case_index(c.case_id) for c in cases] == [(s, i) for i in range(len(cases))]
        y = np.stack([np.atleast_1d(c.labels[flag]) for c in cases])
        np.testing.assert_array_equal(y, z[f"{s}_labels"])
        x = table.read(cases[-1], "image", train=False, rng=np.random.default_rng(0))
        raw = z[f"{s}_images"][-1].astype(np.float32) / 255
        np.testing.assert_allclose(x.numpy(), raw[None] if raw.ndim == 2 else raw.transpose(2, 0, 1), atol=1e-6)
    assert all(c.patient_id == c.case_id for c in table.cases)


def test_images_are_views_of_one_array_and_options_shape_the_modality(root):
    table = medmnist(str(root), flag="organamnist", as_rgb=True, image_size=40)
    a, b = table.cases[0].inputs["image"], table.cases[1].inputs["image"]
    assert a.base is not None and a.base is b.base  # rows of the split's array, not copies
    m = table.spec.modalities["image"]
    assert m.shape == (3, 40, 40) and m.mean == (0.5,) * 3 and m.std == (0.5,) * 3
    x = table.read(table.cases[0], "image", train=False, rng=np.random.default_rng(0))
    assert x.shape == (3, 40, 40) and np.array_equal(x[0], x[2])
    big = medmnist(str(root), flag="dermamnist", size=64)
    assert big.spec.name == "dermamnist_64" and big.spec.modalities["image"].size == (64, 64) and len(big) == 21


def test_nearest_interpolation_matches_pil_nearest(root):
    from PIL import Image

    table = medmnist(str(root), flag="dermamnist", image_size=56, interpolation="nearest", normalize=False)
    case = table.cases[3]
    x = table.read(case, "image", train=False, rng=np.random.default_rng(0))
    ref = np.asarray(Image.fromarray(case.inputs["image"]).resize((56, 56), Image.NEAREST), dtype=np.float32) / 255
    np.testing.assert_allclose(x.numpy(), ref.transpose(2, 0, 1), atol=1e-6)
    bilinear = medmnist(str(root), flag="dermamnist", image_size=56, normalize=False)
    assert not np.allclose(bilinear.read(bilinear.cases[3], "image", train=False, rng=None).numpy(), x.numpy())
    with pytest.raises(ConfigError, match="interpolation='bicubic'"):
        medmnist(str(root), flag="dermamnist", interpolation="bicubic")


def test_extract_dir_memory_maps_the_arrays_once(root, tmp_path):
    table = medmnist(str(root), flag="dermamnist", extract_dir=str(tmp_path))
    files = sorted((tmp_path / "dermamnist").iterdir())
    assert [f.name for f in files] == ["test_images.npy", "train_images.npy", "val_images.npy"]
    assert isinstance(table.cases[0].inputs["image"], np.memmap)
    z = np.load(npz_path(root, "dermamnist"))
    np.testing.assert_array_equal(np.stack([c.inputs["image"] for c in table.cases if c.split == "val"]),
                                  z["val_images"])
    stamp = files[0].stat().st_mtime_ns
    medmnist(str(root), flag="dermamnist", extract_dir=str(tmp_path))
    assert files[0].stat().st_mtime_ns == stamp  # reused, not decompressed again


def test_bad_inputs_raise_named_errors(root, tmp_path):
    with pytest.raises(DataError) as e:
        medmnist(str(root), flag="dermamnist", size=128)
    assert "dermamnist_128.npz" in str(e.value) and str(root) in str(e.value) and "dermamnist_64.npz" in str(e.value)
    with pytest.raises(ConfigError, match="data.options.flag"):
        medmnist(str(root))
    with pytest.raises(UnknownNameError, match="did you mean 'dermamnist'"):
        medmnist(str(root), flag="dermamnst")
    with pytest.raises(ConfigError, match="size=32"):
        medmnist(str(root), flag="dermamnist", size=32)
    z = dict(np.load(npz_path(root, "breastmnist")))
    np.savez_compressed(tmp_path / "breastmnist.npz", **{k: v for k, v in z.items() if k != "val_labels"})
    with pytest.raises(DataError, match=r"lacks key\(s\) \['val_labels'\]"):
        medmnist(str(tmp_path), flag="breastmnist")
    z["test_labels"][0] = 2  # class 2 of a binary task
    np.savez_compressed(tmp_path / "breastmnist.npz", **z)
    with pytest.raises(DataError, match="test_labels row 0 holds \\[2\\]"):
        medmnist(str(tmp_path), flag="breastmnist")


def test_medmamba_x_autoaugment_runs_on_medmnist_batches(root):
    """MedMamba-X's kornia AutoAugment on collated batches in [0, 1]; grey flags need as_rgb (its colour ops need 3
    channels), which the shipped config sets."""
    import torch

    from mmdiag.config.load import load_config
    from mmdiag.data.dataset import CaseDataset, collate_cases
    from mmdiag.data.transforms import build_image_augment

    cfg = load_config("medmamba_x_medmnist")
    assert cfg.data.options["as_rgb"] is True
    aug = build_image_augment(cfg.data.augment["image"])
    torch.manual_seed(0)
    for flag in ("dermamnist", "organamnist"):
        table = medmnist(str(root), flag=flag, as_rgb=True, image_size=32)
        ds = CaseDataset(table, range(8), {}, train=True)
        x = collate_cases([ds[i] for i in range(8)])["inputs"]["image"]
        assert x.shape == (8, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
        changed = 0
        for _ in range(6):
            y = aug(x)
            assert y.shape == x.shape and y.min() >= -1e-5 and y.max() <= 1 + 1e-5
            changed += not torch.equal(y, x)
        assert changed > 0


def test_train_medmamba_with_the_protocol_config(root, tmp_path):
    """Multi-class DermaMNIST (multi-label ChestMNIST is trained and scored in tests/cli/test_medmnist.py)."""
    run, flag = tmp_path / "run", "dermamnist"
    args = ["train", "--config", "medmamba_medmnist", "--output", str(run), f"data.root={root}",
            f"data.options.flag={flag}", "data.options.image_size=32", "model.name=tiny_medmamba",
            "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    m = metrics["tasks"][flag]
    assert m["n"] == len(np.load(npz_path(root, flag))["test_labels"])
    for key in ("acc", "precision", "sensitivity", "specificity", "f1", "auc"):  # the paper's metrics (§4.3)
        assert key in m and m[key] == m[key], key
    report = (run / "report.md").read_text()
    assert "sensitivity" in report and "specificity" in report
    assert os.path.getsize(run / "model.safetensors") > 0
