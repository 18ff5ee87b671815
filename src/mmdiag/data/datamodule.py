"""The Lightning data module: splits, fitted tabular encoders, datasets and loaders."""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from mmdiag.config.schema import DataConfig, ExperimentConfig
from mmdiag.data.dataset import CaseDataset, EpochSampler, collate_cases
from mmdiag.data.readers import DecodeCache
from mmdiag.data.sources import load_table
from mmdiag.data.splits import Split, make_split, stratum_names
from mmdiag.data.table import CaseTable
from mmdiag.data.tabular import TabularEncoder
from mmdiag.data.transforms import build_volume_transform
from mmdiag.errors import ConfigError, did_you_mean

__all__ = ["MultimodalDataModule", "datamodule_for"]

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
        for m in cfg.modality_dropout:
            if m not in self.modalities:
                raise ConfigError(f"data.modality_dropout.{m}: {m!r} is not a modality of this run"
                                  + did_you_mean(m, self.modalities)
                                  + f" (modalities: {self.modalities})")
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
                cases = [c for c in train_cases if self.table.present(c, m)]
                enc.fit([c.inputs.get(m) for c in cases], [c.case_id for c in cases])
            self.encoders[m] = enc
        cache = DecodeCache(self.cfg.cache_dir) if self.cfg.cache_dir else None
        volume_tf = build_volume_transform(self.cfg.augment.get("volume", []))
        for name, idx in self.split.items():
            ds = self._dataset_class(name)(self.table, idx, self.encoders, modalities=self.modalities,
                                           train=name == "train", seed=self.seed, cache=cache,
                                           volume_transform=volume_tf,
                                           modality_dropout=self.cfg.modality_dropout if name == "train" else None)
            if self.cfg.verify:
                self.bad_cases += [{**b, "split": name} for b in ds.verify(self.cfg.on_bad_case)]
            self.datasets[name] = ds

    def _dataset_class(self, name: str) -> Callable[..., CaseDataset]:
        """``CaseDataset``, or for the training split with ``data.pairing=disease`` the disease-paired one."""
        if name != "train" or self.cfg.pairing == "none":
            return CaseDataset
        task = self.spec.main_task
        if self.spec.tasks[task].type == "multilabel":
            raise ConfigError(f"data.pairing=disease pairs cases by the label of the main task {task!r}, which is "
                              "multi-label; set data.pairing=none or make a single-label task primary")
        from mmdiag.data.pairing import DiseasePairedDataset

        return functools.partial(DiseasePairedDataset, task=task, swap_p=self.cfg.pairing_swap_p)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, name: str, train: bool, sharded: bool = True) -> DataLoader:
        ds = self.datasets[name]
        world, rank = self._world() if sharded else (1, 0)
        batch = self.cfg.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        if batch % world:
            raise ConfigError(f"data.batch_size={batch} is the global batch; it must divide evenly over {world} "
                              f"processes")
        weights = self._oversample_weights(ds) if train and self.cfg.sampling == "oversample" else None
        sampler = EpochSampler(len(ds), seed=self.seed, weights=weights, shuffle=train, num_replicas=world, rank=rank,
                               num_samples=self.cfg.epoch_size if weights is not None else None)
        return DataLoader(ds, batch_size=batch // world, sampler=sampler, collate_fn=collate_cases,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def _oversample_weights(self, ds: CaseDataset) -> np.ndarray:
        """Per training case: its stratum's share (``data.oversample_shares``, default equal) / the stratum's size."""
        strata = stratum_names(self.table, ds.indices)
        counts = Counter(strata)
        shares = self.cfg.oversample_shares or dict.fromkeys(counts, 1.0)
        unnamed = sorted(set(counts) - set(shares))
        unknown = sorted(set(shares) - set(counts))
        if unnamed or unknown:
            raise ConfigError(
                "data.oversample_shares must name every stratum of the training cases: "
                + (f"missing {unnamed}; " if unnamed else "") + (f"not in the training cases {unknown}; " if unknown
                                                                else "")
                + f"strata (main task {self.table.spec.main_task!r}): {dict(counts)}")
        return np.array([shares[s] / counts[s] for s in strata])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def loader(self, name: str) -> DataLoader:
        """An evaluation loader over the whole split ``name`` (no shuffling), never sharded over DDP ranks: the
        process that uses it sees every case exactly once."""
        return self._loader(name, False, sharded=False)

    def state(self) -> dict[str, Any]:
        """What a run folder keeps to rebuild this data module exactly: the split and the encoders' statistics."""
        return {"split": self.split, "encoders": {m: e.state() for m, e in self.encoders.items()}}


def datamodule_for(cfg: ExperimentConfig, run_dir: Path | None = None) -> MultimodalDataModule:
    """The data module of ``cfg``; with the folder of an existing run, its saved split and tabular statistics."""
    table = load_table(cfg.data.dataset, cfg.data.root, cfg.data.options)
    split = encoders = None
    if run_dir is not None and (run_dir / "splits.json").is_file():
        saved = json.loads((run_dir / "splits.json").read_text())
        pos = {c.case_id: i for i, c in enumerate(table.cases)}
        split = {k: [pos[c] for c in ids if c in pos] for k, ids in saved["split"].items()}
        encoders = saved["encoders"]
    return MultimodalDataModule(table, cfg.data, seed=cfg.seed, split=split, encoder_state=encoders)
