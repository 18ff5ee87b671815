"""Disease-wise pairing ("remix", RemixFormer, MICCAI 2022, ref. [15] of paper 001) for training with unpaired cases.

A training case that lacks a modality borrows it from another training case with the same label of the main task
that has it; with ``swap_p`` > 0 a present modality is also exchanged with such a donor (augmentation). Donors come
from the dataset's own cases only, so a training fold never receives data from its validation or test cases.
Choice: the MICCAI text was not available; this follows the one-line description in paper 001 (pair modalities of
different patients with the same diagnosis). Off by default (``data.pairing: none``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmdiag.data.dataset import CaseDataset

__all__ = ["DiseasePairedDataset"]


class DiseasePairedDataset(CaseDataset):
    """A :class:`CaseDataset` whose cases borrow missing modalities from same-label cases of the same dataset.

    Args:
        *args, **kwargs: as :class:`CaseDataset`.
        task: the task whose labels define "same disease" (single-label; cases with label -1 are never donors).
        swap_p: probability of exchanging each present modality with a donor's as well.
    """

    def __init__(self, *args: Any, task: str, swap_p: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.task, self.swap_p = task, swap_p
        self._donors: dict[tuple[str, int], np.ndarray] = {}
        for m in self.modalities:
            for i in self.indices:
                case = self.table.cases[i]
                y = int(case.labels[task])
                if y >= 0 and self.table.present(case, m):
                    self._donors.setdefault((m, y), [])
                    self._donors[(m, y)].append(i)
        self._donors = {k: np.array(v) for k, v in self._donors.items()}

    def __getitem__(self, item: int) -> dict[str, Any]:
        out = super().__getitem__(item)
        index = self.indices[item]
        y = int(self.table.cases[index].labels[self.task])
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        for m in self.modalities:
            pool = self._donors.get((m, y))
            if pool is None or (out["present"][m] and rng.random() >= self.swap_p):
                continue
            pool = pool[pool != index]
            if len(pool):
                out["inputs"][m] = self.load(int(rng.choice(pool)), m, rng)
                out["present"][m] = True
        return out
