"""MMC-AMD VisualSearch adapter: eyes, pairing, OCT choice (random in train, fixed in eval), splits, errors, a run."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmdiag.cli.main import main
from mmdiag.data.adapters._ei_splits import ei_list, ei_mapping, ei_split_lists
from mmdiag.data.adapters.mmc_amd import CLASSES, eye_id, mmc_amd, patient_id
from mmdiag.data.dataset import CaseDataset
from mmdiag.errors import ConfigError, DataError
from mmdiag.testing.mmc_amd import CFP_ONLY_EYES, OCT_LEVEL0, OCT_STEP, write_mmc_amd

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_mmc_amd(tmp_path_factory.mktemp("mmc"))


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "VisualSearch", symlinks=True)


def _scan(x) -> int:
    """Which OCT scan (sorted position) a decoded fixture image is."""
    return round((float(x.mean()) * 255 - OCT_LEVEL0) / OCT_STEP)


@pytest.mark.parametrize("name, eye", [("o-w-27662-l_003", "w-27662-l"), ("f-w-1544817.jpg", "w-1544817"),
                                       ("f-h-174290_32", "h-174290"), ("o-w-ICG-4449-r", "w-ICG-4449-r"),
                                       ("f-p-ICG-4126-r-trs.jpg", "p-ICG-4126-r")])
def test_eye_id(name, eye):
    assert eye_id(name) == eye


def test_reads_eyes_and_pairs_by_eye_id(root):
    table = mmc_amd(str(root), image_size=24)
    assert (root / "mmc-amd-splitAP-train" / "ImageData").is_symlink()
    assert len(table) == 21 and table.spec.tasks["diagnosis"].classes == ("normal", "dry_amd", "pcv", "wet_amd")
    by_id = {c.case_id: c for c in table.cases}
    many = by_id["w-17265861"]
    assert [Path(p).name for p in many.inputs["oct"]] == [f"o-w-17265861_00{j}.jpg" for j in range(4)]
    assert len(by_id["w-ICG-4449-r"].inputs["cfp"]) == 2 and len(by_id["w-ICG-4449-r"].inputs["oct"]) == 3
    assert by_id["d-18782465-r"].patient_id == by_id["w-18782465-l"].patient_id == "18782465"
    assert Counter(c.split for c in table.cases) == {"train": 9, "val": 4, "test": 8}
    for case in table.cases:
        x = table.read(case, "cfp", train=False, rng=RNG)
        assert tuple(x.shape) == (3, 24, 24)
        assert CLASSES[case.labels["diagnosis"]][0] == {"h": "n"}.get(case.case_id[0], case.case_id[0])
        assert all(eye_id(p) == case.case_id for m in ("cfp", "oct") for p in case.inputs[m])
    assert patient_id("w-ICG-4449-r") == "ICG-4449" and patient_id("h-174290") == "174290"


def test_cfp_only_eyes_are_kept_with_oct_missing_on_request(root):
    full = mmc_amd(str(root), complete_only=False)
    assert len(full) == 23
    lone = [c for c in full.cases if not full.present(c, "oct")]
    assert sorted(c.case_id for c in lone) == sorted(eye_id(e) for e in CFP_ONLY_EYES.values())
    assert all(full.present(c, "cfp") for c in lone)


def test_oct_scan_is_random_in_training_and_the_sorted_first_in_evaluation(root):
    table = mmc_amd(str(root), image_size=16)
    case = next(c for c in table.cases if c.case_id == "w-17265861")
    for seed in range(5):
        assert _scan(table.read(case, "oct", train=False, rng=np.random.default_rng(seed))) == 0
    drawn = [_scan(table.read(case, "oct", train=True, rng=np.random.default_rng(seed))) for seed in range(40)]
    assert set(drawn) == {0, 1, 2, 3}
    again = [_scan(table.read(case, "oct", train=True, rng=np.random.default_rng(seed))) for seed in range(40)]
    assert drawn == again
    index = table.cases.index(case)
    ds = CaseDataset(table, [index], {}, train=True, seed=3)
    per_epoch = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        per_epoch.append(_scan(ds[0]["inputs"]["oct"]))
    ds.set_epoch(0)
    assert _scan(ds[0]["inputs"]["oct"]) == per_epoch[0] and len(set(per_epoch)) > 1
    evaluation = CaseDataset(table, [index], {}, train=False, seed=3)
    assert _scan(evaluation[0]["inputs"]["oct"]) == 0


def test_ei_split_follows_the_shipped_lists(root):
    official = mmc_amd(str(root))
    ei = mmc_amd(str(root), split="ei", complete_only=False)
    listed = {eye_id(e.paths[0][0]): (s, e.labels[0]) for s, es in ei_split_lists("mmc_amd").items() for e in es}
    mapping = ei_mapping("mmc_amd")
    assert {c.case_id for c in ei.cases} == {c.case_id for c in official.cases}  # CFP-only eyes are in no list
    for case in ei.cases:
        split, label = listed[case.case_id]
        assert case.split == split and case.labels["diagnosis"] == mapping[label]


def test_shipped_ei_lists_are_the_published_ones():
    assert {s: len(es) for s, es in ei_split_lists("mmc_amd").items()} == {"train": 610, "val": 79, "test": 79}
    assert Counter(e.labels[0] for e in ei_list("mmc-amd_train")) == {"wet_amd": 292, "no_amd": 155, "pcv": 144,
                                                                      "dry_amd": 19}
    assert ei_mapping("mmc_amd") == {"no_amd": 0, "dry_amd": 1, "pcv": 2, "wet_amd": 3}
    assert max(len(e.paths[1]) for e in ei_list("mmc-amd_val")) == 6


def test_image_data_without_the_link(tmp_path):
    vs = write_mmc_amd(tmp_path, link=False)
    table = mmc_amd(str(vs), image_size=8)
    assert not (vs / "mmc-amd-splitAP-val" / "ImageData").exists()
    assert table.read(table.cases[0], "oct", train=False, rng=RNG).shape == (3, 8, 8)


def test_bad_inputs_name_the_file_and_the_case(copy):
    table = mmc_amd(str(copy))
    case = next(c for c in table.cases if c.case_id == "w-1544817")
    Path(case.inputs["oct"][0]).unlink()
    with pytest.raises(DataError, match=r"case 'w-1544817': oct file '.*o-w-1544817\.jpg' does not exist"):
        table.read(case, "oct", train=False, rng=RNG)

    ann = copy / "mmc-amd-splitAP-test" / "annotations" / "oct.txt"
    text = ann.read_text()
    ann.write_text(text.replace("o-w-1544817 3", "o-w-1544817 7"))
    with pytest.raises(DataError, match=r"case 'w-1544817'.*label 7; allowed: 0\.\.3 = \['normal', 'dry_amd'"):
        mmc_amd(str(copy))
    ann.write_text(text.replace("o-w-1544817 3", "o-w-1544817 1"))
    with pytest.raises(DataError, match=r"case 'w-1544817': image 'o-w-1544817' is labelled dry_amd but another"):
        mmc_amd(str(copy))
    ann.write_text(text.replace("o-w-1544817 3\n", ""))
    with pytest.raises(DataError, match=r"image 'o-w-1544817' of '.*ImageSets/oct\.txt' has no label"):
        mmc_amd(str(copy))
    ann.write_text(text)

    train_cfp = copy / "mmc-amd-splitAP-train" / "ImageSets" / "cfp.txt"
    train_cfp.write_text(train_cfp.read_text() + "f-w-1544817\n")
    train_ann = copy / "mmc-amd-splitAP-train" / "annotations" / "cfp.txt"
    train_ann.write_text(train_ann.read_text() + "f-w-1544817 3\n")
    with pytest.raises(DataError, match=r"case 'w-1544817': the eye is in both 'train' and 'test'"):
        mmc_amd(str(copy))

    with pytest.raises(DataError, match=r"cfp image list '.*mmc-amd-splitA-train/ImageSets/cfp\.txt' does not exist"):
        mmc_amd(str(copy), version="splitA")
    (copy / "mmc-amd-splitAP-val" / "ImageSets" / "oct.txt").unlink()
    with pytest.raises(DataError, match=r"mmc-amd-splitAP-val/ImageSets/oct\.txt"):
        mmc_amd(str(copy))
    for option, value in (("version", "splitB"), ("split", "loose")):
        with pytest.raises(ConfigError, match=f"data.options.{option}={value!r}"):
            mmc_amd(str(copy), **{option: value})


def test_train_end_to_end_writes_per_class_metrics(root, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "data.dataset=mmc_amd", f"data.root={root}",
                 "data.options.image_size=32", "data.options.split=ei", "data.batch_size=8",
                 "model.name=late_fusion", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]) == 0
    report = (run / "report.md").read_text()
    assert "### diagnosis: per class" in report and "| s2 | auc | ap |" in report
    for cls in CLASSES:
        assert f"\n| {cls} | 2 |" in report
    assert json.loads((run / "metrics.json").read_text())["tasks"]["diagnosis"]["n"] == 8
