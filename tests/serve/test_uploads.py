"""Upload checks before decoding: type by content, pixel/voxel limits from headers, bounded gzip expansion; and the
written file reads back through mmdiag's own readers."""

import gzip
import struct

import numpy as np
import pytest
import torch

from mmdiag.data.readers import read_image, read_volume
from mmdiag.data.schema import ImageModality, VolumeModality
from mmdiag.serve.uploads import UploadError, UploadLimits, check_upload, sniff

IMAGE = ImageModality(channels=1, size=(16, 16))
VOLUME = VolumeModality(channels=1, size=(8, 16, 16))


def _refused(data, modality, tmp_path, limits=None):
    with pytest.raises(UploadError) as e:
        check_upload("scan", data, modality, tmp_path, limits or UploadLimits())
    assert e.value.field == "scan" and e.value.message.startswith("scan: ")
    return e.value


def test_types_are_sniffed_from_content_not_names(payloads):
    assert [sniff(x) for x in (payloads.png(), payloads.jpeg(), payloads.dicom(), payloads.nifti(),
                               payloads.nifti(compress=True), payloads.npy(np.zeros(3)), b"GIF89a....")] == [
        "png", "jpeg", "dicom", "nifti", "nifti", "npy", None]


def test_nifti_volume_plain_and_gzip_read_back_equal(payloads, tmp_path):
    (tmp_path / "a").mkdir()
    plain = check_upload("ct", payloads.nifti(), VOLUME, tmp_path / "a", UploadLimits())
    packed = check_upload("ct", payloads.nifti(compress=True), VOLUME, tmp_path, UploadLimits())
    assert packed.suffix == ".nii" and packed.read_bytes() == plain.read_bytes()  # stored uncompressed
    a, b = (read_volume(str(p), VOLUME, case_id="c") for p in (plain, packed))
    assert a.shape == (1, 8, 16, 16) and torch.equal(a, b)


def test_dicom_image_reads_as_the_pixel_data_scaled(payloads, tmp_path):
    path = check_upload("xray", payloads.dicom(size=16), IMAGE, tmp_path, UploadLimits())
    x = read_image(str(path), IMAGE, case_id="c")
    expected = (np.arange(256) % 4096).reshape(16, 16).astype(np.float32)
    assert torch.allclose(x[0], torch.from_numpy(expected / expected.max()), atol=1e-6)


def test_dicom_multi_frame_is_a_volume_not_an_image(payloads, tmp_path):
    assert _refused(payloads.dicom(frames=4), IMAGE, tmp_path).status == 422
    assert check_upload("ct", payloads.dicom(frames=4), VOLUME, tmp_path, UploadLimits()).suffix == ".dcm"


def test_voxel_limit_is_checked_in_the_header(payloads, tmp_path):
    data = bytearray(payloads.nifti((8, 16, 16)))
    data[42:48] = struct.pack("<3h", 30000, 30000, 30000)  # claims 2.7e13 voxels
    assert _refused(bytes(data), VOLUME, tmp_path).status == 413
    assert _refused(gzip.compress(bytes(data)), VOLUME, tmp_path).status == 413
    small = UploadLimits(max_voxels=1000)
    assert "voxels" in _refused(payloads.nifti((8, 16, 16)), VOLUME, tmp_path, small).message


def test_gzip_that_expands_past_its_header_is_stopped(payloads, tmp_path):
    bomb = payloads.nifti_gzip_lying(actual_bytes=64 * 2**20)
    assert len(bomb) < 200_000
    error = _refused(bomb, VOLUME, tmp_path)
    assert error.status == 413 and "expands beyond" in error.message
    assert list(tmp_path.iterdir()) == []


def test_pixel_limit_and_file_size(payloads, tmp_path):
    assert _refused(payloads.png_bomb(5000, 5000), IMAGE, tmp_path, UploadLimits(max_pixels=10_000_000)).status == 413
    assert _refused(payloads.png(size=64), IMAGE, tmp_path, UploadLimits(max_pixels=1000)).status == 413
    assert _refused(payloads.jpeg_bomb(5000), IMAGE, tmp_path, UploadLimits(max_pixels=10_000_000)).status == 413
    assert _refused(payloads.jpeg_bomb(65000), IMAGE, tmp_path).status == 413  # past Pillow's own guard too
    assert _refused(payloads.png(), IMAGE, tmp_path, UploadLimits(max_file_bytes=100)).status == 413
    assert _refused(payloads.nifti(), IMAGE, tmp_path).status == 415
    assert _refused(payloads.png(), VOLUME, tmp_path).status == 415
