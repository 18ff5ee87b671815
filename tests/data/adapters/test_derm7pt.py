"""Derm7pt release_v0 adapter: layout, label groupings and orders, official and EI splits, crop, errors, a run."""

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from mmdiag.cli.main import main
from mmdiag.data.adapters._ei_splits import ei_list, ei_mapping, ei_split_lists
from mmdiag.data.adapters.derm7pt import derm7pt
from mmdiag.errors import ConfigError, DataError
from mmdiag.testing.derm7pt import write_derm7pt, write_jpeg

RNG = np.random.default_rng(0)
KAWAHARA_TASKS = ["diagnosis", "pigment_network", "blue_whitish_veil", "vascular_structures", "pigmentation",
                  "streaks", "dots_and_globules", "regression_structures"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_derm7pt(tmp_path_factory.mktemp("derm7pt"))


@pytest.fixture
def copy(release, tmp_path):
    """A private copy of the fixture, for tests that break it."""
    return shutil.copytree(release, tmp_path / "release_v0", symlinks=True)


def _meta(release):
    return pd.read_csv(release / "meta" / "meta.csv", dtype=str, keep_default_na=False)


def test_reads_the_release_layout(release):
    table = derm7pt(str(release.parent), image_size=40, crop=4)  # the parent of release_v0 works too
    meta = _meta(release)
    assert len(table) == len(meta) == 26
    assert list(table.spec.tasks) == KAWAHARA_TASKS and table.spec.main_task == "diagnosis"
    assert table.spec.modalities["record"].width == 3 + 3 + 9 + 2 + 3
    case = table.cases[0]
    row = meta.iloc[case.extra["row"]]
    assert case.inputs["clinical"] == str(release / "images" / row["clinic"])
    assert case.inputs["record"]["location"] == row["location"]
    for modality in ("clinical", "dermoscopy"):
        x = table.read(case, modality, train=False, rng=RNG)
        assert tuple(x.shape) == (3, 40, 40) and 0 <= float(x.min()) and float(x.max()) <= 1
    upper = [c for c in table.cases if c.inputs["clinical"].endswith(".JPG")]
    assert upper and table.read(upper[0], "clinical", train=False, rng=RNG).shape == (3, 40, 40)
    same = [c for c in table.cases if c.inputs["clinical"] == c.inputs["dermoscopy"]]
    assert len(same) == 1 and table.present(same[0], "clinical") and table.present(same[0], "dermoscopy")


def test_diagnosis_groups_agree_with_the_ei_labels(release):
    table = derm7pt(str(release))
    ei = {(e.paths[0][0], e.paths[1][0]): e.labels[0] for es in ei_split_lists("derm7pt").values() for e in es}
    meta = _meta(release)
    classes = table.spec.tasks["diagnosis"].classes
    for case in table.cases:
        row = meta.iloc[case.extra["row"]]
        assert classes[case.labels["diagnosis"]] == ei[(row["clinic"], row["derm"])], row["diagnosis"]
    assert set(meta["diagnosis"]) >= {"blue nevus", "clark nevus", "melanoma (in situ)", "lentigo"}


@pytest.mark.parametrize("task, raw, expected", [
    ("pigment_network", "atypical", "atypical"),
    ("vascular_structures", "wreath", "regular"),
    ("vascular_structures", "within regression", "regular"),
    ("vascular_structures", "dotted", "irregular"),
    ("vascular_structures", "linear irregular", "irregular"),
    ("pigmentation", "localized regular", "regular"),
    ("pigmentation", "diffuse irregular", "irregular"),
    ("regression_structures", "combinations", "present"),
    ("regression_structures", "blue areas", "present"),
    ("blue_whitish_veil", "present", "present"),
    ("streaks", "irregular", "irregular"),
    ("dots_and_globules", "absent", "absent"),
])
def test_criteria_groupings(release, task, raw, expected):
    table = derm7pt(str(release))
    meta = _meta(release)
    hits = [c for c in table.cases if meta.iloc[c.extra["row"]][task] == raw]
    assert hits, f"the fixture has no {task} = {raw!r}"
    classes = table.spec.tasks[task].classes
    assert {classes[c.labels[task]] for c in hits} == {expected}


def test_label_orders_are_explicit_options(release):
    orders = {o: derm7pt(str(release), label_order=o) for o in ("kawahara", "mm", "ei")}
    assert orders["kawahara"].spec.tasks["diagnosis"].classes == ("BCC", "NEV", "MEL", "MISC", "SK")
    assert orders["mm"].spec.tasks["diagnosis"].classes == ("NEV", "BCC", "MEL", "MISC", "SK")
    mapping = ei_mapping("derm7pt")
    assert orders["ei"].spec.tasks["diagnosis"].classes == tuple(sorted(mapping, key=mapping.get))
    assert list(orders["mm"].spec.tasks) == ["diagnosis", "pigment_network", "streaks", "pigmentation",
                                             "regression_structures", "dots_and_globules", "blue_whitish_veil",
                                             "vascular_structures"]
    assert list(orders["ei"].spec.tasks) == KAWAHARA_TASKS
    for a, b in zip(orders["kawahara"].cases, orders["mm"].cases):
        ca, cb = (t.spec.tasks["diagnosis"].classes for t in (orders["kawahara"], orders["mm"]))
        assert ca[a.labels["diagnosis"]] == cb[b.labels["diagnosis"]]
        assert a.labels["streaks"] == b.labels["streaks"]  # the criteria keep one order
    kinds = Counter(orders["mm"].label_matrix("diagnosis").tolist())
    assert kinds[0] == sum(1 for c in orders["kawahara"].cases if c.labels["diagnosis"] == 1)  # NEV moved to 0


def test_task_and_record_options(release):
    assert list(derm7pt(str(release), tasks="diagnosis").spec.tasks) == ["diagnosis"]
    two = derm7pt(str(release), tasks=["streaks", "diagnosis"])
    assert list(two.spec.tasks) == ["diagnosis", "streaks"] and set(two.cases[0].labels) == {"diagnosis", "streaks"}
    only = derm7pt(str(release), tasks=["streaks"])
    assert only.spec.main_task == "streaks"
    small = derm7pt(str(release), record_fields="kawahara")
    assert list(small.spec.modalities["record"].fields) == ["elevation", "sex", "location"]
    assert small.spec.modalities["record"].width == 14
    with pytest.raises(ConfigError, match="tasks.*'streak'.*pigment_network"):
        derm7pt(str(release), tasks=["streak"])
    for option, value in (("label_order", "alphabetical"), ("split", "random"), ("record_fields", "all"),
                          ("crop", -1)):
        with pytest.raises(ConfigError, match=f"data.options.{option}"):
            derm7pt(str(release), **{option: value})


def test_official_and_ei_splits_follow_their_lists(release):
    official = derm7pt(str(release))
    ei = derm7pt(str(release), split="ei")
    assert official.official_split and ei.official_split
    for split, name in (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv")):
        rows = pd.read_csv(release / "meta" / name)["indexes"].tolist()
        assert sorted(c.extra["row"] for c in official.cases if c.split == split) == sorted(rows)
    listed = {(e.paths[0][0], e.paths[1][0]): s for s, es in ei_split_lists("derm7pt").items() for e in es}
    meta = _meta(release)
    for case in ei.cases:
        row = meta.iloc[case.extra["row"]]
        assert case.split == listed[(row["clinic"], row["derm"])]
    assert [c.split for c in ei.cases] == [c.split for c in official.cases]  # EI used the official split


def test_shipped_ei_lists_are_the_published_ones():
    sizes = {s: len(es) for s, es in ei_split_lists("derm7pt").items()}
    assert sizes == {"train": 413, "val": 203, "test": 395}
    assert Counter(e.labels[0] for e in ei_list("derm7pt_train")) == {"NEV": 256, "MEL": 90, "MISC": 32, "BCC": 19,
                                                                      "SK": 16}
    assert ei_list("derm7pt_train")[1].paths == (("NGL/NGL046.JPG",), ("NGL/Ngl047.jpg",))


def test_border_crop(copy):
    table = derm7pt(str(copy), image_size=20, crop=5)
    case = table.cases[0]
    framed = np.zeros((40, 40, 3), dtype=np.uint8)
    framed[5:35, 5:35] = 255
    write_jpeg(case.inputs["clinical"], framed)
    assert float(table.read(case, "clinical", train=False, rng=RNG).min()) > 0.85
    uncropped = derm7pt(str(copy), image_size=20, crop=0)
    assert float(uncropped.read(uncropped.cases[0], "clinical", train=False, rng=RNG).min()) < 0.1
    too_much = derm7pt(str(copy), crop=25)
    with pytest.raises(DataError, match=r"40x40 px.*crop=25"):
        too_much.read(too_much.cases[0], "clinical", train=False, rng=RNG)


def test_missing_image_names_the_case_and_the_near_miss(copy):
    table = derm7pt(str(copy))
    case = next(c for c in table.cases if c.inputs["clinical"].endswith("NGL046.JPG"))
    (copy / "images" / "NGL" / "NGL046.JPG").rename(copy / "images" / "NGL" / "NGL046.jpg")
    with pytest.raises(DataError, match=r"case '\d+'.*NGL046\.JPG.*does not exist.*NGL046\.jpg.*case-sensitive") as e:
        table.read(case, "clinical", train=False, rng=RNG)
    assert e.value.case_id == case.case_id and e.value.path.endswith("NGL/NGL046.JPG")


def test_unknown_vocabulary_values_list_the_allowed_ones(copy):
    meta = _meta(copy)
    bad = meta.copy()
    bad.loc[3, "diagnosis"] = "melanomma"
    bad.to_csv(copy / "meta" / "meta.csv", index=False)
    with pytest.raises(DataError, match=rf"case '{meta.loc[3, 'case_num']}'.*'diagnosis'.*'melanomma'.*"
                                        r"allowed:.*'basal cell carcinoma'"):
        derm7pt(str(copy))
    bad = meta.copy()
    bad.loc[2, "location"] = "legs"
    bad.to_csv(copy / "meta" / "meta.csv", index=False)
    with pytest.raises(DataError, match=r"'location' has value 'legs'; allowed: \['back', 'lower limbs'"):
        derm7pt(str(copy))
    bad = meta.copy()
    bad.loc[0, "derm"] = ""  # a blank path: that image is missing for the case
    bad.to_csv(copy / "meta" / "meta.csv", index=False)
    table = derm7pt(str(copy))
    case = next(c for c in table.cases if c.extra["row"] == 0)
    assert not table.present(case, "dermoscopy") and table.present(case, "clinical")


def test_layout_errors(copy):
    (copy / "meta" / "train_indexes.csv").write_text("indexes\n0\n9999\n")
    with pytest.raises(DataError, match=r"train_indexes\.csv.*index 9999, out of range.*26 rows.*0\.\.25"):
        derm7pt(str(copy))
    test_rows = pd.read_csv(copy / "meta" / "test_indexes.csv")["indexes"].tolist()
    (copy / "meta" / "train_indexes.csv").write_text(f"indexes\n{test_rows[0]}\n")
    with pytest.raises(DataError, match=rf"row {test_rows[0]} of meta.csv is listed in 'train' and again"):
        derm7pt(str(copy))
    (copy / "meta" / "train_indexes.csv").write_text("index\n0\n")
    with pytest.raises(DataError, match=r"has no column 'indexes'"):
        derm7pt(str(copy))
    meta = _meta(copy)
    meta.drop(columns=["management"]).to_csv(copy / "meta" / "meta.csv", index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['management'\]"):
        derm7pt(str(copy))
    (copy / "meta" / "meta.csv").unlink()
    with pytest.raises(DataError, match=r"metadata table '.*meta/meta\.csv' does not exist"):
        derm7pt(str(copy))


def test_ei_split_cross_checks_the_label(copy):
    meta = _meta(copy)
    row = meta.index[meta["diagnosis"] == "basal cell carcinoma"][0]
    meta.loc[row, "diagnosis"] = "lentigo"
    meta.to_csv(copy / "meta" / "meta.csv", index=False)
    assert derm7pt(str(copy)).cases  # the official split does not look at the EI labels
    with pytest.raises(DataError, match=r"'lentigo' is MISC, but the EI list '\w+' labels .* BCC"):
        derm7pt(str(copy), split="ei")


def test_train_end_to_end_writes_per_class_metrics(release, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "data.dataset=derm7pt", f"data.root={release}",
                 "data.options.tasks=diagnosis", "data.options.label_order=ei", "data.options.image_size=32",
                 "data.options.crop=4", "data.batch_size=8", "model.name=late_fusion", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false"]) == 0
    report = (run / "report.md").read_text()
    assert "### diagnosis: per class" in report and "| s2 | auc | ap |" in report
    for cls in ("BCC", "NEV", "MEL", "SK", "MISC"):
        assert f"\n| {cls} | 2 |" in report
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tasks"]["diagnosis"]["n"] == 10
