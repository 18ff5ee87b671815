"""``mmdiag robustness`` and ``mmdiag explain`` end to end on a MedMamba run trained here on tiny PNG data."""

import json
import math
import shutil

import pandas as pd
import pytest
import yaml
from PIL import Image

import mmdiag.cli.main as cli
from mmdiag.evaluation.robustness import PAPER_METRICS
from mmdiag.testing import write_manifest_dataset

VERBS = ["mmdiag.cli.explain", "mmdiag.cli.robustness"]


@pytest.fixture(autouse=True)
def verbs(monkeypatch):
    monkeypatch.setattr(cli, "VERB_MODULES", sorted(set(cli.VERB_MODULES) | set(VERBS)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """tiny_medmamba on the photo modality of a 32² manifest dataset (24 cases; 8 in the test split)."""
    root = tmp_path_factory.mktemp("mm")
    data = write_manifest_dataset(root / "data", n_cases=24, size=32)
    out = root / "run"
    assert cli.main(["train", "--output", str(out), f"data.dataset={data}", "model.name=tiny_medmamba",
                     "data.modalities=[photo]", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
                     "data.batch_size=8", "data.split.folds=3"]) == 0
    return out, data


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_robustness_severity_zero_reproduces_the_run_metrics(run, capsys):
    out, _ = run
    capsys.readouterr()
    assert cli.main(["robustness", "--run", str(out), "--corruptions", "rotation"]) == 0
    printed = capsys.readouterr().out
    assert "rotation" in printed and "report:" in printed
    report = json.loads((out / "robustness" / "robustness.json").read_text())
    clean = json.loads((out / "metrics.json").read_text())["tasks"]["diagnosis"]
    for m in PAPER_METRICS:
        assert _same(report["clean"]["tasks"]["diagnosis"][m], clean[m]), m
        for rows in report["results"].values():
            assert _same(rows[0]["tasks"]["diagnosis"][m], clean[m]), m
    assert report["clean"]["tasks"]["diagnosis"]["n"] == clean["n"] == 8
    assert list(report["results"]) == ["rotation"]
    files = {p.name for p in (out / "robustness").iterdir()}
    assert {"robustness.json", "robustness.md", *(f"robustness_{m}.png" for m in PAPER_METRICS)} == files


def test_robustness_on_another_dataset_from_a_weights_file(run, tmp_path, capsys):
    out, data = run
    weights = tmp_path / "copy.safetensors"
    shutil.copy(out / "model.safetensors", weights)
    assert cli.main(["robustness", "--run", str(out), "--weights", str(weights), "--data", str(data),
                     "--output", str(tmp_path / "rb"), "--corruptions", "contrast", "--batch-size", "24"]) == 0
    report = json.loads((tmp_path / "rb" / "robustness.json").read_text())
    assert report["clean"]["tasks"]["diagnosis"]["n"] == 24 and "all 24 cases" in report["data"]
    assert report["weights"] == str(weights)
    other = tmp_path / "small"
    shutil.copytree(data.parent, other)
    desc = yaml.safe_load((other / "dataset.yaml").read_text())
    desc["modalities"]["photo"]["size"] = [16, 16]
    (other / "dataset.yaml").write_text(yaml.safe_dump(desc))
    capsys.readouterr()
    assert cli.main(["robustness", "--run", str(out), "--data", str(other / "dataset.yaml")]) == 2
    assert "modality 'photo': shape (3, 16, 16) != the run's (3, 32, 32)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the old flag is gone: every verb that reads a run takes --run
        cli.main(["robustness", "--checkpoint", str(out)])


def test_explain_gradcam_tsne_and_layers(run, capsys):
    out, _ = run
    capsys.readouterr()
    assert cli.main(["explain", "gradcam", "--run", str(out), "--layer", "layers.1.blocks.0", "--cases", "2",
                     "--method", "gradcampp"]) == 0
    printed = capsys.readouterr().out
    pngs = sorted((out / "explain").glob("gradcampp_photo_*_diagnosis-*.png"))
    assert len(pngs) == 2 and "(channels_last)" in printed
    assert min(Image.open(pngs[0]).size) >= 224
    assert all(p.stem.rsplit("-", 1)[1] in ("benign", "malignant") for p in pngs)

    assert cli.main(["explain", "tsne", "--run", str(out)]) == 0
    coords = pd.read_csv(out / "explain" / "tsne_test.csv")
    test_ids = json.loads((out / "splits.json").read_text())["split"]["test"]
    assert sorted(coords["case_id"]) == sorted(test_ids)
    assert set(coords["diagnosis"]) <= {"benign", "malignant"}
    assert (out / "explain" / "tsne_test_diagnosis.png").is_file()

    capsys.readouterr()
    assert cli.main(["explain", "layers", "--run", str(out)]) == 0
    assert "net.layers.1.blocks.0 " in capsys.readouterr().out

    assert cli.main(["explain", "gradcam", "--run", str(out), "--layer", "layers.1.block.0"]) == 2
    assert "did you mean 'net.layers.1.blocks.0'" in capsys.readouterr().err
    assert cli.main(["explain", "gradcam", "--run", str(out), "--target", "cancer"]) == 2
    assert "classes ['benign', 'malignant']" in capsys.readouterr().err
