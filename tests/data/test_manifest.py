import numpy as np
import pandas as pd
import pytest

from mmdiag.data.manifest import load_manifest_dataset
from mmdiag.data.sources import load_table
from mmdiag.errors import ConfigError, DataError
from mmdiag.testing import write_manifest_dataset


def test_manifest_reads_cases_labels_and_records(manifest_yaml):
    table = load_manifest_dataset(manifest_yaml)
    assert len(table) == 24
    assert list(table.spec.modalities) == ["photo", "scope", "record"]
    case = table.cases[3]
    assert case.case_id == "c003" and case.patient_id == "p001"
    assert case.labels["diagnosis"] == 1  # odd cases are malignant
    assert case.inputs["photo"].endswith("photo/c003.png")
    assert set(case.inputs["record"]) == {"age", "sex"}
    assert not table.official_split  # no split column: k-fold will be used
    assert load_table(str(manifest_yaml)).spec == table.spec


def test_label_outside_vocabulary_lists_allowed_values(tmp_path):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=6)
    df = pd.read_csv(tmp_path / "cases.csv", dtype=str)
    df.loc[2, "diagnosis"] = "melanoma"
    df.to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(DataError) as e:
        load_manifest_dataset(yaml_path)
    msg = str(e.value)
    assert "c002" in msg and "'melanoma'" in msg and "['benign', 'malignant']" in msg


def test_blank_label_is_unknown_and_blank_path_is_missing(tmp_path):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=6)
    df = pd.read_csv(tmp_path / "cases.csv", dtype=str, keep_default_na=False)
    df.loc[1, "diagnosis"] = ""
    df.loc[2, "photo"] = ""
    df.to_csv(tmp_path / "cases.csv", index=False)
    table = load_manifest_dataset(yaml_path)
    assert table.cases[1].labels["diagnosis"] == -1
    assert not table.present(table.cases[2], "photo") and table.present(table.cases[2], "scope")


def test_missing_manifest_and_missing_column_are_named(tmp_path):
    with pytest.raises(DataError, match="nothere.yaml"):
        load_manifest_dataset(tmp_path / "nothere.yaml")
    yaml_path = write_manifest_dataset(tmp_path, n_cases=4)
    text = yaml_path.read_text().replace("manifest: cases.csv", "manifest: other.csv")
    yaml_path.write_text(text)
    with pytest.raises(DataError, match="other.csv"):
        load_manifest_dataset(yaml_path)
    yaml_path.write_text(text.replace("other.csv", "cases.csv"))
    df = pd.read_csv(tmp_path / "cases.csv").drop(columns=["scope_path"])
    df.to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(DataError, match="scope_path"):
        load_manifest_dataset(yaml_path)


def test_bad_yaml_key_is_named_with_suggestion(tmp_path):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=4)
    yaml_path.write_text(yaml_path.read_text().replace("tasks:", "taks:"))
    with pytest.raises(ConfigError) as e:
        load_manifest_dataset(yaml_path)
    assert "taks" in str(e.value) and "tasks" in str(e.value) and str(yaml_path) in str(e.value)


def test_multilabel_cells(tmp_path):
    from mmdiag.data.manifest import encode_label
    from mmdiag.data.schema import TaskSpec

    task = TaskSpec(type="multilabel", classes=("abnormal", "acl", "meniscus"))
    np.testing.assert_array_equal(encode_label("t", task, "acl|meniscus", case_id="x"), [0, 1, 1])
    assert np.isnan(encode_label("t", task, "", case_id="x")).all()
    with pytest.raises(DataError, match="'acl', 'meniscus'"):
        encode_label("t", task, "acl|tear", case_id="x")
