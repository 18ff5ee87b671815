"""The experiment configuration: what a user writes in YAML or as ``key=value`` overrides.

Every section forbids unknown keys; :func:`mmdiag.config.load.load_config` turns pydantic's errors into messages that
name the file and the dotted key and suggest the closest valid key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SplitConfig",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "ScheduleConfig",
    "EarlyStoppingConfig",
    "TrainerConfig",
    "EvalConfig",
    "ExperimentConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    """How cases are split. ``auto``: the dataset's official split when it has one, else patient-grouped k-fold."""

    kind: Literal["auto", "official", "kfold"] = "auto"
    folds: int = Field(5, ge=2, description="k of the patient-grouped stratified k-fold")
    fold: int = Field(0, ge=0, description="which fold is the test fold")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training patients held out for validation")
    seed: int | None = Field(None, description="split seed; default: the experiment seed")

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitConfig:
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is out of range for folds={self.folds} (0..{self.folds - 1})")
        return self


class DataConfig(_Section):
    """Which dataset and how it is loaded."""

    dataset: str = Field("synthetic", description="registered dataset name (`mmdiag datasets`) or a dataset.yaml path")
    root: str | None = Field(None, description="folder of a registered dataset in its native layout")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the dataset adapter")
    batch_size: int = Field(32, ge=1, description="global batch size (split evenly over DDP processes)")
    eval_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    split: SplitConfig = SplitConfig()
    sampling: Literal["uniform", "oversample"] = Field(
        "uniform", description="oversample: draw training cases with replacement, every stratum of the main task (a "
                               "class, or a label combination of a multi-label task) equally often unless "
                               "oversample_shares says otherwise")
    epoch_size: int | None = Field(
        None, ge=1, description="oversample: cases drawn per epoch (default: the number of training cases)")
    oversample_shares: dict[str, float] = Field(
        default_factory=dict,
        description="oversample: relative share of each stratum of the main task in an epoch: a class name, or the "
                    "positive labels joined by '|' in class order ('none': no positive label); default: equal")
    pairing: Literal["none", "disease"] = Field(
        "none", description="disease: training cases borrow missing modalities from same-diagnosis training cases "
                            "(RemixFormer's disease-wise pairing; never across splits)")
    pairing_swap_p: float = Field(0.0, ge=0, le=1, description="disease pairing: chance to exchange a present "
                                                               "modality too")
    tabular_scaling: Literal["standard", "minmax"] = Field(
        "standard", description="numeric record fields: standardised, or min-max scaled to [-1, 1] (fitted on train)")
    cache_dir: str | None = Field(None, description="on-disk cache of decoded, resized images/volumes")
    verify: bool = Field(True, description="decode every case once before training to find unreadable files")
    on_bad_case: Literal["error", "skip"] = "error"
    modalities: list[str] | None = Field(None, description="use only these modalities (default: all)")
    modality_dropout: dict[str, float] = Field(
        default_factory=dict,
        description="training only: per modality, the probability that a case's modality is dropped (present=False, "
                    "tensor zeroed); a case never loses every modality")
    augment: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict,
        description="per modality kind ('image' → kornia.augmentation, 'volume' → monai.transforms): list of "
                    "{name: ClassName, **kwargs}")
    paired_augment: bool = Field(False, description="give every image of a case the same random 2D augmentation "
                                                     "(same geometry for e.g. clinical + dermoscopic images)")


    @model_validator(mode="after")
    def _sampling_options(self) -> DataConfig:
        if self.sampling != "oversample" and (self.epoch_size is not None or self.oversample_shares):
            raise ValueError("epoch_size and oversample_shares apply to sampling: oversample only")
        bad = {k: v for k, v in self.oversample_shares.items() if not v > 0}
        if bad:
            raise ValueError(f"oversample_shares must be positive; got {bad}")
        return self

    @model_validator(mode="after")
    def _dropout_rates(self) -> DataConfig:
        bad = {m: p for m, p in self.modality_dropout.items() if not 0.0 <= p < 1.0}
        if bad:
            raise ValueError(f"modality_dropout rates must be in [0, 1); got {bad}")
        return self


class ModelConfig(_Section):
    name: str = "late_fusion"
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the model constructor")
    checkpoint: str | None = Field(None, description="initial weights (safetensors or a PyTorch state dict)")
    peft: str | None = None
    peft_options: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Section):
    task_weights: dict[str, float] = Field(default_factory=dict, description="per-task loss weight (default 1)")
    class_weights: Literal["none", "balanced"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    focal_gamma: float = Field(0.0, ge=0, description="focal loss exponent for single-label tasks (0: cross-entropy)")


class OptimConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped per epoch (``cyclic``: per optimiser step)."""

    name: Literal["none", "cosine", "multistep", "cyclic"] = "none"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0)
    base_lr: float | None = Field(None, description="cyclic: lower bound (default optim.lr / 100)")
    max_lr: float | None = Field(None, description="cyclic: upper bound (default optim.lr)")
    step_size_up: int = Field(2000, ge=1, description="cyclic: optimiser steps from base to max")
    cyclic_mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    cycle_decay: float = Field(1.0, gt=0, le=1, description="cyclic: amplitude × this after every cycle (overrides "
                                                              "cyclic_mode when < 1)")
    base_momentum: float | None = Field(None, description="cyclic with SGD: lowest momentum (default 0.8 × momentum)")
    max_momentum: float | None = Field(None, description="cyclic with SGD: highest momentum (default optim.momentum)")


class EarlyStoppingConfig(_Section):
    monitor: str = Field("val/mean/auc", description="a logged validation metric, e.g. val/<task>/acc or val/loss")
    mode: Literal["min", "max"] = "max"
    patience: int = Field(10, ge=1, description="validations without improvement before stopping")
    min_delta: float = 0.0


class TrainerConfig(_Section):
    max_epochs: int = Field(20, ge=1)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = Field("auto", description="'auto', 'ddp', 'ddp_spawn' ... (Lightning strategies)")
    precision: str = Field("32-true", description="'32-true', 'bf16-mixed', '16-mixed' (mixed precision on GPU)")
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = None
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    deterministic: bool = True
    enable_progress_bar: bool | None = Field(
        None, description="Lightning's progress bar; default: only when the output is a terminal (not in logs)")
    log_every_n_steps: int = Field(10, ge=1)
    check_val_every_n_epoch: int = Field(1, ge=1)
    sync_batchnorm: bool = Field(
        True, description="under DDP, BatchNorm layers become SyncBatchNorm (batch statistics over the global batch, "
                          "so 2 processes train as 1 does); no effect on one process")


class EvalConfig(_Section):
    """How predictions are scored (validation metrics, the test report, predictions.csv)."""

    score: Literal["probability", "sigmoid"] = Field(
        "probability",
        description="score of each class for AUC / AP / ROC: 'probability' = softmax over the classes of a "
                    "single-label task (sigmoid per label for multi-label tasks); 'sigmoid' = each class's own "
                    "sigmoid (float64), which ranks cases exactly as the raw logits do (EI's protocol). The predicted "
                    "class (argmax, or > 0.5 per label) is the same either way")


class ExperimentConfig(_Section):
    """A whole experiment: data, model, loss, optimisation and the trainer."""

    name: str = "experiment"
    recipe: str | None = Field(None, description="a multi-stage recipe (`mmdiag models --recipes`), e.g. ei_two_stage;"
                                                 " default: one training run")
    seed: int = 0
    output_dir: str = Field("runs", description="parent folder of run folders")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    trainer: TrainerConfig = TrainerConfig()
    eval: EvalConfig = EvalConfig()
