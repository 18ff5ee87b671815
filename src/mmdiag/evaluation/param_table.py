"""Trainable and total parameter counts of multimodal models, the "Params." column of EI's Tables 3, 7 and 8.

Models are built on PyTorch's ``meta`` device (shapes only, no memory, no weights), so ViT-B-sized models with
several VFMs count in well under a second each.

Example::

    rows = parameter_table(["coscat", "mm_mil_mor"], spec, vfm="clip_vit_b16")
    rows[1]["trainable_m"]   # MoR adapters of every VFM + MIL attention + heads, in millions
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec

__all__ = ["parameter_table", "count_parameters"]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "total": ...}`` of ``model`` (shared parameters counted once)."""
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}


def parameter_table(names: Iterable[str], spec: DatasetSpec, *, device: str | torch.device = "meta",
                    **options: Any) -> list[dict[str, Any]]:
    """Count the parameters of each registered model built for ``spec``.

    Args:
        names: registered model names (multimodal models taking ``spec``, or image classifiers, which are wrapped
            as :func:`~mmdiag.models._builder.build_for_dataset` does).
        spec: the dataset spec the models are built for (its modalities, sizes and tasks set the counts).
        device: where to build; ``"meta"`` (default) allocates nothing.
        **options: model options passed to every model (e.g. ``vfm="clip_vit_b16"``); ``peft`` /
            ``peft_options`` are applied to the whole model as ``model.peft`` would be.

    Returns:
        One row per name: ``model``, ``trainable``, ``total``, ``trainable_m`` and ``total_m`` (millions),
        ``trainable_percent``.

    Raises:
        UnknownNameError: a name is not registered.
        ConfigError: an option does not fit a model.
    """
    from mmdiag.models._builder import build_for_dataset

    peft = options.pop("peft", None)
    peft_options = options.pop("peft_options", None)
    rows = []
    for name in names:
        with torch.device(device):
            model = build_for_dataset(spec, name, options, peft=peft, peft_options=peft_options)
        counts = count_parameters(model)
        rows.append({"model": name, **counts, "trainable_m": counts["trainable"] / 1e6,
                     "total_m": counts["total"] / 1e6,
                     "trainable_percent": 100.0 * counts["trainable"] / max(counts["total"], 1)})
    return rows
