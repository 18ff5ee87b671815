"""ISIC 2017/2018/2019 adapters on native-layout fixtures: labels, attributes, grouping, splits, record, errors."""

import json

import numpy as np
import pandas as pd
import pytest

from mmdiag.data.adapters.isic import (ATTRIBUTES_2017, ATTRIBUTES_2018, CLASSES_2018, CLASSES_2019, GT_COLUMNS_2019,
                                       attribute_present, isic2017, isic2018, isic2019)
from mmdiag.data.splits import make_split
from mmdiag.data.tabular import TabularEncoder
from mmdiag.errors import ConfigError, DataError
from mmdiag.registry import DATASETS
from mmdiag.testing.isic import write_isic2017, write_isic2018, write_isic2019


@pytest.fixture(scope="module")
def r2017(tmp_path_factory):
    return write_isic2017(tmp_path_factory.mktemp("i17"))


@pytest.fixture(scope="module")
def r2018(tmp_path_factory):
    return write_isic2018(tmp_path_factory.mktemp("i18"))


@pytest.fixture(scope="module")
def r2019(tmp_path_factory):
    return write_isic2019(tmp_path_factory.mktemp("i19"))


def test_registered():
    assert {"isic2017", "isic2018", "isic2019"} <= set(DATASETS.names())


def test_2017_diagnosis_official_split_and_superpixel_decoys(r2017):
    t = isic2017(str(r2017), image_size=16)
    assert len(t) == 3 * (4 + 1 + 2)  # *_superpixels.png and the metadata CSV are not cases
    assert t.official_split
    gt = pd.read_csv(r2017 / "ISIC-2017_Training_Part3_GroundTruth.csv")
    by_id = {c.case_id: c for c in t.cases}
    for row in gt.itertuples():
        expect = 0 if row.melanoma else 1 if row.seborrheic_keratosis else 2
        assert by_id[row.image_id].labels["diagnosis"] == expect
    split = make_split(t, "official")
    assert [len(split[s]) for s in ("train", "val", "test")] == [12, 3, 6]
    x = t.read(t.cases[0], "dermoscopy", train=False, rng=np.random.default_rng(0))
    assert x.shape == (3, 16, 16)


def test_2017_attributes_any_superpixel(r2017):
    t = isic2017(str(r2017), task="attributes", split="train_cv")
    assert t.spec.tasks["attributes"].classes == ATTRIBUTES_2017 and not t.official_split
    for c in t.cases:
        feats = json.loads((r2017 / "ISIC-2017_Training_Part2_GroundTruth" / f"{c.case_id}_features.json").read_text())
        assert c.labels["attributes"].tolist() == [float(any(feats[a])) for a in ATTRIBUTES_2017]
    y = t.label_matrix("attributes")
    assert (y.sum(0) > 0).all() and (y.sum(0) < len(y)).all()


def test_2017_features_with_other_keys_is_an_error(r2017, tmp_path):
    import shutil

    root = shutil.copytree(r2017, tmp_path / "c")
    p = root / "ISIC-2017_Training_Part2_GroundTruth" / "ISIC_0000000_features.json"
    p.write_text(json.dumps({"globules": [0, 1]}))
    with pytest.raises(DataError, match="lacks attribute.*milia_like_cyst"):
        isic2017(str(root), task="attributes")


def test_2018_diagnosis_grouped_by_lesion_train_cv(r2018):
    t = isic2018(str(r2018), image_size=16)
    assert len(t) == 5 * len(CLASSES_2018) and not t.official_split
    gt = pd.read_csv(r2018 / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv")
    assert tuple(gt.columns) == ("image", *CLASSES_2018)
    for c, row in zip(t.cases, gt.itertuples(index=False)):
        assert c.case_id == row.image and c.labels["diagnosis"] == int(np.argmax(row[1:]))
    groups = pd.read_csv(r2018 / "ISIC2018_Task3_Training_LesionGroupings.csv").set_index("image")["lesion_id"]
    assert all(c.patient_id == groups[c.case_id] for c in t.cases)
    split = make_split(t, "kfold", folds=5, fold=0)
    lesion_of = {i: c.patient_id for i, c in enumerate(t.cases)}
    test_lesions = {lesion_of[i] for i in split["test"]}
    assert not test_lesions & {lesion_of[i] for i in split["train"] + split["val"]}


def test_2018_official_uses_validation(r2018):
    t = isic2018(str(r2018), split="official")
    assert sum(c.split == "val" for c in t.cases) == len(CLASSES_2018)


def test_2018_attributes_from_masks(r2018):
    t = isic2018(str(r2018), task="attributes")
    assert t.spec.tasks["attributes"].type == "multilabel"
    assert t.spec.tasks["attributes"].classes == ATTRIBUTES_2018
    assert len(t) == 8
    for i, c in enumerate(t.cases):
        assert c.labels["attributes"].tolist() == [float((i + k) % 2 == 0) for k in range(5)]
        assert "Task1-2_Training_Input" in c.inputs["dermoscopy"]


def test_attribute_present_scorer_rules():
    z = np.zeros((4, 4), np.uint8)
    assert not attribute_present(z)
    m = z.copy()
    m[0, 0] = 255
    assert attribute_present(m)
    m[0, 0] = 1  # two-valued, high value rescaled to 255
    assert attribute_present(m)
    m[1, 1] = 7
    with pytest.raises(DataError, match="binary mask"):
        attribute_present(m)
    with pytest.raises(DataError, match="single-channel"):
        attribute_present(np.zeros((2, 2, 3), np.uint8))


def test_2019_labels_record_and_groups(r2019):
    t = isic2019(str(r2019), image_size=16)
    assert len(t) == 5 * len(CLASSES_2019) and t.spec.tasks["diagnosis"].classes == CLASSES_2019
    meta = pd.read_csv(r2019 / "ISIC_2019_Training_Metadata.csv", dtype=str, keep_default_na=False)
    for c, row in zip(t.cases, meta.itertuples(index=False)):
        assert c.patient_id == (row.lesion_id or row.image)
        assert c.inputs["record"]["sex"] == (row.sex or None)
    enc = TabularEncoder(t.spec.modalities["record"])
    enc.fit([c.inputs["record"] for c in t.cases])
    v = enc.encode(t.cases[3].inputs["record"])
    assert v.shape == (t.spec.modalities["record"].width,) and v.shape[0] == 2 + 8 + 2
    assert float(v[2:].sum()) == 0.0  # blank site and sex: all-zero one-hots


def test_2019_unk_row_and_one_hot_errors(r2019, tmp_path):
    import shutil

    root = shutil.copytree(r2019, tmp_path / "c")
    csv = root / "ISIC_2019_Training_GroundTruth.csv"
    df = pd.read_csv(csv, dtype=str)
    df.loc[0, GT_COLUMNS_2019[1:]] = "0.0"
    df.loc[0, "UNK"] = "1.0"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match="ISIC_0000000.*UNK"):
        isic2019(str(root))
    df.loc[0, "MEL"] = "1.0"
    df.to_csv(csv, index=False)
    with pytest.raises(DataError, match="not one-hot"):
        isic2019(str(root))


def test_option_and_layout_errors(r2019, tmp_path):
    with pytest.raises(ConfigError, match="split.*train_cv"):
        isic2019(str(r2019), split="official")
    with pytest.raises(ConfigError, match="data.options.task"):
        isic2018(str(r2019), task="segmentation")
    with pytest.raises(DataError, match="training ground truth"):
        isic2018(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        import shutil

        root = shutil.copytree(r2019, tmp_path / "m")
        (root / "ISIC_2019_Training_Input" / "ISIC_0000001.jpg").unlink()
        isic2019(str(root))
