"""Building augmentation pipelines from config entries ``{name: ClassName, **kwargs}``.

* kind ``image``: classes of ``kornia.augmentation`` (and ``kornia.augmentation.auto``, e.g. ``AutoAugment``),
  applied to whole batches on the training device by :class:`BatchTransform`.
* kind ``volume``: classes of ``monai.transforms`` (``RandFlip``, ``RandRotate90``, ``RandAffine``,
  ``RandGaussianNoise``...), applied per case in the data loader with a per-case seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmdiag.data.schema import DatasetSpec, ImageModality
from mmdiag.errors import ConfigError, UnknownNameError

__all__ = ["build_image_augment", "build_volume_transform", "BatchTransform"]


def _lookup(modules: Sequence[Any], name: str, kind: str) -> type:
    for mod in modules:
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            return cls
    options = sorted({n for mod in modules for n in dir(mod) if n[:1].isupper()})
    raise UnknownNameError(f"{kind} augmentation", name, options)


def _instantiate(cls: type, entry: Mapping[str, Any], where: str):
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {cls.__name__}({kwargs}) is invalid: {e}") from e


def build_image_augment(entries: Sequence[Mapping[str, Any]]) -> nn.Module | None:
    """A kornia ``AugmentationSequential`` from config entries (None when empty).

    Raises:
        UnknownNameError: a name that kornia does not have (close matches offered).
        ConfigError: bad keyword arguments (naming the class).
    """
    if not entries:
        return None
    import kornia.augmentation as K
    import kornia.augmentation.auto as KA

    ops = []
    for i, entry in enumerate(entries):
        if "name" not in entry:
            raise ConfigError(f"data.augment.image[{i}] has no 'name' (e.g. {{name: RandomHorizontalFlip, p: 0.5}})")
        ops.append(_instantiate(_lookup([K, KA], entry["name"], "image"), entry, f"data.augment.image[{i}]"))
    return K.AugmentationSequential(*ops)


def build_volume_transform(entries: Sequence[Mapping[str, Any]]) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """A per-case function ``(volume (C, D, H, W), seed) -> volume`` from MONAI transform entries (None when empty)."""
    if not entries:
        return None
    import monai.transforms as MT

    ops = []
    for i, entry in enumerate(entries):
        if "name" not in entry:
            raise ConfigError(f"data.augment.volume[{i}] has no 'name' (e.g. {{name: RandFlip, prob: 0.5}})")
        ops.append(_instantiate(_lookup([MT], entry["name"], "volume"), entry, f"data.augment.volume[{i}]"))
    compose = MT.Compose(ops)

    def apply(x: torch.Tensor, seed: int) -> torch.Tensor:
        compose.set_random_state(seed=seed)
        return torch.as_tensor(compose(x)).float().contiguous()

    return apply


class BatchTransform(nn.Module):
    """Per-batch preprocessing on the model's device: 2D augmentation (training only), then normalisation.

    Missing modalities (``present`` False) are left as zeros. With ``paired`` every image modality of a case gets
    the same random augmentation (the parameters drawn for the first image are replayed on the others).
    """

    def __init__(self, spec: DatasetSpec, image_augment: nn.Module | None = None, paired: bool = False):
        super().__init__()
        self.augment = image_augment
        self.paired = paired
        self.norm: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, m in spec.modalities.items():
            if isinstance(m, ImageModality) and m.mean is not None:
                std = m.std or (1.0,) * len(m.mean)
                self.norm[name] = (torch.tensor(m.mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1))
        self.images = [n for n, m in spec.modalities.items() if isinstance(m, ImageModality)]

    def normalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Modality ``name``'s images ``(B, C, H, W)`` in [0, 1] as the model sees them (its declared mean/std; other
        modalities unchanged)."""
        if name not in self.norm:
            return x
        mean, std = self.norm[name]
        return (x - mean.to(x)) / std.to(x)

    def forward(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        inputs = dict(batch["inputs"])
        params = None
        for name in self.images:
            if name not in inputs:
                continue
            x = inputs[name]
            if train and self.augment is not None:
                size = tuple(x.shape[2:])
                x = self.augment(x, params=params) if params is not None else self.augment(x)
                x = x.clamp(0.0, 1.0)  # colour ops may overshoot [0, 1] by rounding
                if self.paired and params is None:
                    params = self.augment._params
                if tuple(x.shape[2:]) != size:
                    raise ConfigError(f"data.augment.image changes modality {name!r} from {size} to "
                                      f"{tuple(x.shape[2:])}; give size-setting augmentations (e.g. "
                                      f"RandomResizedCrop size) the modality's size")
            x = self.normalize(name, x)
            keep = batch["present"][name].to(x.device).view(-1, *([1] * (x.dim() - 1)))
            inputs[name] = torch.where(keep, x, torch.zeros_like(x))
        return {**batch, "inputs": inputs}
