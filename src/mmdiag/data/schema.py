"""What a dataset is: its modalities (2D images, 3D volumes, tabular records) and its tasks.

A *case* is one dict::

    {"case_id": str, "patient_id": str,
     "inputs":  {modality: Tensor},   # image (C, H, W) float; volume (C, D, H, W) float; tabular (F,) float
     "present": {modality: bool},     # False: the modality is missing for this case (its input is zeros)
     "labels":  {task: Tensor}}       # () long, -1 = unknown; multi-label (K,) float, NaN = unknown

and a *batch* stacks cases: tensors gain a leading batch axis, ``present`` becomes a bool tensor ``(B,)``.
Models never see a missing modality as a silent zero image: ``present`` travels with every batch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "NumericField",
    "CategoricalField",
    "ImageModality",
    "VolumeModality",
    "TabularModality",
    "Modality",
    "TaskSpec",
    "DatasetSpec",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericField(_Frozen):
    """A numeric tabular field. Encoded as a standardised value plus a missing-indicator."""

    type: Literal["numeric"] = "numeric"
    column: str | None = Field(None, description="manifest column; default: the field name")
    unit: str | None = Field(None, description="unit shown beside the value (e.g. 'years'); informative only")
    min: float | None = Field(None, description="smallest valid value; a case below it is a data error")
    max: float | None = Field(None, description="largest valid value; a case above it is a data error")

    @model_validator(mode="after")
    def _range(self) -> NumericField:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class CategoricalField(_Frozen):
    """A categorical tabular field with a closed vocabulary. Encoded one-hot; missing → all zeros."""

    type: Literal["categorical"] = "categorical"
    values: tuple[str, ...] = Field(..., min_length=1)
    column: str | None = None


TabularField = Annotated[NumericField | CategoricalField, Field(discriminator="type")]


class ImageModality(_Frozen):
    """A 2D image, resized to ``size`` (H, W) with ``channels`` channels, values in [0, 1] before normalisation."""

    kind: Literal["image"] = "image"
    channels: int = Field(3, ge=1)
    size: tuple[int, int] = (224, 224)
    column: str | None = Field(None, description="manifest column holding the file path; default: the name")
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)


class VolumeModality(_Frozen):
    """A 3D volume resampled to ``size`` (D, H, W) with ``channels`` channels."""

    kind: Literal["volume"] = "volume"
    channels: int = Field(1, ge=1)
    size: tuple[int, int, int] = (32, 64, 64)
    column: str | None = None
    intensity_range: tuple[float, float] | None = Field(
        None, description="clip to this range and scale to [0, 1] (e.g. CT window); default: min-max per volume")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)


class TabularModality(_Frozen):
    """A tabular record: typed fields, encoded into one float vector of :attr:`width`."""

    kind: Literal["tabular"] = "tabular"
    fields: dict[str, TabularField] = Field(..., min_length=1)

    @property
    def width(self) -> int:
        return sum(2 if f.type == "numeric" else len(f.values) for f in self.fields.values())

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.width,)


Modality = Annotated[ImageModality | VolumeModality | TabularModality, Field(discriminator="kind")]


class TaskSpec(_Frozen):
    """A prediction task. Binary tasks have two classes (negative first); multi-label tasks one per label."""

    type: Literal["binary", "multiclass", "multilabel", "ordinal"]
    classes: tuple[str, ...] = Field(..., min_length=1)
    column: str | None = Field(None, description="manifest column; default: the task name")

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.type == "binary" and len(self.classes) != 2:
            raise ValueError(f"a binary task has exactly 2 classes (negative, positive); got {list(self.classes)}")
        if self.type in ("multiclass", "ordinal") and len(self.classes) < 2:
            raise ValueError(f"a {self.type} task needs at least 2 classes; got {list(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names repeat: {list(self.classes)}")
        return self

    @property
    def num_outputs(self) -> int:
        """Logits the model emits for this task (one per class; multi-label: one per label)."""
        return len(self.classes)


class DatasetSpec(_Frozen):
    """Modalities and tasks of a dataset: everything a model needs to know to be built for it."""

    name: str
    modalities: dict[str, Modality] = Field(..., min_length=1)
    tasks: dict[str, TaskSpec] = Field(..., min_length=1)
    primary_task: str | None = Field(None, description="task whose metrics rank runs; default: the first")

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.primary_task is not None and self.primary_task not in self.tasks:
            raise ValueError(f"primary_task {self.primary_task!r} is not a task; tasks: {list(self.tasks)}")
        return self

    @property
    def main_task(self) -> str:
        return self.primary_task or next(iter(self.tasks))

    def of_kind(self, kind: str) -> list[str]:
        """Names of the modalities of one kind (``image``, ``volume``, ``tabular``), in declaration order."""
        return [n for n, m in self.modalities.items() if m.kind == kind]

    def restrict(self, modalities: list[str]) -> DatasetSpec:
        """The same dataset seen through a subset of its modalities (for unimodal baselines)."""
        return self.model_copy(update={"modalities": {m: self.modalities[m] for m in modalities}})
