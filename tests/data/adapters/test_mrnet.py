"""MRNet-v1.0 adapter: label CSVs, EI slice sampling (train vs eval), slice stacks, splits, errors, a run."""

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from mmdiag.cli.main import main
from mmdiag.data.adapters._ei_splits import ei_list, ei_mapping, ei_split_lists
from mmdiag.data.adapters.mrnet import FINDINGS, mrnet, slice_indices
from mmdiag.data.splits import make_split
from mmdiag.errors import ConfigError, DataError
from mmdiag.testing.mrnet import slices_of, write_mrnet

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_mrnet(tmp_path_factory.mktemp("mrnet"))


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "MRNet-v1.0")


def _read_slices(x, channels: int = 3) -> list[int]:
    """Slice indices of a fixture stack (row 0 of slice i holds i)."""
    return [round(float(v) * 255) for v in x[::channels, 0, 0]]


def _csv_labels(root, folder):
    out = {}
    for task in ("abnormal", "acl", "meniscus"):
        df = pd.read_csv(root / f"{folder}-{task}.csv", header=None, names=["id", "label"], dtype=str)
        for i, v in zip(df["id"], df["label"]):
            out.setdefault(i.zfill(4), {})[task] = int(v)
    return out


@pytest.mark.parametrize("n, expected", [(17, [2, 6, 10, 14]), (5, [0, 2, 2, 4]), (3, [0, 1, 1, 2]), (1, [0] * 4),
                                         (36, [4, 13, 22, 31])])
def test_slice_indices_in_evaluation_are_bin_centres(n, expected):
    assert slice_indices(n, 4).tolist() == expected


def test_slice_indices_in_training_draw_one_slice_per_bin():
    n, k = 25, 4
    step = (n - 1) / k
    draws = np.stack([slice_indices(n, k, np.random.default_rng(s)) for s in range(200)])
    lo = np.floor(step * np.arange(k) + 1e-9)
    hi = np.ceil(step * (np.arange(k) + 1))
    assert ((draws >= lo) & (draws <= hi)).all()
    assert all(len(np.unique(draws[:, i])) >= 5 for i in range(k))  # spread over each bin, not fixed
    np.testing.assert_array_equal(slice_indices(n, k, np.random.default_rng(7)),
                                  slice_indices(n, k, np.random.default_rng(7)))


def test_reads_exams_labels_and_slice_stacks(root):
    table = mrnet(str(root), image_size=32)
    assert len(table) == 20 and list(table.spec.modalities) == ["axial", "coronal", "sagittal"]
    assert table.spec.tasks["findings"].classes == FINDINGS == tuple(sorted(ei_mapping("mrnet"),
                                                                            key=ei_mapping("mrnet").get))
    csv = {**_csv_labels(root, "train"), **_csv_labels(root, "valid")}
    for case in table.cases:
        np.testing.assert_array_equal(case.labels["findings"], [csv[case.case_id][t] for t in FINDINGS])
    case = table.cases[0]
    for plane in ("axial", "coronal", "sagittal"):
        x = table.read(case, plane, train=False, rng=RNG)
        assert tuple(x.shape) == (12, 32, 32)
        assert _read_slices(x) == slice_indices(slices_of(case.case_id, plane), 4).tolist()
        for j in range(4):  # each slice repeated as RGB
            assert (x[3 * j] == x[3 * j + 1]).all() and (x[3 * j] == x[3 * j + 2]).all()
    grey = mrnet(str(root), slice_channels=1, num_slices=6, image_size=16)
    assert tuple(grey.read(grey.cases[0], "axial", train=False, rng=RNG).shape) == (6, 16, 16)
    binary = mrnet(str(root), label_format="binary")
    assert list(binary.spec.tasks) == ["abnormal", "acl", "meniscus"]
    assert binary.spec.tasks["acl"].classes == ("no_tear", "tear")
    assert [binary.cases[i].labels["acl"] for i in range(20)] == [int(c.labels["findings"][2]) for c in table.cases]


def test_training_reads_random_slices_reproducibly(root):
    table = mrnet(str(root), image_size=32)
    case = next(c for c in table.cases if slices_of(c.case_id, "sagittal") >= 12)
    n = slices_of(case.case_id, "sagittal")
    seen = set()
    for seed in range(20):
        got = _read_slices(table.read(case, "sagittal", train=True, rng=np.random.default_rng(seed)))
        assert got == slice_indices(n, 4, np.random.default_rng(seed)).tolist()
        seen.add(tuple(got))
    assert len(seen) > 3
    evaluation = {tuple(_read_slices(table.read(case, "sagittal", train=False, rng=np.random.default_rng(s))))
                  for s in range(5)}
    assert evaluation == {tuple(slice_indices(n, 4).tolist())}


def test_official_and_ei_splits(root):
    official = mrnet(str(root))
    assert {c.case_id for c in official.cases if c.split == "test"} == set(_csv_labels(root, "valid"))
    assert Counter(c.split for c in official.cases) == {"train": 15, "test": 5}
    carved = make_split(official, "official", val_fraction=1 / 3, seed=0)
    assert len(carved["val"]) > 0 and not set(carved["val"]) & set(carved["train"])
    ei = mrnet(str(root), split="ei")
    listed = {e.paths[0][0].split("/")[-1][:4]: s for s, es in ei_split_lists("mrnet").items() for e in es}
    assert all(c.split == listed[c.case_id] for c in ei.cases)
    assert Counter(c.split for c in ei.cases) == {"train": 10, "val": 5, "test": 5}


def test_shipped_ei_lists_are_the_published_ones():
    lists = ei_split_lists("mrnet")
    assert {s: len(es) for s, es in lists.items()} == {"train": 1010, "val": 120, "test": 120}
    ids = {s: {e.paths[0][0] for e in es} for s, es in lists.items()}
    assert not ids["train"] & ids["val"]
    assert {p.split("/")[-1][:4] for p in ids["train"] | ids["val"]} == {f"{i:04d}" for i in range(1130)}
    assert {p.split("/")[-1][:4] for p in ids["test"]} == {f"{i:04d}" for i in range(1130, 1250)}
    counts = Counter(label for e in ei_list("mrnet_train_val") for label in e.labels)
    assert counts == {"abnormal": 90, "acl": 18, "meniscus": 35}
    assert [p[0].split("/")[1] for p in lists["test"][0].paths] == ["axial", "coronal", "sagittal"]


def test_label_csv_errors(copy):
    csv = copy / "train-acl.csv"
    text = csv.read_text()
    csv.write_text("id,label\n" + text)
    with pytest.raises(DataError, match=r"train-acl\.csv' has id 'id'.*no header row"):
        mrnet(str(copy))
    lines = text.splitlines()
    first = lines[0].split(",")[0]
    csv.write_text("\n".join([f"{first},2", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=rf"case '{first}': .*train-acl\.csv' gives label '2'; allowed: \['0', '1'\]"):
        mrnet(str(copy))
    csv.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=rf"case '{first}' .*has no row in '.*train-acl\.csv'"):
        mrnet(str(copy))
    csv.write_text("".join(f"{int(line.split(',')[0])},{line.split(',')[1]}\n" for line in lines))
    assert len(mrnet(str(copy))) == 20  # ids without zero padding are accepted
    csv.unlink()
    with pytest.raises(DataError, match=r"acl label file '.*train-acl\.csv' does not exist"):
        mrnet(str(copy))


def test_volume_errors_and_options(copy):
    table = mrnet(str(copy))
    case = table.cases[0]
    np.save(copy / "train" / "coronal" / f"{case.case_id}.npy", np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match=rf"case '{case.case_id}': coronal volume .* has shape \(32, 32\)"):
        table.read(case, "coronal", train=False, rng=RNG)
    (copy / "train" / "axial" / f"{case.case_id}.npy").unlink()
    with pytest.raises(DataError, match=rf"case '{case.case_id}': axial file '.*train/axial/{case.case_id}\.npy'"):
        table.read(case, "axial", train=False, rng=RNG)
    for option, value in (("label_format", "multiclass"), ("split", "kfold"), ("slice_channels", 2),
                          ("num_slices", 0)):
        with pytest.raises(ConfigError, match=f"data.options.{option}"):
            mrnet(str(copy), **{option: value})


def test_ei_split_cross_checks_the_labels(copy):
    csv = copy / "valid-abnormal.csv"
    lines = csv.read_text().splitlines()
    exam, label = lines[0].split(",")
    csv.write_text("\n".join([f"{exam},{1 - int(label)}", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=rf"case '{exam}': the release's CSVs give .* the EI list 'test'"):
        mrnet(str(copy), split="ei")


def test_train_end_to_end_writes_per_label_metrics(root, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "data.dataset=mrnet", f"data.root={root}", "data.options.split=ei",
                 "data.options.image_size=32", "data.batch_size=8", "model.name=late_fusion",
                 "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]) == 0
    report = (run / "report.md").read_text()
    assert "### findings: per class" in report and "| s2 | auc | ap |" in report
    for label in FINDINGS:
        assert f"\n| {label} |" in report
    assert json.loads((run / "metrics.json").read_text())["tasks"]["findings"]["n"] == 5
