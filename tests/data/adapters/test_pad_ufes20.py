"""PAD-UFES-20 adapter on a native-layout fixture: labels, record fields, RGBA photos, grouping, errors, training."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mmdiag.data.adapters.pad_ufes20  # noqa: F401  (registers the dataset)
from mmdiag.cli.main import main
from mmdiag.data.adapters.pad_ufes20 import CLASSES, COLUMNS, pad_ufes20
from mmdiag.data.splits import make_split
from mmdiag.data.tabular import TabularEncoder
from mmdiag.errors import DataError
from mmdiag.testing.pad_ufes20 import NOT_COLLECTED, write_pad_ufes20


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_pad_ufes20(tmp_path_factory.mktemp("pad"))


def _rewrite(src, dst, edit):
    """Copy the fixture to ``dst`` with ``edit(frame)`` applied to its metadata.csv."""
    import shutil

    shutil.copytree(src, dst)
    df = pd.read_csv(dst / "metadata.csv", dtype=str, keep_default_na=False)
    edit(df).to_csv(dst / "metadata.csv", index=False)
    return dst


def test_fixture_has_the_release_columns_and_layout(root):
    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    assert tuple(df.columns) == COLUMNS and len(COLUMNS) == 26
    assert {p.parent.name for p in (root / "images").rglob("*.png")} == {"imgs_part_1", "imgs_part_2", "imgs_part_3"}
    modes = {Image.open(p).mode for p in (root / "images").rglob("*.png")}
    assert modes == {"RGBA", "RGB"}


def test_labels_record_and_patients(root):
    table = pad_ufes20(str(root), image_size=24)
    df = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    assert len(table) == len(df) and not table.official_split
    assert table.spec.tasks["diagnosis"].classes == CLASSES == ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
    for case, (_, row) in zip(table.cases, df.iterrows()):
        assert case.case_id == row["img_id"][:-4] and case.patient_id == row["patient_id"]
        assert CLASSES[case.labels["diagnosis"]] == row["diagnostic"]
    record = table.spec.modalities["record"]
    assert "biopsed" not in record.fields and "lesion_id" not in record.fields
    assert set(record.fields) == set(COLUMNS) - {"patient_id", "lesion_id", "diagnostic", "img_id", "biopsed"}
    assert record.fields["itch"].values == ("True", "False", "UNK") and len(record.fields["region"].values) == 14
    by_patient = df.groupby("patient_id").size()
    assert (by_patient > 1).any()
    split = make_split(table, "auto", folds=3)  # no official split: patient-grouped k-fold
    patients = {s: {table.cases[i].patient_id for i in idx} for s, idx in split.items()}
    assert not (patients["train"] & patients["test"]) and not (patients["val"] & patients["test"])
    assert not (patients["train"] & patients["val"])


def test_blank_and_unk_cells_encode_as_missing_and_unknown(root):
    table = pad_ufes20(str(root))
    spec = table.spec.modalities["record"]
    enc = TabularEncoder(spec).fit(c.inputs["record"] for c in table.cases)
    blank = next(c for c in table.cases if c.inputs["record"]["smoke"] == "")
    assert all(blank.inputs["record"][col] == "" for col in NOT_COLLECTED)
    x = enc.encode(blank.inputs["record"])
    i = list(spec.fields).index("fitspatrick") * 2
    assert x[i + 1] == 1.0  # numeric missing flag
    start = 2 * 4 + sum(len(spec.fields[f].values) for f in list(spec.fields)[4:list(spec.fields).index("smoke")])
    assert x[start: start + 2].sum() == 0  # categorical: no value
    unk = next(c for c in table.cases if c.inputs["record"]["itch"] == "UNK")
    start = 8 + sum(len(spec.fields[f].values) for f in list(spec.fields)[4:list(spec.fields).index("itch")])
    assert enc.encode(unk.inputs["record"])[start: start + 3].tolist() == [0.0, 0.0, 1.0]


def test_biopsed_never_reaches_the_inputs(root, tmp_path):
    flipped = _rewrite(root, tmp_path / "flipped", lambda df: df.assign(
        biopsed=df["biopsed"].map({"True": "False", "False": "True"})))
    a, b = pad_ufes20(str(root)), pad_ufes20(str(flipped))
    assert a.spec == b.spec
    assert [c.inputs["record"] for c in a.cases] == [c.inputs["record"] for c in b.cases]


def test_rgba_photos_are_read_as_rgb(root):
    table = pad_ufes20(str(root), image_size=24, normalize=False)
    case = table.cases[0]  # the fixture's first photo: RGBA, 24 x 24, alpha not opaque
    with Image.open(case.inputs["clinical"]) as im:
        assert im.mode == "RGBA" and im.size == (24, 24)
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    x = table.read(case, "clinical", train=False, rng=np.random.default_rng(0))
    assert x.shape == (3, 24, 24)
    np.testing.assert_allclose(x.numpy(), rgb.transpose(2, 0, 1), atol=1e-6)
    assert table.spec.modalities["clinical"].mean is None


def test_options_merged_layout_and_new_vocabulary_values(root, tmp_path, caplog):
    only_image = pad_ufes20(str(root), metadata=False)
    assert list(only_image.spec.modalities) == ["clinical"] and "record" not in only_image.cases[0].inputs
    merged = write_pad_ufes20(tmp_path / "merged", layout="merged")
    assert len(pad_ufes20(str(merged))) == len(only_image)
    odd = _rewrite(root, tmp_path / "odd", lambda df: df.assign(region=["SHOULDER"] + list(df["region"][1:])))
    with caplog.at_level(logging.WARNING):
        table = pad_ufes20(str(odd))
    assert table.spec.modalities["record"].fields["region"].values[-1] == "SHOULDER"
    assert "SHOULDER" in caplog.text and "region" in caplog.text


def test_bad_inputs_raise_named_errors(root, tmp_path):
    with pytest.raises(DataError, match="metadata.csv"):
        pad_ufes20(str(tmp_path))
    no_region = _rewrite(root, tmp_path / "a", lambda df: df.drop(columns=["region"]))
    with pytest.raises(DataError, match=r"lacks column\(s\) \['region'\]"):
        pad_ufes20(str(no_region))
    assert len(pad_ufes20(str(no_region), metadata=False)) > 0  # the column is only needed for the record
    bod = _rewrite(root, tmp_path / "b", lambda df: df.assign(diagnostic=["BOD"] + list(df["diagnostic"][1:])))
    with pytest.raises(DataError) as e:
        pad_ufes20(str(bod))
    first = pd.read_csv(root / "metadata.csv")["img_id"][0][:-4]
    assert "'BOD'" in str(e.value) and str(list(CLASSES)) in str(e.value) and first in str(e.value)
    gone = _rewrite(root, tmp_path / "c", lambda df: df)
    victim = next((gone / "images").rglob("*.png"))
    victim.unlink()
    with pytest.raises(DataError) as e:
        pad_ufes20(str(gone))
    assert victim.stem in str(e.value) and victim.name in str(e.value) and str(gone) in str(e.value)


def test_train_medmamba_with_the_protocol_config(root, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--config", "medmamba_nonmedmnist", "--output", str(run), f"data.root={root}",
            "data.options.image_size=32", "data.split.val_fraction=0.25", "model.name=tiny_medmamba",
            "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    assert main(args) == 0
    m = json.loads((run / "metrics.json").read_text())["tasks"]["diagnosis"]
    for key in ("acc", "precision", "sensitivity", "specificity", "f1", "auc"):  # the paper's metrics (§4.3)
        assert key in m, key
    splits = json.loads((run / "splits.json").read_text())["split"]
    assert m["n"] == len(splits["test"]) and not set(splits["train"]) & set(splits["test"])
