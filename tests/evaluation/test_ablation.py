"""Test-time modality ablation of a finished run: each modality removed exactly like a missing one, metrics that
scikit-learn reproduces from the written predictions, name errors, and a report left untouched."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from mmdiag.cli.main import main
from mmdiag.config import load_config
from mmdiag.errors import ConfigError
from mmdiag.evaluation.ablation import modality_ablation
from mmdiag.evaluation.infer import Predictor
from mmdiag.evaluation.robustness import load_run_data
from mmdiag.evaluation.scores import probabilities
from mmdiag.training.run import train

# every test reads a trained run; 20 test cases over 8 classes leave some classes without cases (their AUC is NaN)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*no positive cases:UserWarning"),
              pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")]
TINY = ["trainer.enable_progress_bar=false", "trainer.early_stopping=null", "trainer.max_epochs=2",
        "data.batch_size=16", "data.options.n_cases=120", "data.options.image_size=16",
        "data.options.multitask=true", "data.split.folds=3"]


def _train(root, *extra):
    cfg = load_config(None, [f"output_dir={root}", *TINY, *extra])
    return train(cfg, root / "run").run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("ablation"), "model.name=late_fusion")


def _direct(run_dir, modality):
    """Probabilities of the main task with ``modality``'s present flag False, its tensor left as read."""
    predictor = Predictor(run_dir)
    loader, _ = load_run_data(predictor, run_dir, "test")
    model, spec = predictor.model.eval(), predictor.spec
    out = []
    with torch.no_grad():
        for batch in loader:
            batch = predictor.transform(batch, train=False)
            present = {**batch["present"], modality: torch.zeros_like(batch["present"][modality])}
            out.append(probabilities(spec, model(batch["inputs"], present), predictor.cfg.eval.score)["diagnosis"])
    return torch.cat(out).numpy()


def _probs(df, task, classes):
    return df[[f"{task}.prob.{c}" for c in classes]].to_numpy()


def test_removing_a_modality_equals_running_the_model_with_it_absent(run):
    table = modality_ablation(run, "test", ["dermoscopy"])
    assert list(table["condition"]) == ["all modalities", "without dermoscopy"]
    classes = Predictor(run).spec.tasks["diagnosis"].classes
    without = pd.read_csv(run / "eval" / "test" / "without_dermoscopy" / "predictions.csv", dtype={"case_id": str})
    assert len(without) == table["n"].iloc[1] == table["n"].iloc[0] > 0
    p_without = _probs(without, "diagnosis", classes)
    np.testing.assert_allclose(p_without, _direct(run, "dermoscopy"), atol=1e-6)
    # the full model reads dermoscopy: removing it moves the predictions
    predictor = Predictor(run)
    loader, _ = load_run_data(predictor, run, "test")
    with torch.no_grad():
        p_full = torch.cat([probabilities(predictor.spec, predictor.model.eval()(b["inputs"], b["present"]),
                                          predictor.cfg.eval.score)["diagnosis"]
                            for b in (predictor.transform(b, train=False) for b in loader)]).numpy()
    assert np.abs(p_full - p_without).max() > 1e-3


def test_metrics_json_equals_scikit_learn_on_the_written_predictions(run):
    table = modality_ablation(run, "test", ["all"])
    spec = Predictor(run).spec
    classes = list(spec.tasks["diagnosis"].classes)
    assert list(table["condition"]) == ["all modalities", "without clinical", "without dermoscopy", "without record"]
    for m in ("clinical", "dermoscopy", "record"):
        folder = run / "eval" / "test" / f"without_{m}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["split"] == "test" and metrics["without"] == [m]
        df = pd.read_csv(folder / "predictions.csv", dtype={"case_id": str}, keep_default_na=False)
        y = np.array([classes.index(v) for v in df["diagnosis.true"]])
        p = _probs(df, "diagnosis", classes)
        got = metrics["tasks"]["diagnosis"]
        pred = p.argmax(1)
        assert got["acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
        assert got["f1"] == pytest.approx(f1_score(y, pred, labels=list(range(len(classes))), average="macro",
                                                   zero_division=0), abs=1e-12)
        aucs = [roc_auc_score(y == c, p[:, c]) for c in range(len(classes)) if 0 < (y == c).sum() < len(y)]
        assert got["auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
        # the table row is the metrics.json of that ablation (main task and mean over the two tasks)
        row = table.set_index("condition").loc[f"without {m}"]
        for k in ("acc", "balanced_acc", "auc", "f1"):
            assert row[f"diagnosis.{k}"] == pytest.approx(got[k], abs=1e-12)
            assert row[f"mean.{k}"] == pytest.approx(metrics["mean"][k], nan_ok=True, abs=1e-12)
    md = (run / "eval" / "test" / "modality_ablation.md").read_text()
    assert "| without record |" in md and "Modalities the model reads: clinical, dermoscopy, record." in md
    csv = pd.read_csv(run / "eval" / "test" / "modality_ablation.csv")
    np.testing.assert_allclose(csv["diagnosis.auc"], table["diagnosis.auc"])


def test_unknown_or_unread_modality_is_a_config_error(run, capsys):
    with pytest.raises(ConfigError, match=r"'dermoscpy' is not a modality of the run; did you mean 'dermoscopy'"):
        modality_ablation(run, "test", ["dermoscpy"])
    assert main(["eval", "--run", str(run), "--without", "clincal"]) == 2
    err = capsys.readouterr().err
    assert "'clincal'" in err and "'clinical'" in err


def test_cli_ablation_leaves_the_report_untouched(run, capsys):
    report = (run / "report.md").read_bytes()
    metrics = (run / "metrics.json").read_bytes()
    assert main(["eval", "--run", str(run), "--split", "val", "--without", "record", "--without", "clinical"]) == 0
    out = capsys.readouterr().out
    assert "without clinical" in out and "without record" in out and "modality_ablation.md" in out
    assert (run / "report.md").read_bytes() == report and (run / "metrics.json").read_bytes() == metrics
    table = pd.read_csv(run / "eval" / "val" / "modality_ablation.csv")
    assert list(table["condition"]) == ["all modalities", "without clinical", "without record"]


def test_single_modality_model_table_says_so(tmp_path):
    run = _train(tmp_path, "model.name=tabular_mlp", "trainer.max_epochs=1")
    table = modality_ablation(run)
    assert list(table["condition"]) == ["all modalities"]
    assert "reads a single modality ('record')" in (run / "eval" / "test" / "modality_ablation.md").read_text()
    with pytest.raises(ConfigError, match="does not read modality 'clinical'"):
        modality_ablation(run, "test", ["clinical"])
