"""Building a model: options checked, module built, then weights and PEFT (timm's ``build_model_with_cfg`` order).

Constructors never read files; everything a finished module needs from disk is loaded here, after it exists.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from mmdiag.data.schema import DatasetSpec, ImageModality, TaskSpec
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models._registry import check_options, is_multimodal, model_options
from mmdiag.models.contract import MultimodalModel
from mmdiag.models.nets.single_image import SingleImageClassifier, image_model_options
from mmdiag.registry import MODELS

__all__ = ["build_model", "build_for_dataset"]


def build_model(name: str, options: dict[str, Any], *, checkpoint: str | os.PathLike | None = None,
                peft: str | None = None, peft_options: dict[str, Any] | None = None,
                where: str = "create_model", pretrained: bool = True) -> nn.Module:
    """Build registered model ``name`` with ``options`` (``spec`` for multimodal models), then load and adapt it.

    Args:
        pretrained: call the model's :meth:`~mmdiag.models.contract.MultimodalModel.load_pretrained` (off when a
            finished run is rebuilt from its own weights).

    Raises:
        ConfigError: an option the model does not take, or a multimodal model without ``spec``/``num_classes``.
    """
    options = dict(options)
    if is_multimodal(name):
        spec = options.pop("spec", None)
        if spec is None:
            spec = _default_spec(name, options.pop("num_classes", None))
        check_options(name, options, where)
        model = MODELS.get(name)(spec, **options)
    else:
        check_options(name, options, where)
        model = MODELS.get(name)(**options)
    if pretrained and isinstance(model, MultimodalModel):
        model.load_pretrained()
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if peft is not None:
        from mmdiag.models.peft import apply_peft

        model = apply_peft(model, peft, **(peft_options or {}))
    return model


def _default_spec(name: str, num_classes: int | None) -> DatasetSpec:
    """The spec of ``create_model(name, num_classes=N)`` for a multimodal model: the model's own (``default_spec``
    tag: a paper's modalities and tasks; ``N`` may then be omitted), else one RGB image ``image`` (224 x 224) and one
    task ``label`` of ``N`` classes (``N = 2``: binary)."""
    default = MODELS.tags(name).get("default_spec")
    if default is not None:
        return default(num_classes)
    if num_classes is None or num_classes < 2:
        raise ConfigError(f"create_model({name!r}) builds a multimodal model: pass spec=mmdiag.load_dataset_spec(...)"
                          f" or num_classes=N (N >= 2, got {num_classes})")
    classes = tuple(f"class{i}" for i in range(num_classes))
    return DatasetSpec(name="default", modalities={"image": ImageModality()},
                       tasks={"label": TaskSpec(type="binary" if num_classes == 2 else "multiclass", classes=classes)})


def build_for_dataset(spec: DatasetSpec, name: str, options: dict[str, Any] | None = None,
                      checkpoint: str | None = None, peft: str | None = None,
                      peft_options: dict[str, Any] | None = None, pretrained: bool = True) -> nn.Module:
    """Build model ``name`` for ``spec``: a multimodal model with it, an image model wrapped in
    :class:`~mmdiag.models.nets.single_image.SingleImageClassifier` (its checkpoint and PEFT apply to the inner
    network, so official weight files load unchanged)."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if is_multimodal(name):
        return build_model(name, {**options, "spec": spec}, checkpoint=checkpoint, peft=peft,
                           peft_options=peft_options, where="model.options", pretrained=pretrained)
    modality, net_options = image_model_options(spec, name, options, "in_chans" in model_options(name))
    model = SingleImageClassifier(spec, build_model(name, net_options, where="model.options"), modality)
    if checkpoint is not None:
        load_checkpoint(model.net, checkpoint)
    if peft is not None:
        from mmdiag.models.peft import apply_peft

        model.net = apply_peft(model.net, peft, **(peft_options or {}))
    return model
