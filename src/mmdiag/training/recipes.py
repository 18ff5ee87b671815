"""Multi-stage recipes: a config with ``recipe: NAME`` runs the registered function instead of one training run.

A recipe is ``fn(cfg: ExperimentConfig, run_dir: Path, resume: bool) -> RunResult`` and registers with
``@RECIPES.register``; it composes :func:`mmdiag.training.run.train` calls (each stage in a sub-folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmdiag.config.schema import ExperimentConfig
from mmdiag.registry import RECIPES
from mmdiag.training.run import RunResult, run_dir_for, train

__all__ = ["run_experiment", "register_recipe", "run_stage"]

register_recipe = RECIPES.register
_log = logging.getLogger(__name__)


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


def _register_all() -> None:
    """Import the modules that define recipes (one line per module)."""
    import mmdiag.training.ei_recipe  # noqa: F401
    import mmdiag.training.mmcaf_recipe  # noqa: F401


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False) -> RunResult:
    """Run ``cfg``: its recipe when it names one, else a single :func:`train`."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
    if cfg.recipe is None:
        return train(cfg, run_dir, resume=resume)
    _register_all()
    return RECIPES.get(cfg.recipe)(cfg, run_dir, resume)
