"""The public API (docs/api.md): its example runs as written, and the one-liners the docs promise work."""

import re
import runpy
from pathlib import Path

import pytest
import torch

import mmdiag
from mmdiag.errors import ConfigError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_public_names():
    assert set(mmdiag.__all__) >= {"load_dataset_spec", "create_model", "list_models", "load_config", "train",
                                   "load_run"}


def test_create_model_from_spec_or_num_classes_and_bad_options_are_named():
    spec = mmdiag.load_dataset_spec("synthetic")
    assert mmdiag.create_model("late_fusion", spec=spec).modalities == ("clinical", "dermoscopy", "record")
    model = mmdiag.create_model("late_fusion", num_classes=3)
    assert model({"image": torch.rand(1, 3, 224, 224)})["label"].shape == (1, 3)
    with pytest.raises(ConfigError, match=r"has no option 'backbon'; did you mean 'backbone'"):
        mmdiag.create_model("late_fusion", spec=spec, backbon="small_cnn")
    with pytest.raises(ConfigError, match="pass spec="):
        mmdiag.create_model("late_fusion")


def test_dataset_spec_from_yaml_reads_no_manifest(tmp_path):
    (tmp_path / "dataset.yaml").write_text(
        "name: toy\nmanifest: cases.csv\nmodalities: {photo: {kind: image, channels: 3, size: [32, 32]}}\n"
        "tasks: {dx: {type: binary, classes: [benign, malignant]}}\n")
    (tmp_path / "cases.csv").write_text("case_id,photo,dx\n")  # a header only: not read
    spec = mmdiag.load_dataset_spec(tmp_path / "dataset.yaml")
    assert list(spec.modalities) == ["photo"] and spec.tasks["dx"].classes == ("benign", "malignant")


@pytest.mark.slow
def test_docs_api_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert "torch.Size([2, 8])" in printed and "case_id" in printed and "'diagnosis'" in printed
