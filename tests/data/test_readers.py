import numpy as np
import pytest
import torch

from mmdiag.data.readers import DecodeCache, read_image, read_volume
from mmdiag.data.schema import ImageModality, VolumeModality
from mmdiag.errors import DataError
from mmdiag.testing import write_png


def test_png_rgba_grey_and_resize(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    x = read_image(write_png(tmp_path / "a.png", rgba), ImageModality(channels=3, size=(8, 8)), case_id="a")
    assert x.shape == (3, 8, 8) and torch.allclose(x[0], torch.ones(8, 8)) and x[1:].abs().max() == 0
    grey = np.full((10, 6), 128, np.uint8)
    y = read_image(write_png(tmp_path / "g.png", grey), ImageModality(channels=3, size=(5, 3)), case_id="g")
    assert y.shape == (3, 5, 3) and torch.allclose(y, torch.full_like(y, 128 / 255), atol=1e-6)


def test_corrupt_image_error_names_case_and_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError) as e:
        read_image(bad, ImageModality(), case_id="case-17")
    assert "case-17" in str(e.value) and "broken.png" in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "gone.png", ImageModality(), case_id="case-18")


def test_volume_from_npy_and_nifti_with_window(tmp_path):
    vol = np.linspace(-1000, 1000, 4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    np.save(tmp_path / "v.npy", vol)
    spec = VolumeModality(channels=1, size=(4, 6, 8), intensity_range=(-500.0, 500.0))
    x = read_volume(tmp_path / "v.npy", spec, case_id="v")
    assert x.shape == (1, 4, 6, 8)
    expected = (np.clip(vol, -500, 500) + 500) / 1000
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.transpose(vol, (1, 2, 0)), np.eye(4)), tmp_path / "v.nii.gz")  # NIfTI order (H, W, D)
    y = read_volume(tmp_path / "v.nii.gz", spec, case_id="v")
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-6)


def test_cache_returns_the_decoded_tensor(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    path = write_png(tmp_path / "i.png", img)
    cache = DecodeCache(tmp_path / "cache")
    spec = ImageModality(size=(10, 10))
    first = read_image(path, spec, case_id="i", cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    second = read_image(path, spec, case_id="i", cache=cache)
    torch.testing.assert_close(first, second, atol=1e-3, rtol=0)  # stored as float16
