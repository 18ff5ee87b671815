import numpy as np
import pytest

from mmdiag.data.manifest import load_manifest_dataset
from mmdiag.data.splits import make_split
from mmdiag.data.synthetic import synthetic
from mmdiag.errors import DataError


def _patients(table, idx):
    return {table.cases[i].patient_id for i in idx}


@pytest.mark.parametrize("fold", [0, 3])
def test_kfold_groups_patients_and_covers_every_case(fold):
    table = synthetic(n_cases=300, seed=1)
    s = make_split(table, "kfold", folds=5, fold=fold, seed=7)
    parts = [set(s[k]) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == 300 and set.union(*parts) == set(range(300))
    pats = [_patients(table, p) for p in parts]
    assert not (pats[0] & pats[1]) and not (pats[0] & pats[2]) and not (pats[1] & pats[2])
    y = table.label_matrix("diagnosis")
    assert len(np.unique(y[s["test"]])) == 8  # stratified: every class in the test fold


def test_test_folds_partition_the_data_and_seed_is_reproducible():
    table = synthetic(n_cases=200, seed=2)
    tests = [set(make_split(table, "kfold", folds=4, fold=k, seed=3)["test"]) for k in range(4)]
    assert set.union(*tests) == set(range(200)) and sum(map(len, tests)) == 200
    assert make_split(table, "kfold", folds=4, fold=1, seed=3) == make_split(table, "kfold", folds=4, fold=1, seed=3)
    assert make_split(table, "kfold", folds=4, fold=1, seed=3) != make_split(table, "kfold", folds=4, fold=1, seed=4)


def test_official_split_is_used_when_present(manifest_yaml):
    table = synthetic(n_cases=100)
    s = make_split(table, "auto")
    assert all(table.cases[i].split == "train" for i in s["train"])
    assert all(table.cases[i].split == "test" for i in s["test"])
    with pytest.raises(DataError, match="no official split"):
        make_split(load_manifest_dataset(manifest_yaml), "official")
