"""Encoding tabular records: numeric fields standardised or min-max scaled (+ a missing flag), categorical fields
one-hot."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from mmdiag.data.schema import CategoricalField, NumericField, TabularModality
from mmdiag.errors import DataError

__all__ = ["TabularEncoder"]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _number(v: Any, field: str, case_id: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise DataError(f"case {case_id!r}: numeric field {field!r} has value {v!r}, which is not a number "
                        "(leave the cell empty for a missing value)", case_id) from None


def _in_range(x: float, f: NumericField, field: str, case_id: str) -> float:
    """``x`` if it is finite and within the field's declared ``min``/``max``.

    Raises:
        DataError: naming the case, the field, the value and the valid range.
    """
    lo = -math.inf if f.min is None else f.min
    hi = math.inf if f.max is None else f.max
    if not math.isfinite(x) or not lo <= x <= hi:
        unit = f" {f.unit}" if f.unit else ""
        raise DataError(f"case {case_id!r}: numeric field {field!r} has value {x!r}{unit}, outside its valid range "
                        f"[{lo}, {hi}]{unit}", case_id)
    return x


class TabularEncoder:
    """Turns raw field values into the float vector a model sees (width = ``spec.width``).

    Numeric statistics are fitted on the training cases only and saved with the run, so evaluation and prediction
    encode exactly as training did. Each numeric field is stored as ``(offset, scale)`` and encoded ``(x - offset) /
    scale``: ``scaling="standard"`` fits (mean, std); ``"minmax"`` fits (centre, half-range) so that the training
    cases span [-1, 1] (the grid of a KAN layer, MMCAF-Net).
    """

    def __init__(self, spec: TabularModality, stats: Mapping[str, tuple[float, float]] | None = None,
                 scaling: Literal["standard", "minmax"] = "standard"):
        self.spec = spec
        self.stats = dict(stats or {})
        self.scaling = scaling

    def fit(self, rows: Iterable[Mapping[str, Any]], case_ids: Sequence[str] | None = None) -> TabularEncoder:
        """Fit each numeric field's (offset, scale) on ``rows`` (raw values; missing ones ignored).

        Raises:
            DataError: a non-numeric value in a numeric field (naming the case from ``case_ids``, the field and the
                value).
        """
        rows = list(rows)
        ids = list(case_ids) if case_ids is not None else [f"#{i}" for i in range(len(rows))]
        for name, f in self.spec.fields.items():
            if f.type != "numeric":
                continue
            vals = [_number(r.get(name), name, cid) for r, cid in zip(rows, ids)
                    if r is not None and not _missing(r.get(name))]
            if self.scaling == "minmax":
                lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
                self.stats[name] = ((lo + hi) / 2, (hi - lo) / 2 if hi > lo else 1.0)
                continue
            mean = sum(vals) / len(vals) if vals else 0.0
            var = sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1)
            self.stats[name] = (mean, math.sqrt(var) if var > 0 else 1.0)
        return self

    def encode(self, row: Mapping[str, Any] | None, *, case_id: str = "?") -> torch.Tensor:
        """Encode one record. ``None`` (modality missing) gives zeros.

        Raises:
            DataError: a categorical value outside its vocabulary, or a non-numeric numeric value (naming the case,
                the field, the value and the allowed values).
        """
        out = torch.zeros(self.spec.width)
        if row is None:
            return out
        i = 0
        for name, f in self.spec.fields.items():
            v = row.get(name)
            if isinstance(f, CategoricalField):
                if not _missing(v):
                    key = str(v).strip()
                    if key not in f.values:
                        raise DataError(f"case {case_id!r}: field {name!r} has value {key!r}; allowed: "
                                        f"{list(f.values)}", case_id)
                    out[i + f.values.index(key)] = 1.0
                i += len(f.values)
            else:
                if _missing(v):
                    out[i + 1] = 1.0
                else:
                    x = _in_range(_number(v, name, case_id), f, name, case_id)
                    mean, std = self.stats.get(name, (0.0, 1.0))
                    out[i] = (x - mean) / std
                i += 2
        return out

    def state(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.stats.items()}
