"""Oversampling with an epoch size and per-stratum shares (EI's class-balanced training lists)."""

import numpy as np
import pytest

from mmdiag.config.load import load_config
from mmdiag.config.schema import DataConfig
from mmdiag.data.datamodule import MultimodalDataModule
from mmdiag.data.schema import DatasetSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError

FINDINGS = ("abnormal", "meniscus", "acl")
# the authors' MRNet training list (1010 exams) by label combination, and their 1899-line balanced list
TRAIN = {"abnormal|meniscus|acl": 117, "abnormal": 388, "abnormal|meniscus": 245, "none": 187, "abnormal|acl": 73}
SHARES = {"abnormal|meniscus|acl": 388, "abnormal": 388, "abnormal|meniscus": 245, "none": 633, "abnormal|acl": 245}


def _mrnet_like() -> CaseTable:
    spec = DatasetSpec.model_validate({
        "name": "mrnet_like", "modalities": {"axial": {"kind": "image", "channels": 1, "size": [4, 4]}},
        "tasks": {"findings": {"type": "multilabel", "classes": list(FINDINGS)}}})
    cases = []
    for combo, n in TRAIN.items():
        y = np.array([float(c in combo.split("|")) for c in FINDINGS], dtype=np.float32)
        cases += [CaseRecord(f"{combo}{i}", f"{combo}{i}", {}, {"findings": y}) for i in range(n)]
    return CaseTable(spec, cases)


def _train_loader(table, **data):
    split = {"train": list(range(len(table))), "val": [0], "test": [0]}
    dm = MultimodalDataModule(table, DataConfig(verify=False, batch_size=8, sampling="oversample", **data), split=split)
    dm.setup()
    return dm, dm.train_dataloader()


def _composition(table, dm, epochs=4):
    sampler = dm.train_dataloader().sampler
    drawn = []
    for e in range(epochs):
        sampler.set_epoch(e)
        drawn += list(sampler)
    y = table.label_matrix("findings")[np.array(dm.datasets["train"].indices)[drawn]]
    return y.mean(0), len(drawn) // epochs


def test_authors_mrnet_composition_and_epoch_size():
    table = _mrnet_like()
    dm, loader = _train_loader(table, epoch_size=1899, oversample_shares=SHARES)
    assert len(loader.sampler) == 1899 and len(loader) == 238  # the authors' 238 iterations per epoch
    share, n = _composition(table, dm)
    np.testing.assert_allclose(share, [2 / 3, 1 / 3, 1 / 3], atol=0.02)  # abnormal, meniscus, ACL


def test_default_oversampling_balances_label_combinations():
    table = _mrnet_like()
    dm, loader = _train_loader(table)
    assert len(loader.sampler) == 1010  # one pass over the training cases by default
    share, _ = _composition(table, dm)
    np.testing.assert_allclose(share, [0.8, 0.4, 0.4], atol=0.02)  # 1 / count per combination


def test_shares_must_name_every_stratum_and_only_those():
    table = _mrnet_like()
    with pytest.raises(ConfigError, match=r"data\.oversample_shares.*'abnormal\|acl'"):
        _train_loader(table, oversample_shares={k: v for k, v in SHARES.items() if k != "abnormal|acl"})
    with pytest.raises(ConfigError, match=r"data\.oversample_shares.*'acl\|abnormal'"):
        _train_loader(table, oversample_shares={**SHARES, "acl|abnormal": 1.0})
    with pytest.raises(ConfigError, match="epoch_size"):
        load_config(overrides=["data.epoch_size=100"])  # uniform sampling takes no epoch size


def test_shipped_ei_configs_use_the_authors_epochs_and_mrnet_shares():
    from mmdiag.config.load import resolve_config_path

    sizes = {"ei_derm7pt": (1280, 644), "ei_mmc_amd": (1168, 588), "ei_mrnet": (1899, 952)}
    for name, (epoch, step) in sizes.items():
        cfg = load_config(resolve_config_path(f"ei/{name}"))
        assert cfg.data.sampling == "oversample" and cfg.data.epoch_size == epoch
        assert cfg.schedule.step_size_up == 4 * (epoch // 8 + 1) == step  # 4 x the authors' inter_val
    assert load_config(resolve_config_path("ei/ei_mrnet")).data.oversample_shares == SHARES
