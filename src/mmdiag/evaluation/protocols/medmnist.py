"""The official MedMNIST evaluation: ACC and AUC as ``medmnist/evaluator.py`` (v3) computes them, and its result files.

Per official task string (``INFO[flag]["task"]``), after squeezing ``y_true`` (``N×L``) and ``y_score``:

* ``multi-label, binary-class``: ACC = mean over labels of the accuracy of ``score > 0.5``; AUC = mean over labels of
  ``roc_auc_score(y[:, i], score[:, i])``.
* ``binary-class``: the score is column ``-1`` of an ``N×2`` array (or the ``N`` vector); ACC = accuracy of
  ``score > 0.5``; AUC = ``roc_auc_score(y, score)``.
* ``multi-class`` and ``ordinal-regression``: ACC = accuracy of ``argmax``; AUC = unweighted mean over *all* score
  columns of the one-vs-rest ``roc_auc_score(y == i, score[:, i])``.

The official code fails (scikit-learn raises) when a class or label has only one value in ``y_true``; here that is a
:class:`~mmdiag.errors.DataError` naming it. Metrics are ``(AUC, ACC)``, AUC first, as the official ``Metrics``.

Result file: ``{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv`` (``size_flag`` empty for 28 pixels,
``_64`` etc. otherwise), one line per case without a header: ``index,score_0,score_1,...`` in dataset order, written
as ``pandas.DataFrame(y_score).to_csv(path, header=None)`` does, so the official ``Evaluator.parse_and_evaluate``
reads it back.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch.utils.data import DataLoader

from mmdiag.data.adapters.medmnist import SPLITS, case_index, medmnist_info, read_split_labels
from mmdiag.errors import ConfigError, DataError, UnknownNameError
from mmdiag.io.atomic import atomic_write_text

__all__ = ["MedMNISTMetrics", "OFFICIAL_TASKS", "ResultName", "get_auc", "get_acc", "evaluate", "result_filename",
           "write_result_file", "read_result_file", "evaluate_medmnist_run"]

OFFICIAL_TASKS = ("multi-label, binary-class", "binary-class", "multi-class", "ordinal-regression")


class MedMNISTMetrics(NamedTuple):
    """The official ``Metrics(AUC, ACC)``."""

    AUC: float
    ACC: float


class ResultName(NamedTuple):
    """The parts of an official result file name."""

    flag: str
    size: int
    split: str
    run: str


def _check_task(task: str) -> None:
    if task not in OFFICIAL_TASKS:
        raise UnknownNameError("MedMNIST task string", task, OFFICIAL_TASKS)


def _roc_auc(y: np.ndarray, s: np.ndarray, what: str) -> float:
    if len(np.unique(y)) < 2:
        raise DataError(f"MedMNIST AUC: {what} has only one value in y_true ({np.unique(y).tolist()}); ROC AUC is "
                        f"undefined (the official evaluator fails here too)")
    return float(roc_auc_score(y, s))


def get_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """Official AUC of ``y_score`` (``N×C``) against ``y_true`` (``N×L``) for an official ``task`` string.

    Raises:
        UnknownNameError: ``task`` is not an official task string.
        DataError: a class/label has one value only in ``y_true`` (naming it).
    """
    _check_task(task)
    y, s = np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()
    if task == "multi-label, binary-class":
        return sum(_roc_auc(y[:, i], s[:, i], f"label {i}") for i in range(s.shape[1])) / s.shape[1]
    if task == "binary-class":
        return _roc_auc(y, s[:, -1] if s.ndim == 2 else s, "the binary task")
    return sum(_roc_auc((y == i).astype(float), s[:, i], f"class {i}") for i in range(s.shape[1])) / s.shape[1]


def get_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """Official ACC: per-label accuracy of ``score > threshold`` averaged (multi-label), accuracy of ``score[:, -1] >
    threshold`` (binary), accuracy of the argmax (multi-class, ordinal)."""
    _check_task(task)
    y, s = np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()
    if task == "multi-label, binary-class":
        pred = s > threshold
        return sum(float(accuracy_score(y[:, i], pred[:, i])) for i in range(y.shape[1])) / y.shape[1]
    if task == "binary-class":
        return float(accuracy_score(y, (s[:, -1] if s.ndim == 2 else s) > threshold))
    return float(accuracy_score(y, np.argmax(s, axis=-1)))


def evaluate(y_true: np.ndarray, y_score: np.ndarray, task: str) -> MedMNISTMetrics:
    """Official ``Metrics(AUC, ACC)``.

    Raises:
        DataError: ``y_score`` has another number of rows than ``y_true``.
    """
    if len(y_score) != len(y_true):
        raise DataError(f"MedMNIST evaluation: y_score has {len(y_score)} rows, the split has {len(y_true)} cases")
    return MedMNISTMetrics(get_auc(y_true, y_score, task), get_acc(y_true, y_score, task))


def result_filename(flag: str, size: int, split: str, metrics: MedMNISTMetrics, run: str) -> str:
    """``{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv``."""
    size_flag = "" if size in (None, 28) else f"_{size}"
    scores = "_".join(f"[{k}]{v:.3f}" for k, v in zip(metrics._fields, metrics))
    return f"{flag}{size_flag}_{split}_{scores}@{run}.csv"


def write_result_file(folder: str | Path, flag: str, size: int, split: str, y_score: np.ndarray,
                      metrics: MedMNISTMetrics, run: str) -> Path:
    """Write the official result file (``index,score_0,...`` rows, no header) into ``folder``; returns its path."""
    buf = io.StringIO()
    pd.DataFrame(np.asarray(y_score)).to_csv(buf, header=False)
    path = Path(folder) / result_filename(flag, size, split, metrics, run)
    atomic_write_text(path, buf.getvalue())
    return path


def read_result_file(path: str | Path) -> tuple[ResultName, np.ndarray]:
    """Parse an official result file: its name parts and the scores (rows sorted by index), as the official
    ``parse_and_evaluate`` does.

    Raises:
        DataError: the file name does not follow the official pattern.
    """
    path = Path(path)
    parts = path.name.split("_")
    size = 28
    if len(parts) > 2 and not parts[1].startswith(SPLITS) and parts[1].isdigit():
        size = int(parts.pop(1))
    split = next((s for s in SPLITS if len(parts) > 1 and parts[1].startswith(s)), None)
    if split is None or "@" not in path.name:
        raise DataError(f"{path.name!r} is not an official MedMNIST result file name "
                        f"({{flag}}{{size_flag}}_{{split}}_[AUC]..._[ACC]...@{{run}}.csv)", path=str(path))
    run = path.name.split("@")[-1].split(".")[0]
    scores = pd.read_csv(path, index_col=0, header=None).sort_index().to_numpy()
    return ResultName(parts[0], size, split, run), scores


def _ordered(case_ids: list[str], scores: np.ndarray, split: str, n: int, source: str) -> np.ndarray:
    """Rows of ``scores`` reordered by dataset index; every case of ``split`` must be there exactly once."""
    index = np.full(n, -1)
    for row, cid in enumerate(case_ids):
        s, i = case_index(cid)
        if s == split and i < n:
            index[i] = row
    if (index < 0).any() or len(case_ids) != n:
        raise DataError(f"{source}: holds {int((index >= 0).sum())} of the {n} cases of split {split!r} (and "
                        f"{len(case_ids)} rows); the official evaluation needs every case of the split once")
    return scores[index]


def _scores_from_predictions(path: Path, task: str, classes: tuple[str, ...], split: str, n: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; evaluate with the model instead", path=str(path))
    df = pd.read_csv(path, dtype={"case_id": str, "split": str})
    held = sorted(set(df["split"]))
    if held != [split]:
        raise DataError(f"{str(path)!r} holds split(s) {held}, not {split!r}; run `mmdiag eval --run RUN --split "
                        f"{split}` first or evaluate with the model", path=str(path))
    cols = [f"{task}.prob.{c}" for c in classes]
    absent = [c for c in cols if c not in df.columns]
    if absent:
        raise DataError(f"{str(path)!r} lacks column(s) {absent}", path=str(path))
    return _ordered(df["case_id"].tolist(), df[cols].to_numpy(dtype=np.float64), split, n, str(path))


def evaluate_medmnist_run(run_dir: str | Path, split: str = "test", output: str | Path | None = None,
                          source: Literal["model", "predictions"] = "model", root: str | None = None,
                          run: str | None = None) -> tuple[MedMNISTMetrics, Path]:
    """Official ACC/AUC of a finished ``medmnist`` run on ``split``, and its official result file.

    Args:
        run_dir: the run folder.
        split: ``train``, ``val`` or ``test`` (every case of the official split is scored).
        output: folder of the result file (default: the run folder).
        source: ``model`` runs the run's best weights over the split; ``predictions`` reads the run's
            ``predictions.csv`` (probabilities rounded to 6 decimals), which must hold that whole split.
        root: folder of the ``.npz`` files if it moved (default: the run's ``data.root``).
        run: the ``@run`` tag of the file name (default: the run folder's name).

    Returns:
        The metrics and the path of the written file.

    Raises:
        ConfigError: the run did not train on ``medmnist`` or ``split`` is unknown.
        DataError: the predictions do not cover the split, or AUC is undefined.
    """
    from mmdiag.data.dataset import CaseDataset, collate_cases
    from mmdiag.data.sources import load_table
    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.predict import predict_loader

    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {list(SPLITS)}")
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir)
    cfg = predictor.cfg
    if cfg.data.dataset != "medmnist":
        raise ConfigError(f"run {str(run_dir)!r} trained on {cfg.data.dataset!r}; the MedMNIST evaluation needs "
                          f"data.dataset=medmnist")
    options = dict(cfg.data.options)
    flag, size, root = options.get("flag"), options.get("size", 28), root or cfg.data.root
    labels = read_split_labels(root, flag, size, split)
    task = next(iter(predictor.spec.tasks))
    if source == "predictions":
        scores = _scores_from_predictions(run_dir / "predictions.csv", task, predictor.spec.tasks[task].classes, split,
                                          len(labels))
    else:
        table = load_table(cfg.data.dataset, root, options)
        ds = CaseDataset(table, [i for i, c in enumerate(table.cases) if c.split == split], predictor.encoders,
                         modalities=list(predictor.spec.modalities))
        loader = DataLoader(ds, batch_size=cfg.data.eval_batch_size or cfg.data.batch_size, collate_fn=collate_cases)
        preds = predict_loader(predictor.model, predictor.spec, loader, predictor.transform,
                               "cuda" if torch.cuda.is_available() else "cpu")
        scores = _ordered(preds.case_ids, preds.y_prob[task], split, len(labels), "model predictions")
    metrics = evaluate(labels, scores, medmnist_info(flag)["task"])
    path = write_result_file(output or run_dir, flag, size, split, scores, metrics, run or run_dir.name)
    return metrics, path
