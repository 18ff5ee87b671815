"""Modality dropout: training cases lose a modality with probability p, never all of them, and evaluation never."""

import numpy as np
import pytest
import torch

from mmdiag.config.load import load_config
from mmdiag.config.schema import DataConfig
from mmdiag.data.datamodule import MultimodalDataModule
from mmdiag.data.dataset import CaseDataset
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import ConfigError


def _module(table, rates, **kw):
    dm = MultimodalDataModule(table, DataConfig(verify=False, split={"kind": "kfold", "folds": 2}, **kw,
                                                modality_dropout=rates))
    dm.setup()
    return dm


def test_rates_close_to_p_never_all_dropped_and_seeded_per_epoch():
    table = synthetic(n_cases=400, image_size=8)
    rates = {"clinical": 0.5, "dermoscopy": 0.3, "record": 0.2}
    dm = _module(table, rates)
    ds = dm.datasets["train"]
    kept = {m: [] for m in rates}
    for i in range(len(ds)):
        case = ds[i]
        assert any(case["present"].values())  # never every modality
        for m in rates:
            kept[m].append(case["present"][m])
            if not case["present"][m]:
                assert not case["inputs"][m].any()  # a dropped modality's tensor is zeros
    n = len(ds)
    for m, p in rates.items():
        assert abs((1 - np.mean(kept[m])) - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.02, m
    fresh = _module(table, rates).datasets["train"]  # a resumed run rebuilds the data: same (seed, epoch, case)
    assert [fresh[i]["present"] for i in range(40)] == [ds[i]["present"] for i in range(40)]
    changed = 0
    for i in range(60):
        ds.set_epoch(0)
        a = ds[i]["present"]
        ds.set_epoch(1)
        changed += a != ds[i]["present"]
    assert changed > 0  # another epoch draws again


def test_single_present_modality_is_never_dropped():
    table = synthetic(n_cases=60, image_size=8)
    dm = _module(table, {"clinical": 0.9}, modalities=["clinical"])
    assert all(dm.datasets["train"][i]["present"]["clinical"] for i in range(len(dm.datasets["train"])))


def test_no_dropout_in_evaluation_loaders():
    table = synthetic(n_cases=120, image_size=8)
    dm = _module(table, {"clinical": 0.9, "dermoscopy": 0.9})
    for split in ("val", "test"):
        ds = dm.datasets[split]
        assert all(ds[i]["present"]["clinical"] and ds[i]["present"]["dermoscopy"] for i in range(len(ds)))


def test_without_dropout_training_cases_are_unchanged():
    table = synthetic(n_cases=60, image_size=8)
    plain = CaseDataset(table, range(10), {}, modalities=["clinical"], train=True, seed=3)
    zero = CaseDataset(table, range(10), {}, modalities=["clinical"], train=True, seed=3,
                       modality_dropout={"clinical": 0.0})
    for i in range(10):
        torch.testing.assert_close(plain[i]["inputs"]["clinical"], zero[i]["inputs"]["clinical"])


def test_unknown_modality_and_bad_rate_are_config_errors():
    table = synthetic(n_cases=60, image_size=8)
    with pytest.raises(ConfigError, match=r"data\.modality_dropout.*'dermoscopi'.*did you mean 'dermoscopy'"):
        _module(table, {"dermoscopi": 0.5})
    with pytest.raises(ConfigError, match="modality_dropout"):
        load_config(overrides=["data.modality_dropout={clinical: 1.0}"])
