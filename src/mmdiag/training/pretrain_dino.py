"""``mmdiag pretrain dino``: DINO pre-training of a window encoder on 256² windows of dermoscopy images.

Windows (RemixFormer++ §IV-B): each image is resized to ``resize``² (1024 for ISIC) and cut into non-overlapping
``window``² tiles, row-major, as the HRWE cuts its input; a ``native_fraction`` of the images (the paper: 10,000 of
the 33,569 ISIC 2019 images) is cut at its native resolution instead (the remainder of a side that does not fill a
window is dropped). Images come from a folder (searched recursively; ISIC's ``*_superpixels.png``,
``*_segmentation.png`` and ``*_attribute_*.png`` are skipped) or from a dataset adapter's image modality.

Output (``out_dir``): ``teacher_backbone.safetensors`` (the paper's pre-trained T_φ1: "the final teacher network") and
``student_backbone.safetensors``, both plain backbone state dicts in mmdiag's ViT names, loadable with
``create_model(model, checkpoint=...)``; ``dino_config.json``; Lightning's CSV log under ``logs/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmdiag.errors import ConfigError, DataError
from mmdiag.io.atomic import atomic_write_text
from mmdiag.io.checkpoint import save_weights

__all__ = ["DINOConfig", "DINOResult", "WindowImages", "folder_images", "dataset_images", "pretrain_dino"]

_log = logging.getLogger(__name__)
_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
_SKIP = ("_superpixels", "_segmentation", "_attribute_")


@dataclass
class DINOConfig:
    """Options of a DINO pre-training run (defaults: RemixFormer++ where it says, else the official DINO recipe).

    ``lr`` is for a batch of 256 and scaled linearly; ``max_steps`` (> 0) stops early (smoke runs).
    """

    model: str = "dino_vits16"
    model_options: dict[str, Any] = field(default_factory=dict)
    window: int = 256
    resize: int = 1024
    native_fraction: float = 0.0
    global_size: int = 256
    local_size: int = 96
    n_local: int = 8
    epochs: int = 100
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float = 3.0
    freeze_last_layer: int = 1
    drop_path_rate: float = 0.1
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    num_workers: int = 0
    accelerator: str = "auto"
    precision: str = "32-true"
    seed: int = 0
    max_steps: int = -1


@dataclass
class DINOResult:
    """Paths written by :func:`pretrain_dino` and the per-step training loss."""

    teacher: Path
    student: Path
    losses: list[float]


def folder_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), without ISIC's superpixel/segmentation/attribute masks.

    Raises:
        DataError: the folder does not exist or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"DINO: image folder {str(root)!r} does not exist", path=str(root))
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file()
                   and not any(s in p.stem for s in _SKIP))
    if not paths:
        raise DataError(f"DINO: no image ({sorted(_SUFFIXES)}) under {str(root)!r}", path=str(root))
    return paths


def dataset_images(name: str, root: str, modality: str, options: dict[str, Any] | None = None) -> list[Path]:
    """Image files of ``modality`` over every case of the registered dataset ``name`` (cases without it skipped).

    Raises:
        UnknownNameError: no such dataset. ConfigError: the modality is not one of the dataset's image modalities.
    """
    import mmdiag.data.adapters  # noqa: F401  (registers the adapters)
    from mmdiag.registry import DATASETS

    table = DATASETS.get(name)(root=root, **(options or {}))
    images = table.spec.of_kind("image")
    if modality not in images:
        raise ConfigError(f"DINO: dataset {name!r} has image modalities {images}, not {modality!r}")
    paths = []
    for case in table.cases:
        value = case.inputs.get(modality)
        if isinstance(value, (list, tuple)):
            paths.extend(Path(v) for v in value)
        elif isinstance(value, (str, Path)):
            paths.append(Path(value))
    if not paths:
        raise DataError(f"DINO: dataset {name!r} has no {modality!r} image files")
    return paths


class WindowImages(Dataset):
    """Every ``window``² tile of every image, as ``(3, window, window)`` floats in [0, 1] (module docstring).

    Args:
        paths: image files.
        window: tile side.
        resize: side the images are resized to before tiling (0: every image at native resolution).
        native_fraction: share of the images (drawn with ``seed``) tiled at native resolution.
        seed: the draw of the native-resolution images.

    Raises:
        DataError: an image cannot be read, or no image yields a window.
    """

    def __init__(self, paths: list[Path], window: int = 256, resize: int = 1024, native_fraction: float = 0.0,
                 seed: int = 0):
        from PIL import Image

        if window < 1 or resize < 0 or resize and resize < window:
            raise ConfigError(f"DINO: window={window} must be >= 1 and resize={resize} 0 or >= the window")
        if not 0.0 <= native_fraction <= 1.0:
            raise ConfigError(f"DINO: native_fraction={native_fraction} must be in [0, 1]")
        rng = np.random.default_rng(seed)
        native = set(rng.choice(len(paths), round(native_fraction * len(paths)), replace=False).tolist())
        if not resize:
            native = set(range(len(paths)))
        self.window = window
        self.items: list[tuple[Path, int, int, int]] = []  # path, resize side (0 = native), row, column
        skipped = 0
        for i, path in enumerate(paths):
            if i in native:
                try:
                    with Image.open(path) as im:
                        w, h = im.size
                except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file
                    raise DataError(f"DINO: cannot read image {str(path)!r}: {e}", path=str(path)) from e
                side, rows, cols = 0, h // window, w // window
            else:
                side, rows, cols = resize, resize // window, resize // window
            skipped += rows * cols == 0
            self.items.extend((path, side, r, c) for r in range(rows) for c in range(cols))
        if skipped:
            _log.warning("DINO: %d image(s) smaller than one %d px window were skipped", skipped, window)
        if not self.items:
            raise DataError(f"DINO: none of the {len(paths)} images yields a {window}x{window} window")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path, side, r, c = self.items[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if side:
                    im = im.resize((side, side), Image.BICUBIC)
                w = self.window
                tile = np.asarray(im.crop((c * w, r * w, (c + 1) * w, (r + 1) * w)), dtype=np.float32) / 255.0
        except OSError as e:
            raise DataError(f"DINO: cannot read image {str(path)!r}: {e}", path=str(path)) from e
        return torch.from_numpy(tile).permute(2, 0, 1).contiguous()


def pretrain_dino(paths: list[Path], out_dir: str | Path, cfg: DINOConfig | None = None) -> DINOResult:
    """Pre-train ``cfg.model`` with DINO on the windows of ``paths``; write the backbones to ``out_dir``.

    Raises:
        ConfigError: ``out_dir`` already holds a result, or an option is out of range.
        DataError: fewer windows than one batch, or an unreadable image.
    """
    from lightning.pytorch.loggers import CSVLogger

    from mmdiag.models import create_model
    from mmdiag.training.dino import DINOModule, MultiCrop

    cfg = cfg or DINOConfig()
    out = Path(out_dir)
    teacher_path, student_path = out / "teacher_backbone.safetensors", out / "student_backbone.safetensors"
    if teacher_path.exists():
        raise ConfigError(f"DINO: {str(teacher_path)!r} exists; choose another output folder")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = WindowImages(paths, cfg.window, cfg.resize, cfg.native_fraction, cfg.seed)
    if len(data) < cfg.batch_size:
        raise DataError(f"DINO: {len(data)} windows from {len(paths)} images, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size or add images")
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    backbone = create_model(cfg.model, **{"num_classes": 0, "drop_path_rate": cfg.drop_path_rate,
                                          **cfg.model_options})
    module = DINOModule(
        backbone, MultiCrop(cfg.global_size, cfg.local_size, cfg.n_local), epochs=cfg.epochs,
        steps_per_epoch=len(loader), lr=cfg.lr, batch_size=cfg.batch_size, min_lr=cfg.min_lr,
        warmup_epochs=cfg.warmup_epochs, weight_decay=cfg.weight_decay, weight_decay_end=cfg.weight_decay_end,
        momentum_teacher=cfg.momentum_teacher, clip_grad=cfg.clip_grad, freeze_last_layer=cfg.freeze_last_layer,
        head={"out_dim": cfg.out_dim, "hidden_dim": cfg.hidden_dim, "bottleneck_dim": cfg.bottleneck_dim,
              "norm_last_layer": cfg.norm_last_layer},
        loss={"student_temp": cfg.student_temp, "teacher_temp": cfg.teacher_temp,
              "warmup_teacher_temp": cfg.warmup_teacher_temp,
              "warmup_teacher_temp_epochs": cfg.warmup_teacher_temp_epochs})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "dino_config.json", json.dumps({**asdict(cfg), "images": len(paths),
                                                            "windows": len(data)}, indent=2))
    trainer = L.Trainer(max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator, devices=1,
                        precision=cfg.precision, logger=CSVLogger(out / "logs", name="csv", version=""),
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        log_every_n_steps=1, default_root_dir=out)
    trainer.fit(module, loader)
    meta = {"model": cfg.model, "model_options": json.dumps(cfg.model_options), "method": "dino"}
    save_weights(module.backbone_state("teacher"), teacher_path, {**meta, "network": "teacher"})
    save_weights(module.backbone_state("student"), student_path, {**meta, "network": "student"})
    return DINOResult(teacher_path, student_path, list(module.history))
