"""k-fold cross-validation: one run per fold (patient-grouped, stratified), then mean ± std and paired t-tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmdiag.config.schema import ExperimentConfig
from mmdiag.errors import ConfigError
from mmdiag.evaluation.report import fmt
from mmdiag.evaluation.stats import fold_summary, paired_ttest
from mmdiag.io.atomic import atomic_write_text
from mmdiag.training.run import train

__all__ = ["run_cv", "compare_cv"]

_KEYS = ("mean/acc", "mean/balanced_acc", "mean/auc", "mean/f1", "mean/map", "mean/s2")


def run_cv(cfg: ExperimentConfig, out_dir: str | Path, folds: int | None = None) -> dict[str, Any]:
    """Train fold ``k`` of ``folds`` into ``out_dir/fold{k}`` for every k; write ``cv_metrics.json`` and
    ``cv_report.md`` with mean ± std over folds (test split of each fold).

    Raises:
        ConfigError: ``out_dir`` exists and is not empty (a cross-validation is never written over another).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        held = sorted(p.name for p in out_dir.iterdir())
        raise ConfigError(f"cv folder {str(out_dir)!r} already holds {', '.join(held[:5])}"
                          + (" ..." if len(held) > 5 else "") + "; choose another --output or name")
    k = folds or cfg.data.split.folds
    per_fold = []
    for fold in range(k):
        split = cfg.data.split.model_copy(update={"kind": "kfold", "folds": k, "fold": fold})
        fold_cfg = cfg.model_copy(update={"name": f"{cfg.name}-fold{fold}",
                                          "data": cfg.data.model_copy(update={"split": split})})
        result = train(fold_cfg, out_dir / f"fold{fold}")
        per_fold.append({"tasks": result.metrics.get("tasks", {}), "mean": result.metrics.get("mean", {})})
    summary = fold_summary(per_fold)
    out = {"folds": k, "summary": summary, "per_fold": per_fold}
    atomic_write_text(out_dir / "cv_metrics.json", json.dumps(out, indent=2, default=float))
    lines = [f"# Cross-validation — {cfg.name} ({k} folds, patient-grouped, stratified)", "",
             "| metric | mean | std | " + " | ".join(f"fold {i}" for i in range(k)) + " |",
             "|---" * (k + 3) + "|"]
    for key in _KEYS:
        if key in summary:
            s = summary[key]
            lines.append(f"| {key} | {fmt(s['mean'])} | {fmt(s['std'])} | " + " | ".join(fmt(v) for v in s["values"])
                         + " |")
    atomic_write_text(out_dir / "cv_report.md", "\n".join(lines) + "\n")
    return out


def compare_cv(a: str | Path, b: str | Path) -> dict[str, dict[str, float]]:
    """Paired t-tests between the fold scores of two cross-validations (same folds), per summary metric."""
    sa = json.loads((Path(a) / "cv_metrics.json").read_text())["summary"]
    sb = json.loads((Path(b) / "cv_metrics.json").read_text())["summary"]
    return {k: {"mean_a": sa[k]["mean"], "mean_b": sb[k]["mean"], **paired_ttest(sa[k]["values"], sb[k]["values"])}
            for k in _KEYS if k in sa and k in sb}
