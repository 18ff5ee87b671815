"""User mistakes in input data are DataErrors naming the case, field or file, never tracebacks."""

import numpy as np
import pytest

from mmdiag.data.readers import read_image
from mmdiag.data.schema import ImageModality, TabularModality
from mmdiag.data.tabular import TabularEncoder
from mmdiag.errors import DataError

RECORD = TabularModality.model_validate({"kind": "tabular", "fields": {"age": {"type": "numeric"}}})


def test_non_numeric_value_in_a_training_case_is_named():
    rows = [{"age": "40"}, {"age": "forty"}, {"age": ""}]
    with pytest.raises(DataError, match=r"numeric field 'age'.*'forty'"):
        TabularEncoder(RECORD).fit(rows)


def test_non_numeric_training_case_is_named_by_the_data_module(tmp_path):
    import pandas as pd

    from mmdiag.config.schema import DataConfig
    from mmdiag.data.datamodule import MultimodalDataModule
    from mmdiag.data.manifest import load_manifest_dataset
    from mmdiag.testing import write_manifest_dataset

    yaml_path = write_manifest_dataset(tmp_path, n_cases=24)
    df = pd.read_csv(tmp_path / "cases.csv", dtype=str)
    df["age"] = "n/a"
    df.to_csv(tmp_path / "cases.csv", index=False)
    dm = MultimodalDataModule(load_manifest_dataset(yaml_path), DataConfig(verify=False))
    with pytest.raises(DataError, match=r"case 'c0\d\d'.*numeric field 'age'.*'n/a'"):
        dm.setup()


@pytest.mark.parametrize("channels", [6, 3])
def test_npy_image_hwc_with_more_than_four_channels(tmp_path, channels):
    arr = np.random.default_rng(0).random((20, 24, 6)).astype(np.float32)
    np.save(tmp_path / "multi.npy", arr)
    spec = ImageModality(channels=channels, size=(20, 24))
    if channels == 3:
        with pytest.raises(DataError, match="has 6 channels; the modality expects 3"):
            read_image(str(tmp_path / "multi.npy"), spec, case_id="c")
        return
    x = read_image(str(tmp_path / "multi.npy"), spec, case_id="c")
    assert x.shape == (6, 20, 24)
    np.testing.assert_allclose(x.numpy(), arr.transpose(2, 0, 1), atol=1e-6)
    chw = read_image(arr.transpose(2, 0, 1).copy(), spec, case_id="c")  # channels-first stays as it is
    np.testing.assert_allclose(chw.numpy(), arr.transpose(2, 0, 1), atol=1e-6)


def test_numeric_field_declared_range_is_enforced_and_named():
    spec = TabularModality(fields={"age": {"type": "numeric", "unit": "years", "min": 0, "max": 120}})
    enc = TabularEncoder(spec).fit([{"age": 30}, {"age": 50}])
    assert enc.encode({"age": 120}, case_id="c1")[0] == pytest.approx((120 - 40) / enc.stats["age"][1])
    with pytest.raises(DataError, match=r"case 'c2': numeric field 'age' has value 130.0 years, outside its valid "
                                        r"range \[0(\.0)?, 120(\.0)?\] years"):
        enc.encode({"age": "130"}, case_id="c2")
    with pytest.raises(DataError, match="'age' has value inf"):
        enc.encode({"age": "inf"}, case_id="c3")
    with pytest.raises(ValueError, match="min 5.0 is above max 1.0"):
        TabularModality(fields={"x": {"type": "numeric", "min": 5, "max": 1}})
