"""Lightning checkpoints as one safetensors file: every tensor in the safetensors body, the rest as JSON.

A Lightning checkpoint is a nested dict (weights, optimizer and scheduler states, loop progress, callback states).
:class:`SafetensorsCheckpointIO` stores each tensor under its dotted path and the remaining structure as a JSON string
in the safetensors header (metadata key ``mmdiag_state``). Loading never unpickles anything, and every write goes to a
temporary file renamed into place, so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import safe_open
from safetensors.torch import save

from mmdiag.errors import CheckpointError
from mmdiag.io.atomic import atomic_write_bytes

__all__ = ["SafetensorsCheckpointIO", "encode_state", "decode_state", "read_checkpoint"]

_META_KEY = "mmdiag_state"


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """JSON-able form of ``obj``; tensors move into ``tensors`` under their dotted ``path``.

    Raises:
        CheckpointError: a value of a type that cannot be stored without pickling (naming its path).
    """
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone() if obj.numel() else obj.detach().cpu().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return encode_state(torch.from_numpy(obj), tensors, path)
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (tuple, torch.Size)):
        return {"__tuple__": [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj and "__tuple__" not in obj:
            return {k: encode_state(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        return {"__items__": [[encode_state(k, tensors, f"{path}.key{i}"),
                               encode_state(v, tensors, f"{path}.{k}")] for i, (k, v) in enumerate(obj.items())]}
    raise CheckpointError(f"cannot store {type(obj).__name__} at {path!r} in a checkpoint without pickling")


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in obj["__items__"]}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    return obj


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :class:`SafetensorsCheckpointIO`.

    Raises:
        CheckpointError: the file is missing or not an mmdiag checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if _META_KEY not in meta:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not an mmdiag training checkpoint")
    return decode_state(json.loads(meta[_META_KEY]), tensors)


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` plugin writing :func:`encode_state` checkpoints atomically."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        tensors: dict[str, torch.Tensor] = {}
        state = encode_state(checkpoint, tensors)
        atomic_write_bytes(path, save(tensors, metadata={_META_KEY: json.dumps(state)}))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return read_checkpoint(path)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        Path(path).unlink(missing_ok=True)
