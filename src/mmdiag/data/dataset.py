"""The torch ``Dataset`` of cases, its collate function and the epoch-seeded sampler."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mmdiag.data.readers import DecodeCache
from mmdiag.data.tabular import TabularEncoder
from mmdiag.data.table import CaseTable
from mmdiag.errors import DataError

__all__ = ["CaseDataset", "collate_cases", "EpochSampler"]

_log = logging.getLogger(__name__)


class CaseDataset(Dataset):
    """Cases of a :class:`CaseTable` (a subset by index) decoded to the case dict of :mod:`mmdiag.data.schema`.

    Randomness (which of several files to read, 3D augmentation) comes from a generator seeded by
    (seed, epoch, case index), so a resumed run and data-loader workers reproduce it exactly.

    Args:
        table: the dataset.
        indices: which cases.
        encoders: a fitted :class:`TabularEncoder` per tabular modality.
        modalities: the modalities to load (default: all of the spec).
        train: training mode (random choices and 3D augmentation on).
        seed: base seed.
        cache: optional decode cache.
        volume_transform: optional per-case transform of 3D volumes in training (MONAI, see ``transforms``).
    """

    def __init__(self, table: CaseTable, indices: Sequence[int], encoders: dict[str, TabularEncoder], *,
                 modalities: Sequence[str] | None = None, train: bool = False, seed: int = 0,
                 cache: DecodeCache | None = None, volume_transform: Callable | None = None):
        self.table = table
        self.indices = list(indices)
        self.encoders = encoders
        self.modalities = list(modalities or table.spec.modalities)
        self.train = train
        self.seed = seed
        self.cache = cache
        self.volume_transform = volume_transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def case_ids(self) -> list[str]:
        return [self.table.cases[i].case_id for i in self.indices]

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = self.indices[item]
        case = self.table.cases[index]
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 0, index])
        inputs, present = {}, {}
        for m in self.modalities:
            present[m] = self.table.present(case, m)
            inputs[m] = self.load(index, m, rng)
        labels = {t: torch.as_tensor(v, dtype=torch.float32 if np.ndim(v) else torch.long)
                  for t, v in case.labels.items()}
        return {"case_id": case.case_id, "index": index, "inputs": inputs, "present": present, "labels": labels}

    def load(self, index: int, m: str, rng: np.random.Generator) -> torch.Tensor:
        """Modality ``m`` of table case ``index`` as the model sees it (zeros / an all-zero record when missing)."""
        case = self.table.cases[index]
        spec = self.table.spec.modalities[m]
        here = self.table.present(case, m)
        if spec.kind == "tabular":
            return self.encoders[m].encode(case.inputs.get(m) if here else None, case_id=case.case_id)
        if not here:
            return torch.zeros(spec.shape)
        x = self.table.read(case, m, train=self.train, rng=rng, cache=self.cache)
        if spec.kind == "volume" and self.train and self.volume_transform is not None:
            x = self.volume_transform(x, int(rng.integers(2**31)))
        return x

    def verify(self, on_bad_case: str) -> list[dict[str, str]]:
        """Decode every case once. Returns the bad cases (``on_bad_case='skip'``, which also drops them).

        Raises:
            DataError: the first unreadable case when ``on_bad_case='error'`` (naming the case and the file).
        """
        bad, keep = [], []
        for item, index in enumerate(self.indices):
            try:
                self[item]
            except DataError as e:
                if on_bad_case == "error":
                    raise
                _log.warning("skipping case: %s", e)
                bad.append({"case_id": self.table.cases[index].case_id, "file": e.path or "", "error": str(e)})
                continue
            keep.append(index)
        self.indices = keep
        return bad


def collate_cases(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack case dicts into a batch: tensors gain a batch axis, ``present`` becomes a bool tensor (B,)."""
    first = cases[0]
    return {
        "case_id": [c["case_id"] for c in cases],
        "index": torch.tensor([c["index"] for c in cases]),
        "inputs": {m: torch.stack([c["inputs"][m] for c in cases]) for m in first["inputs"]},
        "present": {m: torch.tensor([c["present"][m] for c in cases]) for m in first["present"]},
        "labels": {t: torch.stack([c["labels"][t] for c in cases]) for t in first["labels"]},
    }


class EpochSampler(Sampler[int]):
    """Shuffled (optionally class-weighted) order, seeded by (seed, epoch), sharded over DDP ranks.

    Rank ``r`` of ``R`` takes positions ``r, r + R, ...`` of one global order, so with a global batch ``B`` and a
    per-rank batch ``B / R`` the union of the ranks' i-th batches is exactly the single-process i-th batch.

    Args:
        n: dataset length.
        seed: base seed.
        weights: optional per-item sampling weights (oversampling draws ``n`` items with replacement).
        shuffle: shuffle at all (evaluation loaders do not).
        num_replicas: number of ranks; rank: this rank.
    """

    def __init__(self, n: int, *, seed: int = 0, weights: Sequence[float] | None = None, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.per_rank = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.num_replicas
        order += order[: total - len(order)]  # pad so every rank gets as many items
        return iter(order[self.rank:total:self.num_replicas])

    def __len__(self) -> int:
        return self.per_rank
