"""MedMNIST v2/v3 (MedMNIST+) 2D datasets, read from the official ``.npz`` files. Nothing is downloaded.

One registered dataset, ``medmnist``, selects the dataset with the ``flag`` option (``pathmnist``, ``chestmnist``,
``dermamnist``, ``octmnist``, ``pneumoniamnist``, ``retinamnist``, ``breastmnist``, ``bloodmnist``, ``tissuemnist``,
``organamnist``, ``organcmnist``, ``organsmnist``) and the file with ``size``: ``<root>/<flag>.npz`` for 28 pixels,
``<root>/<flag>_<size>.npz`` for 64, 128 and 224. The file holds ``{train,val,test}_images`` (uint8, ``N×H×W`` grey or
``N×H×W×3`` RGB) and ``{train,val,test}_labels`` (``N×L`` integers; ``L = 14`` for ChestMNIST, else 1).

What the adapter builds:

* one image modality ``image`` (grey or RGB as stored; ``as_rgb`` repeats grey to 3 channels like the official
  ``as_rgb``), resized to ``image_size`` (default: the stored size; ``interpolation="nearest"`` upsamples like the
  MedMNIST v2 benchmark code, PIL ``NEAREST``), with the official examples' normalisation ``(x - 0.5) / 0.5`` unless
  ``normalize=False``;
* one task named after the flag, typed from the official task string: ``multi-label, binary-class`` → multilabel,
  ``binary-class`` → binary, ``ordinal-regression`` → ordinal, ``multi-class`` → multiclass; class names (in index
  order) are the official ``INFO`` labels, shipped as ``medmnist_info.json``;
* the official train/val/test split (``official_split=True``). MedMNIST has no patient ids: every case is its own
  patient. Case ids are ``<split>_<index>`` with the 0-based index into the split's arrays, which is the row index of
  the official result files (see :mod:`mmdiag.evaluation.protocols.medmnist`).

Images stay in the arrays: every case holds a view of its row (no copy). With ``extract_dir`` the arrays are
decompressed once into ``.npy`` files there and memory-mapped, so even PathMNIST-224 (≈ 16 GB of pixels) needs no RAM
for its images.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from mmdiag.data.readers import DecodeCache, read_image
from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError, DataError, UnknownNameError
from mmdiag.registry import DATASETS

__all__ = ["medmnist", "MedMNISTTable", "medmnist_info", "npz_path", "read_split_labels", "case_id", "case_index", "FLAGS", "SIZES",
           "SPLITS", "TASK_TYPES"]

_log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)
TASK_TYPES = {"multi-class": "multiclass", "binary-class": "binary", "ordinal-regression": "ordinal",
              "multi-label, binary-class": "multilabel"}


@cache
def _info() -> dict[str, Any]:
    return json.loads((Path(__file__).with_name("medmnist_info.json")).read_text())


FLAGS: tuple[str, ...] = tuple(_info()["datasets"])


def medmnist_info(flag: str) -> dict[str, Any]:
    """Official facts of one 2D dataset: ``task`` (official string), ``n_channels``, ``label`` (names by index),
    ``n_samples`` per split.

    Raises:
        UnknownNameError: ``flag`` is not one of the 12 2D MedMNIST datasets (close matches offered).
    """
    datasets = _info()["datasets"]
    if flag not in datasets:
        raise UnknownNameError("MedMNIST 2D flag (data.options.flag)", flag, datasets)
    return datasets[flag]


def npz_path(root: str | os.PathLike, flag: str, size: int = 28) -> Path:
    """The official file name: ``<flag>.npz`` for 28 pixels, ``<flag>_<size>.npz`` otherwise."""
    return Path(root) / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def case_id(split: str, index: int) -> str:
    """Case id of row ``index`` of ``split`` (zero-padded so that ids sort in index order)."""
    return f"{split}_{index:06d}"


def case_index(cid: str) -> tuple[str, int]:
    """Inverse of :func:`case_id`.

    Raises:
        DataError: ``cid`` is not a MedMNIST case id.
    """
    split, _, index = cid.rpartition("_")
    if split not in SPLITS or not index.isdigit():
        raise DataError(f"{cid!r} is not a MedMNIST case id (<split>_<index>, e.g. test_000042)", cid)
    return split, int(index)


def _check_options(flag: str | None, size: int) -> dict[str, Any]:
    if flag is None:
        raise ConfigError(f"dataset 'medmnist' needs data.options.flag, one of {list(FLAGS)}")
    info = medmnist_info(flag)
    if size not in SIZES:
        raise ConfigError(f"data.options.size={size!r}: MedMNIST 2D files come in sizes {list(SIZES)}")
    return info


def _open_npz(path: Path, flag: str, root: str | os.PathLike) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        present = sorted(p.name for p in Path(root).glob(f"{flag}*.npz")) if Path(root).is_dir() else []
        raise DataError(f"MedMNIST file {path.name!r} not found in root {str(root)!r}"
                        + (f" (found {present})" if present else "")
                        + "; place the official .npz there (mmdiag never downloads)", path=str(path))
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure is reported with the file
        raise DataError(f"cannot read {str(path)!r}: {type(e).__name__}: {e}", path=str(path)) from e
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in z.files]
    if missing:
        raise DataError(f"{str(path)!r} lacks key(s) {missing}; it has {z.files}", path=str(path))
    return z


def read_split_labels(root: str | os.PathLike, flag: str, size: int, split: str) -> np.ndarray:
    """The official label array ``(N, L)`` of one split, exactly as stored (what the official evaluator scores)."""
    _check_options(flag, size)
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {list(SPLITS)}")
    path = npz_path(root, flag, size)
    with _open_npz(path, flag, root) as z:
        return z[f"{split}_labels"]


def _extract(path: Path, key: str, folder: Path) -> np.ndarray:
    """Member ``key`` of an ``.npz`` as a read-only memory map of ``folder/<key>.npy``, decompressed once.

    The member is streamed in chunks, so memory use stays small whatever the array's size.
    """
    dest = folder / f"{key}.npy"
    if not dest.is_file() or dest.stat().st_mtime < path.stat().st_mtime:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as src:
            version = np.lib.format.read_magic(src)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(src)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape, fortran_order=fortran)
            flat = out.reshape(-1, order="F" if fortran else "C").view(np.uint8)
            pos, chunk = 0, 1 << 24
            while pos < flat.size:
                data = src.read(min(chunk, flat.size - pos))
                if not data:
                    raise DataError(f"{str(path)!r}: member {key!r} is truncated", path=str(path))
                flat[pos: pos + len(data)] = np.frombuffer(data, dtype=np.uint8)
                pos += len(data)
            out.flush()
            del out, flat
        os.replace(tmp, dest)
    return np.load(dest, mmap_mode="r")


def _task(info: dict[str, Any]) -> TaskSpec:
    return TaskSpec(type=TASK_TYPES[info["task"]], classes=tuple(info["label"]))


def _labels(flag: str, task: TaskSpec, raw: np.ndarray, split: str, path: Path) -> np.ndarray:
    """Encoded labels of one split: (N,) int class indices, or (N, K) float32 multi-hot for multi-label tasks."""
    k = len(task.classes)
    width = k if task.type == "multilabel" else 1
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.ndim != 2 or raw.shape[1] != width:
        raise DataError(f"{str(path)!r}: {split}_labels has shape {raw.shape}; {flag} expects (N, {width})",
                        path=str(path))
    hi = 1 if task.type == "multilabel" else k - 1
    bad = (raw < 0) | (raw > hi)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(f"{str(path)!r}: {split}_labels row {row} holds {raw[row].tolist()}; allowed values 0..{hi} "
                        f"for {flag} classes {list(task.classes)}", case_id(split, row), str(path))
    return raw.astype(np.float32) if task.type == "multilabel" else raw[:, 0].astype(np.int64)


@dataclass
class MedMNISTTable(CaseTable):
    """A MedMNIST dataset; with ``interpolation="nearest"`` images are resized by nearest neighbour (as PIL's
    ``NEAREST``, which the MedMNIST v2 benchmark code uses to upsample 28 → 224) instead of the reader's bilinear."""

    interpolation: Literal["bilinear", "nearest"] = "bilinear"

    def read(self, case: CaseRecord, modality: str, *, train: bool, rng: np.random.Generator,
             cache: DecodeCache | None = None) -> torch.Tensor:
        spec = self.spec.modalities[modality]
        array = case.inputs[modality]
        if self.interpolation == "bilinear" or tuple(array.shape[:2]) == tuple(spec.size):
            return super().read(case, modality, train=train, rng=rng, cache=cache)
        x = read_image(array, spec.model_copy(update={"size": tuple(array.shape[:2])}), case_id=case.case_id)
        return F.interpolate(x[None], size=spec.size, mode="nearest-exact")[0]


@DATASETS.register
def medmnist(root: str, flag: str | None = None, size: int = 28, as_rgb: bool = False, image_size: int | None = None,
             interpolation: Literal["bilinear", "nearest"] = "bilinear", normalize: bool = True,
             extract_dir: str | None = None) -> MedMNISTTable:
    """MedMNIST 2D datasets (12 flags, sizes 28-224) from the official .npz files, official split and labels.

    Args:
        root: folder holding ``<flag>.npz`` / ``<flag>_<size>.npz``.
        flag: which dataset, e.g. ``pathmnist`` (see :data:`FLAGS`).
        size: stored image size: 28, 64, 128 or 224 (MedMNIST+).
        as_rgb: give grey datasets 3 channels (the official ``as_rgb``).
        image_size: side the images are resized to (default: ``size``), e.g. 224 as in the MedMamba paper.
        interpolation: how they are resized: ``bilinear`` (antialiased, the reader's default) or ``nearest`` (the
            MedMNIST v2 benchmark code's upsampling).
        normalize: normalise with mean 0.5 and std 0.5 per channel, as the official examples and MedMamba's code do.
        extract_dir: decompress the arrays once into ``<extract_dir>/<file stem>/`` and memory-map them (for the large
            files); default: hold them in memory.

    Raises:
        ConfigError: no flag, or a size without official files (valid ones listed).
        UnknownNameError: an unknown flag (close matches offered).
        DataError: the file is missing (naming it and the root), lacks a key, or holds bad shapes or labels.
    """
    info = _check_options(flag, size)
    if interpolation not in ("bilinear", "nearest"):
        raise ConfigError(f"data.options.interpolation={interpolation!r}; use 'bilinear' or 'nearest'")
    path = npz_path(root, flag, size)
    task = _task(info)
    cases: list[CaseRecord] = []
    channels = None
    with _open_npz(path, flag, root) as z:
        for split in SPLITS:
            images = (_extract(path, f"{split}_images", Path(extract_dir) / path.stem) if extract_dir
                      else z[f"{split}_images"])
            raw = z[f"{split}_labels"]
            if images.ndim not in (3, 4) or images.shape[1:3] != (size, size) or \
                    (images.ndim == 4 and images.shape[3] != 3) or len(images) != len(raw):
                raise DataError(f"{str(path)!r}: {split}_images has shape {images.shape}; expected (N, {size}, {size})"
                                f" or (N, {size}, {size}, 3) with N = {len(raw)} labels", path=str(path))
            here = 1 if images.ndim == 3 else 3
            if channels not in (None, here):
                raise DataError(f"{str(path)!r}: splits disagree on the channel count", path=str(path))
            channels = here
            labels = _labels(flag, task, raw, split, path)
            as_item = labels.ndim == 1  # class index as a Python int; multi-label rows stay views
            for i in range(len(images)):
                cid = case_id(split, i)
                y = int(labels[i]) if as_item else labels[i]
                cases.append(CaseRecord(cid, cid, {"image": images[i]}, {flag: y}, split))
    if channels != info["n_channels"]:
        _log.warning("%s stores %d-channel images; the official INFO says %d", path, channels, info["n_channels"])
    channels = 3 if as_rgb else channels
    side = image_size or size
    image = ImageModality(channels=channels, size=(side, side), mean=(0.5,) * channels if normalize else None,
                          std=(0.5,) * channels if normalize else None)
    spec = DatasetSpec(name=flag if size == 28 else f"{flag}_{size}", modalities={"image": image}, tasks={flag: task})
    return MedMNISTTable(spec, cases, root=Path(root), official_split=True, interpolation=interpolation)
