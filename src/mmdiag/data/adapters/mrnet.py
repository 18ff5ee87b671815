"""MRNet (Bien et al., PLoS Medicine 2018): knee MRI in three planes; abnormality, ACL tear, meniscal tear.

Layout read (``data.root`` = ``MRNet-v1.0``)::

    train/{axial,coronal,sagittal}/<id>.npy     ids 0000-1129; uint8 arrays (S, 256, 256), S varies per exam and plane
    valid/{axial,coronal,sagittal}/<id>.npy     ids 1130-1249
    {train,valid}-{abnormal,acl,meniscus}.csv   no header; rows "<id>,<0|1>" (ids zero-padded or not)

One case per exam (its own patient). The hidden MRNet test set is not public, so ``valid`` serves as the **test**
split, as in EI.

Modalities ``axial``, ``coronal``, ``sagittal``: each a stack of ``num_slices`` (default 4) slices, sampled as EI does
(``uni_spaced_sampling``): the index range [0, S-1] is cut into ``num_slices`` equal bins of width
``step = (S-1)/num_slices``; evaluation takes the bin centres ``step/2 + i*step``, training adds a uniform jitter in
``±step/2`` to each (one random slice per bin, drawn from the per-case ``rng``); indices are rounded half to even
(``np.round``). Slices are scaled by 1/255 and resized to ``image_size``.

How models see a plane: a 2D image modality whose channels are the slices in ascending order, each grey slice
repeated ``slice_channels`` times — with the default 3, channels ``3j..3j+2`` are slice ``j`` as RGB, so a batch is
``(B, 3 * num_slices, H, W)``. EI's per-view ViT reshapes it to ``(B * num_slices, 3, H, W)``, runs the slices
separately and pools them (max over slice logits in the single-modal model and EI's auxiliary branch, mean over
slice tokens in EI's primary branch; see ``mmdiag.models.backbones.vfm``). A 2D CNN simply takes the stack as
input channels; ``slice_channels=1`` gives the compact ``(B, num_slices, H, W)`` stack for that use.

Tasks: ``label_format="multilabel"`` (default, EI's protocol) gives one multi-label task ``findings`` with labels
abnormal, meniscus, acl — EI's ``mapping_mrnet.json`` order, whose per-label AP/AUC EI reports;
``label_format="binary"`` gives the three binary tasks ``abnormal`` (normal/abnormal), ``acl`` and ``meniscus``
(no_tear/tear) of the MRNet paper, in its order.

Splits: ``split="official"`` puts ``train`` exams in train (the validation split is then carved out of them by
``data.split.val_fraction``) and ``valid`` exams in test. ``split="ei"`` reproduces EI's 1010 / 120 / 120: the EI
authors' lists ``mrnet_train_train`` (train), ``mrnet_train_val`` (120 official-train exams held out at random, val)
and ``mrnet_val`` (= the official validation set, test), shipped with mmdiag; labels are cross-checked, exams the
lists do not name are left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmdiag.data.adapters._common import check_choice, missing_file_error, require_file
from mmdiag.data.adapters._ei_splits import ei_split_lists
from mmdiag.data.readers import DecodeCache
from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError, DataError
from mmdiag.registry import DATASETS

__all__ = ["mrnet", "MRNetTable", "PLANES", "FINDINGS", "slice_indices"]

_log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")
FINDINGS = ("abnormal", "meniscus", "acl")  # EI's mapping order (the multi-label task)
_CSV_TASKS = ("abnormal", "acl", "meniscus")  # the release's files, the MRNet paper's order (the binary tasks)
_BINARY_CLASSES = {"abnormal": ("normal", "abnormal"), "acl": ("no_tear", "tear"), "meniscus": ("no_tear", "tear")}
_FOLDERS = {"train": "train", "valid": "test"}  # release folder → mmdiag split


def slice_indices(n: int, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``k`` slice indices of a stack of ``n``: bin centres, or one random slice per bin when ``rng`` is given."""
    step = (n - 1) / k
    centres = step / 2 + step * np.arange(k)
    if rng is not None:
        centres = centres + rng.uniform(-step / 2, step / 2, k)
    return np.round(centres).astype(int)


@dataclass
class MRNetTable(CaseTable):
    """MRNet exams; reading a plane samples ``num_slices`` slices of its volume (module docstring).

    Volumes are memory-mapped and only the sampled slices are read, so the decode cache is not used.
    """

    num_slices: int = 4
    slice_channels: int = 3

    def read(self, case: CaseRecord, modality: str, *, train: bool, rng: np.random.Generator,
             cache: DecodeCache | None = None) -> torch.Tensor:
        """The plane's sampled slices as a ``(num_slices * slice_channels, H, W)`` float tensor in [0, 1].

        Raises:
            DataError: the volume is missing, unreadable or not a 3D (S, H, W) array.
        """
        spec = self.spec.modalities[modality]
        path = Path(case.inputs[modality])
        if not path.is_file():
            raise missing_file_error(case.case_id, path, modality)
        try:
            vol = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the case and file
            raise DataError(f"case {case.case_id!r}: cannot read {modality} volume {str(path)!r}: "
                            f"{type(e).__name__}: {e}", case.case_id, str(path)) from e
        if vol.ndim != 3 or vol.shape[0] < 1:
            raise DataError(f"case {case.case_id!r}: {modality} volume {str(path)!r} has shape {vol.shape}; "
                            f"expected (slices, height, width)", case.case_id, str(path))
        stack = np.asarray(vol[slice_indices(vol.shape[0], self.num_slices, rng if train else None)])
        x = torch.from_numpy(stack.astype(np.float32))
        if stack.dtype == np.uint8:
            x /= 255.0
        else:
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
        if tuple(x.shape[1:]) != tuple(spec.size):
            x = F.interpolate(x.unsqueeze(0), size=spec.size, mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp_(0.0, 1.0)
        return x.repeat_interleave(self.slice_channels, dim=0).contiguous()


def _read_labels(root: Path, folder: str) -> dict[str, dict[str, int]]:
    """Exam id → {task: 0/1} from the three header-less CSVs of one release folder."""
    labels: dict[str, dict[str, int]] = {}
    for task in _CSV_TASKS:
        path = require_file("mrnet", root / f"{folder}-{task}.csv", f"{task} label file")
        df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        if df.shape[1] != 2:
            raise DataError(f"mrnet: {str(path)!r} has {df.shape[1]} columns; expected 2 (id, label), no header",
                            path=str(path))
        seen = set()
        for raw_id, raw_label in zip(df[0].str.strip(), df[1].str.strip()):
            if not raw_id.isdigit():
                raise DataError(f"mrnet: {str(path)!r} has id {raw_id!r}; expected exam numbers (the files have "
                                f"no header row)", path=str(path))
            cid = raw_id.zfill(4)
            if raw_label not in ("0", "1"):
                raise DataError(f"case {cid!r}: {str(path)!r} gives label {raw_label!r}; allowed: ['0', '1']",
                                cid, str(path))
            if task != _CSV_TASKS[0] and cid not in labels:
                raise DataError(f"case {cid!r} is in {str(path)!r} but not in {folder}-{_CSV_TASKS[0]}.csv", cid,
                                str(path))
            labels.setdefault(cid, {})[task] = int(raw_label)
            seen.add(cid)
        missing = sorted(set(labels) - seen)
        if missing:
            raise DataError(f"case {missing[0]!r} (and {len(missing) - 1} more) has no row in {str(path)!r}",
                            missing[0], str(path))
    return labels


def _ei_splits(exams: dict[str, tuple[str, dict[str, int], str]]) -> dict[str, str]:
    """Exam id → split from the EI lists; labels cross-checked against the release's CSVs."""
    split_of = {}
    for split, entries in ei_split_lists("mrnet").items():
        for e in entries:
            cid = Path(e.paths[0][0]).stem
            if cid in exams:
                ours = {t for t, v in exams[cid][1].items() if v}
                if ours != set(e.labels):
                    raise DataError(f"case {cid!r}: the release's CSVs give {sorted(ours)}, the EI list {split!r} "
                                    f"{sorted(e.labels)}; is this the original MRNet-v1.0?", cid)
            split_of[cid] = split
    return split_of


@DATASETS.register
def mrnet(root: str, label_format: str = "multilabel", split: str = "official", num_slices: int = 4,
          slice_channels: int = 3, image_size: int = 256) -> MRNetTable:
    """MRNet: knee MRI, axial + coronal + sagittal slice stacks; abnormal / meniscal tear / ACL tear.

    Args:
        root: the ``MRNet-v1.0`` folder.
        label_format: ``"multilabel"`` (one task ``findings``, EI's order) or ``"binary"`` (three binary tasks).
        split: ``"official"`` (train / valid → test) or ``"ei"`` (the EI authors' 1010 / 120 / 120 lists).
        num_slices: slices sampled per plane.
        slice_channels: 3 (each slice as RGB, for ViTs) or 1 (grey slices stacked as channels).
        image_size: side of the slices the models see (the release's are 256).

    Raises:
        ConfigError: an option value outside its choices.
        DataError: a missing or malformed label CSV (naming the file, the exam and the value).
    """
    check_choice("mrnet", "label_format", label_format, ("multilabel", "binary"))
    check_choice("mrnet", "split", split, ("official", "ei"))
    check_choice("mrnet", "slice_channels", slice_channels, (1, 3))
    if not isinstance(num_slices, int) or num_slices < 1:
        raise ConfigError(f"mrnet: data.options.num_slices={num_slices!r} must be a whole number >= 1")
    base = Path(root)
    exams: dict[str, tuple[str, dict[str, int], str]] = {}
    for folder, our_split in _FOLDERS.items():
        for cid, lab in _read_labels(base, folder).items():
            if cid in exams:
                raise DataError(f"case {cid!r} is in both the train and the valid label files", cid)
            exams[cid] = (folder, lab, our_split)
    if split == "ei":
        split_of = _ei_splits(exams)
        dropped = [c for c in exams if c not in split_of]
        if dropped:
            _log.info("mrnet: split='ei' leaves out %d exam(s) the EI lists do not name", len(dropped))
        exams = {c: (f, lab, split_of[c]) for c, (f, lab, _) in exams.items() if c in split_of}

    if label_format == "multilabel":
        tasks = {"findings": TaskSpec(type="multilabel", classes=FINDINGS)}
    else:
        tasks = {t: TaskSpec(type="binary", classes=_BINARY_CLASSES[t]) for t in _CSV_TASKS}
    size = (image_size, image_size)
    spec = DatasetSpec(name="mrnet",
                       modalities={p: ImageModality(channels=num_slices * slice_channels, size=size) for p in PLANES},
                       tasks=tasks, primary_task=next(iter(tasks)))
    cases = []
    for cid, (folder, lab, s) in sorted(exams.items()):
        if label_format == "multilabel":
            labels = {"findings": np.array([lab[f] for f in FINDINGS], dtype=np.float32)}
        else:
            labels = {t: lab[t] for t in _CSV_TASKS}
        inputs = {p: str(base / folder / p / f"{cid}.npy") for p in PLANES}
        cases.append(CaseRecord(cid, cid, inputs, labels, s))
    return MRNetTable(spec, cases, root=base, official_split=True, num_slices=num_slices,
                      slice_channels=slice_channels)
