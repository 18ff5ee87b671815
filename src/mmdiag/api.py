"""The public Python API: what ``import mmdiag`` gives (documented with a runnable example in docs/api.md).

Each function is a thin door onto the layer that owns the work: data (dataset specs), models (building),
training (runs and recipes) and evaluation (prediction with a finished run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdiag.config.schema import ExperimentConfig
from mmdiag.data.schema import DatasetSpec

__all__ = ["load_dataset_spec", "load_config", "train", "load_run"]


def load_dataset_spec(path_or_name: str | os.PathLike, root: str | os.PathLike | None = None,
                      options: Mapping[str, Any] | None = None) -> DatasetSpec:
    """The :class:`~mmdiag.data.schema.DatasetSpec` (modalities and tasks) of a dataset.

    Args:
        path_or_name: a ``dataset.yaml`` (its manifest must exist; its rows are not read) or a registered dataset name
            (``mmdiag datasets`` lists them; ``synthetic`` is built in).
        root: the native files of a registered dataset (its adapter reads them to learn the spec).
        options: ``data.options`` of a registered dataset.

    Raises:
        ConfigError / DataError: naming the file, key or dataset.
    """
    text = str(path_or_name)
    if text.endswith((".yaml", ".yml")):
        from mmdiag.data.manifest import read_dataset_yaml

        desc = read_dataset_yaml(Path(text))[0]
        return DatasetSpec(name=desc.name, modalities=desc.modalities, tasks=desc.tasks)
    from mmdiag.data.sources import load_table

    return load_table(text, None if root is None else str(root), dict(options or {})).spec


def load_config(config: str | os.PathLike | Mapping[str, Any] | ExperimentConfig | None = None,
                overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment config from a YAML path (a shipped config's name too), a mapping, or a config, with
    ``key=value`` overrides, validated (unknown keys are errors with close matches)."""
    from mmdiag.config.load import load_config as _load

    if isinstance(config, ExperimentConfig):
        return _load(None, overrides, base=config.model_dump(mode="json"))
    if isinstance(config, Mapping):
        return _load(None, overrides, base=dict(config))
    return _load(config, overrides)


def train(config: str | os.PathLike | Mapping[str, Any] | ExperimentConfig, overrides: list[str] | None = None,
          output: str | os.PathLike | None = None, resume: bool = False):
    """Train an experiment (its recipe, if it names one) into a run folder and evaluate it on the test split, as
    ``mmdiag train`` does.

    Args:
        config: see :func:`load_config`.
        overrides: ``key=value`` strings.
        output: the run folder (default ``output_dir/name``).
        resume: continue an interrupted run.

    Returns:
        A :class:`~mmdiag.training.run.RunResult` (``run_dir``, ``metrics``).
    """
    from mmdiag.training.recipes import run_experiment

    return run_experiment(load_config(config, overrides), output, resume=resume)


def load_run(path: str | os.PathLike):
    """A finished run folder as a :class:`~mmdiag.evaluation.infer.Predictor`: ``predict(case)`` gives
    ``{task: {class: probability}}`` for ``{modality: file, "record.field": value}``; ``predict_manifest(path)``
    writes the predictions of every case of a CSV manifest or ``dataset.yaml``. Nothing outside the folder is read.
    """
    from mmdiag.evaluation.infer import Predictor

    return Predictor(path)
