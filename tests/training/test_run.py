"""End-to-end runs on the synthetic data: learning, exact resume, NaN stop, bad-case handling, report files."""

import json

import lightning as L
import numpy as np
import pytest
import torch

from mmdiag.config import load_config
from mmdiag.errors import ConfigError, DataError, NonFiniteLossError
from mmdiag.training.checkpoint_io import read_checkpoint
from mmdiag.training.run import train

FAST = ["trainer.enable_progress_bar=false", "trainer.early_stopping=null", "data.batch_size=32", "optim.lr=3e-3"]


def _cfg(tmp_path, *extra):
    return load_config(None, [f"output_dir={tmp_path}", *FAST, *extra])


def test_fusion_learns_what_no_single_modality_can(tmp_path):
    fused = train(_cfg(tmp_path, "name=fused", "model.name=late_fusion", "trainer.max_epochs=8",
                       "data.options.n_cases=480"))
    single = train(_cfg(tmp_path, "name=single", "model.name=tabular_mlp", "trainer.max_epochs=8",
                        "data.options.n_cases=480"))
    acc_fused = fused.metrics["tasks"]["diagnosis"]["acc"]
    acc_single = single.metrics["tasks"]["diagnosis"]["acc"]
    assert acc_fused > 0.8, acc_fused
    assert acc_single < 0.4, acc_single  # construction ceiling 25 % (+ sampling noise on ~96 test cases)
    run = fused.run_dir
    for name in ("report.md", "metrics.json", "predictions.csv", "model.safetensors", "config.yaml", "splits.json",
                 "plots/roc_diagnosis.png", "plots/confusion_diagnosis.png", "plots/training_curves.png",
                 "logs/csv/metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    import pandas as pd

    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == fused.metrics["tasks"]["diagnosis"]["n"]
    probs = preds[[c for c in preds.columns if c.startswith("diagnosis.prob.")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    acc = (probs.argmax(1) == preds["diagnosis.true"].map(lambda c: int(c[1]) * 4 + int(c[3]) * 2 + int(c[5]))).mean()
    assert abs(acc - acc_fused) < 1e-9
    splits = json.loads((run / "splits.json").read_text())["split"]
    assert not set(splits["train"]) & set(splits["test"])


class _Crash(L.Callback):
    """Dies in the middle of an epoch, as a killed process would."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated crash")


def test_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    args = ["model.name=middle_fusion", "trainer.max_epochs=4", "data.options.n_cases=160", "schedule.name=cosine",
            "data.augment.image=[{name: RandomHorizontalFlip, p: 0.5}]", "model.options.drop_rate=0.2"]
    full = train(_cfg(tmp_path, "name=full", *args))
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(tmp_path, "name=full", *args))  # a finished run is never overwritten silently
    cfg = _cfg(tmp_path, "name=killed", *args)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[_Crash(epoch=2, batch=1)])
    assert not (tmp_path / "killed" / "report.md").exists()
    assert read_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")["epoch"] == 1
    state_file = tmp_path / "killed" / "run_state.json"
    state = json.loads(state_file.read_text())
    assert state["status"] == "failed" and state["train_seconds"] > 0
    state["train_seconds"] = 1000.0  # as if the killed session had trained for 1000 s
    state_file.write_text(json.dumps(state))
    resumed = train(cfg, resume=True)
    total = json.loads(state_file.read_text())["train_seconds"]
    assert 1000.0 < total < 1300.0  # the earlier session's seconds + this session's
    assert resumed.summary["train seconds"] == round(total, 1)
    report = (tmp_path / "killed" / "report.md").read_bytes()
    with pytest.raises(ConfigError, match="is finished"):
        train(cfg, resume=True)  # a finished run is not trained again
    assert (tmp_path / "killed" / "report.md").read_bytes() == report
    assert json.loads(state_file.read_text())["status"] == "finished"
    a = full.metrics["tasks"]["diagnosis"]
    b = resumed.metrics["tasks"]["diagnosis"]
    for k in ("acc", "auc", "f1", "map"):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    import pandas as pd

    logs = [pd.read_csv(r.run_dir / "logs" / "csv" / "metrics.csv") for r in (full, resumed)]
    losses = [log.dropna(subset=["train/loss"]).set_index("epoch")["train/loss"] for log in logs]
    assert list(losses[1].index) == [0, 1, 2, 3]  # the epochs before the crash are kept in the log
    np.testing.assert_allclose(losses[0].to_numpy(), losses[1].to_numpy(), rtol=1e-6)
    wa = read_checkpoint(full.run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    wb = read_checkpoint(resumed.run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "name=nan", "model.name=tabular_mlp", "trainer.max_epochs=6", "data.options.n_cases=120",
               "optim.name=sgd", "optim.lr=1e-3", "optim.momentum=0")

    class _Explode(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                for p in pl_module.parameters():
                    p.data.fill_(float("inf"))

    with pytest.raises(NonFiniteLossError, match=r"epoch 2.*Last good checkpoint: .*last\.ckpt"):
        train(cfg, callbacks=[_Explode()])
    ckpt = read_checkpoint(tmp_path / "nan" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    state = json.loads((tmp_path / "nan" / "run_state.json").read_text())
    assert state["status"] == "failed" and "NonFiniteLossError" in state["error"]


def test_bad_image_errors_or_is_skipped_and_reported(tmp_path, manifest_yaml):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(manifest_yaml.parent, data)
    (data / "photo" / "c005.png").write_bytes(b"garbage")
    base = [f"data.dataset={data / 'dataset.yaml'}", "model.name=late_fusion", "trainer.max_epochs=1",
            "data.batch_size=4", "data.split.folds=3"]
    with pytest.raises(DataError, match=r"c005.*photo/c005\.png"):
        train(_cfg(tmp_path, "name=strict", *base))
    result = train(_cfg(tmp_path, "name=lenient", *base, "data.on_bad_case=skip"))
    assert [b["case_id"] for b in result.summary["skipped_cases"]] == ["c005"]
    report = (result.run_dir / "report.md").read_text()
    assert "c005" in report and "photo/c005.png" in report
