"""The torch ``Dataset`` of cases, its collate function and the epoch-seeded sampler."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mmdiag.data.readers import DecodeCache
from mmdiag.data.tabular import TabularEncoder
from mmdiag.data.table import CaseTable
from mmdiag.errors import DataError

__all__ = ["CaseDataset", "collate_cases", "drop_modalities", "EpochSampler"]

_log = logging.getLogger(__name__)
_DROPOUT_STREAM = 0x6D64  # fourth seed word: modality dropout draws apart from the case's other random draws


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
        modality_dropout: training only: per modality, the probability that a present modality is dropped (see
            :func:`drop_modalities`).
    """

    def __init__(self, table: CaseTable, indices: Sequence[int], encoders: dict[str, TabularEncoder], *,
                 modalities: Sequence[str] | None = None, train: bool = False, seed: int = 0,
                 cache: DecodeCache | None = None, volume_transform: Callable | None = None,
                 modality_dropout: Mapping[str, float] | None = None):
        self.table = table
        self.indices = list(indices)
        self.encoders = encoders
        self.modalities = list(modalities or table.spec.modalities)
        self.train = train
        self.seed = seed
        self.cache = cache
        self.volume_transform = volume_transform
        self.modality_dropout = {m: p for m, p in (modality_dropout or {}).items() if p > 0 and m in self.modalities}
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
        dropped: set[str] = set()
        if self.train and self.modality_dropout:
            dropped = drop_modalities({m: self.table.present(case, m) for m in self.modalities},
                                      self.modality_dropout, (self.seed, self.epoch, index))
        for m in self.modalities:
            here = self.table.present(case, m) and m not in dropped
            present[m] = here
            inputs[m] = self.load(index, m, rng, here)
        labels = {t: torch.as_tensor(v, dtype=torch.float32 if np.ndim(v) else torch.long)
                  for t, v in case.labels.items()}
        return {"case_id": case.case_id, "index": index, "inputs": inputs, "present": present, "labels": labels}

    def load(self, index: int, m: str, rng: np.random.Generator, here: bool | None = None) -> torch.Tensor:
        """Modality ``m`` of table case ``index`` as the model sees it (zeros / an all-zero record when missing).

        Args:
            here: whether to read it (default: whether the case has it; ``False`` for a dropped modality).
        """
        case = self.table.cases[index]
        spec = self.table.spec.modalities[m]
        here = self.table.present(case, m) if here is None else here
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
        rates, self.modality_dropout = self.modality_dropout, {}  # every file is checked, dropped or not
        try:
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
        finally:
            self.modality_dropout = rates
        self.indices = keep
        return bad


def drop_modalities(present: Mapping[str, bool], rates: Mapping[str, float], key: tuple[int, int, int]) -> set[str]:
    """The modalities of one training case to drop: each present one with its rate, never all present ones.

    If the independent draws would drop every present modality, one of them (chosen uniformly) is kept, so the
    realised rate of a modality is slightly below its ``p`` when all of a case's modalities have dropout. The draws
    come from their own generator seeded by ``key`` = (seed, epoch, case index), so they neither disturb the
    reading and augmentation draws nor differ between a resumed and an uninterrupted run.
    """
    rng = np.random.default_rng([*key, _DROPOUT_STREAM])
    here = [m for m, ok in present.items() if ok]
    draws = rng.random(len(here))
    dropped = [m for m, u in zip(here, draws) if u < rates.get(m, 0.0)]
    if here and len(dropped) == len(here):
        dropped.pop(int(rng.integers(len(dropped))))
    return set(dropped)


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
        weights: optional per-item sampling weights (oversampling draws ``num_samples`` items with replacement).
        shuffle: shuffle at all (evaluation loaders do not).
        num_replicas: number of ranks; rank: this rank.
        num_samples: with ``weights``, items drawn per epoch (default ``n``).
    """

    def __init__(self, n: int, *, seed: int = 0, weights: Sequence[float] | None = None, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, num_samples: int | None = None):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_samples = num_samples if weights is not None and num_samples else n
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.per_rank = math.ceil(self.num_samples / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.num_replicas
        order += order[: total - len(order)]  # pad so every rank gets as many items
        return iter(order[self.rank:total:self.num_replicas])

    def __len__(self) -> int:
        return self.per_rank
