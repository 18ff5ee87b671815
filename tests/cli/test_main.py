"""The command line as a user runs it: train with overrides, eval, predict (manifest and one case), cv, listings."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from mmdiag.cli.main import main

COMMON = ["trainer.enable_progress_bar=false", "trainer.max_epochs=2", "data.batch_size=8", "data.split.folds=3"]


def test_models_and_datasets_listings(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "late_fusion" in names and "resnet18" in names and not any(n.startswith("tiny_") for n in names)
    assert main(["models", "--all", "tiny_*"]) == 0
    assert any(line.startswith("tiny_") for line in capsys.readouterr().out.splitlines())
    assert main(["datasets"]) == 0
    assert "synthetic" in capsys.readouterr().out


def test_train_eval_predict_on_a_manifest(tmp_path, manifest_yaml, capsys):
    run = tmp_path / "run"
    args = ["train", "--output", str(run), f"data.dataset={manifest_yaml}", "model.name=late_fusion", *COMMON]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and "diagnosis" in metrics["tasks"]

    training = {name: (run / name).read_bytes() for name in ("report.md", "metrics.json", "predictions.csv")}
    assert main(["eval", "--run", str(run), "--split", "val"]) == 0
    assert f"report: {run / 'eval' / 'val' / 'report.md'}" in capsys.readouterr().out
    for name, content in training.items():  # the training report is never overwritten
        assert (run / name).read_bytes() == content, name
    val = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    val_ids = json.loads((run / "splits.json").read_text())["split"]["val"]
    assert val["split"] == "val" and val["tasks"]["diagnosis"]["n"] == len(val_ids)
    assert sorted(pd.read_csv(run / "eval" / "val" / "predictions.csv")["case_id"]) == sorted(val_ids)
    assert "val split" in (run / "eval" / "val" / "report.md").read_text()
    assert (run / "eval" / "val" / "plots" / "roc_diagnosis.png").is_file()

    out_csv = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(run), "--manifest", str(manifest_yaml.parent / "cases.csv"),
                 "--output", str(out_csv)]) == 0
    preds = pd.read_csv(out_csv)
    assert len(preds) == 24 and {"diagnosis.prob.benign", "diagnosis.prob.malignant"} <= set(preds.columns)
    capsys.readouterr()
    root = manifest_yaml.parent
    assert main(["predict", "--run", str(run), "--input", f"photo={root / 'photo/c001.png'}",
                 "--input", f"scope={root / 'scope/c001.png'}", "--input", "record.age=40"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert abs(sum(one["diagnosis"].values()) - 1) < 1e-4


def test_config_errors_exit_2_with_the_key(tmp_path, capsys):
    assert main(["train", f"output_dir={tmp_path}", "optim.lrate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrate" in err and "optim.lr" in err
    assert main(["train", "data.dataset=/nonexistent/data.yaml"]) == 2
    assert "/nonexistent/data.yaml" in capsys.readouterr().err
    assert main(["train", f"output_dir={tmp_path}", "data.dataset=synthetc"]) == 2
    assert "did you mean 'synthetic'" in capsys.readouterr().err


def test_cv_aggregates_folds_and_compares(tmp_path, manifest_yaml, capsys):
    base = ["cv", f"data.dataset={manifest_yaml}", *COMMON, "trainer.max_epochs=1"]
    assert main([*base, "--output", str(tmp_path / "a"), "--folds", "3", "model.name=late_fusion"]) == 0
    assert main([*base, "--output", str(tmp_path / "b"), "--folds", "3", "model.name=tabular_mlp",
                 "--against", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "paired t-test mean/acc" in out
    cv = json.loads((tmp_path / "a" / "cv_metrics.json").read_text())
    assert len(cv["summary"]["mean/acc"]["values"]) == 3
    tests = [set(json.loads((tmp_path / "a" / f"fold{k}" / "splits.json").read_text())["split"]["test"])
             for k in range(3)]
    assert set.union(*tests) == {f"c{i:03d}" for i in range(24)} and sum(map(len, tests)) == 24

    before = (tmp_path / "a" / "cv_metrics.json").read_bytes()
    assert main([*base, "--output", str(tmp_path / "a"), "--folds", "3", "model.name=late_fusion"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "a") in err and "cv_metrics.json" in err
    assert (tmp_path / "a" / "cv_metrics.json").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize(("model", "epochs", "tol"), [("tabular_mlp", 2, 1e-5), ("late_fusion", 1, 2e-4)])
def test_ddp_two_processes_match_one_process(tmp_path, model, epochs, tol):
    """Lightning DDP (gloo, 2 CPU processes) on the same global batch ends with the same weights as one process, for
    a model without BatchNorm and one with (small_cnn; GlobalBatchNorm, on by default), and its test report covers
    every test case exactly once.

    196 synthetic cases give 110 training cases: an even count, so no rank is padded with a repeated case. With
    BatchNorm, float32 rounding in the one-process reference leaves up to ~2e-5 after one epoch; unsynchronised
    BatchNorm differs by ~1e-2.
    """
    from mmdiag.training.checkpoint_io import read_checkpoint

    def run(name, *extra):
        cmd = [sys.executable, "-m", "mmdiag", "train", "--output", str(tmp_path / name), f"model.name={model}",
               "model.options.tabular_dropout=0", "data.options.n_cases=196", "data.batch_size=16",
               f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
               "optim.name=sgd", "optim.lr=0.05", *extra]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=tmp_path)
        return read_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt")["state_dict"]

    one = run("one")
    two = run("two", "trainer.devices=2", "trainer.strategy=ddp")
    assert one.keys() == two.keys()
    if model == "late_fusion":
        assert any(k.endswith("running_var") for k in one)
    for k in one:
        assert (one[k].double() - two[k].double()).abs().max() < tol, k
    test_ids = json.loads((tmp_path / "two" / "splits.json").read_text())["split"]["test"]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["tasks"]["diagnosis"]["n"] == len(test_ids)
    preds = pd.read_csv(tmp_path / "two" / "predictions.csv")
    assert sorted(preds["case_id"]) == sorted(test_ids)


def test_summary_means_over_runs(tmp_path, capsys):
    for name, m in (("a", 0.6), ("b", 0.8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"mean": {"map": m, "auc": m + 0.1, "s2": m, "acc": m}, "run": {"dataset": name}}))
    (tmp_path / "recipe" / "stage2_ei").mkdir(parents=True)  # a recipe folder: its stage's metrics are used
    (tmp_path / "recipe" / "stage2_ei" / "metrics.json").write_text(json.dumps(
        {"mean": {"map": 1.0, "auc": 1.0, "s2": 1.0, "acc": 1.0}, "run": {"dataset": "c"}}))
    assert main(["summary", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "recipe")]) == 0
    out = capsys.readouterr().out
    assert "| **MEAN** | | 0.8000 | 0.8667 | 0.8000 | 0.8000 |" in out


def test_config_descriptions_are_whole_sentences(capsys):
    assert main(["configs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["mmcaf/daft_lung_pet_ct_dx"].endswith("(Pölsterl et al. 2021), trained end to end.")
    assert "ACL tear, multi-label), DINOv2 ViT-B/14 with registers + MoR." in lines["ei/ei_mrnet"]
    assert "per-attribute AUC" in lines["remixformer/t5_isic_attr"]


def test_redirected_output_has_each_lightning_line_once_and_no_progress_bar(tmp_path, capfd):
    args = ["train", "--config", "demo_late_fusion", "--output", str(tmp_path / "run"), "trainer.max_epochs=1",
            "data.options.n_cases=60", "data.options.image_size=16"]
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "it/s" not in err and "Epoch 0" not in err  # stderr is not a terminal: no progress bar
    import logging

    record = logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, "GPU available", (), None)
    handlers = logging.getLogger().handlers
    assert handlers and not any(h.filter(record) for h in handlers)  # Lightning's own handler prints it, once
