"""Robustness of a trained model to graded image corruptions (MedMamba paper Sec. 5.3, Fig. 7).

Every image modality of the evaluated split is corrupted after loading and before normalisation (the run's
:class:`~mmdiag.data.transforms.BatchTransform` normalises afterwards, as in training); volumes and records are left
alone. Severity 0 is the clean data; severities 1-5 use these parameters (images are float in [0, 1]):

==================  ===========================================================  ==================================
corruption          parameter (kornia op)                                        severities 1-5
==================  ===========================================================  ==================================
rotation            angle in degrees, counter-clockwise about the centre,         15, 30, 45, 60, 90
                    zero fill (``geometry.transform.rotate``)
translation         shift right and down, as a fraction of width and height,      0.05, 0.10, 0.15, 0.20, 0.25
                    zero fill (``geometry.transform.translate``)
color_temperature   warm shift k: per-channel gains R 1+k, G 1, B 1-k, clipped    0.1, 0.2, 0.3, 0.4, 0.5
                    (RGB images only; other channel counts are left unchanged)
gaussian_noise      standard deviation of additive N(0, s²) noise, clipped;       0.04, 0.08, 0.12, 0.16, 0.20
                    the noise is seeded per (seed, modality, case)
gaussian_blur       sigma as a fraction of the image's shorter side (kernel        0.005, 0.01, 0.015, 0.02, 0.03
                    2·ceil(3σ)+1, reflect border; ``filters.gaussian_blur2d``)
brightness          added intensity, clipped (``enhance.adjust_brightness``)       0.1, 0.2, 0.3, 0.4, 0.5
contrast            factor towards the mean grey level, clipped                   0.8, 0.6, 0.4, 0.3, 0.2
                    (``enhance.adjust_contrast_with_mean_subtraction``)
==================  ===========================================================  ==================================

The paper does not give its parameters; these span mild to strong for 224-pixel medical images. Geometric and blur
parameters are relative to the image size, so a severity means the same at every resolution. The metrics are the
paper's (OA, AUC, precision, sensitivity, specificity, F1; :func:`mmdiag.evaluation.metrics.task_metrics`: the
positive class of a binary task, macro means otherwise).

Outputs (default ``RUN/robustness/``): ``robustness.json``, ``robustness.md`` (per task and metric a table
corruption x severity) and ``robustness_<metric>.png`` (a line per corruption across severities).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mmdiag.data.datamodule import MultimodalDataModule, datamodule_for
from mmdiag.data.schema import DatasetSpec, ImageModality
from mmdiag.data.sources import load_table
from mmdiag.data.transforms import BatchTransform
from mmdiag.errors import ConfigError, UnknownNameError
from mmdiag.evaluation.metrics import evaluate_tasks, task_metrics
from mmdiag.evaluation.report import fmt
from mmdiag.evaluation.scores import probabilities
from mmdiag.io.atomic import atomic_write_text

__all__ = [
    "CORRUPTIONS",
    "PAPER_METRICS",
    "Corruption",
    "corrupt",
    "evaluate_robustness",
    "load_run_data",
    "resolve_run",
    "run_robustness",
    "write_robustness",
]

_log = logging.getLogger(__name__)

PAPER_METRICS: tuple[str, ...] = ("acc", "auc", "precision", "sensitivity", "specificity", "f1")
METRIC_TITLES = {"acc": "OA (accuracy)", "auc": "AUC", "precision": "Precision", "sensitivity": "Sensitivity",
                 "specificity": "Specificity", "f1": "F1"}
SEVERITIES = 5


def _rotate(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    from kornia.geometry.transform import rotate

    return rotate(x, torch.full((x.shape[0],), float(level), device=x.device, dtype=x.dtype))


def _translate(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    from kornia.geometry.transform import translate

    h, w = x.shape[-2:]
    shift = torch.tensor([[level * w, level * h]], device=x.device, dtype=x.dtype).expand(x.shape[0], 2)
    return translate(x, shift)


def _color_temperature(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    if x.shape[1] != 3:
        return x
    gains = torch.tensor([1.0 + level, 1.0, 1.0 - level], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * gains).clamp(0.0, 1.0)


def _gaussian_noise(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    # One standard-normal pattern per (seed, case), scaled by the level: severities differ only in strength.
    noise = np.stack([np.random.default_rng([seed, int(i)]).standard_normal(x.shape[1:], dtype=np.float32)
                      for i in index.tolist()])
    return (x + level * torch.from_numpy(noise).to(x)).clamp(0.0, 1.0)


def _gaussian_blur(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    from kornia.filters import gaussian_blur2d

    side = min(x.shape[-2:])
    sigma = level * side
    k = min(2 * math.ceil(3 * sigma) + 1, 2 * side - 1)  # reflect padding needs k // 2 < side
    return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def _brightness(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    from kornia.enhance import adjust_brightness

    return adjust_brightness(x, float(level))


def _contrast(x: Tensor, level: float, index: Tensor, seed: int) -> Tensor:
    from kornia.enhance import adjust_contrast_with_mean_subtraction

    return adjust_contrast_with_mean_subtraction(x, float(level))


@dataclass(frozen=True)
class Corruption:
    """A graded corruption: what its level means, the levels of severities 1-5, and the function.

    ``apply(images (B, C, H, W) in [0, 1], level, case indices (B,), seed) -> images``.
    """

    name: str
    parameter: str
    levels: tuple[float, ...]
    apply: Callable[[Tensor, float, Tensor, int], Tensor]


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("rotation", "angle (degrees, counter-clockwise)", (15, 30, 45, 60, 90), _rotate),
    Corruption("translation", "shift right and down (fraction of width/height)", (0.05, 0.10, 0.15, 0.20, 0.25),
               _translate),
    Corruption("color_temperature", "warm shift k (gains R 1+k, G 1, B 1-k)", (0.1, 0.2, 0.3, 0.4, 0.5),
               _color_temperature),
    Corruption("gaussian_noise", "noise standard deviation", (0.04, 0.08, 0.12, 0.16, 0.20), _gaussian_noise),
    Corruption("gaussian_blur", "sigma (fraction of the shorter side)", (0.005, 0.01, 0.015, 0.02, 0.03),
               _gaussian_blur),
    Corruption("brightness", "added intensity", (0.1, 0.2, 0.3, 0.4, 0.5), _brightness),
    Corruption("contrast", "factor towards the mean grey level", (0.8, 0.6, 0.4, 0.3, 0.2), _contrast),
)}


def _lookup(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise UnknownNameError("corruption", name, CORRUPTIONS)
    return CORRUPTIONS[name]


def corrupt(images: Tensor, name: str, severity: int, index: Tensor | None = None, seed: int = 0) -> Tensor:
    """Corrupt a batch of images at one severity (0 returns ``images`` itself, untouched).

    Args:
        images: ``(B, C, H, W)`` float in [0, 1] (before normalisation).
        name: A key of :data:`CORRUPTIONS`.
        severity: 0-5.
        index: Case indices ``(B,)`` seeding the per-case noise (default ``0..B-1``).
        seed: Noise seed.

    Raises:
        UnknownNameError: an unknown corruption.
        ConfigError: a severity outside 0-5, or images that are not a 2D batch.
    """
    c = _lookup(name)
    if not 0 <= severity <= SEVERITIES:
        raise ConfigError(f"corruption {name!r}: severity must be 0..{SEVERITIES}, got {severity}")
    if images.dim() != 4:
        raise ConfigError(f"corruption {name!r} takes 2D image batches (B, C, H, W); got shape {tuple(images.shape)}")
    if severity == 0:
        return images
    index = torch.arange(images.shape[0]) if index is None else index
    return c.apply(images, float(c.levels[severity - 1]), index.cpu(), seed)


def _scores(spec: DatasetSpec, y_true: Mapping[str, np.ndarray], y_prob: Mapping[str, np.ndarray],
            metrics: Sequence[str]) -> dict[str, Any]:
    result = evaluate_tasks(spec.tasks, y_true, y_prob)
    return {"tasks": {t: {"n": r["n"], **{m: r[m] for m in metrics}} for t, r in result["tasks"].items()},
            "mean": {m: result["mean"][m] for m in metrics}}


def _clean_band(spec: DatasetSpec, y_true: Mapping[str, np.ndarray], y_prob: Mapping[str, np.ndarray],
                metrics: Sequence[str], n_boot: int = 200, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Percentile-bootstrap 95 % CI of each clean metric (cases resampled; all metrics from the same resamples).

    Choice: the robustness plot shades this band of the clean score, so that a corrupted score outside it is a
    change larger than the test set's sampling noise; per-severity bands for every corruption would hide the lines.
    """
    import warnings

    rng = np.random.default_rng(seed)
    out = {}
    for t, task in spec.tasks.items():
        y, p = np.asarray(y_true[t]), np.asarray(y_prob[t])
        values: dict[str, list[float]] = {m: [] for m in metrics}
        for _ in range(n_boot):
            idx = rng.integers(0, len(y), size=len(y))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = task_metrics(task.type, y[idx], p[idx], list(task.classes), t)
            for m in metrics:
                if r.get(m) is not None and not math.isnan(r[m]):
                    values[m].append(float(r[m]))
        out[t] = {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [math.nan, math.nan]
                  for m, v in values.items()}
    return out


@torch.no_grad()
def evaluate_robustness(model: nn.Module, spec: DatasetSpec, loader: DataLoader, transform: BatchTransform,
                        corruptions: Sequence[str] | None = None, modalities: Sequence[str] | None = None,
                        device: torch.device | str = "cpu", seed: int = 0,
                        metrics: Sequence[str] = PAPER_METRICS) -> dict[str, Any]:
    """Metrics of ``model`` on ``loader`` under every corruption and severity (the data are read once).

    Args:
        model: A multimodal model (``forward(inputs, present) -> {task: logits}``).
        spec: Its dataset spec.
        loader: Evaluation loader (images in [0, 1], not normalised).
        transform: The run's batch transform (normalisation).
        corruptions: Names from :data:`CORRUPTIONS` (default: all).
        modalities: Image modalities to corrupt (default: every image modality of ``spec``).
        device: Where the model runs.
        seed: Seed of the noise corruption.
        metrics: Metric keys of :func:`~mmdiag.evaluation.metrics.task_metrics` to keep.

    Returns:
        ``{"clean": scores, "results": {corruption: [scores of severity 0..5]}}``; scores are
        ``{"severity", "level", "tasks": {task: {"n", metric: value}}, "mean": {metric: value}}`` (severity 0 is the
        clean evaluation, shared by all corruptions); the clean scores also hold ``"ci95"``: ``{task: {metric:
        [low, high]}}``, a bootstrap 95 % CI (200 resamples).

    Raises:
        UnknownNameError: an unknown corruption.
        ConfigError: a modality that is not an image modality of ``spec``.
    """
    names = list(corruptions or CORRUPTIONS)
    for n in names:
        _lookup(n)
    images = [n for n, m in spec.modalities.items() if isinstance(m, ImageModality)]
    targets = list(modalities or images)
    bad = [m for m in targets if m not in images]
    if bad or not targets:
        raise ConfigError(f"robustness corrupts image modalities; {bad or 'none'} given, the run has {images}")
    conditions = [(None, 0)] + [(n, s) for n in names for s in range(1, SEVERITIES + 1)]
    truth: dict[str, list[np.ndarray]] = {t: [] for t in spec.tasks}
    probs: dict[tuple[str | None, int], dict[str, list[np.ndarray]]] = {c: {t: [] for t in spec.tasks}
                                                                       for c in conditions}
    model.eval().to(device)
    transform.to(device)
    for batch in loader:
        batch = {**batch, "inputs": {k: v.to(device) for k, v in batch["inputs"].items()},
                 "present": {k: v.to(device) for k, v in batch["present"].items()}}
        for t in spec.tasks:
            truth[t].append(batch["labels"][t].numpy())
        for name, severity in conditions:
            inputs = dict(batch["inputs"])
            for j, m in enumerate(targets):
                if name is not None:
                    inputs[m] = corrupt(inputs[m], name, severity, batch["index"], seed=seed * 1009 + j)
            ready = transform({**batch, "inputs": inputs}, train=False)
            out = probabilities(spec, model(ready["inputs"], ready["present"]))
            for t in spec.tasks:
                probs[(name, severity)][t].append(out[t].float().cpu().numpy())
    y_true = {t: np.concatenate(v) for t, v in truth.items()}

    def scores(cond: tuple[str | None, int]) -> dict[str, Any]:
        return _scores(spec, y_true, {t: np.concatenate(v) for t, v in probs[cond].items()}, metrics)

    clean = {"severity": 0, "level": None, **scores((None, 0)),
             "ci95": _clean_band(spec, y_true, {t: np.concatenate(v) for t, v in probs[(None, 0)].items()}, metrics,
                                 seed=seed)}
    results = {n: [clean] + [{"severity": s, "level": CORRUPTIONS[n].levels[s - 1], **scores((n, s))}
                             for s in range(1, SEVERITIES + 1)] for n in names}
    return {"clean": clean, "results": results}


def resolve_run(run: str | Path, weights: str | Path | None = None) -> tuple[Path, Path | None]:
    """Check a run folder and an optional weights file to evaluate instead of its ``model.safetensors``.

    Returns:
        ``(run folder, weights file or None for the run's own model.safetensors)``.

    Raises:
        ConfigError: the run folder does not exist or holds no ``config.yaml``; the weights file does not exist.
    """
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ConfigError(f"--run {str(run_dir)!r} is not a folder; give the folder of a finished run")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--run {str(run_dir)!r} is not a run folder (no config.yaml in it)")
    if weights is None:
        return run_dir, None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"--weights {str(path)!r} does not exist; give a weights file (.safetensors)")
    return run_dir, (None if path.resolve() == (run_dir / "model.safetensors").resolve() else path)


def _signature(m: Any) -> dict[str, Any]:
    """What a modality must share with the run's to feed its model: kind, shape, record fields (not file columns)."""
    fields = {k: (f.type, getattr(f, "values", None)) for k, f in getattr(m, "fields", {}).items()}
    return {"kind": m.kind, "shape": tuple(m.shape), "fields": fields}


def _check_compatible(run_spec: DatasetSpec, other: DatasetSpec, where: str) -> None:
    problems = []
    for name, m in run_spec.modalities.items():
        o = other.modalities.get(name)
        if o is None:
            problems.append(f"modality {name!r} is missing (it has {list(other.modalities)})")
            continue
        mine, theirs = _signature(m), _signature(o)
        problems += [f"modality {name!r}: {key} {theirs[key]} != the run's {mine[key]}"
                     for key in mine if mine[key] != theirs[key]]
    for name, t in run_spec.tasks.items():
        o = other.tasks.get(name)
        if o is None:
            problems.append(f"task {name!r} is missing (it has {list(other.tasks)})")
        elif tuple(o.classes) != tuple(t.classes):
            problems.append(f"task {name!r}: classes {list(o.classes)} != the run's {list(t.classes)}")
    if problems:
        raise ConfigError(f"{where} does not match the run's data: " + "; ".join(problems))


def load_run_data(predictor: Any, run_dir: str | Path, split: str = "test", data: str | None = None,
                  root: str | None = None, options: Mapping[str, Any] | None = None,
                  batch_size: int | None = None) -> tuple[DataLoader, str]:
    """An evaluation loader: the run's own ``split``, or every case of another dataset.

    Args:
        predictor: The run's :class:`~mmdiag.evaluation.infer.Predictor`.
        run_dir: The run folder.
        split: Split of the run's data (``train``, ``val``, ``test``); ignored with ``data``.
        data: Another dataset (registered name or ``dataset.yaml``) with the run's modalities and tasks.
        root: Its folder (registered datasets); options: its adapter options.
        batch_size: Evaluation batch size (default: the run's ``data.eval_batch_size`` or ``data.batch_size``).

    Returns:
        The loader and a description of what it holds.

    Raises:
        ConfigError: an unknown split, or a dataset that does not match the run.
    """
    cfg = predictor.cfg
    if batch_size is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_batch_size": batch_size})})
    if data is None:
        dm = datamodule_for(cfg, Path(run_dir))
        dm.setup("test")
        if split not in dm.datasets:
            raise ConfigError(f"split {split!r} does not exist; splits: {list(dm.datasets)}")
        return dm.loader(split), f"{cfg.data.dataset} ({split} split of the run)"
    table = load_table(data, root, dict(options or {}))
    _check_compatible(predictor.spec, table.spec, f"dataset {data!r}")
    stats = json.loads((Path(run_dir) / "splits.json").read_text())["encoders"]
    dcfg = cfg.data.model_copy(update={"dataset": data, "root": root, "options": dict(options or {}),
                                       "modalities": list(predictor.spec.modalities)})
    dm = MultimodalDataModule(table, dcfg, seed=cfg.seed, split={"train": [], "test": list(range(len(table)))},
                              encoder_state=stats)
    dm.setup("test")
    return dm.loader("test"), f"{data} (all {len(dm.datasets['test'])} cases)"


def _markdown(result: dict[str, Any], spec: DatasetSpec, metrics: Sequence[str]) -> str:
    head = ["# Robustness to image corruptions", ""]
    head += [f"- {k}: {result[k]}" for k in ("run", "weights", "data", "corrupted_modalities", "seed")]
    head += ["", "Severity 0 is the clean data. Parameters per severity:", "",
             "| corruption | parameter | " + " | ".join(str(s) for s in range(1, SEVERITIES + 1)) + " |",
             "|---|---|" + "---|" * SEVERITIES]
    for name, c in result["corruptions"].items():
        head.append(f"| {name} | {c['parameter']} | " + " | ".join(f"{v:g}" for v in c["levels"]) + " |")
    for task in spec.tasks:
        for m in metrics:
            clean = result["clean"]["tasks"][task]
            head += ["", f"## {task}: {METRIC_TITLES.get(m, m)} (n = {clean['n']})", "",
                     "| corruption | " + " | ".join(str(s) for s in range(SEVERITIES + 1)) + " |",
                     "|---|" + "---|" * (SEVERITIES + 1)]
            for name, rows in result["results"].items():
                head.append(f"| {name} | " + " | ".join(fmt(r["tasks"][task][m]) for r in rows) + " |")
    return "\n".join(head) + "\n"


def _plot(result: dict[str, Any], spec: DatasetSpec, metric: str, path: Path) -> Any:
    """One panel per task: the metric against severity per corruption, the clean score's 95 % CI shaded, legend
    outside the axes; the title names the model, the evaluated data and n."""
    from matplotlib.figure import Figure

    from mmdiag.evaluation.plots import heading, save_figure

    tasks = list(spec.tasks)
    fig = Figure(figsize=(4.6 * len(tasks) + 1.9, 4.2), layout="constrained")
    clean = result["clean"]
    severities = range(SEVERITIES + 1)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        low, high = clean.get("ci95", {}).get(task, {}).get(metric, (math.nan, math.nan))
        if not math.isnan(low):
            ax.axhspan(low, high, color="grey", alpha=0.2, lw=0, label="clean 95 % CI")
        for name, rows in result["results"].items():
            ax.plot(severities, [r["tasks"][task][metric] for r in rows], marker="o", ms=3, label=name)
        ax.set(title=f"{task} (n = {clean['tasks'][task]['n']})", xlabel="severity (0 = clean)",
               ylabel=METRIC_TITLES.get(metric, metric), xticks=severities)
        ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), borderaxespad=0)
    fig.suptitle(heading(f"Robustness to image corruptions: {METRIC_TITLES.get(metric, metric)}",
                         ", ".join(str(result[k]) for k in ("model", "data") if result.get(k)), None, None))
    save_figure(fig, path, dpi=120)
    return fig


def write_robustness(result: dict[str, Any], spec: DatasetSpec, out_dir: str | Path,
                     metrics: Sequence[str] = PAPER_METRICS) -> list[Path]:
    """Write ``robustness.json``, ``robustness.md`` and ``robustness_<metric>.png`` (each atomically).

    Args:
        result: :func:`evaluate_robustness`'s output plus the descriptive keys ``run``, ``weights``, ``data``,
            ``corrupted_modalities``, ``seed`` and ``corruptions`` (as :func:`run_robustness` builds it).
        spec: The run's dataset spec.
        out_dir: Output folder.
        metrics: Metrics to tabulate and plot.

    Returns:
        The written paths.
    """
    out = Path(out_dir)
    paths = [out / "robustness.json", out / "robustness.md"]
    atomic_write_text(paths[0], json.dumps(result, indent=2, default=str))
    atomic_write_text(paths[1], _markdown(result, spec, metrics))
    for m in metrics:
        paths.append(out / f"robustness_{m}.png")
        _plot(result, spec, m, paths[-1])
    return paths


def run_robustness(run: str | Path, data: str | None = None, root: str | None = None,
                   options: Mapping[str, Any] | None = None, split: str = "test", output: str | Path | None = None,
                   corruptions: Sequence[str] | None = None, modalities: Sequence[str] | None = None,
                   seed: int = 0, batch_size: int | None = None, weights: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a finished run under every corruption and write the report (``mmdiag robustness``).

    The model is rebuilt from the run folder alone (:class:`~mmdiag.evaluation.infer.Predictor`) and read through
    the model contract only: ``model(inputs, present)`` gives logits per task.

    Args:
        run: The run folder.
        data: Evaluate on another dataset (registered name or ``dataset.yaml``) instead of the run's split.
        root: That dataset's folder; options: its adapter options.
        split: The run's split to evaluate (without ``data``).
        output: Output folder (default ``RUN/robustness``).
        corruptions: Subset of :data:`CORRUPTIONS` (default: all).
        modalities: Image modalities to corrupt (default: all of the run's).
        seed: Noise seed.
        batch_size: Evaluation batch size (default: the run's).
        weights: A weights file to evaluate instead of the run's ``model.safetensors`` (another checkpoint).

    Returns:
        The result written to ``robustness.json`` (plus ``"files"``: the written paths).

    Raises:
        ConfigError: not a run folder, a missing weights file, unknown split or incompatible dataset.
        UnknownNameError: an unknown corruption.
    """
    from mmdiag.evaluation.infer import Predictor
    from mmdiag.io.checkpoint import load_checkpoint

    run_dir, weights = resolve_run(run, weights)
    predictor = Predictor(run_dir)
    if weights is not None:
        load_checkpoint(predictor.model, weights)
    loader, described = load_run_data(predictor, run_dir, split, data, root, options, batch_size)
    names = list(corruptions or CORRUPTIONS)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    evaluated = evaluate_robustness(predictor.model, predictor.spec, loader, predictor.transform, names, modalities,
                                    device, seed)
    result = {"run": str(run_dir), "model": predictor.cfg.model.name, "weights": str(weights or run_dir / "model.safetensors"), "data": described,
              "corrupted_modalities": list(modalities or predictor.spec.of_kind("image")), "seed": seed,
              "metrics": list(PAPER_METRICS),
              "corruptions": {n: {"parameter": CORRUPTIONS[n].parameter, "levels": list(CORRUPTIONS[n].levels)}
                              for n in names},
              **evaluated}
    files = write_robustness(result, predictor.spec, Path(output) if output else run_dir / "robustness")
    _log.info("robustness report: %s", files[1])
    return {**result, "files": [str(f) for f in files]}
