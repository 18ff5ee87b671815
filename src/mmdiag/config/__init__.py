"""Experiment configuration: the pydantic schema and the YAML/override loader."""

from mmdiag.config.load import apply_overrides, load_config
from mmdiag.config.schema import ExperimentConfig

__all__ = ["ExperimentConfig", "load_config", "apply_overrides"]
