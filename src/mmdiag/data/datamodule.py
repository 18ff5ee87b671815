"""The Lightning data module: splits, fitted tabular encoders, datasets and loaders."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from mmdiag.config.schema import DataConfig
from mmdiag.data.dataset import CaseDataset, EpochSampler, collate_cases
from mmdiag.data.readers import DecodeCache
from mmdiag.data.splits import Split, make_split, stratify_labels
from mmdiag.data.table import CaseTable
from mmdiag.data.tabular import TabularEncoder
from mmdiag.data.transforms import build_volume_transform
from mmdiag.errors import ConfigError

__all__ = ["MultimodalDataModule"]

_log = logging.getLogger(__name__)


class MultimodalDataModule(L.LightningDataModule):
    """Splits a :class:`CaseTable` by patient, fits tabular encoders on the training cases, and serves loaders.

    Args:
        table: the dataset.
        cfg: the ``data`` section of the experiment config.
        seed: experiment seed (split seed defaults to it; sampling and per-case randomness derive from it).
        split: a fixed split (e.g. read back from a run folder); default: made from ``cfg.split``.
        encoder_state: fitted tabular statistics (from a run folder); default: fitted on the training split.
    """

    def __init__(self, table: CaseTable, cfg: DataConfig, seed: int = 0, split: Split | None = None,
                 encoder_state: dict[str, dict[str, list[float]]] | None = None):
        super().__init__()
        self.table, self.cfg, self.seed = table, cfg, seed
        self.modalities = list(cfg.modalities or table.spec.modalities)
        unknown = [m for m in self.modalities if m not in table.spec.modalities]
        if unknown:
            raise ConfigError(f"data.modalities names {unknown}; dataset {table.spec.name!r} has "
                              f"{list(table.spec.modalities)}")
        self.spec = table.spec.restrict(self.modalities)
        self.split = split
        self.encoder_state = encoder_state
        self.encoders: dict[str, TabularEncoder] = {}
        self.datasets: dict[str, CaseDataset] = {}
        self.bad_cases: list[dict[str, str]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.split is None:
            s = self.cfg.split
            self.split = make_split(self.table, s.kind, folds=s.folds, fold=s.fold, val_fraction=s.val_fraction,
                                    seed=self.seed if s.seed is None else s.seed)
        train_cases = [self.table.cases[i] for i in self.split["train"]]
        for m in self.spec.of_kind("tabular"):
            enc = TabularEncoder(self.spec.modalities[m], scaling=self.cfg.tabular_scaling)
            if self.encoder_state and m in self.encoder_state:
                enc.stats = {k: tuple(v) for k, v in self.encoder_state[m].items()}
            else:
                enc.fit(c.inputs.get(m) for c in train_cases if self.table.present(c, m))
            self.encoders[m] = enc
        cache = DecodeCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        volume_tf = build_volume_transform(self.cfg.augment.get("volume", []))
        for name, idx in self.split.items():
            ds = CaseDataset(self.table, idx, self.encoders, modalities=self.modalities, train=name == "train",
                             seed=self.seed, cache=cache, volume_transform=volume_tf)
            if self.cfg.verify:
                self.bad_cases += [{**b, "split": name} for b in ds.verify(self.cfg.on_bad_case)]
            self.datasets[name] = ds

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, name: str, train: bool) -> DataLoader:
        ds = self.datasets[name]
        world, rank = self._world()
        batch = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        if batch % world:
            raise ConfigError(f"data.batch_size={batch} is the global batch; it must divide evenly over {world} "
                              f"processes")
        weights = self._oversample_weights(ds) if train and self.cfg.sampling == "oversample" else None
        sampler = EpochSampler(len(ds), seed=self.seed, weights=weights, shuffle=train, num_replicas=world, rank=rank)
        return DataLoader(ds, batch_size=batch // world, sampler=sampler, collate_fn=collate_cases,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def _oversample_weights(self, ds: CaseDataset) -> np.ndarray:
        strata = stratify_labels(self.table)[ds.indices]
        counts = {s: (strata == s).sum() for s in np.unique(strata)}
        return np.array([1.0 / counts[s] for s in strata])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def loader(self, name: str) -> DataLoader:
        """An evaluation loader over split ``name`` (no shuffling)."""
        return self._loader(name, False)

    def state(self) -> dict[str, Any]:
        """What a run folder keeps to rebuild this data module exactly: the split and the encoders' statistics."""
        return {"split": self.split, "encoders": {m: e.state() for m, e in self.encoders.items()}}
