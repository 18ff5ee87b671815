"""One trained run as a service object, free of HTTP: its model card, and prediction with explanations for one case.

The case goes through the same path as ``mmdiag predict`` (:class:`~mmdiag.evaluation.infer.Predictor`: the run's
readers, tabular encoders and normalisation; a batch of one; the run's ``eval.score``), so the probabilities equal
those of ``mmdiag predict --input ...`` for the same files. Explanations are computed after the prediction, for the
primary task's predicted class: Grad-CAM on the layer the model names for a modality (``explain_layers``), otherwise
Integrated Gradients (black baseline), e.g. for EI whose VFM sees the slices of a case as a batch.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import inspect
import io
import json
import math
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mmdiag.data.dataset import collate_cases
from mmdiag.data.schema import CategoricalField, NumericField, TabularModality, TaskSpec
from mmdiag.errors import MmdiagError, did_you_mean
from mmdiag.evaluation.infer import Predictor, case_frame
from mmdiag.evaluation.scores import probabilities
from mmdiag.serve.uploads import UploadError, UploadLimits, accepted_formats, check_upload

__all__ = ["INTENDED_USE", "CaseService", "ExplainMode"]

ExplainMode = Literal["auto", "gradcam", "ig", "none"]
INTENDED_USE = ("Research use: a model trained with mmdiag, for showing colleagues what it does on a case. It is not "
                "a medical device and must not be used for diagnosis or treatment decisions.")
_CARD_METRICS = ("acc", "balanced_acc", "auc", "f1", "map")


class CaseService:
    """A finished run loaded once, predicting one case at a time with no gradients (except for explanations).

    Args:
        run_dir: a finished run folder (``mmdiag train`` output).
        explain: ``auto`` (Grad-CAM where the model names a layer for the modality, else Integrated Gradients),
            ``gradcam``, ``ig`` or ``none``.
        ig_steps: Riemann steps of Integrated Gradients.
        limits: upload limits.
        device: ``cpu``/``cuda``; default: CUDA when available.

    Raises:
        ConfigError: not a finished run folder; ``explain="gradcam"`` for a model that names no Grad-CAM layer.
    """

    def __init__(self, run_dir: str | Path, explain: ExplainMode = "auto", ig_steps: int = 16,
                 limits: UploadLimits | None = None, device: str | None = None):
        from mmdiag.errors import ConfigError

        self.run_dir = Path(run_dir)
        self.predictor = Predictor(self.run_dir)
        self.spec, self.model = self.predictor.spec, self.predictor.model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.eval().to(self.device)
        self.predictor.transform.to(self.device)
        self.limits, self.ig_steps = limits or UploadLimits(), ig_steps
        # the model contract (MultimodalModel) says which inputs the model reads and where Grad-CAM looks
        self.modalities = [m for m in self.spec.modalities if m in self.model.modalities]
        layers = self.model.explain_layers
        self.methods: dict[str, str | None] = {}
        for m in self.modalities:
            if self.spec.modalities[m].kind == "tabular":
                continue
            if explain == "gradcam" and m not in layers:
                raise ConfigError(f"--explain gradcam: {self.predictor.cfg.model.name} names no Grad-CAM layer for "
                                  f"modality {m!r}; use --explain ig or auto")
            gradcam = explain == "gradcam" or (explain == "auto" and m in layers)
            self.methods[m] = None if explain == "none" else "gradcam" if gradcam else "integrated_gradients"
        self._cams: dict[str, Any] = {}
        self.card = self._model_card()

    # ------------------------------------------------------------------ model card
    def _model_card(self) -> dict[str, Any]:
        cfg, spec = self.predictor.cfg, self.spec
        from mmdiag.models._registry import paper_of
        from mmdiag.registry import MODELS

        doc = (inspect.getdoc(MODELS.get(cfg.model.name)) or "").splitlines()
        splits = json.loads((self.run_dir / "splits.json").read_text()).get("split", {})
        metrics_path = self.run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        n_train = len(splits.get("train", []))
        return {
            "api_version": "v1",
            "run": self.run_dir.resolve().name,
            "model": {"name": cfg.model.name, "description": doc[0] if doc else "", "paper": paper_of(cfg.model.name),
                      "parameters": sum(p.numel() for p in self.model.parameters())},
            "dataset": spec.name,
            "modalities": [self._modality_card(m) for m in self.modalities],
            "tasks": [{"name": t, "type": s.type, "classes": list(s.classes)} for t, s in spec.tasks.items()],
            "primary_task": spec.main_task,
            "score": cfg.eval.score,
            "training": {"cases": {k: len(v) for k, v in splits.items()}, "epochs": cfg.trainer.max_epochs},
            "metrics": _metrics_card(metrics),
            "missing_modalities": _ablation_card(self.run_dir / "eval" / "test" / "modality_ablation.csv"),
            "intended_use": INTENDED_USE,
            "limits": [
                (f"Trained on {n_train} cases of {spec.name!r}; how it performs on other populations, devices or "
                 "protocols is unknown."),
                "It only knows the classes listed; a case of another disease still gets probabilities over these.",
                "Test metrics come from the run's own test split"
                + (f" (n = {metrics['tasks'][spec.main_task]['n']})." if metrics else " (not evaluated)."),
                "Explanation maps show where the model's score is sensitive, not where the disease is.",
            ],
            "upload_limits": dataclasses.asdict(self.limits),
        }

    def _modality_card(self, name: str) -> dict[str, Any]:
        m = self.spec.modalities[name]
        if isinstance(m, TabularModality):
            fields = []
            for f_name, f in m.fields.items():
                entry: dict[str, Any] = {"name": f_name, "key": f"{name}.{f_name}", "type": f.type}
                if isinstance(f, CategoricalField):
                    entry["values"] = list(f.values)
                else:
                    entry |= {"unit": f.unit, "min": f.min, "max": f.max}
                fields.append(entry)
            return {"name": name, "kind": "tabular", "fields": fields}
        return {"name": name, "kind": m.kind, "channels": m.channels, "size": list(m.size),
                "formats": accepted_formats(m), "explanation": self.methods.get(name)}

    # ------------------------------------------------------------------ requests
    def parse_form(self, files: Mapping[str, bytes], fields: Mapping[str, str]) -> dict[str, str]:
        """The record values of a request as ``{"modality.field": value}``; file parts are checked elsewhere.

        A tabular modality's values come as form fields ``MODALITY.FIELD`` or as one field ``MODALITY`` holding a JSON
        object ``{FIELD: value}``. An empty value means "not provided".

        Raises:
            UploadError: 422 naming the field: unknown, a file where a value belongs (or the reverse), not JSON, a
                number that is not one or is out of range, a category outside the allowed values.
        """
        images = [m for m in self.modalities if self.spec.modalities[m].kind != "tabular"]
        tabular = {m: self.spec.modalities[m] for m in self.modalities if m not in images}
        keys = [f"{m}.{f}" for m, t in tabular.items() for f in t.fields]
        for name in files:
            if name not in images:
                raise UploadError(422, name, f"{name}: a file was uploaded, but the model takes files only for "
                                             f"{images}" + did_you_mean(name, images))
        values: dict[str, str] = {}
        for name, raw in fields.items():
            if name in tabular:
                for f_name, v in _json_record(name, raw).items():
                    values[f"{name}.{f_name}"] = "" if v is None else str(v)
            elif name in images:
                raise UploadError(422, name, f"{name}: modality {name!r} is an image; upload it as a file")
            else:
                values[name] = raw
        for key, raw in values.items():
            if key not in keys:
                raise UploadError(422, key, f"{key}: not a field of this model; fields: {keys}"
                                  + did_you_mean(key, keys))
            m, f_name = key.split(".", 1)
            _check_value(key, tabular[m].fields[f_name], raw)
        return {k: v.strip() for k, v in values.items() if v.strip()}

    def predict(self, files: Mapping[str, bytes], fields: Mapping[str, str], explain: bool = True) -> dict[str, Any]:
        """Probabilities (per task: every class, the predicted class) and explanation maps for one case.

        Args:
            files: ``{modality: bytes}`` of the uploaded images/volumes (any may be absent).
            fields: the other form fields (record values).
            explain: compute explanation maps.

        Raises:
            UploadError: a bad upload or value (4xx naming the field).
        """
        start = time.perf_counter()
        record = self.parse_form(files, fields)
        folder = Path(tempfile.mkdtemp(prefix="mmdiag-serve-"))  # mode 0700; removed below
        try:
            case: dict[str, Any] = dict(record)
            for name, data in files.items():
                case[name] = str(check_upload(name, data, self.spec.modalities[name], folder, self.limits))
            if not case:
                raise UploadError(422, None, f"no input: upload at least one of {self.modalities}")
            try:
                item = self.predictor.dataset(case_frame(self.spec, case, "upload"), folder, "upload")[0]
            except MmdiagError as e:  # a file that passed the header checks but does not decode
                field = Path(getattr(e, "path", None) or "").stem or None
                message = str(e).replace(f"{folder}/", "").replace("case 'case': ", "")
                raise UploadError(422, field, f"{field}: {message}" if field else message) from e
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        batch = collate_cases([item])
        raw = {k: v.to(self.device) for k, v in batch["inputs"].items()}
        present = {k: v.to(self.device) for k, v in batch["present"].items()}
        norm = self.predictor.transform({**batch, "inputs": raw, "present": present}, train=False)["inputs"]
        with torch.no_grad():
            probs = probabilities(self.spec, self.model(norm, present), self.predictor.cfg.eval.score)
        tasks = {t: _task_result(self.spec.tasks[t], probs[t][0]) for t in self.spec.tasks}
        provided = [m for m in self.modalities if bool(present[m][0])]
        out: dict[str, Any] = {"tasks": tasks, "provided": provided,
                               "missing": [m for m in self.modalities if m not in provided], "explanations": {}}
        if explain:
            task = self.spec.main_task
            target = int(probs[task][0].argmax())
            for m, method in self.methods.items():
                if method is not None and m in provided:
                    out["explanations"][m] = self._explain(m, method, raw, norm, present, task, target)
        out["seconds"] = round(time.perf_counter() - start, 3)
        return out

    def _explain(self, modality: str, method: str, raw: dict[str, torch.Tensor], norm: dict[str, torch.Tensor],
                 present: dict[str, torch.Tensor], task: str, target: int) -> dict[str, Any]:
        if method == "gradcam":
            from mmdiag.explain.gradcam import GradCAM

            cam = self._cams.setdefault(modality, GradCAM(self.model, modality=modality))  # resolves its layer once
            heat = cam(norm, present, target=target, task=task).maps[0].detach().cpu().numpy()
            detail = {"layer": cam.layer_name}
        else:
            from mmdiag.explain.integrated_gradients import attribution_map, integrated_gradients

            res = integrated_gradients(self.model, raw, present, modality, task, target=target, steps=self.ig_steps,
                                       normalize=self.predictor.transform.normalize)
            heat = attribution_map(res.attributions[0])
            detail = {"baseline": "black", "steps": self.ig_steps}
        image = raw[modality][0].detach().cpu().numpy()
        entry: dict[str, Any] = {"method": method, "task": task, "class": self.spec.tasks[task].classes[target],
                                 **detail}
        if heat.ndim == 3:  # a volume: the slice where the map is strongest
            k = int(heat.reshape(heat.shape[0], -1).sum(1).argmax())
            entry |= {"slice": k, "slices": int(heat.shape[0])}
            image, heat = image[:, k], heat[k]
        entry["image_png"] = _png_data_url(_rgb_uint8(image))
        entry["map_png"] = _png_data_url(_jet_uint8(heat))
        return entry


def _json_record(name: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UploadError(422, name, f"{name}: not a JSON object ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise UploadError(422, name, f"{name}: expected a JSON object {{field: value}}, got {type(value).__name__}")
    return value


def _check_value(key: str, field: NumericField | CategoricalField, raw: str) -> None:
    """Raise a 422 naming ``key`` when ``raw`` is not a valid value of ``field`` (empty = not provided)."""
    text = raw.strip()
    if not text:
        return
    if isinstance(field, CategoricalField):
        if text not in field.values:
            raise UploadError(422, key, f"{key}: {text!r} is not one of {list(field.values)}"
                                        + did_you_mean(text, field.values))
        return
    try:
        x = float(text)
    except ValueError:
        raise UploadError(422, key, f"{key}: {text!r} is not a number") from None
    lo = -math.inf if field.min is None else field.min
    hi = math.inf if field.max is None else field.max
    if not (math.isfinite(x) and lo <= x <= hi):
        unit = f" {field.unit}" if field.unit else ""
        raise UploadError(422, key, f"{key}: {text}{unit} is outside the valid range [{lo}, {hi}]{unit}")


def _task_result(task: TaskSpec, p: torch.Tensor) -> dict[str, Any]:
    values = [round(float(v), 6) for v in p]
    probs = dict(zip(task.classes, values))
    if task.type == "multilabel":
        return {"probabilities": probs, "predicted": [c for c, v in probs.items() if v >= 0.5], "multilabel": True}
    return {"probabilities": probs, "predicted": task.classes[int(np.argmax(values))], "multilabel": False}


def _metrics_card(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    tasks = {}
    for t, m in metrics["tasks"].items():
        ci = m.get("ci95", {})
        tasks[t] = {"n": m.get("n"), **{k: {"value": m[k], "ci95": ci.get(k)} for k in _CARD_METRICS if k in m}}
    return {"split": metrics.get("split", "test"), "tasks": tasks}


def _ablation_card(path: Path) -> list[dict[str, Any]] | None:
    """Rows of ``mmdiag eval --without all``'s table, numbers as numbers (NaN as null)."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return [{k: _number_or_text(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number_or_text(text: str) -> float | int | str | None:
    try:
        x = float(text)
    except ValueError:
        return text
    return None if math.isnan(x) else int(x) if x.is_integer() and "." not in text else x


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    from mmdiag.explain.gradcam import as_rgb

    return np.round(255 * as_rgb(image)).astype(np.uint8)


def _jet_uint8(heat: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return np.round(255 * colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]).astype(np.uint8)


def _png_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
