"""Checking an uploaded file before anything decodes it: its type by content, its size, its pixel or voxel count.

Every check reads headers only (PNG's IHDR directly, JPEG through Pillow's lazy ``Image.open``, DICOM with
``stop_before_pixels``, NIfTI's 348-byte header, NumPy's ``.npy`` header), so a decompression bomb is refused before
it is expanded. A gzip-compressed NIfTI is expanded here, with a bound computed from its header, and stored
uncompressed, so no decoder ever sees an unbounded stream. The checked bytes are written into a private temporary
folder under a suffix chosen from the content (never from the client's file name); the readers of
:mod:`mmdiag.data.readers` then decode them exactly as ``mmdiag predict`` decodes files.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmdiag.data.schema import ImageModality, Modality

__all__ = ["FORMATS", "UploadError", "UploadLimits", "accepted_formats", "check_upload", "sniff"]

# content type → (suffix written, modality kinds that take it)
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "png": (".png", ("image",)),
    "jpeg": (".jpg", ("image",)),
    "dicom": (".dcm", ("image", "volume")),
    "nifti": (".nii", ("volume",)),
    "npy": (".npy", ("image", "volume")),
}
_NIFTI_HEADER = 348


class UploadError(Exception):
    """A request the service refuses: HTTP ``status``, the form ``field`` at fault (or None) and a message."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class UploadLimits:
    """Limits on what a request may carry (``mmdiag serve`` flags set them)."""

    max_file_bytes: int = 32 * 2**20
    max_request_bytes: int = 96 * 2**20
    max_pixels: int = 40_000_000
    max_voxels: int = 128 * 2**20


def accepted_formats(modality: Modality) -> list[str]:
    """The content types an image or volume modality accepts."""
    return [name for name, (_, kinds) in FORMATS.items() if modality.kind in kinds]


def sniff(data: bytes) -> str | None:
    """The content type of ``data`` from its first bytes (magic numbers), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith(b"\x1f\x8b"):
        return "nifti"  # gzip: only NIfTI is accepted compressed; its header is checked after bounded expansion
    if len(data) >= _NIFTI_HEADER and _nifti_byte_order(data) is not None:
        return "nifti"
    return None


def check_upload(field: str, data: bytes, modality: Modality, folder: Path, limits: UploadLimits) -> Path:
    """Check one upload for ``modality`` and write it into ``folder``.

    Returns:
        The written file (``folder/<field><suffix>``), ready for the run's reader.

    Raises:
        UploadError: 413 too large (bytes, pixels or voxels), 415 a type the modality does not take, 422 a file whose
            header is corrupt; each names ``field``.
    """
    if not data:
        raise UploadError(422, field, f"{field}: the file is empty")
    if len(data) > limits.max_file_bytes:
        raise UploadError(413, field, f"{field}: {len(data):,} bytes; the limit per file is {limits.max_file_bytes:,}")
    kind = sniff(data)
    accepted = accepted_formats(modality)
    if kind not in accepted:
        what = "an unrecognised file type" if kind is None else f"a {kind.upper()} file"
        raise UploadError(415, field, f"{field}: got {what}; modality {field!r} ({modality.kind}) accepts "
                                      f"{', '.join(a.upper() for a in accepted)} (checked by content, not by name)")
    limit = limits.max_pixels if isinstance(modality, ImageModality) else limits.max_voxels
    try:
        if kind in ("png", "jpeg"):
            count = _pil_pixels(data, kind)
        elif kind == "dicom":
            count, frames = _dicom_pixels(data)
            if isinstance(modality, ImageModality) and frames > 1:
                raise UploadError(422, field, f"{field}: a DICOM of {frames} frames; modality {field!r} is a 2D "
                                              "image and takes a single-frame DICOM")
        elif kind == "npy":
            count = _npy_elements(data)
        else:
            data = _expand_nifti(data, limit, field)
            count = _nifti_voxels(data)
    except UploadError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own guard (2 x Image.MAX_IMAGE_PIXELS) tripped first
        raise UploadError(413, field, f"{field}: {e}") from e
    except Exception as e:
        raise UploadError(422, field, f"{field}: not a readable {kind.upper()} file ({type(e).__name__}: {e})") from e
    if count > limit:
        unit = "pixels" if isinstance(modality, ImageModality) else "voxels"
        raise UploadError(413, field, f"{field}: {count:,} {unit}; the limit is {limit:,} (checked before decoding)")
    path = folder / f"{field}{FORMATS[kind][0]}"
    path.write_bytes(data)
    return path


def _pil_pixels(data: bytes, kind: str) -> int:
    """Pixel count from the header: PNG's IHDR read here, JPEG's frame header through Pillow's lazy open."""
    if kind == "png":
        if data[12:16] != b"IHDR":
            raise ValueError("the first chunk is not IHDR")
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:  # reads the header only
        width, height = im.size
    return width * height


def _dicom_pixels(data: bytes) -> tuple[int, int]:
    """(pixel count over all frames and samples, frame count) from a DICOM header."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("no Rows/Columns: it holds no image")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * frames * int(getattr(ds, "SamplesPerPixel", 1) or 1), frames


def _npy_elements(data: bytes) -> int:
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(f))
    if dtype.hasobject:
        raise ValueError("it holds Python objects (a pickle); only numeric arrays are accepted")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - f.tell() < count * dtype.itemsize:
        raise ValueError(f"it is truncated: shape {shape} needs {count * dtype.itemsize:,} bytes of data")
    return count


def _nifti_byte_order(header: bytes) -> str | None:
    for order in "<>":
        if struct.unpack(order + "i", header[:4])[0] == _NIFTI_HEADER and header[344:347] in (b"n+1", b"ni1"):
            return order
    return None


def _nifti_dims(header: bytes) -> tuple[tuple[int, ...], int]:
    order = _nifti_byte_order(header)
    if order is None:
        raise ValueError("no NIfTI-1 header (sizeof_hdr 348 and magic 'n+1')")
    dim = struct.unpack(order + "8h", header[40:56])
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1:dim[0] + 1]):
        raise ValueError(f"invalid dimensions {dim}")
    bitpix = struct.unpack(order + "h", header[72:74])[0]
    return dim[1:dim[0] + 1], max(bitpix, 8) // 8


def _nifti_voxels(data: bytes) -> int:
    dims, _ = _nifti_dims(data[:_NIFTI_HEADER])
    return int(np.prod(dims, dtype=np.int64))


def _expand_nifti(data: bytes, voxel_limit: int, field: str) -> bytes:
    """A NIfTI file as uncompressed bytes; a gzip stream is expanded only as far as its header allows."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    head = inflate.decompress(data, _NIFTI_HEADER)
    dims, itemsize = _nifti_dims(head)
    voxels = int(np.prod(dims, dtype=np.int64))
    if voxels > voxel_limit:
        raise UploadError(413, field, f"{field}: {voxels:,} voxels; the limit is {voxel_limit:,} (checked before "
                                      "decoding)")
    bound = 352 + 2**16 + voxels * itemsize  # header, extensions, image
    out = bytearray(head)
    while not inflate.eof and (chunk := inflate.decompress(inflate.unconsumed_tail, 2**20)):
        out += chunk
        if len(out) > bound:
            raise UploadError(413, field, f"{field}: the gzip stream expands beyond the {bound:,} bytes its NIfTI "
                                          "header declares")
    return bytes(out)
