"""Grad-CAM and Grad-CAM++ for any named layer of any mmdiag model, channels-last layers included.

Grad-CAM (Selvaraju et al. 2017) weights each channel k of a layer's activation A (channels-first ``(B, K, *S)``) by
the spatial mean of the gradient of the class score S^c (the pre-softmax logit)::

    alpha_k = mean_ij dS^c/dA_kij          CAM = ReLU(sum_k alpha_k A_k)

Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19 with the exponential score Y^c = exp(S^c)) weights every position::

    a_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kab^3),   g = dS^c/dA
    w_k   = sum_ij a_kij ReLU(g_kij)                        CAM = ReLU(sum_k w_k A_k)

MedMamba used this to show where the model looks (paper Sec. 5.1, Fig. 5). Its stages run channels-last
``(B, H, W, C)`` inside, so the layer's layout is read (:func:`infer_layout`: the block's ``output_fmt``, as timm's
layers record it) and the activation is permuted to channels-first before the formulas above. A ViT's tokens
(``"NLC"``) are laid out on their patch grid, the prefix tokens ([CLS], registers) left out. captum's ``LayerGradCam`` and MONAI's ``GradCAM``/``GradCAMpp`` assume
channels-first maps and single-tensor models (MONAI also leaves its hooks on the model and turns in-place ops off),
so the few lines of both methods live here, and the tests check them against MONAI on a channels-first model and
against a hand computation.

Multimodal models (:class:`~mmdiag.models.contract.MultimodalModel`) are explained one modality at a time: the map is
over that modality's input, the other inputs stay fixed, and the layer must lie on that modality's path (checked). The
default layer of a modality is the one the model names in ``explain_layers`` (with its layout in ``output_fmts``).

Deviation: Grad-CAM++'s factor exp(S^c) in ReLU(dY^c/dA) = exp(S^c) ReLU(dS^c/dA) is left out. It scales all weights
of an image by one positive number, so the normalised map is unchanged, and it overflows float32 for logits > 88.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.errors import ConfigError, UnknownNameError
from mmdiag.io.atomic import atomic_write_bytes
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY

__all__ = [
    "CAMResult",
    "GradCAM",
    "LayerInfo",
    "Layout",
    "Method",
    "class_activation_map",
    "gradcam_weights",
    "gradcampp_weights",
    "infer_layout",
    "layout_of_fmt",
    "overlay_heatmap",
    "resolve_layer",
    "save_overlay",
    "gradcam_panel",
    "save_gradcam_panel",
    "spatial_layers",
    "as_rgb",
]

_log = logging.getLogger(__name__)

Method = Literal["gradcam", "gradcampp"]
Layout = Literal["auto", "channels_first", "channels_last", "tokens"]
METHODS: tuple[str, ...] = ("gradcam", "gradcampp")
LAYOUTS: tuple[str, ...] = ("auto", "channels_first", "channels_last", "tokens")

# torch's own modules, whose layout follows from what they do: convolutions, batch/instance/group norms and pooling
# act on dim 1 (channels first); LayerNorm and Linear act on the last dim (channels last). Blocks of mmdiag (and timm)
# whose output is not channels-first say so in an ``output_fmt`` class attribute instead.
TORCH_CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.SyncBatchNorm, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d,
    nn.AvgPool3d)
TORCH_LAST_DIM: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.Linear)


def gradcam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM channel weights: the spatial mean of the gradients.

    Args:
        acts: Channels-first activations ``(B, K, *S)`` (unused; kept for the common signature).
        grads: Gradients of the class score w.r.t. ``acts``, same shape.

    Returns:
        ``(B, K)`` weights.
    """
    return grads.flatten(2).mean(-1)


def gradcampp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ channel weights ``w_k = sum_ij a_kij ReLU(g_kij)`` (see the module docstring; 0/0 gives a = 0).

    Args:
        acts: Channels-first activations ``(B, K, *S)``.
        grads: Gradients of the class score (pre-softmax logit) w.r.t. ``acts``, same shape.

    Returns:
        ``(B, K)`` weights.
    """
    a, g = acts.flatten(2), grads.flatten(2)
    g2 = g.pow(2)
    denom = 2 * g2 + (a * g.pow(3)).sum(-1, keepdim=True)
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    return (alpha * F.relu(g)).sum(-1)


_WEIGHTS = {"gradcam": gradcam_weights, "gradcampp": gradcampp_weights}


def class_activation_map(acts: Tensor, grads: Tensor, method: Method = "gradcam") -> Tensor:
    """``ReLU(sum_k w_k A_k)`` with Grad-CAM or Grad-CAM++ weights, at the layer's resolution.

    Args:
        acts: Channels-first activations ``(B, K, *S)``.
        grads: Their gradients.
        method: ``"gradcam"`` or ``"gradcampp"``.

    Returns:
        ``(B, *S)`` map (not normalised).

    Raises:
        UnknownNameError: an unknown method.
    """
    if method not in _WEIGHTS:
        raise UnknownNameError("Grad-CAM method", method, METHODS)
    w = _WEIGHTS[method](acts, grads)
    return F.relu((w.view(*w.shape, *[1] * (acts.dim() - 2)) * acts).sum(1))


def _stride_consistent(spatial: Sequence[int], input_spatial: Sequence[int]) -> bool:
    """Whether ``spatial`` could be ``input_spatial`` downsampled by one common stride (within rounding)."""
    if len(spatial) != len(input_spatial) or any(s < 1 or s > n for s, n in zip(spatial, input_spatial)):
        return False
    ratios = [n / s for s, n in zip(spatial, input_spatial)]
    return max(ratios) - min(ratios) <= 0.15 * max(ratios)


def layout_of_fmt(fmt: str) -> str | None:
    """``"NCHW"``/``"NCDHW"`` → channels-first, ``"NHWC"``/``"NDHWC"`` → channels-last, ``"NLC"`` → tokens."""
    if fmt == "NLC":
        return "tokens"
    if fmt.startswith("NC") and len(fmt) > 3:
        return "channels_first"
    if fmt.startswith("N") and fmt.endswith("C") and "L" not in fmt and len(fmt) > 3:
        return "channels_last"
    return None


def token_grid(length: int, input_spatial: Sequence[int]) -> tuple[int, ...] | None:
    """The patch grid of ``length`` tokens over an input of ``input_spatial``: the largest grid of one common stride
    with at most ``length`` cells; the tokens before it are prefix tokens ([CLS], registers). None: no grid fits.

    Choice: prefix tokens come first (as in every ViT here) and are fewer than one grid row, so the largest grid wins.
    """
    if len(input_spatial) != 2:
        return None
    height, width = input_spatial
    best = None
    for h in range(1, min(length, height) + 1):
        w = max(1, round(h * width / height))
        if h * w <= length and _stride_consistent((h, w), input_spatial) and (best is None or h * w > best[0] * best[1]):
            best = (h, w)
    return best


def _declared_layout(module: nn.Module) -> str | None:
    fmt = getattr(module, "output_fmt", None)  # an optional attribute of blocks (timm's convention), not a fallback
    if isinstance(fmt, str):
        return layout_of_fmt(fmt)
    if isinstance(module, TORCH_CHANNELS_FIRST):
        return "channels_first"
    if isinstance(module, TORCH_LAST_DIM):
        return "channels_last"
    if isinstance(module, nn.Sequential) and len(module):
        return _declared_layout(module[-1])
    return None


def infer_layout(module: nn.Module, shape: Sequence[int], input_spatial: Sequence[int], name: str = "<layer>") -> str:
    """Whether a layer's output is channels-first ``(B, C, *S)`` or channels-last ``(B, *S, C)``.

    Rules, in order: the module's ``output_fmt`` attribute (``"NCHW"``/``"NHWC"``, as timm's layers and mmdiag's
    channels-last blocks record it); for torch's own modules what they act on (convolutions, batch/instance/group
    norms and pooling: dim 1, channels-first; ``nn.LayerNorm`` and ``nn.Linear``: the last dim, channels-last); an
    ``nn.Sequential`` has its last child's layout; else the shape: the layout whose spatial sizes are the input's
    divided by one common stride.

    Args:
        module: The layer.
        shape: Its output shape.
        input_spatial: Spatial size of the input it explains.
        name: Layer name, for the error message.

    A module declared ``output_fmt = "NLC"`` outputs tokens ``(B, L, C)``: ``"tokens"`` when they hold a patch grid
    of the input (:func:`token_grid`).

    Returns:
        ``"channels_first"``, ``"channels_last"`` or ``"tokens"``.

    Raises:
        ConfigError: the output is not a spatial map of the input's dimensionality, or the shape fits both layouts
            and the type decides nothing (pass ``layout`` explicitly).
    """
    n = len(input_spatial)
    if len(shape) == 3 and _declared_layout(module) == "tokens":
        if token_grid(shape[1], input_spatial) is None:
            raise ConfigError(f"layer {name!r} outputs {shape[1]} tokens, which hold no patch grid of an input of "
                              f"spatial size {tuple(input_spatial)}")
        return "tokens"
    if len(shape) != n + 2:
        raise ConfigError(f"layer {name!r} outputs shape {tuple(shape)}, not a {n}D feature map (B, C, "
                          f"{', '.join('S' * n)}) or (B, {', '.join('S' * n)}, C); choose a convolutional or stage "
                          "layer (`mmdiag explain layers` lists them)")
    declared = _declared_layout(module)
    if declared is not None:
        return declared
    first = _stride_consistent(shape[2:], input_spatial)
    last = _stride_consistent(shape[1:-1], input_spatial)
    if first != last:
        return "channels_first" if first else "channels_last"
    raise ConfigError(f"layer {name!r} ({type(module).__name__}) outputs shape {tuple(shape)} for an input of "
                      f"spatial size {tuple(input_spatial)}: it could be channels-first or channels-last; pass "
                      "layout='channels_first' or 'channels_last' (CLI: --layout)")


def _to_channels_first(x: Tensor, layout: str, input_spatial: Sequence[int], name: str) -> Tensor:
    """A channels-first map of a layer's output (or its gradient): channels-last maps are permuted; tokens ``(B, L, C)``
    lose their prefix tokens and are laid out on the patch grid (:func:`token_grid`)."""
    if layout == "channels_last":
        return x.movedim(-1, 1)
    if layout == "tokens":
        grid = token_grid(x.shape[1], input_spatial) if x.dim() == 3 else None
        if grid is None:
            raise ConfigError(f"layer {name!r} outputs shape {tuple(x.shape)}: not tokens (B, L, C) holding a patch "
                              f"grid of an input of spatial size {tuple(input_spatial)}")
        return x[:, x.shape[1] - math.prod(grid):].unflatten(1, grid).movedim(-1, 1)
    return x


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """Find a submodule by its ``named_modules`` name.

    A name that does not exist is also tried inside a wrapped network ``net.`` (so ``layers.2`` finds
    ``net.layers.2`` of a :class:`~mmdiag.models.nets.single_image.SingleImageClassifier`).

    Returns:
        The full name and the module.

    Raises:
        UnknownNameError: no such layer (close names offered).
    """
    modules = dict(model.named_modules())
    for full in (name, f"net.{name}"):
        if full and full in modules:
            return full, modules[full]
    raise UnknownNameError("layer", name, [n for n in modules if n], "mmdiag explain layers --run RUN")


@dataclass
class LayerInfo:
    """A layer whose output is a spatial map: its name, type, output shape and layout (None: ambiguous)."""

    name: str
    type: str
    shape: tuple[int, ...]
    layout: str | None


@dataclass
class CAMResult:
    """Class activation maps of a batch.

    Attributes:
        maps: ``(B, *input spatial)`` maps upsampled to the input (bilinear/trilinear) and min-max scaled to [0, 1]
            per image (an all-equal map becomes 0).
        raw: ``(B, *layer spatial)`` maps at the layer's resolution, before upsampling and scaling.
        targets: ``(B,)`` the explained class (logit index) per image.
        scores: ``(B,)`` the logits of those classes.
        layer: The layer's full name; layout: its detected or given layout; modality: the explained input.
    """

    maps: Tensor
    raw: Tensor
    targets: Tensor
    scores: Tensor
    layer: str
    layout: str
    modality: str | None


def _normalise(cam: Tensor) -> Tensor:
    """Min-max scale each map of a batch to [0, 1]; a constant map becomes all zeros."""
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).view(-1, *[1] * (cam.dim() - 1))
    out = (cam - lo.view_as(span)) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, out, torch.zeros_like(out))


class GradCAM:
    """Grad-CAM / Grad-CAM++ of one layer of a model (single-tensor or multimodal).

    Example::

        cam = GradCAM(model, "net.layers.2", method="gradcampp")
        result = cam(batch["inputs"], batch["present"])     # explains the predicted class
        save_overlay("case.png", images[0], result.maps[0])

    Args:
        model: A module taking a tensor (``MedMamba``) or a
            :class:`~mmdiag.models.contract.MultimodalModel` (a dict of inputs plus ``present``).
        layer: Layer name (``named_modules``; ``net.`` may be omitted). None: the layer the multimodal model names for
            the modality in ``explain_layers`` (a single-tensor model needs the name).
        modality: The explained input of a multimodal model; default: the only image/volume input of the batch, or
            the only one among those the model reads (``model.modalities``).
        method: ``"gradcam"`` or ``"gradcampp"``.
        layout: The layer's output layout; ``"auto"``: the model's ``output_fmts`` entry when the layer is its
            ``explain_layers`` one, else :func:`infer_layout`.

    Raises:
        UnknownNameError: unknown layer, method or layout.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, modality: str | None = None,
                 method: Method = "gradcam", layout: Layout = "auto"):
        if method not in METHODS:
            raise UnknownNameError("Grad-CAM method", method, METHODS)
        if layout not in LAYOUTS:
            raise UnknownNameError("layout", layout, LAYOUTS)
        self.model, self.method, self.layout, self.modality = model, method, layout, modality
        self.layer_name, self.layer = resolve_layer(model, layer) if layer is not None else (None, None)

    def resolve_modality(self, inputs: Tensor | Mapping[str, Tensor]) -> str | None:
        """The explained input of a batch (None for a single-tensor model); see ``modality``.

        Raises:
            ConfigError: no modality given and several image/volume inputs, or one that is not among them.
        """
        if isinstance(inputs, Tensor):
            return None
        name = self.modality
        spatial = [k for k, v in inputs.items() if v.dim() >= 4]
        if name is None:
            read = spatial if len(spatial) == 1 else [m for m in self.model.modalities if m in spatial]
            if len(read) != 1:
                raise ConfigError(f"the model has image/volume inputs {read or spatial}: choose one with modality= "
                                  "(CLI: --modality)")
            name = read[0]
        if name not in spatial:
            raise ConfigError(f"modality {name!r} is not an image/volume input of the batch; inputs: {spatial}")
        return name

    def _forward(self, inputs: Tensor | Mapping[str, Tensor], present: Mapping[str, Tensor] | None,
                 modality: str | None) -> tuple[Any, Tensor]:
        """Run the model with the explained input requiring gradients; returns (output, that input)."""
        if modality is None:
            x = inputs.detach().clone().requires_grad_(True)
            return self.model(x), x
        x = inputs[modality].detach().clone().requires_grad_(True)
        return self.model({**inputs, modality: x}, present), x

    def _default_layer(self, modality: str | None) -> tuple[str, nn.Module]:
        """The layer the model names for ``modality`` in ``explain_layers``."""
        name = type(self.model).__name__
        if modality is None:
            raise ConfigError(f"{name} takes one tensor and names no layer to explain: pass layer= (CLI: --layer; "
                              "`mmdiag explain layers` lists the candidates)")
        layers = self.model.explain_layers
        if modality not in layers:
            raise ConfigError(f"{name} names no layer to explain for modality {modality!r} (explain_layers has "
                              f"{sorted(layers)}): pass layer= (CLI: --layer; `mmdiag explain layers` lists them)")
        _log.info("Grad-CAM layer of %s: %s", modality, layers[modality])
        return resolve_layer(self.model, layers[modality])

    def _layout(self, modality: str | None, act: Tensor, input_spatial: Sequence[int]) -> str:
        """The given layout, else the model's ``output_fmts`` entry for its own explain layer, else
        :func:`infer_layout`."""
        if self.layout != "auto":
            return self.layout
        if modality is not None and self.layer_name == self._model_layer(modality):
            fmt = self.model.output_fmts.get(modality)
            layout = None if fmt is None else layout_of_fmt(fmt)
            if layout is not None and len(fmt) != act.dim():
                raise ConfigError(f"{type(self.model).__name__}.output_fmts[{modality!r}] = {fmt!r}, but layer "
                                  f"{self.layer_name!r} outputs shape {tuple(act.shape)}")
            if layout is not None:
                return layout
        return infer_layout(self.layer, act.shape, input_spatial, self.layer_name)

    def _model_layer(self, modality: str) -> str | None:
        name = self.model.explain_layers.get(modality)
        return None if name is None else resolve_layer(self.model, name)[0]

    def __call__(self, inputs: Tensor | Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None, *,
                 target: int | Sequence[int] | Tensor | None = None, task: str | None = None) -> CAMResult:
        """Explain a batch.

        Args:
            inputs: ``(B, C, *S)`` images, or the model's input dict (normalised as the model expects).
            present: Presence flags of a multimodal model.
            target: Class (logit index) to explain, one per image or one for all; None: the predicted class.
            task: Output task of a multi-task model; default: the first.

        Returns:
            The maps (see :class:`CAMResult`).

        Raises:
            ConfigError: the layer is not on the explained input's path, does not influence the score, runs more than
                once per forward pass, or does not output a spatial map; a bad ``target`` or ``task``.
        """
        modality = self.resolve_modality(inputs)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                if self.layer is None:
                    self.layer_name, self.layer = self._default_layer(modality)
                return self._explain(inputs, present, modality, target, task)
        finally:
            self.model.train(was_training)

    def _explain(self, inputs: Tensor | Mapping[str, Tensor], present: Mapping[str, Tensor] | None,
                 modality: str | None, target: int | Sequence[int] | Tensor | None, task: str | None) -> CAMResult:
        captured: list[Tensor] = []

        def hook(module: nn.Module, args: Any, out: Any) -> Tensor:
            if not isinstance(out, Tensor):
                raise ConfigError(f"layer {self.layer_name!r} returns {type(out).__name__}, not a tensor")
            captured.append(out)
            return out.clone()  # later in-place ops (ReLU(inplace=True)) must not rewrite the captured activation

        handle = self.layer.register_forward_hook(hook)
        try:
            out, x = self._forward(inputs, present, modality)
        finally:
            handle.remove()
        where = f"layer {self.layer_name!r}"
        if not captured:
            raise ConfigError(f"{where} did not run in the forward pass (a container whose children the model calls "
                              "one by one?); choose one of its children (`mmdiag explain layers` lists what runs)")
        if len(captured) > 1:
            raise ConfigError(f"{where} ran {len(captured)} times in one forward pass (shared between inputs?); "
                              "choose a layer inside one modality's encoder")
        act = captured[0]
        layout = self._layout(modality, act, x.shape[2:])
        if not _depends(act, x):
            raise ConfigError(f"{where} does not see input {modality or 'x'!r}: choose a layer of that input's encoder")
        logits = _task_logits(out, task)
        targets = _targets(target, logits)
        scores = logits.gather(1, targets[:, None]).squeeze(1)
        grads = torch.autograd.grad(scores.sum(), act, allow_unused=True)[0]
        if grads is None:
            raise ConfigError(f"{where} does not influence the output of the model")
        acts_cf = _to_channels_first(act.detach(), layout, x.shape[2:], self.layer_name)
        raw = class_activation_map(acts_cf, _to_channels_first(grads, layout, x.shape[2:], self.layer_name),
                                   self.method)
        spatial = tuple(x.shape[2:])
        up = F.interpolate(raw[:, None], size=spatial, mode="bilinear" if len(spatial) == 2 else "trilinear",
                           align_corners=False)[:, 0]
        return CAMResult(_normalise(up), raw, targets.detach(), scores.detach(), self.layer_name, layout, modality)


def _depends(out: Tensor, x: Tensor) -> bool:
    """Whether ``out`` was computed from ``x`` (an autograd path exists)."""
    if not out.requires_grad:
        return False
    return torch.autograd.grad(out, x, torch.ones_like(out), retain_graph=True, allow_unused=True)[0] is not None


def _task_logits(out: Tensor | Mapping[str, Tensor], task: str | None) -> Tensor:
    if isinstance(out, Tensor):
        return out
    tasks = [t for t in out if t not in (AUX_KEY, AUX_LOSS_KEY)]
    task = task or tasks[0]
    if task not in tasks:
        raise UnknownNameError("task", task, tasks)
    return out[task]


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    b, k = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if t.numel() not in (1, b):
        raise ConfigError(f"target gives {t.numel()} classes for a batch of {b}; give one, or one per image")
    t = t.expand(b).clone()
    if ((t < 0) | (t >= k)).any():
        raise ConfigError(f"target class {t.tolist()} is out of range: the output has {k} logits (0..{k - 1})")
    return t


def spatial_layers(model: nn.Module, inputs: Tensor | Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None,
                   modality: str | None = None, keep_outputs: bool = False) -> list[Any]:
    """The layers whose output is a spatial map with the input's dimensionality, in the order they finish.

    Args:
        model: The model (in the mode it should run in).
        inputs: A batch, as for :class:`GradCAM`.
        present: Presence flags of a multimodal model.
        modality: The input whose dimensionality counts (dict inputs; default as in :class:`GradCAM`).
        keep_outputs: Also return each layer's output and the input tensor (for gradient checks).

    Returns:
        :class:`LayerInfo` per layer, or ``(LayerInfo, output, input)`` triples with ``keep_outputs``.
    """
    cam = GradCAM(model, modality=modality)
    modality = cam.resolve_modality(inputs)
    found: list[tuple[str, nn.Module, Tensor]] = []

    def record(name: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                found.append((name, module, out))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.set_grad_enabled(keep_outputs):
            _, x = cam._forward(inputs, present, modality)
    finally:
        for h in handles:
            h.remove()
    result = []
    spatial = x.shape[2:]
    for name, module, out in found:
        if out.dim() != x.dim():
            continue
        fits = {"channels_first": _stride_consistent(out.shape[2:], spatial),
                "channels_last": _stride_consistent(out.shape[1:-1], spatial)}
        try:
            layout = infer_layout(module, out.shape, spatial, name)
        except ConfigError:
            layout = None
        if layout == "tokens" or not (fits[layout] if layout else any(fits.values())):
            continue
        info = LayerInfo(name, type(module).__name__, tuple(out.shape), layout)
        result.append((info, out, x) if keep_outputs else info)
    return result


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float → (H, W, 3) in [0, 1]: grey images repeated, other channel counts averaged."""
    img = np.clip(image, 0.0, 1.0)
    if img.shape[0] == 3:
        return img.transpose(1, 2, 0)
    grey = img[0] if img.shape[0] == 1 else img.mean(0)
    return np.repeat(grey[..., None], 3, axis=-1)


def overlay_heatmap(image: Tensor | np.ndarray, cam: Tensor | np.ndarray, alpha: float = 0.5,
                    min_side: int = 224) -> np.ndarray:
    """Blend a jet-coloured map over an image: ``(1 - alpha) * image + alpha * jet(cam)``.

    Args:
        image: ``(C, H, W)`` in [0, 1] (before normalisation), or ``(C, D, H, W)`` (the middle slice is shown).
        cam: ``(H, W)`` (or ``(D, H, W)``) map in [0, 1].
        alpha: Heatmap opacity.
        min_side: The result is enlarged by an integer factor (nearest neighbour) until its shorter side reaches
            this, so that small images stay visible.

    Returns:
        ``(H', W', 3)`` uint8 RGB.

    Raises:
        ValueError: image and map sizes differ.
    """
    from matplotlib import colormaps

    img = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image, dtype=np.float32)
    heat = np.asarray(cam.detach().cpu() if isinstance(cam, Tensor) else cam, dtype=np.float32)
    if img.ndim == 4:
        img, heat = img[:, img.shape[1] // 2], heat[heat.shape[0] // 2]
    if img.shape[1:] != heat.shape:
        raise ValueError(f"overlay_heatmap: image {img.shape} and map {heat.shape} differ in size")
    jet = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    out = np.round(255 * ((1 - alpha) * as_rgb(img) + alpha * jet)).astype(np.uint8)
    factor = max(1, math.ceil(min_side / min(out.shape[:2])))
    return out.repeat(factor, 0).repeat(factor, 1) if factor > 1 else out


def save_overlay(path: str | Path, image: Tensor | np.ndarray, cam: Tensor | np.ndarray, alpha: float = 0.5,
                 min_side: int = 224) -> Path:
    """Write :func:`overlay_heatmap` as a PNG, atomically. Returns the path."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(overlay_heatmap(image, cam, alpha, min_side)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def gradcam_panel(image: Tensor | np.ndarray, cam: Tensor | np.ndarray, title: str, alpha: float = 0.5) -> Any:
    """A figure with two panels, image | overlay, under ``title``, with the map's colour bar.

    Args:
        image: ``(C, H, W)`` in [0, 1] (before normalisation), or ``(C, D, H, W)`` (the middle slice is shown).
        cam: The normalised map, same spatial size.
        title: Figure title (model, split, case, modality, task, class and probability).
        alpha: Heatmap opacity in the overlay.

    Returns:
        The :class:`matplotlib.figure.Figure` (Agg canvas).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    img = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image, dtype=np.float32)
    shown = img[:, img.shape[1] // 2] if img.ndim == 4 else img
    fig = Figure(figsize=(7.0, 3.9), layout="constrained")
    FigureCanvasAgg(fig)
    heat = np.asarray(cam.detach().cpu() if isinstance(cam, Tensor) else cam, dtype=np.float32)
    overlay = "overlay" if heat.max() > 0 else "overlay (map is zero: no positive evidence)"
    for i, (sub, data) in enumerate([("image", as_rgb(shown)), (overlay, overlay_heatmap(img, heat, alpha, 1))]):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(data)
        ax.set(title=sub, xticks=[], yticks=[])
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormaps["jet"]), ax=ax, fraction=0.046,
                 label="Grad-CAM (normalised to its max)")
    fig.suptitle(title, fontsize="medium")
    return fig


def save_gradcam_panel(path: str | Path, image: Tensor | np.ndarray, cam: Tensor | np.ndarray, title: str,
                       alpha: float = 0.5) -> Path:
    """Write :func:`gradcam_panel` as a PNG, atomically. Returns the path."""
    from mmdiag.evaluation.plots import save_figure

    save_figure(gradcam_panel(image, cam, title, alpha), path, dpi=100)
    return Path(path)
