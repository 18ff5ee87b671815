"""Building a model for a dataset: multimodal families take the spec, single-image classifiers get adapted."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from mmdiag.data.schema import DatasetSpec
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._factory import create_model
from mmdiag.registry import MODELS

__all__ = ["build_for_dataset"]


def build_for_dataset(spec: DatasetSpec, name: str, options: dict[str, Any] | None = None,
                      checkpoint: str | None = None, peft: str | None = None,
                      peft_options: dict[str, Any] | None = None) -> nn.Module:
    """Build model ``name`` for ``spec``.

    A model whose constructor takes ``spec`` is built with it; any other registered model is an image classifier and
    is wrapped in :class:`~mmdiag.models.nets.single_image.SingleImageClassifier` (its checkpoint loads into the inner
    network, so official weight files apply unchanged).
    """
    import mmdiag.models._families  # noqa: F401

    options = dict(options or {})
    if "spec" in inspect.signature(MODELS.get(name)).parameters:
        return create_model(name, spec=spec, checkpoint=checkpoint, peft=peft, peft_options=peft_options, **options)
    from mmdiag.models.nets.single_image import SingleImageClassifier

    model = SingleImageClassifier(spec, name, **options)
    if checkpoint is not None:
        load_checkpoint(model.net, checkpoint)
    if peft is not None:
        from mmdiag.models.peft import apply_peft

        model.net = apply_peft(model.net, peft, **(peft_options or {}))
    return model
