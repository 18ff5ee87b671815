import torch

from mmdiag.config.schema import DataConfig
from mmdiag.data.datamodule import MultimodalDataModule
from mmdiag.data.dataset import EpochSampler
from mmdiag.data.synthetic import synthetic
from mmdiag.data.tabular import TabularEncoder
from mmdiag.data.schema import CategoricalField, NumericField, TabularModality
from mmdiag.errors import DataError

import pytest


def test_ddp_shards_reassemble_the_single_process_batches():
    single = list(EpochSampler(40, seed=3))
    ranks = [list(EpochSampler(40, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    b = 8
    for i in range(40 // b):
        assert sorted(single[i * b:(i + 1) * b]) == sorted(ranks[0][i * b // 2:(i + 1) * b // 2]
                                                          + ranks[1][i * b // 2:(i + 1) * b // 2])


def test_sampler_depends_on_epoch_only():
    s = EpochSampler(30, seed=1)
    s.set_epoch(2)
    a = list(s)
    t = EpochSampler(30, seed=1)
    t.set_epoch(2)
    assert a == list(t)
    t.set_epoch(3)
    assert a != list(t)


def test_missing_modality_is_explicit_in_the_batch():
    table = synthetic(n_cases=60, missing={"dermoscopy": 0.5})
    dm = MultimodalDataModule(table, DataConfig(batch_size=60, split={"kind": "kfold", "folds": 2}))
    dm.setup()
    batch = next(iter(dm.loader("train")))
    present = batch["present"]["dermoscopy"]
    assert present.dtype == torch.bool and (~present).any() and present.any()
    assert batch["inputs"]["dermoscopy"][~present].abs().max() == 0
    assert batch["inputs"]["dermoscopy"][present].abs().max() > 0


def test_tabular_encoding_and_bad_category():
    spec = TabularModality(fields={"age": NumericField(), "sex": CategoricalField(values=("f", "m"))})
    enc = TabularEncoder(spec).fit([{"age": 20, "sex": "f"}, {"age": 40, "sex": "m"}])
    v = enc.encode({"age": 30, "sex": "m"})
    assert torch.allclose(v, torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.equal(enc.encode({"age": "", "sex": ""}), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(DataError, match="case 'k9'.*'sex'.*'x'.*\\['f', 'm'\\]"):
        enc.encode({"age": 1, "sex": "x"}, case_id="k9")
