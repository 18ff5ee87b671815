"""Multi-stage recipes: a config with ``recipe: NAME`` runs the registered function instead of one training run.

A recipe is ``fn(cfg: ExperimentConfig, run_dir: Path, resume: bool) -> RunResult`` and registers with
``@RECIPES.register`` (:data:`mmdiag.registry.RECIPES`, never through this module, which imports the recipes: the
registry is the only thing both sides share); it composes :func:`mmdiag.training.run.train` calls (each stage in a
sub-folder).
"""

from __future__ import annotations

from pathlib import Path

from mmdiag.config.schema import ExperimentConfig
from mmdiag.registry import RECIPES
from mmdiag.training.run import RunResult, run_dir_for, train

__all__ = ["run_experiment"]


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
