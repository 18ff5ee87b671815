"""MMCAF-Net's three training stages (paper 002 §3.1; notes §1) as one recipe, ``recipe: mmcaf_three_stage``.

Each stage is an ordinary :func:`~mmdiag.training.run.train` run of ``mmcaf_net`` with the experiment's data,
optimiser, schedule and trainer, in its own sub-folder, initialised from the previous one (``init_run``)::

    <run_dir>/stage1_penet/    PENet alone on the CT windows (stage="penet")
    <run_dir>/stage2_image/    frozen PENet + E3D-MSCA/BFPU pyramid + image head (stage="image")
    <run_dir>/stage3_fusion/   frozen image encoder + KAN + MSCA/BSF + classifier (stage="fusion"); the result
    <run_dir>/recipe.json      stage folders and, for binary tasks, each stage's protocol metrics
                               (:func:`~mmdiag.evaluation.protocols.mmcaf.evaluate_mmcaf_run`)

Best weights per stage are those of the lowest validation loss when the config monitors ``val/loss`` (the authors'
rule; the shipped config sets it). With ``resume``, finished stages are kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mmdiag.config.schema import ExperimentConfig
from mmdiag.errors import ConfigError
from mmdiag.io.atomic import atomic_write_text
from mmdiag.registry import RECIPES
from mmdiag.training.run import run_stage
from mmdiag.training.run import RunResult

__all__ = ["mmcaf_three_stage", "STAGE_DIRS"]

_log = logging.getLogger(__name__)

STAGE_DIRS = {"penet": "stage1_penet", "image": "stage2_image", "fusion": "stage3_fusion"}
MODELS = ("mmcaf_net", "mmcaf_cross_attention", "mmcaf_clip", "tiny_mmcaf_net")


def _stage_config(cfg: ExperimentConfig, stage: str, init_run: Path | None) -> ExperimentConfig:
    options: dict[str, Any] = {**cfg.model.options, "stage": stage}
    options.pop("init_run", None)
    if init_run is not None:
        options["init_run"] = str(init_run)
    return cfg.model_copy(update={"recipe": None, "name": f"{cfg.name}.{STAGE_DIRS[stage]}",
                                  "model": cfg.model.model_copy(update={"options": options})})


def _protocol(stage_dir: Path) -> dict[str, Any] | None:
    from mmdiag.evaluation.protocols.mmcaf import evaluate_mmcaf_run

    spec = json.loads((stage_dir / "dataset_spec.json").read_text())
    if any(t["type"] != "binary" for t in spec["tasks"].values()):
        return None
    return evaluate_mmcaf_run(stage_dir)


@RECIPES.register
def mmcaf_three_stage(cfg: ExperimentConfig, run_dir: Path, resume: bool = False) -> RunResult:
    """MMCAF-Net (paper 002): PENet → image encoder (frozen PENet) → fusion (frozen image encoder).

    Raises:
        ConfigError: the model is not ``mmcaf_net`` / ``tiny_mmcaf_net``, or the config sets ``model.options.stage``
            or ``model.checkpoint`` (the recipe sets the stages and their initialisation).
    """
    if cfg.model.name not in MODELS:
        raise ConfigError(f"recipe mmcaf_three_stage trains model.name in {list(MODELS)}; the config names "
                          f"{cfg.model.name!r}")
    if "stage" in cfg.model.options or cfg.model.checkpoint is not None:
        raise ConfigError("recipe mmcaf_three_stage sets model.options.stage and each stage's init_run itself; "
                          "remove model.options.stage / model.checkpoint")
    run_dir = Path(run_dir)
    record: dict[str, Any] = {"recipe": "mmcaf_three_stage", "stages": {}}
    previous: Path | None = None
    result = None
    for stage, folder in STAGE_DIRS.items():
        stage_dir = run_dir / folder
        result = run_stage(_stage_config(cfg, stage, previous), stage_dir, resume)
        record["stages"][stage] = {"run_dir": folder, "protocol": _protocol(stage_dir)}
        atomic_write_text(run_dir / "recipe.json", json.dumps(record, indent=2))
        _log.info("mmcaf_three_stage: stage %s done in %s", stage, stage_dir)
        previous = stage_dir
    return result
