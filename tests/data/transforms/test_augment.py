import pytest
import torch

from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.data.transforms import BatchTransform, build_image_augment, build_volume_transform
from mmdiag.errors import ConfigError, UnknownNameError


def test_kornia_pipeline_from_config_is_applied_in_training_only():
    aug = build_image_augment([{"name": "RandomHorizontalFlip", "p": 1.0}])
    spec = DatasetSpec(name="s", modalities={"img": ImageModality(size=(4, 4), mean=(0.5,) * 3, std=(0.25,) * 3)},
                       tasks={"t": TaskSpec(type="binary", classes=("a", "b"))})
    tf = BatchTransform(spec, aug)
    x = torch.rand(2, 3, 4, 4)
    batch = {"inputs": {"img": x}, "present": {"img": torch.tensor([True, False])}}
    out = tf(batch, train=True)["inputs"]["img"]
    torch.testing.assert_close(out[0], (x[0].flip(-1) - 0.5) / 0.25)
    assert out[1].abs().max() == 0  # a missing modality stays zero
    torch.testing.assert_close(tf(batch, train=False)["inputs"]["img"][0], (x[0] - 0.5) / 0.25)


def test_autoaugment_runs_on_unit_range_batches():
    aug = build_image_augment([{"name": "AutoAugment"}])
    y = aug(torch.rand(4, 3, 16, 16))
    assert y.shape == (4, 3, 16, 16) and torch.isfinite(y).all()


def test_monai_volume_transform_is_seeded():
    tf = build_volume_transform([{"name": "RandFlip", "prob": 0.5, "spatial_axis": 0},
                                 {"name": "RandGaussianNoise", "prob": 1.0, "std": 0.1}])
    v = torch.rand(1, 4, 6, 6)
    torch.testing.assert_close(tf(v, 7), tf(v, 7))
    assert not torch.equal(tf(v, 7), tf(v, 8))


def test_bad_augment_entries_are_named():
    with pytest.raises(UnknownNameError, match="RandomHorizontalFlip"):
        build_image_augment([{"name": "RandomHorizontalFlp"}])
    with pytest.raises(ConfigError, match=r"data.augment.image\[0\]"):
        build_image_augment([{"p": 0.5}])
    with pytest.raises(ConfigError, match="RandFlip"):
        build_volume_transform([{"name": "RandFlip", "probability": 0.5}])


def test_augmentation_that_resizes_is_a_named_error():
    spec = DatasetSpec(name="s", modalities={"img": ImageModality(size=(8, 8))},
                       tasks={"t": TaskSpec(type="binary", classes=("a", "b"))})
    tf = BatchTransform(spec, build_image_augment([{"name": "RandomResizedCrop", "size": [16, 16]}]))
    batch = {"inputs": {"img": torch.rand(2, 3, 8, 8)}, "present": {"img": torch.tensor([True, True])}}
    with pytest.raises(ConfigError, match=r"modality 'img' from \(8, 8\) to \(16, 16\)"):
        tf(batch, train=True)
