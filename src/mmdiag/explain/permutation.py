"""Permutation importance of record fields per class (RemixFormer++ paper 001, Fig. 10).

For each field of the record modality, the field's encoded columns are shuffled across the evaluated cases (the
rest of every case untouched), the model predicts again, and the importance of the field for class ``c`` is the
drop of that class's accuracy (recall: correct predictions among the cases of class ``c``), averaged over
``repeats`` shuffles. Missing records stay missing (only cases with a record exchange values).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmdiag.data.schema import CategoricalField, DatasetSpec, TabularModality
from mmdiag.errors import ConfigError
from mmdiag.io.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["field_columns", "permutation_importance", "plot_importance", "permutation_for_run"]


def field_columns(modality: TabularModality) -> dict[str, slice]:
    """The columns of each field in the encoded record (:class:`~mmdiag.data.tabular.TabularEncoder` order)."""
    out, i = {}, 0
    for name, f in modality.fields.items():
        width = len(f.values) if isinstance(f, CategoricalField) else 2
        out[name] = slice(i, i + width)
        i += width
    return out


def _recall(pred: np.ndarray, true: np.ndarray, n_classes: int) -> np.ndarray:
    return np.array([(pred[true == c] == c).mean() if (true == c).any() else np.nan for c in range(n_classes)])


@torch.no_grad()
def permutation_importance(model: torch.nn.Module, spec: DatasetSpec, inputs: Mapping[str, torch.Tensor],
                           present: Mapping[str, torch.Tensor], labels: torch.Tensor, task: str | None = None,
                           record: str | None = None, repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """Per-class accuracy drop when each record field is shuffled.

    Args:
        model: a multimodal model (eval mode is set by the caller).
        spec: its dataset spec.
        inputs, present: the evaluated cases (already transformed as for evaluation).
        labels: class index per case for ``task`` (-1 = unlabelled, ignored).
        task: a single-label task (default: the main task).
        record: the tabular modality (default: the only one).
        repeats: shuffles per field.
        seed: shuffle seed.

    Returns:
        A frame indexed by field with one column per class (accuracy drop) and ``all`` (overall accuracy drop).

    Raises:
        ConfigError: no / ambiguous tabular modality, or an unknown or multi-label task.
    """
    tab = spec.of_kind("tabular")
    record = record or (tab[0] if len(tab) == 1 else None)
    if record not in tab:
        raise ConfigError(f"--record {record!r}: choose a tabular modality of the run: {tab}")
    task = task or spec.main_task
    if task not in spec.tasks or spec.tasks[task].type == "multilabel":
        raise ConfigError(f"--task {task!r}: choose a single-label task of the run: "
                          f"{[t for t, s in spec.tasks.items() if s.type != 'multilabel']}")
    classes = spec.tasks[task].classes
    keep = labels >= 0
    true = labels[keep].cpu().numpy()

    def scores(x: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, float]:
        pred = model(dict(x), dict(present))[task].argmax(1)[keep].cpu().numpy()
        return _recall(pred, true, len(classes)), float((pred == true).mean())

    base, base_all = scores(inputs)
    has = present[record].bool() if record in present else torch.ones(len(labels), dtype=torch.bool)
    rows = np.where(has.cpu().numpy())[0]
    rng = np.random.default_rng(seed)
    out = {}
    for name, cols in field_columns(spec.modalities[record]).items():
        drops, drops_all = [], []
        for _ in range(repeats):
            x = inputs[record].clone()
            x[torch.as_tensor(rows), cols] = inputs[record][torch.as_tensor(rng.permutation(rows)), cols]
            r, a = scores({**inputs, record: x})
            drops.append(base - r)
            drops_all.append(base_all - a)
        out[name] = [*np.mean(drops, 0), float(np.mean(drops_all))]
    return pd.DataFrame.from_dict(out, orient="index", columns=[*classes, "all"])


def plot_importance(frame: pd.DataFrame, title: str = "") -> bytes:
    """A field × class heat map of accuracy drops (PNG bytes); red = the field helps that class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = frame.to_numpy(dtype=float)
    lim = max(float(np.nanmax(np.abs(values))), 1e-6)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * values.shape[1], 1.0 + 0.35 * values.shape[0]))
    im = ax.imshow(values, cmap="coolwarm", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(values.shape[1]), list(frame.columns), rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), list(frame.index))
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="accuracy drop when shuffled")
    ax.set_title(title or "permutation importance")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def permutation_for_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, split: str = "test",
                        task: str | None = None, record: str | None = None, repeats: int = 5,
                        seed: int = 0) -> tuple[Path, Path]:
    """Permutation importance of a finished run on one of its splits; writes CSV and PNG.

    Returns:
        ``(csv, png)`` paths (default folder ``<run_dir>/explain``).
    """
    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.robustness import load_run_data

    predictor = Predictor(run_dir)
    loader, _ = load_run_data(predictor, run_dir, split)
    model, spec = predictor.model.eval(), predictor.spec
    task = task or spec.main_task
    batches = [predictor.transform(b, train=False) for b in loader]
    inputs = {m: torch.cat([b["inputs"][m] for b in batches]) for m in batches[0]["inputs"]}
    present = {m: torch.cat([b["present"][m] for b in batches]) for m in batches[0]["present"]}
    if task not in batches[0]["labels"]:
        raise ConfigError(f"--task {task!r}: the run has tasks {list(spec.tasks)}")
    labels = torch.cat([b["labels"][task] for b in batches]).long()
    frame = permutation_importance(model, spec, inputs, present, labels, task, record, repeats, seed)
    out = Path(out_dir or Path(run_dir) / "explain")
    csv, png = out / f"permutation_{task}_{split}.csv", out / f"permutation_{task}_{split}.png"
    atomic_write_text(csv, frame.to_csv(float_format="%.5f"))
    atomic_write_bytes(png, plot_importance(frame, f"{predictor.cfg.model.name}: record-field permutation, task {task}\n"
                                                   f"accuracy drop per class ({split}, n = {len(labels)})"))
    return csv, png
