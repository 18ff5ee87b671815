"""RemixFormer++ Table VIII (§V-C) on Derm7pt: sensitivity, specificity, AUC and F1 with the Avg1 / Avg2 summaries.

* Avg1 = mean over the 5 diagnosis classes, each scored one-vs-rest (predicted class = argmax).
* Avg2 = mean over 8 "categories positively associated with melanoma": the diagnosis class MEL and one class of each
  checklist criterion, scored one-vs-rest on that criterion's prediction: pigment_network **atypical**, streaks
  **irregular**, pigmentation **irregular**, regression_structures **present**, dots_and_globules **irregular**,
  blue_whitish_veil **present**, vascular_structures **irregular** (the paper's PN ATP, STR IR, PIG IR, RS PRS,
  DaG IR, BWV PRS, VS IR).

Per-class values are those of :func:`mmdiag.evaluation.metrics.task_metrics` (scikit-learn's definitions; F1 is 0 for
a class never predicted nor present). Task and class names are those of the ``derm7pt`` adapter, under any of its
``label_order`` values (classes are looked up by name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmdiag.errors import DataError
from mmdiag.evaluation.metrics import nanmean, task_metrics

__all__ = ["TABLE8_METRICS", "AVG2_POSITIVES", "derm7pt_table8"]

TABLE8_METRICS = ("sensitivity", "specificity", "auc", "f1")
AVG2_POSITIVES: dict[str, str] = {
    "diagnosis": "MEL",
    "pigment_network": "atypical",
    "streaks": "irregular",
    "pigmentation": "irregular",
    "regression_structures": "present",
    "dots_and_globules": "irregular",
    "blue_whitish_veil": "present",
    "vascular_structures": "irregular",
}


def derm7pt_table8(y_true: Mapping[str, np.ndarray], y_prob: Mapping[str, np.ndarray],
                   classes: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Table VIII of RemixFormer++: per-class rows, Avg1 and Avg2 of sensitivity, specificity, AUC and F1.

    Args:
        y_true: task → ``(N,)`` class indices (``-1`` = unknown) for the 8 Derm7pt tasks.
        y_prob: task → ``(N, C)`` probabilities.
        classes: task → class names in column order (the dataset spec's ``classes``).

    Returns:
        ``{"diagnosis": {class: {metric: value}}, "avg1": {metric: value}, "positives": {task: {metric: value}},
        "avg2": {metric: value}}`` for the metrics of :data:`TABLE8_METRICS`.

    Raises:
        DataError: a task is missing from an input, or a task lacks its positive class (named).
    """
    for what, given in (("y_true", y_true), ("y_prob", y_prob), ("classes", classes)):
        missing = [t for t in AVG2_POSITIVES if t not in given]
        if missing:
            raise DataError(f"Derm7pt Table VIII: {what} lacks task(s) {missing}; it has {sorted(given)}")
    results = {t: task_metrics("multiclass", y_true[t], y_prob[t], list(classes[t]), task_name=t)
               for t in AVG2_POSITIVES}
    diag = {c: {m: results["diagnosis"]["per_class"][c][m] for m in TABLE8_METRICS}
            for c in classes["diagnosis"]}
    positives = {}
    for task, cls in AVG2_POSITIVES.items():
        if cls not in classes[task]:
            raise DataError(f"Derm7pt Table VIII: task {task!r} has no class {cls!r} (its classes: "
                            f"{list(classes[task])})")
        positives[task] = {m: results[task]["per_class"][cls][m] for m in TABLE8_METRICS}
    return {
        "diagnosis": diag,
        "avg1": {m: nanmean([row[m] for row in diag.values()]) for m in TABLE8_METRICS},
        "positives": positives,
        "avg2": {m: nanmean([row[m] for row in positives.values()]) for m in TABLE8_METRICS},
    }
