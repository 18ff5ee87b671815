"""Model weights: safetensors or ``torch.load(weights_only=True)`` in, safetensors out; strict loading."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from mmdiag.errors import CheckpointError
from mmdiag.io.atomic import atomic_write_bytes

__all__ = ["load_state_dict_file", "load_checkpoint", "save_weights", "is_safetensors"]

_log = logging.getLogger(__name__)
_WRAPPER_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
_RUN_STATE_KEY = "mmdiag_state"  # safetensors metadata of mmdiag's training checkpoints (training/checkpoint_io.py)
_SYSTEM_MODEL_PREFIX = "model."  # the network's attribute in the training system


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds safetensors by content: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return False
        n = int.from_bytes(head[:8], "little")
        return 8 + n <= os.fstat(f.fileno()).st_size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; of an mmdiag training checkpoint (``best.ckpt`` / ``last.ckpt``), the
    network's weights alone."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if _RUN_STATE_KEY not in meta:
            return {k: f.get_tensor(k) for k in f.keys()}
        refs = json.loads(meta[_RUN_STATE_KEY]).get("state_dict", {})
        weights = {k[len(_SYSTEM_MODEL_PREFIX):]: f.get_tensor(v["__tensor__"]) for k, v in refs.items()
                   if k.startswith(_SYSTEM_MODEL_PREFIX) and isinstance(v, dict) and "__tensor__" in v}
    if not weights:
        raise CheckpointError(f"{str(path)!r} is an mmdiag training checkpoint with no model weights")
    return weights


def _pickle_refusal(path: Path, e: Exception) -> CheckpointError:
    """mmdiag's message for a PyTorch file that holds Python objects besides tensors (torch's advice dropped)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"GLOBAL\s+([\w.]+)", text)
    what = f" (the Python global {found.group(1)!r})" if found else ""
    return CheckpointError(
        f"checkpoint {str(path)!r} holds pickled Python objects besides tensors{what}; mmdiag reads only tensors and "
        "never runs pickled code. If you trust the file, save its state dict of tensors once (e.g. with "
        "safetensors.torch.save_file) and give mmdiag that file")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a PyTorch file, never unpickling arbitrary objects.

    Safetensors is recognised by content, whatever the file is called; mmdiag's own ``checkpoints/best.ckpt`` and
    ``last.ckpt`` give the model's weights. Common wrappers (``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if _is_torchscript(path):
        raise CheckpointError(
            f"{str(path)!r} is a TorchScript archive (like OpenAI's original ViT-B-16.pt), which mmdiag does not "
            "execute. Convert it once, in an environment you trust: torch.jit.load(path).state_dict(), saved with "
            "safetensors.torch.save_file or torch.save")
    try:
        if is_safetensors(path):
            obj = _read_safetensors(path)
        elif path.suffix == ".safetensors":
            raise CheckpointError(f"{str(path)!r} is named .safetensors but its content is not safetensors")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise _pickle_refusal(path, e) from None
    except Exception as e:  # noqa: BLE001 - report any reader failure with the file name
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from e
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled ``code/`` next to the pickled constants."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, prefix: str = "") -> torch.nn.Module:
    """Load weights into ``model`` strictly, converting a foreign layout first.

    With ``prefix`` (e.g. ``"image."``), only the file's keys under it are read, with the prefix removed: a part of a
    larger model's weights (a previous training stage) loads into the matching sub-module.

    A model may define ``checkpoint_filter_fn(state_dict, model) -> state_dict`` (recognising official layouts by a
    sentinel key) and ``classifier_name`` (the head's prefix): head tensors whose shape differs from the model's are
    dropped with a log line (the head stays freshly initialised); every other mismatch is an error.

    Raises:
        CheckpointError: listing missing, unexpected and wrong-shape keys, and the file.
    """
    state = load_state_dict_file(path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    head = getattr(model, "classifier_name", None)
    if head:
        dropped = [k for k in state if k.startswith(head + ".") and k in own and state[k].shape != own[k].shape]
        if dropped:
            _log.info("checkpoint %s: classifier %r has another number of classes; re-initialised", path, head)
            state.update({k: own[k] for k in dropped})
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"checkpoint {str(path)!r} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if wrong:
            parts.append("wrong shapes: " + _short([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                     for k in wrong]))
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def save_weights(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write weights as safetensors, atomically. Shared tensors are cloned so safetensors accepts them."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    seen: set[int] = set()
    clean = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        clean[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
        seen.add(ptr)
    atomic_write_bytes(path, save(clean, metadata=dict(metadata or {})))


def _short(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
