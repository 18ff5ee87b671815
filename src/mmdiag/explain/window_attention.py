"""Region-encoder window attention of the RemixFormer++ dermoscopy branch (paper 001 §III-C) as PNG panels.

The map of a case is the attention of the image [CLS] to each window token in the last region-encoder block
(softmax(q_cls·kᵀ/√d_h) over ``[CLS; windows]``, averaged over heads, the [CLS]→[CLS] weight left out), drawn as
one colour block per 256² window over the dermoscopy image with the window grid. Choice: last block, head mean (the paper
shows no such figure; the issue asks for the region encoder's window attention).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmdiag.errors import ConfigError
from mmdiag.explain.int_maps import _display, _png
from mmdiag.io.atomic import atomic_write_bytes
from mmdiag.models.backbones.remixformer_dermoscopy import DermoscopyBranch

__all__ = ["region_attention", "render_window_attention", "window_attention_for_run"]


@torch.no_grad()
def region_attention(branch: DermoscopyBranch, x: torch.Tensor) -> torch.Tensor:
    """Attention of the image [CLS] to every window, ``(B, gh, gw)`` (rows sum with the [CLS] weight to 1)."""
    emb, grid = branch.hrwe(x)
    tokens = branch.region_tokens(emb, grid)
    for blk in branch.blocks[:-1]:
        tokens = blk(tokens)
    attn = branch.blocks[-1].attn
    h = branch.blocks[-1].norm1(tokens)
    b, n, c = h.shape
    q, k, _ = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    w = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) * attn.head_dim ** -0.5, dim=-1)
    return w[:, :, 0, 1:].mean(1).reshape(b, *grid)


def render_window_attention(image: np.ndarray, attn: torch.Tensor, window: int, alpha: float = 0.5,
                            cmap: str = "jet") -> np.ndarray:
    """``[image | attention overlay with window grid]`` as ``(H, 2W, 3)`` uint8.

    Args:
        image: ``(C, H, W)`` (any range; min-max scaled for display).
        attn: ``(gh, gw)`` window attention of the case.
        window: window side in pixels.
    """
    from matplotlib import colormaps

    base = _display(image)
    h, w = base.shape[:2]
    a = attn.float().cpu().numpy()
    lo, hi = float(a.min()), float(a.max())
    blocks = np.kron((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a), np.ones((window, window)))[:h, :w]
    over = (1 - alpha) * base + alpha * colormaps[cmap](blocks)[..., :3]
    over[::window, :] = 1.0
    over[:, ::window] = 1.0
    return (np.clip(np.concatenate([base, over], axis=1), 0, 1) * 255).round().astype(np.uint8)


def _find(model: torch.nn.Module) -> tuple[DermoscopyBranch, str]:
    """The dermoscopy branch of a RemixFormer++ / Ours-D run and the modality it reads."""
    branch = next((m for m in model.modules() if isinstance(m, DermoscopyBranch)), None)
    if branch is None:
        raise ConfigError(f"window attention needs a RemixFormer++ dermoscopy branch (model remixformer_pp with use "
                          f"containing D, or remixformer_d); the run's model is {type(model).__name__}")
    names = getattr(model, "names", None)
    return branch, names["D"] if isinstance(names, dict) else model.modality


def window_attention_for_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                             split: str = "test", max_cases: int = 8) -> list[Path]:
    """Write ``window_attention_<case>.png`` for the first ``max_cases`` cases of ``split`` that have the image.

    Returns:
        The written files (default folder ``<run_dir>/explain``).
    """
    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.robustness import load_run_data

    predictor = Predictor(run_dir)
    model = predictor.model.eval()
    branch, modality = _find(model)
    loader, _ = load_run_data(predictor, run_dir, split)
    out = Path(out_dir or Path(run_dir) / "explain")
    written: list[Path] = []
    for raw in loader:
        batch = predictor.transform(raw, train=False)
        rows: Sequence[int] = [i for i in range(len(batch["case_id"])) if bool(batch["present"][modality][i])]
        if not rows:
            continue
        x = batch["inputs"][modality][list(rows)]
        maps = region_attention(branch, x)
        for j, i in enumerate(rows):
            path = out / f"window_attention_{batch['case_id'][i]}.png"
            atomic_write_bytes(path, _png(render_window_attention(x[j].cpu().numpy(), maps[j],
                                                                  branch.hrwe.window_size)))
            written.append(path)
            if len(written) >= max_cases:
                return written
    return written
