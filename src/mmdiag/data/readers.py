"""Decoding images and volumes to tensors of a modality's declared shape, with an optional on-disk cache.

2D images (PNG, JPEG, TIFF, BMP, ...) are decoded with Pillow, single-frame DICOM files (``.dcm``) with pydicom,
``.npy``/``.npz`` arrays with NumPy; 3D volumes in
NIfTI, DICOM series folders and other medical formats through MONAI's ``LoadImage`` (pydicom / nibabel readers).
Every failure is a :class:`~mmdiag.errors.DataError` naming the case and the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmdiag.data.schema import ImageModality, VolumeModality
from mmdiag.errors import DataError
from mmdiag.io.atomic import atomic_write_bytes

__all__ = ["DecodeCache", "read_image", "read_volume", "to_channels"]

_ARRAY_SUFFIXES = (".npy", ".npz")


class DecodeCache:
    """Decoded, resized tensors stored as ``.npy`` files keyed by (file, size, mtime, target shape).

    Decoding and resizing large JPEGs or volumes dominates data loading; the cache pays it once per file.
    Entries are written atomically, so concurrent data-loader workers never read half a file.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path, shape: tuple[int, ...], extra: str = "") -> Path:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{shape}|{extra}"
        return self.folder / (hashlib.sha1(ident.encode()).hexdigest() + ".npy")

    def get(self, key: Path) -> torch.Tensor | None:
        if not key.is_file():
            return None
        return torch.from_numpy(np.load(key, allow_pickle=False).astype(np.float32))

    def put(self, key: Path, value: torch.Tensor) -> None:
        buf = io.BytesIO()
        np.save(buf, value.numpy().astype(np.float16), allow_pickle=False)
        atomic_write_bytes(key, buf.getvalue())


def to_channels(x: torch.Tensor, channels: int, *, case_id: str, path: Any) -> torch.Tensor:
    """Bring a channels-first tensor to ``channels``: grey → repeated, RGBA → RGB, RGB → grey by luminance."""
    c = x.shape[0]
    if c == channels:
        return x
    if c == 1:
        return x.expand(channels, *x.shape[1:]).clone()
    if c == 4 and channels == 3:
        return x[:3]
    if c in (3, 4) and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, *([1] * (x.dim() - 1)))
        return (x[:3] * w).sum(0, keepdim=True)
    raise DataError(f"case {case_id!r}: {path} has {c} channels; the modality expects {channels}", case_id, str(path))


def _decode_2d(path: Path) -> np.ndarray:
    """(H, W, C) or (H, W) array from an image or array file."""
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return _load_array(path)
    if path.suffix.lower() == ".dcm":
        return _decode_dicom_2d(path)
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "LA", "I;16", "I", "F", "CMYK", "YCbCr"):
            im = im.convert("RGBA" if im.mode in ("P", "LA") else ("RGB" if im.mode in ("CMYK", "YCbCr") else "F"))
        return np.asarray(im)


def _decode_dicom_2d(path: Path) -> np.ndarray:
    """A single-frame DICOM image as float32 (H, W[, C]), rescaled by its slope/intercept, MONOCHROME1 inverted
    (so that bright means dense, as in MONOCHROME2); the reader then min-max scales it to [0, 1]."""
    import pydicom

    ds = pydicom.dcmread(path)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"it has {ds.NumberOfFrames} frames; a 2D image modality takes a single-frame DICOM")
    arr = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0)
    return arr.max() + arr.min() - arr if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" else arr


def _load_array(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z[z.files[0]]
    return np.load(path, allow_pickle=False)


def _scale01(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo and (lo < 0 or hi > 1) else a


def _resolve(value: Any, case_id: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise DataError(f"case {case_id!r}: file {str(path)!r} does not exist", case_id, str(path))
    return path


def _decode_cached(value: Any, what: str, case_id: str, cache: DecodeCache | None, shape: tuple[int, ...],
                   decode: Callable[[Path], np.ndarray], finish: Callable[[torch.Tensor, Any], torch.Tensor],
                   key_extra: str = "") -> torch.Tensor:
    """Decode ``value`` (a path, or an array given directly) through ``decode`` and ``finish``, via the cache.

    Raises:
        DataError: missing file, or any decoder failure, naming the case and the file.
    """
    if isinstance(value, np.ndarray):
        return finish(torch.from_numpy(value), "<array>")
    path = _resolve(value, case_id)
    key = cache.key(path, shape, key_extra) if cache else None
    if key is not None and (hit := cache.get(key)) is not None:
        return hit
    try:
        arr = decode(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the case and file
        raise DataError(f"case {case_id!r}: cannot read {what} {str(path)!r}: {type(e).__name__}: {e}",
                        case_id, str(path)) from e
    out = finish(torch.from_numpy(arr), path)
    if key is not None:
        cache.put(key, out)
    return out


def read_image(value: str | os.PathLike | np.ndarray, spec: ImageModality, *, case_id: str,
               cache: DecodeCache | None = None) -> torch.Tensor:
    """Decode a 2D image (file path or (H, W[, C]) array) to a (C, H, W) float tensor in [0, 1] of the spec's size.

    Raises:
        DataError: the file is missing, unreadable or corrupt (naming the case and the file).
    """
    if isinstance(value, np.ndarray):
        value = _scale01(value)
    return _decode_cached(value, "image", case_id, cache, spec.shape, lambda p: _scale01(_decode_2d(p)),
                          lambda x, path: _finish_image(x, spec, case_id, path))


def _channels_last(shape: tuple[int, int, int], channels: int) -> bool:
    """Whether an (A, B, C) array is (H, W, C): its last axis has the expected channel count and its first does not,
    or (neither matching) its last axis is the shorter end, as with RGBA or many-band arrays of any channel count."""
    if (shape[-1] == channels) != (shape[0] == channels):
        return shape[-1] == channels
    return shape[-1] < shape[0]


def _finish_image(x: torch.Tensor, spec: ImageModality, case_id: str, path: Any) -> torch.Tensor:
    if x.dim() == 2:
        x = x.unsqueeze(0)
    elif x.dim() == 3 and _channels_last(tuple(x.shape), spec.channels):
        x = x.permute(2, 0, 1)
    elif x.dim() == 3:
        pass
    else:
        raise DataError(f"case {case_id!r}: {path} has shape {tuple(x.shape)}; expected a 2D image", case_id, str(path))
    x = to_channels(x.float(), spec.channels, case_id=case_id, path=path)
    if tuple(x.shape[1:]) != tuple(spec.size):
        x = F.interpolate(x.unsqueeze(0), size=spec.size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0).contiguous()


def _decode_3d(path: Path) -> np.ndarray:
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return _load_array(path).astype(np.float32)
    from monai.transforms import LoadImage

    arr = np.asarray(LoadImage(image_only=True)(str(path)), dtype=np.float32)
    return np.transpose(arr, (2, 0, 1)) if arr.ndim == 3 else arr  # MONAI gives (H, W, D); mmdiag uses (D, H, W)


def read_volume(value: str | os.PathLike | np.ndarray, spec: VolumeModality, *, case_id: str,
                cache: DecodeCache | None = None) -> torch.Tensor:
    """Decode a 3D volume (NIfTI, DICOM folder, .npy/.npz, or an array (D, H, W) / (C, D, H, W)) to (C, D, H, W).

    Intensities are clipped to ``spec.intensity_range`` and scaled to [0, 1] when given, else min-max scaled.

    Raises:
        DataError: the file is missing, unreadable or of the wrong dimensionality.
    """
    if isinstance(value, np.ndarray):
        value = value.astype(np.float32)
    return _decode_cached(value, "volume", case_id, cache, spec.shape, _decode_3d,
                          lambda x, path: _finish_volume(x, spec, case_id, path), str(spec.intensity_range))


def _finish_volume(x: torch.Tensor, spec: VolumeModality, case_id: str, path: Any) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise DataError(f"case {case_id!r}: {path} has shape {tuple(x.shape)}; expected a 3D volume", case_id, str(path))
    x = to_channels(x, spec.channels, case_id=case_id, path=path)
    if spec.intensity_range is not None:
        lo, hi = spec.intensity_range
        x = (x.clamp(lo, hi) - lo) / (hi - lo)
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    if tuple(x.shape[1:]) != tuple(spec.size):
        x = F.interpolate(x.unsqueeze(0), size=spec.size, mode="trilinear", align_corners=False)[0]
    return x.contiguous()
