"""Declared manifest columns must exist; empty manifests and multi-label "none" are handled without a traceback."""

import numpy as np
import pandas as pd
import pytest
import yaml

from mmdiag.data.manifest import encode_label, load_manifest_dataset
from mmdiag.data.schema import TaskSpec
from mmdiag.errors import DataError
from mmdiag.testing import write_manifest_dataset


def _declare(yaml_path, **keys):
    desc = yaml.safe_load(yaml_path.read_text())
    desc.update(keys)
    yaml_path.write_text(yaml.safe_dump(desc, sort_keys=False))


@pytest.mark.parametrize("key, value", [("patient_id_column", "patient"), ("split_column", "splits"),
                                        ("case_id_column", "case")])
def test_declared_column_absent_is_named_with_close_matches(tmp_path, key, value):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=4)
    df = pd.read_csv(tmp_path / "cases.csv", dtype=str)
    df["split"] = ["train", "train", "val", "test"]
    df.to_csv(tmp_path / "cases.csv", index=False)
    _declare(yaml_path, **{key: value})
    with pytest.raises(DataError) as e:
        load_manifest_dataset(yaml_path)
    msg = str(e.value)
    assert key in msg and repr(value) in msg and "cases.csv" in msg and "'diagnosis'" in msg
    assert "did you mean" in msg


def test_absent_task_and_modality_columns_name_their_keys(tmp_path):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=4)
    desc = yaml.safe_load(yaml_path.read_text())
    desc["tasks"]["diagnosis"]["column"] = "diagnosys"
    yaml_path.write_text(yaml.safe_dump(desc, sort_keys=False))
    with pytest.raises(DataError, match=r"tasks\.diagnosis\.column.*'diagnosys'.*did you mean 'diagnosis'"):
        load_manifest_dataset(yaml_path)
    desc["tasks"]["diagnosis"].pop("column")
    desc["modalities"]["scope"]["column"] = "scope_pth"
    yaml_path.write_text(yaml.safe_dump(desc, sort_keys=False))
    with pytest.raises(DataError, match=r"modalities\.scope\.column.*'scope_pth'.*did you mean 'scope_path'"):
        load_manifest_dataset(yaml_path)


def test_default_patient_column_may_be_absent(tmp_path):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=4)
    pd.read_csv(tmp_path / "cases.csv").drop(columns=["patient_id"]).to_csv(tmp_path / "cases.csv", index=False)
    table = load_manifest_dataset(yaml_path)
    assert [c.patient_id for c in table.cases] == [c.case_id for c in table.cases]


def test_header_only_and_zero_byte_manifests_are_data_errors(tmp_path):
    yaml_path = write_manifest_dataset(tmp_path, n_cases=4)
    header = (tmp_path / "cases.csv").read_text().splitlines()[0]
    (tmp_path / "cases.csv").write_text(header + "\n")
    with pytest.raises(DataError, match="cases.csv.*no cases"):
        load_manifest_dataset(yaml_path)
    (tmp_path / "cases.csv").write_bytes(b"")
    with pytest.raises(DataError, match="cases.csv.*empty"):
        load_manifest_dataset(yaml_path)


def test_multilabel_none_differs_from_unknown():
    task = TaskSpec(type="multilabel", classes=["acl", "meniscus"])
    assert np.isnan(encode_label("f", task, "", case_id="c")).all()
    np.testing.assert_array_equal(encode_label("f", task, "none", case_id="c"), [0, 0])
    np.testing.assert_array_equal(encode_label("f", task, "acl|meniscus", case_id="c"), [1, 1])
    with pytest.raises(DataError, match="'none' cannot be combined"):
        encode_label("f", task, "acl|none", case_id="c")


def test_predict_manifest_accepts_dataset_yaml_and_csv(tmp_path):
    from mmdiag.evaluation.infer import manifest_frame

    yaml_path = write_manifest_dataset(tmp_path / "d", n_cases=4)
    _declare(yaml_path, root="..", case_id_column="patient_id")
    df, root, source = manifest_frame(yaml_path)
    assert root == tmp_path and source.endswith("cases.csv") and list(df["case_id"]) == ["p000", "p000", "p001", "p001"]
    df2, root2, _ = manifest_frame(tmp_path / "d" / "cases.csv")
    assert root2 == tmp_path / "d" and len(df2) == 4
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv.*empty"):
        manifest_frame(tmp_path / "empty.csv")
