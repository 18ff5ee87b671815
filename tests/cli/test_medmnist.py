"""``mmdiag medmnist-eval``: a MedMamba run on a multi-label ChestMNIST fixture scored by the official protocol."""

import re

import numpy as np
import pytest

import mmdiag.cli.main as cli
import mmdiag.data.adapters.medmnist  # noqa: F401  (registers the dataset)
from mmdiag.data.adapters.medmnist import npz_path
from mmdiag.evaluation.protocols.medmnist import get_acc, get_auc, read_result_file
from mmdiag.testing.medmnist import write_medmnist


@pytest.fixture
def verbs(monkeypatch):
    monkeypatch.setattr(cli, "VERB_MODULES", [*cli.VERB_MODULES, "mmdiag.cli.medmnist"]
                        if "mmdiag.cli.medmnist" not in cli.VERB_MODULES else cli.VERB_MODULES)


def test_medmnist_eval_prints_official_metrics_and_writes_the_result_file(tmp_path, capsys, verbs):
    data = tmp_path / "data"
    write_medmnist(data, "chestmnist")
    run = tmp_path / "chest_run"
    assert cli.main(["train", "--config", "medmamba_medmnist", "--output", str(run), f"data.root={data}",
                     "data.options.flag=chestmnist", "data.options.image_size=32", "model.name=tiny_medmamba",
                     "data.batch_size=8", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]) == 0
    capsys.readouterr()

    out_dir = tmp_path / "official"
    out_dir.mkdir()
    assert cli.main(["medmnist-eval", "--run", str(run), "--output", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    acc, auc = (float(v) for v in re.search(r"ACC ([\d.]+)\s+AUC ([\d.]+)", printed).groups())
    (path,) = out_dir.iterdir()
    assert re.fullmatch(r"chestmnist_test_\[AUC\]\d\.\d{3}_\[ACC\]\d\.\d{3}@chest_run\.csv", path.name)
    name, scores = read_result_file(path)
    labels = np.load(npz_path(data, "chestmnist"))["test_labels"]
    assert name == ("chestmnist", 28, "test", "chest_run") and scores.shape == labels.shape == (4, 14)
    assert ((scores > 0) & (scores < 1)).all()  # sigmoid probabilities, one column per label
    assert get_acc(labels, scores, "multi-label, binary-class") == pytest.approx(acc, abs=5e-5)
    assert get_auc(labels, scores, "multi-label, binary-class") == pytest.approx(auc, abs=5e-5)
    assert f"[AUC]{auc:.3f}_[ACC]{acc:.3f}" in path.name

    # the run's predictions.csv (test split, probabilities rounded to 6 decimals) gives the same metrics
    assert cli.main(["medmnist-eval", "--run", str(run), "--from-predictions", "--tag", "csv"]) == 0
    (csv_file,) = run.glob("chestmnist_test_*@csv.csv")
    np.testing.assert_allclose(read_result_file(csv_file)[1], scores, atol=1e-6)
    assert "AUC" in capsys.readouterr().out
    assert cli.main(["medmnist-eval", "--run", str(run), "--split", "val", "--from-predictions"]) == 2
    assert "holds split(s) ['test'], not 'val'" in capsys.readouterr().err
