"""Disease-wise pairing: missing modalities borrowed from same-label cases of the same split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdiag.config.schema import DataConfig
from mmdiag.data.datamodule import MultimodalDataModule
from mmdiag.data.dataset import CaseDataset
from mmdiag.data.pairing import DiseasePairedDataset
from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import ConfigError


class _Table(CaseTable):
    """Each image is filled with its case number, so a borrowed image names its donor."""

    def read(self, case, modality, *, train, rng, cache=None):
        return torch.full((1, 2, 2), float(case.inputs[modality]))


def _table(n: int = 16) -> _Table:
    spec = DatasetSpec(name="t", modalities={"a": ImageModality(channels=1, size=(2, 2)),
                                             "b": ImageModality(channels=1, size=(2, 2))},
                       tasks={"y": TaskSpec(type="binary", classes=("n", "p"))})
    cases = [CaseRecord(f"c{i}", f"p{i}", {"a": i if i % 3 else None, "b": i if i % 4 else None}, {"y": i % 2})
             for i in range(n)]
    return _Table(spec, cases)


def test_missing_modalities_come_from_same_label_cases_of_the_split():
    table = _table()
    train = list(range(10))
    ds = DiseasePairedDataset(table, train, {}, train=True, seed=3, task="y")
    plain = CaseDataset(table, train, {}, train=True, seed=3)
    borrowed = 0
    for item, index in enumerate(train):
        out, ref = ds[item], plain[item]
        for m in ("a", "b"):
            assert out["present"][m]
            donor = int(out["inputs"][m][0, 0, 0])
            if ref["present"][m]:
                assert donor == index  # swap_p = 0: present modalities are kept
            else:
                borrowed += 1
                assert donor != index and donor in train and donor % 2 == index % 2
                assert table.present(table.cases[donor], m)
        assert torch.equal(ds[item]["inputs"]["a"], out["inputs"]["a"])  # reproducible within an epoch
    assert borrowed == 4 + 3  # a missing at 0, 3, 6, 9; b at 0, 4, 8


def test_swap_exchanges_present_modalities_too():
    ds = DiseasePairedDataset(_table(), list(range(16)), {}, train=True, task="y", swap_p=1.0)
    donors = np.array([[int(ds[i]["inputs"][m][0, 0, 0]) for m in "ab"] for i in range(16)])
    assert (donors != np.arange(16)[:, None]).all() and (donors % 2 == np.arange(16)[:, None] % 2).all()


def test_datamodule_pairs_the_training_split_only():
    table = _table()
    split = {"train": list(range(10)), "val": [10, 11, 12], "test": [13, 14, 15]}
    dm = MultimodalDataModule(table, DataConfig(pairing="disease", verify=False), split=split)
    dm.setup()
    assert type(dm.datasets["train"]) is DiseasePairedDataset
    assert type(dm.datasets["val"]) is CaseDataset and type(dm.datasets["test"]) is CaseDataset
    bad = table.spec.model_copy(update={"tasks": {"y": TaskSpec(type="multilabel", classes=("u", "v"))}})
    dm = MultimodalDataModule(_Table(bad, table.cases), DataConfig(pairing="disease", verify=False), split=split)
    with pytest.raises(ConfigError, match="data.pairing"):
        dm.setup()
