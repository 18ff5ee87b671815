"""t-SNE maps of a model's penultimate features, coloured by class (MedMamba paper Sec. 5.2, Fig. 6).

The features are the representation the heads read, taken from the model contract
(:mod:`mmdiag.models.contract`):

* a multimodal model (every model trained on a dataset, single-image classifiers included):
  ``model.forward_features(inputs, present)``, the ``(B, num_features)`` vector its heads receive;
* a single-tensor image model (timm's API): ``forward_head(forward_features(x), pre_logits=True)``, which for
  MedMamba is the global average pool of the last stage.

The 2-D embedding is scikit-learn's ``TSNE`` (PCA initialisation, fixed seed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mmdiag.data.schema import DatasetSpec, TaskSpec
from mmdiag.data.transforms import BatchTransform
from mmdiag.errors import ConfigError, DataError
from mmdiag.io.atomic import atomic_write_text

__all__ = ["penultimate_features", "extract_features", "tsne_embedding", "class_labels", "plot_tsne",
           "write_tsne"]

_log = logging.getLogger(__name__)


@torch.no_grad()
def penultimate_features(model: nn.Module, inputs: Tensor | Mapping[str, Tensor],
                         present: Mapping[str, Tensor] | None = None) -> Tensor:
    """``(B, F)`` penultimate features of one batch (the model runs in eval mode; its mode is restored).

    Args:
        model: A :class:`~mmdiag.models.contract.MultimodalModel`, or a single-tensor image model.
        inputs: Its input (normalised as in training): a dict of tensors, or one tensor for an image model.
        present: Presence flags of a multimodal model.

    Raises:
        ConfigError: the features are not ``(B, F)`` (a model that breaks the contract).
    """
    was_training = model.training
    model.eval()
    try:
        if isinstance(inputs, Tensor):
            feats = model.forward_head(model.forward_features(inputs), pre_logits=True)
        else:
            feats = model.forward_features(inputs, present)
    finally:
        model.train(was_training)
    batch = len(inputs) if isinstance(inputs, Tensor) else len(next(iter(inputs.values())))
    if feats.dim() != 2 or feats.shape[0] != batch:
        raise ConfigError(f"{type(model).__name__}.forward_features returned shape {tuple(feats.shape)}; the model "
                          f"contract wants (batch, num_features) = ({batch}, F)")
    return feats


def extract_features(model: nn.Module, loader: DataLoader, transform: BatchTransform,
                     device: torch.device | str = "cpu") -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Penultimate features of every case of a loader (after the run's normalisation).

    Returns:
        ``(features (N, F), {task: labels}, case ids)``.
    """
    model.to(device)
    transform.to(device)
    feats, labels, ids = [], {}, []
    for batch in loader:
        batch = {**batch, "inputs": {k: v.to(device) for k, v in batch["inputs"].items()},
                 "present": {k: v.to(device) for k, v in batch["present"].items()}}
        batch = transform(batch, train=False)
        feats.append(penultimate_features(model, batch["inputs"], batch["present"]).float().cpu().numpy())
        for t, y in batch["labels"].items():
            labels.setdefault(t, []).append(y.numpy())
        ids += batch["case_id"]
    if not feats:
        raise DataError("the loader holds no cases to embed")
    return np.concatenate(feats), {t: np.concatenate(v) for t, v in labels.items()}, ids


EXACT_TSNE_MAX_CASES = 200


def tsne_embedding(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``(N, F)`` features (PCA initialisation; perplexity capped at ``(N - 1) / 3``).

    Up to :data:`EXACT_TSNE_MAX_CASES` cases use exact gradients (faster there than Barnes-Hut, whose OpenMP threads
    can also stall on a busy machine); larger sets use Barnes-Hut.

    Raises:
        DataError: fewer than 4 cases.
    """
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 4:
        raise DataError(f"t-SNE needs at least 4 cases; got {n}")
    perp = min(perplexity, (n - 1) / 3)
    if perp < perplexity:
        _log.info("t-SNE: perplexity %.1f lowered to %.1f for %d cases", perplexity, perp, n)
    method = "exact" if n <= EXACT_TSNE_MAX_CASES else "barnes_hut"
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, method=method).fit_transform(
        np.asarray(features, dtype=np.float64))


def class_labels(task: TaskSpec, y: np.ndarray) -> list[str]:
    """One display label per case: the class name, ``unknown`` for -1, or a multi-label case's positive labels
    joined by ``+`` (``none`` without any, ``unknown`` with an unknown label)."""
    if task.type != "multilabel":
        return [task.classes[int(v)] if v >= 0 else "unknown" for v in y]
    return ["unknown" if np.isnan(row).any() else "+".join(c for c, v in zip(task.classes, row) if v > 0.5) or "none"
            for row in y]


def plot_tsne(embedding: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "t-SNE",
              order: Sequence[str] | None = None) -> Path:
    """Scatter plot of a 2-D embedding, one colour per label, written atomically as PNG.

    Args:
        embedding: ``(N, 2)``.
        labels: One label per point.
        path: The PNG to write.
        title: Figure title.
        order: Legend order (default: first appearance); ``unknown`` is drawn grey.
    """
    from matplotlib.figure import Figure

    from mmdiag.evaluation.plots import save_figure

    names = list(dict.fromkeys([*(order or []), *labels]))
    names = [n for n in names if n in set(labels)]
    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    lab = np.asarray(labels)
    for name, colour in zip(names, _palette(len(names))):
        pts = embedding[lab == name]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.8, color="0.6" if name == "unknown" else colour,
                   label=f"{name} ({len(pts)})")
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize="small", markerscale=1.5)
    save_figure(fig, path, dpi=120)
    return Path(path)


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def write_tsne(spec: DatasetSpec, features: np.ndarray, labels: Mapping[str, np.ndarray], case_ids: Sequence[str],
               out_dir: str | Path, prefix: str = "tsne", perplexity: float = 30.0, seed: int = 0,
               tasks: Sequence[str] | None = None, heading: str = "") -> list[Path]:
    """Embed once, then write one PNG per task (``{prefix}_{task}.png``) and the coordinates with each case's
    class per task (``{prefix}.csv``).

    Args:
        spec: The run's dataset spec (task types and class names).
        features: ``(N, F)`` features; labels: ``{task: labels}``; case_ids: N ids (see :func:`extract_features`).
        out_dir: Output folder.
        prefix: File name prefix.
        perplexity: t-SNE perplexity (capped for small N); seed: t-SNE seed.
        tasks: Tasks to colour by (default: all).
        heading: what the features are (model and split), put in each title with the number of cases.

    Returns:
        The written paths.

    Raises:
        ConfigError: a task that the spec does not have.
        DataError: fewer than 4 cases.
    """
    tasks = list(tasks or spec.tasks)
    unknown = [t for t in tasks if t not in spec.tasks]
    if unknown:
        raise ConfigError(f"task(s) {unknown} not in the run; tasks: {list(spec.tasks)}")
    emb = tsne_embedding(features, perplexity, seed)
    out_dir = Path(out_dir)
    table: dict[str, Any] = {"case_id": list(case_ids), "x": emb[:, 0], "y": emb[:, 1]}
    paths = []
    for t in tasks:
        names = class_labels(spec.tasks[t], labels[t])
        table[t] = names
        paths.append(plot_tsne(emb, names, out_dir / f"{prefix}_{t}.png", title=f"t-SNE of forward_features, task {t}\n{heading + ', ' if heading else ''}n = {len(emb)}",
                               order=list(spec.tasks[t].classes)))
    atomic_write_text(out_dir / f"{prefix}.csv", pd.DataFrame(table).to_csv(index=False))
    return [*paths, out_dir / f"{prefix}.csv"]
