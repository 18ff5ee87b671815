"""A dataset as mmdiag sees it: a :class:`DatasetSpec` plus one :class:`CaseRecord` per case.

Adapters (``mmdiag.data.adapters``), the manifest reader and the synthetic generator all return a :class:`CaseTable`;
the rest of the pipeline (splits, :class:`~mmdiag.data.dataset.CaseDataset`, the data module) knows nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmdiag.data.readers import DecodeCache, read_image, read_volume
from mmdiag.data.schema import DatasetSpec, ImageModality, VolumeModality

__all__ = ["CaseRecord", "CaseTable"]


@dataclass
class CaseRecord:
    """One case before decoding.

    Attributes:
        case_id: unique id of the case.
        patient_id: id of the patient (several cases may share one; splits never separate them).
        inputs: per modality, what to read: a file path, a list of paths (the adapter picks), an array, or a dict of
            raw tabular values. A modality absent from ``inputs`` (or ``None``) is missing for this case.
        labels: per task, the encoded label: class index (``-1`` = unknown) or a multi-hot float vector (NaN = unknown).
        split: the dataset's official split of this case ("train", "val", "test"), if it has one.
    """

    case_id: str
    patient_id: str
    inputs: dict[str, Any]
    labels: dict[str, int | np.ndarray]
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseTable:
    """A dataset: its spec and its cases. Subclasses override :meth:`read` for special native formats."""

    spec: DatasetSpec
    cases: list[CaseRecord]
    root: Path | None = None
    official_split: bool = False

    def __len__(self) -> int:
        return len(self.cases)

    def present(self, case: CaseRecord, modality: str) -> bool:
        """Whether ``modality`` is available for ``case``."""
        value = case.inputs.get(modality)
        return value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0)

    def read(self, case: CaseRecord, modality: str, *, train: bool, rng: np.random.Generator,
             cache: DecodeCache | None = None) -> torch.Tensor:
        """Decode one image/volume modality of ``case`` to a float tensor of the spec's shape.

        ``train`` and ``rng`` let adapters choose among several files (e.g. one OCT scan of many) reproducibly.
        """
        spec = self.spec.modalities[modality]
        value = case.inputs[modality]
        if isinstance(value, (list, tuple)):
            value = value[int(rng.integers(len(value)))] if train else value[0]
        if isinstance(spec, ImageModality):
            return read_image(value, spec, case_id=case.case_id, cache=cache)
        if isinstance(spec, VolumeModality):
            return read_volume(value, spec, case_id=case.case_id, cache=cache)
        raise TypeError(f"modality {modality!r} of kind {spec.kind!r} is not read from files")

    def label_matrix(self, task: str) -> np.ndarray:
        """Encoded labels of every case for ``task``: (N,) ints or (N, K) floats."""
        return np.stack([np.asarray(c.labels[task]) for c in self.cases])
