"""Models: shared layers, backbones, tabular encoders, fusion modules, PEFT and full systems.

Importing this package registers every model family in :data:`mmdiag.registry.MODELS`.
"""

from mmdiag.models._factory import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
