"""The built-in synthetic multimodal dataset: the default of ``make demo`` and of the tests.

Construction (deterministic by ``seed``). Each case draws three independent fair bits ``u, v, w`` and its label is
``y = 4u + 2v + w`` (8 classes, uniform). Each modality shows exactly one bit, buried in nuisance variation:

* ``clinical`` (2D RGB): a bright lesion, a filled disk (u = 0) or a ring (u = 1), at a random position and radius,
  on a random tinted, noisy background. (Shape rather than position: pooled CNN features are position-blind.)
* ``dermoscopy`` (2D RGB): a sinusoidal stripe texture, vertical (v = 0) or horizontal (v = 1), random frequency,
  phase, ±15° tilt, tint and noise.
* ``record`` (tabular): ``marker`` ~ N(2w − 1, 0.35) carries w; ``age`` (years, N(55, 15) clipped to 18–95),
  ``sex`` and ``site`` (categorical) are pure noise.
* ``ct`` (3D, only with ``with_volume=True``): a blob in the upper (w = 0) or lower (w = 1) half of the depth axis —
  the same bit as ``record``, so the volume can stand in for the record.

Accuracy ceilings (Bayes-optimal, from the construction): one modality knows one bit of three, so it cannot exceed
**25 %**; any two modalities cannot exceed **50 %**; all three allow **≈ 99.8 %** (the only irreducible error is
the ``marker`` overlap, P(|N(0, 0.35)| > 1 on the wrong side) = Φ(−1/0.35) ≈ 0.2 %). The bits combine additively
in log-probability, so late fusion of per-modality logits can reach the ceiling as well as feature fusion can.

Patients have one or two cases; the official split (60 / 20 / 20 % of patients) keeps a patient's cases together.
"""

from __future__ import annotations

import numpy as np

from mmdiag.data.schema import (
    CategoricalField,
    DatasetSpec,
    ImageModality,
    NumericField,
    TabularModality,
    TaskSpec,
    VolumeModality,
)
from mmdiag.data.table import CaseRecord, CaseTable
from mmdiag.errors import DataError
from mmdiag.registry import DATASETS

__all__ = ["CEILINGS", "synthetic"]

CEILINGS = {"one modality": 0.25, "two modalities": 0.50, "all three": 0.998}
CLASSES = tuple(f"u{u}v{v}w{w}" for u in (0, 1) for v in (0, 1) for w in (0, 1))
MODALITIES = ("clinical", "dermoscopy", "record", "ct")


def _lesion_images(rng: np.random.Generator, u: np.ndarray, s: int) -> np.ndarray:
    n = len(u)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    cx, cy = (rng.uniform(0.3, 0.7, n)[:, None, None] for _ in range(2))
    r = rng.uniform(0.14, 0.24, n)[:, None, None]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    hole = np.where(u == 1, 0.55, 0.0)[:, None, None] * r
    lesion = ((d2 < r**2) & (d2 >= hole**2)).astype(np.float32)[:, None]
    bg = rng.uniform(0.2, 0.5, (n, 3, 1, 1))
    fg = rng.uniform(0.7, 1.0, (n, 3, 1, 1))
    img = bg * (1 - lesion) + fg * lesion + rng.normal(0, 0.08, (n, 3, s, s))
    return np.clip(img, 0, 1).astype(np.float32)


def _stripe_images(rng: np.random.Generator, v: np.ndarray, s: int) -> np.ndarray:
    n = len(v)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    theta = (v * np.pi / 2 + rng.uniform(-np.pi / 12, np.pi / 12, n))[:, None, None]
    freq = rng.uniform(3, 6, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)[:, None]
    tint = rng.uniform(0.6, 1.0, (n, 3, 1, 1))
    img = 0.5 + 0.25 * wave * tint + rng.normal(0, 0.08, (n, 3, s, s))
    return np.clip(img, 0, 1).astype(np.float32)


def _blob_volumes(rng: np.random.Generator, w: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    n = len(w)
    d, h, wd = size
    zz, yy, xx = np.mgrid[0:d, 0:h, 0:wd].astype(np.float32)
    zz, yy, xx = zz / d, yy / h, xx / wd
    cz = np.where(w == 1, rng.uniform(0.6, 0.85, n), rng.uniform(0.15, 0.4, n))[:, None, None, None]
    cy, cx = (rng.uniform(0.3, 0.7, n)[:, None, None, None] for _ in range(2))
    blob = np.exp(-(((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / 0.01))
    vol = 0.2 + 0.7 * blob + rng.normal(0, 0.05, (n, d, h, wd))
    return np.clip(vol, 0, 1).astype(np.float32)[:, None]


@DATASETS.register
def synthetic(n_cases: int = 800, image_size: int = 32, seed: int = 0, with_volume: bool = False,
              volume_size: tuple[int, int, int] = (16, 32, 32), multitask: bool = False,
              missing: dict[str, float] | None = None) -> CaseTable:
    """Build the synthetic multimodal dataset (see the module docstring for the construction and its ceilings).

    Args:
        n_cases: number of cases.
        image_size: side of the square 2D images.
        seed: generator seed; the same seed gives the same data.
        with_volume: add the 3D ``ct`` modality.
        multitask: add a multi-label task ``findings`` (the three bits as labels).
        missing: per modality, the share of cases where it is missing (for missing-modality experiments).
    """
    if n_cases < 20:
        raise DataError(f"synthetic: n_cases={n_cases} is too small; use at least 20")
    for m in missing or {}:
        if m not in MODALITIES or (m == "ct" and not with_volume):
            raise DataError(f"synthetic: options.missing names modality {m!r}; modalities: "
                            f"{[x for x in MODALITIES if x != 'ct' or with_volume]}")
    rng = np.random.default_rng(seed)
    u, v, w = (rng.integers(0, 2, n_cases) for _ in range(3))
    y = 4 * u + 2 * v + w
    images = {"clinical": _lesion_images(rng, u, image_size), "dermoscopy": _stripe_images(rng, v, image_size)}
    marker = rng.normal(2 * w - 1, 0.35)
    age = rng.normal(55, 15, n_cases).round(0).clip(18, 95)  # within the declared range [0, 120]
    sex = rng.choice(["female", "male"], n_cases)
    site = rng.choice(["head", "trunk", "limb"], n_cases)
    volumes = _blob_volumes(rng, w, volume_size) if with_volume else None
    patient = np.cumsum(rng.random(n_cases) < 0.7) - 1  # consecutive cases share a patient 30 % of the time
    n_patients = int(patient[-1]) + 1
    order = rng.permutation(n_patients)
    split_of = np.empty(n_patients, dtype=object)
    split_of[order[: int(0.6 * n_patients)]] = "train"
    split_of[order[int(0.6 * n_patients): int(0.8 * n_patients)]] = "val"
    split_of[order[int(0.8 * n_patients):]] = "test"
    drop = {m: rng.random(n_cases) < p for m, p in (missing or {}).items()}

    modalities = {
        "clinical": ImageModality(channels=3, size=(image_size, image_size)),
        "dermoscopy": ImageModality(channels=3, size=(image_size, image_size)),
        "record": TabularModality(fields={
            "age": NumericField(unit="years", min=0, max=120), "sex": CategoricalField(values=("female", "male")),
            "site": CategoricalField(values=("head", "trunk", "limb")), "marker": NumericField()}),
    }
    if with_volume:
        modalities["ct"] = VolumeModality(channels=1, size=volume_size)
    tasks = {"diagnosis": TaskSpec(type="multiclass", classes=CLASSES)}
    if multitask:
        tasks["findings"] = TaskSpec(type="multilabel", classes=("ring_lesion", "stripes_horizontal", "marker_high"))
    spec = DatasetSpec(name="synthetic", modalities=modalities, tasks=tasks, primary_task="diagnosis")

    cases = []
    for i in range(n_cases):
        inputs = {"clinical": images["clinical"][i], "dermoscopy": images["dermoscopy"][i],
                  "record": {"age": float(age[i]), "sex": str(sex[i]), "site": str(site[i]),
                             "marker": float(marker[i])}}
        if with_volume:
            inputs["ct"] = volumes[i]
        for m, mask in drop.items():
            if mask[i]:
                inputs[m] = None
        labels = {"diagnosis": int(y[i])}
        if multitask:
            labels["findings"] = np.array([u[i], v[i], w[i]], dtype=np.float32)
        cases.append(CaseRecord(f"syn{i:05d}", f"p{patient[i]:05d}", inputs, labels, str(split_of[patient[i]])))
    return CaseTable(spec, cases, official_split=True)
