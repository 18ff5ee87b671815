"""Train/validation/test splits: the official one when a dataset has it, else patient-grouped stratified k-fold."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from mmdiag.data.table import CaseTable
from mmdiag.errors import DataError

__all__ = ["Split", "make_split", "stratify_labels", "stratum_names", "UNKNOWN_STRATUM"]

UNKNOWN_STRATUM = "unknown"
"""The stratum name of cases whose main-task label is unknown."""

Split = dict[str, list[int]]  # {"train": [...], "val": [...], "test": [...]} of case indices


def stratify_labels(table: CaseTable) -> np.ndarray:
    """One stratum per case from the main task: the class, or the label combination for multi-label tasks."""
    task = table.spec.main_task
    y = table.label_matrix(task)
    if y.ndim == 2:
        y = np.nan_to_num(y, nan=0.0).astype(int) @ (1 << np.arange(y.shape[1]))
    return y.astype(int)


def stratum_names(table: CaseTable, indices: list[int] | np.ndarray) -> list[str]:
    """Readable strata of the main task for ``indices``: the class, or for a multi-label task the positive labels
    joined by ``|`` in class order (``none`` when no label is positive); :data:`UNKNOWN_STRATUM` when unknown."""
    from mmdiag.data.manifest import NONE_LABEL

    task = table.spec.tasks[table.spec.main_task]
    y = table.label_matrix(table.spec.main_task)[np.asarray(indices, dtype=int)]
    if task.type == "multilabel":
        return [UNKNOWN_STRATUM if np.isnan(r).any() else
                "|".join(c for c, v in zip(task.classes, r) if v > 0.5) or NONE_LABEL for r in y]
    return [task.classes[int(v)] if v >= 0 else UNKNOWN_STRATUM for v in y]


def _group_split(idx: np.ndarray, strata: np.ndarray, groups: np.ndarray, n_splits: int, which: int, seed: int):
    """Split ``idx`` into (rest, held-out fold ``which`` of ``n_splits``), stratified and grouped."""
    n_groups = len(np.unique(groups[idx]))
    if n_groups < n_splits:
        raise DataError(f"only {n_groups} patients to split into {n_splits} folds; use fewer folds")
    skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        rest, held = list(skf.split(idx, strata[idx], groups[idx]))[which]
    except ValueError:  # every class has fewer cases than folds: stratifying is impossible, grouping still holds
        warnings.warn(f"every class of the main task has fewer than {n_splits} cases: the {n_splits}-fold split is "
                      "grouped by patient but not stratified", stacklevel=2)
        rest, held = list(skf.split(idx, np.zeros(len(idx), dtype=int), groups[idx]))[which]
    return idx[rest], idx[held]


def make_split(table: CaseTable, kind: str, *, folds: int = 5, fold: int = 0, val_fraction: float = 0.2,
               seed: int = 0) -> Split:
    """Case indices per split. No patient appears in two splits.

    Args:
        kind: ``official`` (the dataset's own split; a missing val split is carved from train), ``kfold`` (test =
            fold ``fold`` of ``folds``, stratified on the main task and grouped by patient), or ``auto``.
        val_fraction: share of the remaining patients held out for validation.
        seed: the split seed, saved with the run.

    Raises:
        DataError: ``official`` was asked of a dataset without one.
    """
    if kind == "auto":
        kind = "official" if table.official_split else "kfold"
    strata = stratify_labels(table)
    groups = np.array([c.patient_id for c in table.cases])
    val_splits = max(2, round(1 / val_fraction))
    if kind == "official":
        if not table.official_split:
            raise DataError(f"dataset {table.spec.name!r} has no official split; use data.split.kind=kfold")
        by = {s: [i for i, c in enumerate(table.cases) if c.split == s] for s in ("train", "val", "test")}
        if not by["val"]:
            train, val = _group_split(np.array(by["train"]), strata, groups, val_splits, 0, seed)
            by["train"], by["val"] = train.tolist(), val.tolist()
        return {k: sorted(v) for k, v in by.items()}
    rest, test = _group_split(np.arange(len(table)), strata, groups, folds, fold, seed)
    train, val = _group_split(rest, strata, groups, val_splits, 0, seed + 1)
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist())}
