"""EI's two-stage training protocol (paper 003 §4.1) as one recipe, ``recipe: ei_two_stage``.

Stage 1 pre-adapts one VFM per image modality on that modality alone (``ei_unimodal``: frozen base, MoR adapters and
heads); stage 2 trains :class:`~mmdiag.models.nets.ei.EI` with both VFMs of every modality initialised from the
stage-1 run (``model.options.init_runs``). Every stage is an ordinary :func:`~mmdiag.training.run.train` run with the
experiment's data, optimiser, schedule and trainer settings, in its own sub-folder::

    <run_dir>/stage1_<modality>/   one unimodal run per modality (report.md, model.safetensors, ...)
    <run_dir>/stage2_ei/           the EI run; its RunResult is the recipe's result
    <run_dir>/recipe.json          stage folders, stage-1 validation scores, the modality prior

The modality prior ``pi`` of the gate loss (Eq. 7) is ``model.options.prior_modality``: a modality name (fixed, e.g.
the authors' code's choice), ``best_val`` (the default: the modality whose stage-1 run reached the best validation
score of the monitored metric, ``trainer.early_stopping.monitor``, default ``val/mean/map``) or ``best_train`` (the
paper's rule: the best score of that metric on the training cases, each stage-1 model's best checkpoint scored on its
training split in evaluation mode, no augmentation). Choice: ``best_val`` is the default because adapted VFMs can
saturate on the training set (the paper's own reason for the prior), so training scores may tie; ties go to the later
modality, the one the authors' prior gaps favour.

With ``resume``, finished stages are kept, an interrupted stage continues from its last checkpoint, the rest start.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from mmdiag.config.schema import ExperimentConfig
from mmdiag.data.sources import load_table
from mmdiag.errors import ConfigError
from mmdiag.io.atomic import atomic_write_text
from mmdiag.models.nets.ei import VFM_OPTIONS
from mmdiag.registry import RECIPES
from mmdiag.training.run import RunResult, run_stage

__all__ = ["ei_two_stage", "stage_configs", "PRIOR_RULES", "training_score"]

PRIOR_RULES = ("best_val", "best_train")
"""Values of ``model.options.prior_modality`` that choose the modality from the stage-1 runs."""

_log = logging.getLogger(__name__)


def _modalities(cfg: ExperimentConfig) -> list[str]:
    spec = load_table(cfg.data.dataset, cfg.data.root, cfg.data.options).spec
    names = list(cfg.data.modalities or spec.modalities)
    unknown = [m for m in names if m not in spec.modalities]
    if unknown:
        raise ConfigError(f"data.modalities names {unknown}; dataset {spec.name!r} has {list(spec.modalities)}")
    return names


def stage_configs(cfg: ExperimentConfig, modalities: list[str]) -> dict[str, ExperimentConfig]:
    """The stage-1 config of every modality, keyed ``stage1_<modality>``: the experiment with ``model`` replaced by
    ``ei_unimodal`` on that modality (same VFM options) and ``data.modalities`` narrowed to it.

    Raises:
        ConfigError: the experiment's model is not ``ei`` or sets ``model.peft`` (EI takes ``vfm_peft``).
    """
    if cfg.model.name != "ei":
        raise ConfigError(f"recipe ei_two_stage trains model.name=ei; the config names {cfg.model.name!r}")
    if cfg.model.peft is not None or cfg.model.checkpoint is not None:
        raise ConfigError("recipe ei_two_stage: set the PEFT method as model.options.vfm_peft and the VFM weights as "
                          "model.options.vfm_checkpoint (model.peft / model.checkpoint are not used by EI's stages)")
    shared = {k: v for k, v in cfg.model.options.items() if k in VFM_OPTIONS}
    raw = cfg.model_dump(mode="json")
    out = {}
    for m in modalities:
        options = {**shared, "modality": m}
        if "slices" in shared:  # the stage sees one modality
            options["slices"] = {k: v for k, v in shared["slices"].items() if k == m}
        stage = {**raw, "name": f"{cfg.name}.stage1_{m}", "recipe": None,
                 "model": {"name": "ei_unimodal", "options": options},
                 "data": {**raw["data"], "modalities": [m], "modality_dropout": {}}}  # one modality: never dropped
        out[f"stage1_{m}"] = ExperimentConfig.model_validate(stage)
    return out


def _best_score(stage_dir: Path, monitor: str, mode: str) -> float:
    """Best logged value of ``monitor`` in a finished run's CSV log (NaN if it was never logged)."""
    import pandas as pd

    log = stage_dir / "logs" / "csv" / "metrics.csv"
    frame = pd.read_csv(log) if log.is_file() else pd.DataFrame()
    values = frame[monitor].dropna() if monitor in frame else []
    if not len(values):
        return math.nan
    return float(values.max() if mode == "max" else values.min())


def _monitored(result: dict[str, Any], monitor: str) -> float:
    """The value of a ``val/<task or mean>/<metric>`` monitor in an :func:`evaluate_tasks` result."""
    parts = monitor.split("/")
    if len(parts) == 3:
        scope, metric = parts[1], parts[2]
        table = result["mean"] if scope == "mean" else result["tasks"].get(scope, {})
        if isinstance(table.get(metric), float):
            return table[metric]
    raise ConfigError(f"prior_modality=best_train scores the training cases with trainer.early_stopping.monitor; "
                      f"{monitor!r} is not a val/<task or mean>/<metric> of {sorted(result['mean'])}")


def training_score(stage_dir: Path, monitor: str) -> float:
    """Score of a finished run's best model on its own training cases (evaluation mode) for ``monitor``."""
    import warnings

    from mmdiag.data.datamodule import MultimodalDataModule
    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.metrics import evaluate_tasks
    from mmdiag.evaluation.predict import predict_loader

    predictor = Predictor(stage_dir)
    cfg = predictor.cfg
    saved = json.loads((stage_dir / "splits.json").read_text())
    table = load_table(cfg.data.dataset, cfg.data.root, cfg.data.options)
    pos = {c.case_id: i for i, c in enumerate(table.cases)}
    train = [pos[c] for c in saved["split"]["train"] if c in pos]
    dm = MultimodalDataModule(table, cfg.data.model_copy(update={"verify": False}), seed=cfg.seed,
                              split={"train": [], "test": train}, encoder_state=saved["encoders"])
    dm.setup("test")
    preds = predict_loader(predictor.model, predictor.spec, dm.loader("test"), predictor.transform,
                           score=cfg.eval.score)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_tasks(predictor.spec.tasks, preds.y_true, preds.y_prob)
    return _monitored(result, monitor)


def _prior(scores: dict[str, float], mode: str, monitor: str) -> str:
    valid = {m: s for m, s in scores.items() if not math.isnan(s)}
    if not valid:
        raise ConfigError(f"ei_two_stage: no stage-1 run logged {monitor!r}, so the modality prior cannot be chosen; "
                          "set model.options.prior_modality or trainer.early_stopping.monitor to a logged metric")
    sign = 1.0 if mode == "max" else -1.0
    # ties go to the later modality, the one the authors' prior gaps favour
    return max(reversed(list(valid)), key=lambda m: sign * valid[m])


@RECIPES.register
def ei_two_stage(cfg: ExperimentConfig, run_dir: Path, resume: bool = False) -> RunResult:
    """EI (paper 003): unimodal MoR pre-adaptation per modality, then EI initialised from those runs."""
    run_dir = Path(run_dir)
    modalities = _modalities(cfg)
    stages = stage_configs(cfg, modalities)
    es = cfg.trainer.early_stopping
    monitor, mode = (es.monitor, es.mode) if es else ("val/loss", "min")
    rule = cfg.model.options.get("prior_modality") or "best_val"
    if rule not in PRIOR_RULES and rule not in modalities:
        raise ConfigError(f"model.options.prior_modality={rule!r}: give one of the modalities {modalities} or a rule "
                          f"{list(PRIOR_RULES)}")
    record: dict[str, Any] = {"recipe": "ei_two_stage", "monitor": monitor, "prior_rule": rule, "stage1": {}}
    scores = {}
    for name, stage_cfg in stages.items():
        run_stage(stage_cfg, run_dir / name, resume)
        modality = stage_cfg.model.options["modality"]
        best = _best_score(run_dir / name, monitor, mode)
        record["stage1"][modality] = {"run_dir": name, "best": None if math.isnan(best) else best}
        if rule == "best_train":
            record["stage1"][modality]["train"] = training_score(run_dir / name, monitor)
        scores[modality] = record["stage1"][modality]["train"] if rule == "best_train" else best
        atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))
    prior = rule if rule not in PRIOR_RULES else _prior(scores, mode, monitor)
    _log.info("ei_two_stage: modality prior %r (%s)", prior, rule)
    options = {**cfg.model.options, "prior_modality": prior,
               "init_runs": {m: str(run_dir / r["run_dir"]) for m, r in record["stage1"].items()}}
    final_cfg = cfg.model_copy(update={"recipe": None, "name": f"{cfg.name}.stage2_ei",
                                       "model": cfg.model.model_copy(update={"options": options})})
    record.update(prior_modality=prior, stage2="stage2_ei")
    atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))
    return run_stage(final_cfg, run_dir / "stage2_ei", resume)
