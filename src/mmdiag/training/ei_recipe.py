"""EI's two-stage training protocol (paper 003 §4.1) as one recipe, ``recipe: ei_two_stage``.

Stage 1 pre-adapts one VFM per image modality on that modality alone (``ei_unimodal``: frozen base, MoR adapters and
heads); stage 2 trains :class:`~mmdiag.models.fusion.ei.EI` with both VFMs of every modality initialised from the
stage-1 run (``model.options.init_runs``). Every stage is an ordinary :func:`~mmdiag.training.run.train` run with the
experiment's data, optimiser, schedule and trainer settings, in its own sub-folder::

    <run_dir>/stage1_<modality>/   one unimodal run per modality (report.md, model.safetensors, ...)
    <run_dir>/stage2_ei/           the EI run; its RunResult is the recipe's result
    <run_dir>/recipe.json          stage folders, stage-1 validation scores, the modality prior

The modality prior ``pi`` of the gate loss (Eq. 7) is ``model.options.prior_modality`` when set, else the modality
whose stage-1 run reached the best validation score of the monitored metric (``trainer.early_stopping.monitor``,
default ``val/mean/map``). Deviation: the paper derives ``pi`` from the training set, where adapted VFMs saturate (its
own reason for the prior); the held-out validation score separates the modalities and is what the runs select on.

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
from mmdiag.models.fusion.ei import VFM_OPTIONS
from mmdiag.training.recipes import register_recipe, run_stage
from mmdiag.training.run import RunResult

__all__ = ["ei_two_stage", "stage_configs"]

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
                 "data": {**raw["data"], "modalities": [m]}}
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


def _prior(scores: dict[str, float], mode: str, monitor: str) -> str:
    valid = {m: s for m, s in scores.items() if not math.isnan(s)}
    if not valid:
        raise ConfigError(f"ei_two_stage: no stage-1 run logged {monitor!r}, so the modality prior cannot be chosen; "
                          "set model.options.prior_modality or trainer.early_stopping.monitor to a logged metric")
    sign = 1.0 if mode == "max" else -1.0
    # ties go to the later modality, the one the authors' prior gaps favour
    return max(reversed(list(valid)), key=lambda m: sign * valid[m])


@register_recipe
def ei_two_stage(cfg: ExperimentConfig, run_dir: Path, resume: bool = False) -> RunResult:
    """EI (paper 003): unimodal MoR pre-adaptation per modality, then EI initialised from those runs."""
    run_dir = Path(run_dir)
    modalities = _modalities(cfg)
    stages = stage_configs(cfg, modalities)
    es = cfg.trainer.early_stopping
    monitor, mode = (es.monitor, es.mode) if es else ("val/loss", "min")
    record: dict[str, Any] = {"recipe": "ei_two_stage", "monitor": monitor, "stage1": {}}
    scores = {}
    for name, stage_cfg in stages.items():
        run_stage(stage_cfg, run_dir / name, resume)
        modality = stage_cfg.model.options["modality"]
        scores[modality] = _best_score(run_dir / name, monitor, mode)
        record["stage1"][modality] = {"run_dir": name, "best": None if math.isnan(scores[modality])
                                      else scores[modality]}
        atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))
    prior = cfg.model.options.get("prior_modality") or _prior(scores, mode, monitor)
    _log.info("ei_two_stage: modality prior %r", prior)
    options = {**cfg.model.options, "prior_modality": prior,
               "init_runs": {m: str(run_dir / r["run_dir"]) for m, r in record["stage1"].items()}}
    final_cfg = cfg.model_copy(update={"recipe": None, "name": f"{cfg.name}.stage2_ei",
                                       "model": cfg.model.model_copy(update={"options": options})})
    record.update(prior_modality=prior, stage2="stage2_ei")
    atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))
    return run_stage(final_cfg, run_dir / "stage2_ei", resume)
