"""Tiny MedMNIST ``.npz`` files with the keys, dtypes and shapes of the official ones (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmdiag.data.adapters.medmnist import SPLITS, TASK_TYPES, medmnist_info, npz_path

__all__ = ["write_medmnist"]


def _labels(task: str, n_classes: int, n: int, offset: int) -> np.ndarray:
    """(n, L) uint8 labels in which every class (multi-label: both values of every label) occurs when n allows."""
    i = np.arange(n)[:, None]
    if task == "multilabel":
        return ((i + offset + np.arange(n_classes)[None]) % 2).astype(np.uint8)
    return ((i + offset) % n_classes).astype(np.uint8)


def write_medmnist(root: str | Path, flag: str, size: int = 28, n: tuple[int, int, int] | None = None,
                   seed: int = 0) -> Path:
    """Write ``<root>/<flag>.npz`` (size 28) or ``<root>/<flag>_<size>.npz`` like the official files.

    Keys ``train_images, val_images, test_images, train_labels, val_labels, test_labels`` (that order), compressed;
    images uint8 ``(N, size, size)`` for grey datasets and ``(N, size, size, 3)`` for RGB ones; labels uint8 ``(N, 1)``
    (ChestMNIST ``(N, 14)``). Each image shows its label: a bright square whose position encodes the (first) class,
    so a model can learn it.

    Args:
        n: cases per split (train, val, test); default ``(2C, C, C)`` (C classes; multi-label: ``(8, 4, 4)``), so every
            class appears in every split.

    Returns:
        The path of the written file.
    """
    info = medmnist_info(flag)
    task = TASK_TYPES[info["task"]]
    n_classes = len(info["label"])
    if n is None:
        n = (8, 4, 4) if task == "multilabel" else (2 * n_classes, n_classes, n_classes)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    cell = max(1, size // 4)
    for k, (split, count) in enumerate(zip(SPLITS, n)):
        y = _labels(task, n_classes, count, offset=k)
        shape = (count, size, size) + ((3,) if info["n_channels"] == 3 else ())
        img = rng.integers(0, 80, shape, dtype=np.uint8)
        for j, c in enumerate(y[:, 0] if task != "multilabel" else y.argmax(1)):
            r, q = divmod(int(c) % 16, 4)
            img[j, r * cell: (r + 1) * cell, q * cell: (q + 1) * cell] = 230
        arrays[f"{split}_images"] = img
        labels[f"{split}_labels"] = y
    path = npz_path(root, flag, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays, **labels)
    return path
