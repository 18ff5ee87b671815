"""The model contract: what every model mmdiag builds, trains, explains and serves provides.

Two kinds of model exist, and the registry records which one a name builds (``register_model`` /
``register_multimodal`` in :mod:`mmdiag.models._factory`):

**Image models** (``register_model``): single-input classifiers and backbones in timm's shape (MedMamba, the ViTs,
VMamba, Swin, PENet). Built with ``num_classes`` (``0`` = no head) and ``in_chans``; they provide
``num_features``, ``forward_features(x)``, ``forward_head(x, pre_logits=False)``, ``forward(x)``,
``reset_classifier(n)``, ``classifier_name`` (the head's state-dict prefix), ``output_fmt`` (layout of
``forward_features``: ``"NCHW"``/``"NCDHW"`` maps, ``"NHWC"`` channels-last maps, ``"NLC"`` tokens), ``explain_layer`` /
``explain_fmt`` (the module whose output map Grad-CAM reads, and its layout) and, for those that feed pyramids or
fusion, ``forward_intermediates(x, indices)`` → per-stage maps, channels first. They may define a
static ``checkpoint_filter_fn(state_dict, model)`` that converts official layouts. :class:`ImageModel` writes this
down as a Protocol.

**Multimodal models** (``register_multimodal``): subclasses of :class:`MultimodalModel`, built from a
:class:`~mmdiag.data.schema.DatasetSpec` plus typed keyword options. An image model used on a dataset is wrapped by
:class:`~mmdiag.models.nets.single_image.SingleImageClassifier`, so the rest of the package only ever sees the
multimodal contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec

if TYPE_CHECKING:
    from mmdiag.models.peft.inject import PeftConfig

__all__ = ["MultimodalModel", "ImageModel", "Inputs", "Present", "ModelOutput"]

Inputs = Mapping[str, torch.Tensor]
"""One batch's tensors keyed by modality: images ``(B, C, H, W)``, volumes ``(B, C, D, H, W)``, records ``(B, F)``."""
Present = Mapping[str, torch.Tensor] | None
"""Bool ``(B,)`` per modality: which cases have it (``None``: all). A missing modality's tensor holds no data."""
ModelOutput = dict[str, Any]
"""``{task: logits (B, num_outputs)}``, optionally with :data:`~mmdiag.models.outputs.AUX_KEY` /
:data:`~mmdiag.models.outputs.AUX_LOSS_KEY` entries (weighted auxiliary terms the training system adds)."""


@runtime_checkable
class ImageModel(Protocol):
    """A single-input image or volume classifier / backbone (timm's API)."""

    num_classes: int
    num_features: int
    output_fmt: str
    classifier_name: str
    explain_layer: str
    explain_fmt: str

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def reset_classifier(self, num_classes: int) -> None: ...


class MultimodalModel(nn.Module):
    """Base class of every model trained on a dataset.

    A subclass builds itself from ``spec`` and typed options, reads no file in ``__init__`` (weights are loaded by
    the builder once the module exists) and implements :meth:`forward_features` and :meth:`forward_head`;
    :meth:`forward` composes them and may be overridden to add auxiliary outputs.

    Attributes:
        spec: the dataset spec the model was built for.
        modalities: the modalities the model reads, in a fixed order (reports list these; others are ignored).
        num_features: width of :meth:`forward_features`' output (the vector the heads see).
        classifier_name: state-dict prefix of the per-task heads (dropped when a checkpoint's classes differ).
        explain_layers: per image/volume modality, the dotted name of the module whose output map Grad-CAM reads
            (empty when the model has no spatial map for it).
        output_fmts: layout of those modules' outputs where it is not channels first (``"NHWC"``, ``"NLC"``).
        peft_config: the PEFT config the model applied to its own encoders (``None``: none, or applied from outside
            by :func:`~mmdiag.models.peft.apply_peft`, which sets it).
    """

    classifier_name: str = "heads"
    peft_config: PeftConfig | None = None

    def __init__(self, spec: DatasetSpec, modalities: Sequence[str]):
        super().__init__()
        self.spec = spec
        self.modalities: tuple[str, ...] = tuple(modalities)
        self.num_features: int = 0
        self.explain_layers: dict[str, str] = {}
        self.output_fmts: dict[str, str] = {}

    def forward_features(self, inputs: Inputs, present: Present = None) -> torch.Tensor:
        """The fused representation ``(B, num_features)`` the heads read."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_features")

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        """Logits per task from :meth:`forward_features`' output (``pre_logits``: the vector before the heads)."""
        if pre_logits:
            return features
        return self.heads(features)

    def forward(self, inputs: Inputs, present: Present = None) -> ModelOutput:
        return self.forward_head(self.forward_features(inputs, present))

    def load_pretrained(self) -> None:
        """Read the files the options name (a VFM checkpoint, stage-1 runs). Called once by the builder after
        construction, and not at all when a finished run is rebuilt (its own weights hold everything)."""

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Convert a foreign state dict (an official release) to this model's names; identity by default."""
        return dict(state_dict)
