"""One training run, end to end: data → model → Lightning fit → best weights → test report.

A run folder holds::

    config.yaml          the resolved experiment config
    splits.json          case ids per split, and the tabular encoders' fitted statistics
    checkpoints/         last.ckpt and best.ckpt (safetensors + JSON run state; see checkpoint_io)
    model.safetensors    the best weights alone (loadable with create_model(..., checkpoint=...))
    adapter.safetensors  with PEFT: the adapters and trained heads only (mmdiag.models.peft.load_adapter_checkpoint)
    run_state.json       status, epochs, best score, train seconds (summed over resumed sessions)
    logs/csv, logs/tb    CSV and TensorBoard logs
    report.md, metrics.json, predictions.csv, plots/   the test split, written once when training finishes
    eval/<split>/        the same four, from ``mmdiag eval --run RUN --split <split>`` (the training report stays)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm

from mmdiag.config.schema import ExperimentConfig
from mmdiag.data.datamodule import MultimodalDataModule, datamodule_for
from mmdiag.data.transforms import BatchTransform, build_image_augment
from mmdiag.errors import ConfigError
from mmdiag.evaluation.predict import predict_loader
from mmdiag.evaluation.report import evaluate_predictions, write_report
from mmdiag.io.atomic import atomic_write_text
from mmdiag.io.checkpoint import save_weights
from mmdiag.models._builder import build_for_dataset
from mmdiag.training.checkpoint_io import SafetensorsCheckpointIO, read_checkpoint
from mmdiag.training.losses import MultiTaskLoss, balanced_class_weights
from mmdiag.training.sync_batchnorm import GlobalBatchNormSync
from mmdiag.training.system import MultimodalSystem

__all__ = ["RunResult", "train", "run_stage", "evaluate_run", "eval_dir_for", "run_dir_for"]

_log = logging.getLogger(__name__)
# Lightning's notices that do not apply here: the batch transform lives in the system by design, tips, deprecations.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip" not in r.getMessage())


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    summary: dict[str, Any]


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def _loss(cfg: ExperimentConfig, dm: MultimodalDataModule) -> MultiTaskLoss:
    unknown = [t for t in cfg.loss.task_weights if t not in dm.spec.tasks]
    if unknown:
        raise ConfigError(f"loss.task_weights names task(s) {unknown}; tasks: {list(dm.spec.tasks)}")
    weights = None
    if cfg.loss.class_weights == "balanced":
        train = dm.split["train"]
        weights = {t: balanced_class_weights(task, dm.table.label_matrix(t)[train]) for t, task in dm.spec.tasks.items()}
    return MultiTaskLoss(dm.spec.tasks, cfg.loss.task_weights, weights, cfg.loss.label_smoothing,
                         cfg.loss.focal_gamma)


def _merge_logs(earlier: Path, current: Path) -> None:
    """Put the rows logged before a crash back in front of the resumed run's rows (those of steps the resumed run
    repeated are dropped), then remove the set-aside file."""
    import pandas as pd

    old = pd.read_csv(earlier)
    if current.is_file():
        new = pd.read_csv(current)
        old = pd.concat([old[old["step"] < new["step"].min()], new], ignore_index=True)
    atomic_write_text(current, old.to_csv(index=False))
    earlier.unlink()


class _Clock(L.Callback):
    """Keeps ``train_seconds`` in ``run_state.json`` current after every training epoch (rank 0), so a session that
    is killed still adds its time up to its last epoch to a resumed run's total."""

    def __init__(self, path: Path, earlier_seconds: float, resumed: bool):
        self.path, self.earlier, self.resumed = path, earlier_seconds, resumed
        self.start = time.time()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            _write_json(self.path, {"status": "running", "resumed": self.resumed, "epoch": trainer.current_epoch,
                                    "train_seconds": self.earlier + time.time() - self.start})


def _layer_sync(cfg: ExperimentConfig) -> list[LayerSync]:
    """With ``trainer.sync_batchnorm``: torch's SyncBatchNorm on GPUs, :class:`GlobalBatchNorm` elsewhere (torch's
    refuses CPU modules). Lightning applies it under DDP strategies only."""
    t = cfg.trainer
    if not t.sync_batchnorm:
        return []
    gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    return [TorchSyncBatchNorm() if gpu else GlobalBatchNormSync()]


def _count(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(cfg: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False,
          callbacks: list[L.Callback] | None = None) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (default ``output_dir/name``), then evaluate the best weights on the test split.

    Under DDP, training runs in every process (BatchNorm synchronised unless ``trainer.sync_batchnorm=false``); the
    test evaluation after fit runs in the rank-0 process alone, over the whole test split (an unsharded loader), so
    every test case is scored exactly once.

    Args:
        resume: continue from ``checkpoints/last.ckpt`` of an interrupted run with the same config; the train seconds
            of the earlier sessions are added to this one's.
        callbacks: extra Lightning callbacks.

    Raises:
        ConfigError: the run folder already holds a run and ``resume`` is False, ``resume`` finds no checkpoint, or
            ``resume`` finds the run finished.
    """
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    state_file = run_dir / "run_state.json"
    earlier = json.loads(state_file.read_text()) if resume and state_file.is_file() else {}
    if earlier.get("status") == "finished":
        raise ConfigError(f"--resume: run {str(run_dir)!r} is finished ({earlier.get('epochs')} epochs, report at "
                          f"{run_dir / 'report.md'}); nothing to resume. Re-evaluate it with `mmdiag eval --run "
                          f"{run_dir}` or train into another folder")
    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint at {last}")
    earlier_seconds = float(earlier.get("train_seconds", 0.0))
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ConfigError(f"run folder {str(run_dir)!r} already holds a run; pass --resume to continue it or choose "
                          f"another name/output")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = datamodule_for(cfg, run_dir if resume else None)
    dm.setup("fit")
    model = build_for_dataset(dm.spec, cfg.model.name, cfg.model.options, cfg.model.checkpoint, cfg.model.peft,
                              cfg.model.peft_options)
    transform = BatchTransform(dm.spec, build_image_augment(cfg.data.augment.get("image", [])),
                               paired=cfg.data.paired_augment)
    system = MultimodalSystem(model, dm.spec, _loss(cfg, dm), cfg.optim, cfg.schedule, cfg.trainer.max_epochs,
                              transform, cfg.seed, score=cfg.eval.score)
    t = cfg.trainer
    es = t.early_stopping
    monitor, mode = (es.monitor, es.mode) if es else ("val/loss", "min")
    # "best" follows the monitored metric; "last" is rewritten after every epoch (after "best", so the state it
    # records is current) and is what --resume continues from.
    cbs: list[L.Callback] = [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                             save_top_k=1, enable_version_counter=False),
                             ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                             enable_version_counter=False),
                             LearningRateMonitor("epoch")]
    if es:
        cbs.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta))
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, deterministic=True if t.deterministic else None,
        enable_progress_bar=sys.stderr.isatty() if t.enable_progress_bar is None else t.enable_progress_bar,
        log_every_n_steps=t.log_every_n_steps, check_val_every_n_epoch=t.check_val_every_n_epoch,
        callbacks=cbs + [_Clock(state_file, earlier_seconds, resume)] + list(callbacks or []),
        logger=[CSVLogger(run_dir / "logs", name="csv", version=""),
                TensorBoardLogger(run_dir / "logs", name="tb", version="")],
        plugins=[SafetensorsCheckpointIO(), *_layer_sync(cfg)], use_distributed_sampler=False,
        enable_model_summary=False,
        default_root_dir=run_dir)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        table = dm.table.cases
        _write_json(run_dir / "splits.json", {
            "seed": cfg.seed if cfg.data.split.seed is None else cfg.data.split.seed,
            "split": {k: [table[i].case_id for i in v] for k, v in dm.split.items()},
            "encoders": dm.state()["encoders"]})
        _write_json(run_dir / "dataset_spec.json", dm.spec.model_dump(mode="json"))
        _write_json(state_file, {"status": "running", "resumed": resume, "train_seconds": earlier_seconds})
    csv_log = run_dir / "logs" / "csv" / "metrics.csv"
    earlier_log = csv_log.with_name("metrics.before-resume.csv")
    if resume and csv_log.is_file() and trainer.is_global_zero:
        os.replace(csv_log, earlier_log)  # Lightning's CSV logger would delete it
    start = time.time()
    try:
        trainer.fit(system, datamodule=dm, ckpt_path=str(last) if resume else None)
    except BaseException as e:
        if trainer.is_global_zero:
            _write_json(state_file, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                     "epoch": trainer.current_epoch,
                                     "train_seconds": earlier_seconds + time.time() - start})
        raise
    elapsed = earlier_seconds + time.time() - start
    if earlier_log.is_file() and trainer.is_global_zero:
        _merge_logs(earlier_log, csv_log)
    best = trainer.checkpoint_callback.best_model_path or str(last)
    state = read_checkpoint(best)["state_dict"]
    system.load_state_dict(state)
    if not trainer.is_global_zero:
        return RunResult(run_dir, {}, {})
    save_weights(model, run_dir / "model.safetensors")
    if any(getattr(m, "peft_config", None) is not None for m in model.modules()):
        from mmdiag.models.peft import adapter_checkpoint

        adapters, meta = adapter_checkpoint(model)
        save_weights(adapters, run_dir / "adapter.safetensors", metadata=meta)
    total, trainable = _count(model)
    summary = {
        "name": cfg.name, "dataset": dm.spec.name, "model": cfg.model.name,
        "modalities": ", ".join(dm.modalities), "parameters": total, "trainable parameters": trainable,
        "epochs run": trainer.current_epoch, "best checkpoint": Path(best).name,
        f"best {monitor}": float(trainer.checkpoint_callback.best_model_score or float("nan")),
        "train seconds": round(elapsed, 1), "seed": cfg.seed,
        "cases train/val/test": "/".join(str(len(dm.datasets[s])) for s in ("train", "val", "test")),
        "skipped_cases": dm.bad_cases}
    # Rank 0 alone, over the whole test split (dm.loader is never sharded): every case once, also under DDP.
    preds = predict_loader(model, dm.spec, dm.loader("test"), transform, score=cfg.eval.score)
    metrics = evaluate_predictions(dm.spec, preds, seed=cfg.seed)
    write_report(run_dir, dm.spec, preds, metrics, summary)
    _write_json(state_file, {"status": "finished", "epochs": trainer.current_epoch,
                                             "train_seconds": elapsed, "best_checkpoint": best})
    return RunResult(run_dir, metrics, summary)


def _finished(stage_dir: Path) -> bool:
    state = stage_dir / "run_state.json"
    return state.is_file() and json.loads(state.read_text()).get("status") == "finished"


def run_stage(cfg: ExperimentConfig, stage_dir: Path, resume: bool) -> RunResult:
    """Train one stage of a recipe into ``stage_dir``; with ``resume``, a finished stage is kept and an interrupted
    one continues from its last checkpoint."""
    if resume and _finished(stage_dir):
        _log.info("%s already finished, kept", stage_dir)
        metrics = json.loads((stage_dir / "metrics.json").read_text())
        return RunResult(stage_dir, metrics, metrics.get("run", {}))
    again = resume and (stage_dir / "checkpoints" / "last.ckpt").is_file()
    return train(cfg, stage_dir, resume=again)


def eval_dir_for(run_dir: str | Path, split: str) -> Path:
    """Where :func:`evaluate_run` writes: ``RUN/eval/<split>/``."""
    return Path(run_dir) / "eval" / split


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Evaluate a finished run's best model on ``split``; write report.md, metrics.json, predictions.csv and plots
    into ``RUN/eval/<split>/`` (the training report at ``RUN/report.md`` is left as it is)."""
    from mmdiag.evaluation.infer import Predictor

    predictor = Predictor(run_dir)
    cfg, model, transform = predictor.cfg, predictor.model, predictor.transform
    dm = datamodule_for(cfg, Path(run_dir))
    dm.setup("test")
    if split not in dm.datasets:
        raise ConfigError(f"split {split!r} does not exist; splits: {list(dm.datasets)}")
    preds = predict_loader(model, dm.spec, dm.loader(split), transform, score=cfg.eval.score)
    metrics = evaluate_predictions(dm.spec, preds, seed=cfg.seed)
    total, trainable = _count(model)
    summary = {"name": cfg.name, "dataset": dm.spec.name, "model": cfg.model.name, "parameters": total,
               "trainable parameters": trainable, "skipped_cases": dm.bad_cases}
    write_report(eval_dir_for(run_dir, split), dm.spec, preds, metrics, summary, split=split)
    return metrics
