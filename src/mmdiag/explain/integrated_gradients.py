"""Integrated Gradients (Sundararajan et al. 2017; captum) per image modality of any multimodal model (IIMGF-Net
paper 000, Fig. 2).

The attribution of one modality is computed with every other input held at its value: the path runs from a
baseline image (black, or a Gaussian-blurred copy of the image) to the image, in the [0, 1] pixel space before
normalisation (the normalisation is part of the function being explained). Panels: image | attribution | overlay,
titled with modality, task, class and probability.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.explain.gradcam import overlay_heatmap

__all__ = ["Baseline", "IGResult", "attribution_map", "integrated_gradients", "make_baseline", "save_ig_panel"]

Baseline = Literal["black", "blur"]


@dataclass
class IGResult:
    """Attributions ``(B, C, H, W)`` of one modality, the explained class per case and its probability."""

    attributions: Tensor
    targets: Tensor
    probs: Tensor
    delta: Tensor


def make_baseline(x: Tensor, kind: Baseline, sigma: float | None = None) -> Tensor:
    """The IG starting image: zeros (``black``) or a Gaussian blur of ``x`` (``blur``; sigma default = side / 16).

    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "blur":
        from kornia.filters import gaussian_blur2d

        s = float(sigma or max(x.shape[-2:]) / 16)
        k = 2 * int(3 * s) + 1
        return gaussian_blur2d(x, (k, k), (s, s), border_type="reflect")
    raise ConfigError(f"integrated gradients: baseline must be 'black' or 'blur', got {kind!r}")


def integrated_gradients(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None,
    modality: str,
    task: str,
    *,
    target: int | None = None,
    baseline: Baseline = "black",
    steps: int = 32,
    normalize: Callable[[str, Tensor], Tensor] | None = None,
) -> IGResult:
    """Integrated Gradients of ``task``'s logit for ``modality``, the other inputs held at their values.

    Args:
        model: A multimodal model: ``model(inputs, present) -> {task: logits}``.
        inputs: Un-normalised inputs (images in [0, 1]); ``normalize`` brings them to what the model expects.
        present: Presence masks (passed through unchanged).
        modality: The explained image modality.
        task: Task whose logit is explained.
        target: Class index to explain (default: each case's predicted class).
        baseline: ``"black"`` or ``"blur"``.
        steps: Riemann steps of the path integral.
        normalize: ``f(modality, x)`` applied to every input before the model (e.g. ImageNet mean/std).

    Raises:
        ConfigError: unknown modality or task.
    """
    from captum.attr import IntegratedGradients

    if modality not in inputs:
        raise ConfigError(f"integrated gradients: --modality {modality!r} is not an input; inputs: {list(inputs)}")
    norm = normalize or (lambda name, t: t)
    held = {k: norm(k, v).detach() for k, v in inputs.items() if k != modality}
    x = inputs[modality].detach()

    def logits(xm: Tensor) -> Tensor:
        reps = xm.shape[0] // x.shape[0]
        batch = {k: v.repeat(reps, *([1] * (v.dim() - 1))) for k, v in held.items()}
        batch[modality] = norm(modality, xm)
        pres = None if present is None else {k: v.repeat(reps) for k, v in present.items()}
        out = model(batch, pres)
        if task not in out:
            raise ConfigError(f"integrated gradients: --task {task!r}; the model predicts {sorted(out)}")
        return out[task]

    with torch.no_grad():
        probs = logits(x).float().softmax(-1)
    targets = probs.argmax(-1) if target is None else torch.full((x.shape[0],), target, dtype=torch.long)
    ig = IntegratedGradients(logits)
    attr, delta = ig.attribute(x, baselines=make_baseline(x, baseline), target=targets, n_steps=steps,
                               return_convergence_delta=True)
    return IGResult(attr.detach(), targets, probs.gather(1, targets[:, None])[:, 0], delta.detach())


def attribution_map(attr: Tensor) -> np.ndarray:
    """``(C, H, W)`` attributions → ``(H, W)`` in [0, 1]: absolute value summed over channels, scaled by its 99th
    percentile (so that a few extreme pixels do not wash the map out)."""
    a = attr.abs().sum(0).cpu().numpy()
    top = float(np.percentile(a, 99)) or 1.0
    return np.clip(a / top, 0.0, 1.0)


def save_ig_panel(path: str | Path, image: Tensor, attr: Tensor, title: str, alpha: float = 0.5) -> Path:
    """Write a PNG with three panels, image | attribution | overlay, under ``title``, atomically."""
    from matplotlib.figure import Figure

    from mmdiag.evaluation.plots import save_figure

    img = image.detach().cpu().float()
    heat = attribution_map(attr)
    shown = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img.mean(0).numpy()
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    for i, (sub, data, cmap) in enumerate([("image", shown, "gray"), ("attribution", heat, "inferno"),
                                           ("overlay", overlay_heatmap(img.clamp(0, 1), heat, alpha, 1), None)]):
        ax = fig.add_subplot(1, 3, i + 1)
        shown_ax = ax.imshow(np.clip(data, 0, 1) if data.dtype != np.uint8 else data, cmap=cmap, vmin=0, vmax=1)
        ax.set(title=sub, xticks=[], yticks=[])
        if sub == "attribution":
            fig.colorbar(shown_ax, ax=ax, fraction=0.046, label="|attribution| / 99th percentile")
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)
    return Path(path)
