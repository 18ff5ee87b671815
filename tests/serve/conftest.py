"""Upload payloads for the serve tests, valid and hostile, built in memory in their native formats (the fixture
``payloads`` gives this module), and a tiny trained fusion run."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
import zlib

import numpy as np
import pytest


def png(seed: int = 0, size: int = 16) -> bytes:
    from PIL import Image

    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int = 0, size: int = 16) -> bytes:
    from PIL import Image

    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its data would expand to tens of GB)."""
    data = bytearray(png())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_bomb(side: int = 65000) -> bytes:
    """A JPEG whose frame header (SOF0) claims ``side`` x ``side`` pixels."""
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def png_corrupt_body() -> bytes:
    """A PNG with a valid header whose image data is garbage."""
    data = bytearray(png(size=32))
    start = data.index(b"IDAT") + 8
    data[start:start + 64] = bytes(64)
    return bytes(data)


def dicom(frames: int = 1, size: int = 16) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = size
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(frames * size * size) % 4096).astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nifti(shape: tuple[int, ...] = (8, 16, 16), compress: bool = False) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4))
    raw = img.to_bytes()
    return gzip.compress(raw) if compress else raw


def nifti_gzip_lying(declared: tuple[int, ...] = (4, 4, 4), actual_bytes: int = 64 * 2**20) -> bytes:
    """A gzip NIfTI whose header declares a tiny volume but whose stream expands to ``actual_bytes``."""
    header = bytearray(nifti(declared)[:352])
    return gzip.compress(bytes(header) + bytes(actual_bytes), compresslevel=9)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class _Trap:
    """Unpickling this would create ``path``: proof that no pickle was ever executed if the file stays absent."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def npy_pickle(trap_path: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([_Trap(trap_path)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def raw_pickle(trap_path: str) -> bytes:
    return pickle.dumps(_Trap(trap_path))


@pytest.fixture
def payloads():
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def fusion_run(tmp_path_factory):
    """A tiny middle-fusion run on the synthetic data (clinical + dermoscopy + record, 16 px images)."""
    from mmdiag.config import load_config
    from mmdiag.training.run import train

    root = tmp_path_factory.mktemp("serve_run")
    cfg = load_config(None, [f"output_dir={root}", "model.name=middle_fusion", "trainer.max_epochs=1",
                             "trainer.enable_progress_bar=false", "trainer.early_stopping=null", "data.batch_size=16",
                             "data.options.n_cases=64", "data.options.image_size=16"])
    return train(cfg, root / "run").run_dir
