"""Patch-similarity maps of EI's primary VFMs with and without the [INT] tokens (paper 003, Fig. 2).

For every target modality, the cosine similarity between the final [CLS] and each patch token of the primary VFM is
computed twice, once with the reference modalities' [INT] tokens injected and once without them. Because [CLS] is
what the heads classify, the map shows how much each patch contributes; the paper reports more lesion-focused maps
with [INT]. Multi-slice modalities get one map per slice (the tokens before slice pooling).

Each PNG shows one case and modality: per slice row, the image, the map without [INT] and the map with [INT] as colour
overlays on one colour scale with its colour bar, under a title naming the model, modality, case, split and n. Every
file is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mmdiag.errors import ConfigError
from mmdiag.evaluation.plots import safe_name, save_figure
from mmdiag.models.nets.ei import EI

__all__ = ["int_similarity_maps", "int_maps_figure", "int_maps_title", "write_int_maps", "int_maps_for_run"]

_log = logging.getLogger(__name__)


@torch.no_grad()
def int_similarity_maps(model: EI, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """Cosine similarity of the final [CLS] to every patch token of each primary VFM, with and without [INT].

    Args:
        model: an :class:`~mmdiag.models.nets.ei.EI` model (put in eval mode by the caller for deterministic maps).
        inputs: the model's inputs (images in [0, 1] unless the model was built with ``input_norm=none``).
        present: per modality ``(B,)`` bool; a missing reference adds no [INT] token.

    Returns:
        ``{modality: {"with_int": (B, k, gh, gw), "without_int": (B, k, gh, gw)}}`` in [-1, 1]; ``k`` slices,
        ``gh x gw`` the patch grid.

    Raises:
        ConfigError: ``model`` is not an EI model.
    """
    if not isinstance(model, EI):
        raise ConfigError(f"[INT] maps need an EI model (model.name=ei); got {type(model).__name__}")
    maps: dict[str, dict[str, torch.Tensor]] = {m: {} for m in model.modalities}
    for key, intervene in (("with_int", True), ("without_int", False)):
        tokens = model.forward_branches(inputs, present, intervene=intervene).tokens
        for m, tok in tokens.items():
            branch = model.primary[m]
            gh, gw = branch.encoder.grid(inputs[m])
            patches = tok[:, :, branch.encoder.vit.num_prefix_tokens:]
            sim = F.cosine_similarity(patches.float(), tok[:, :, :1].float(), dim=-1)
            maps[m][key] = sim.view(*sim.shape[:2], gh, gw)
    return maps


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float -> (H, W, 3) in [0, 1], min-max scaled; grey replicated, RGB slices kept."""
    img = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    lo, hi = float(img.min()), float(img.max())
    return np.transpose((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img), (1, 2, 0))


def _upsample(sim: torch.Tensor, patch: int, size: tuple[int, int]) -> np.ndarray:
    """A (gh, gw) map drawn over the padded image grid, cropped to the image (padding is right/bottom)."""
    gh, gw = sim.shape
    up = F.interpolate(sim[None, None].float(), size=(gh * patch, gw * patch), mode="bilinear", align_corners=False)
    return up[0, 0, : size[0], : size[1]].cpu().numpy()


def int_maps_figure(slices: Sequence[np.ndarray], without_int: torch.Tensor, with_int: torch.Tensor, patch: int,
                    title: str, alpha: float = 0.5, cmap: str = "jet") -> Figure:
    """One case's figure: a row per slice with [image | map without [INT] | map with [INT]] over the image.

    All maps share one colour scale (the range of the similarities shown), given by the colour bar.
    Image panels have no axes (pixel positions carry no meaning).

    Args:
        slices: per slice, the image ``(c, H, W)`` (any range; min-max scaled for display).
        without_int, with_int: ``(k, gh, gw)`` similarity maps of one case.
        patch: the VFM's patch size (maps cover the zero-padded grid).
        title: the figure title (model, modality, case, split and n: :func:`int_maps_title`).
        alpha: opacity of the colour map.
        cmap: matplotlib colour map name.

    Returns:
        The :class:`matplotlib.figure.Figure` (Agg canvas).
    """
    bases = [_display(img) for img in slices]
    shown = [[_upsample(s, patch, base.shape[:2]) for s in pair] for base, pair in zip(bases, zip(without_int, with_int))]
    lo, hi = min(float(m.min()) for pair in shown for m in pair), max(float(m.max()) for pair in shown for m in pair)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-6)
    k = len(slices)
    fig = Figure(figsize=(8.4, 2.6 * k + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(k, 3, squeeze=False)
    for row, (base, (off, on)) in enumerate(zip(bases, shown)):
        for ax, (name, sim) in zip(axes[row], [("image", None), ("without [INT]", off), ("with [INT]", on)]):
            ax.imshow(base)
            if sim is not None:
                ax.imshow(sim, cmap=cmap, norm=norm, alpha=alpha)
            ax.set(xticks=[], yticks=[], title=name if row == 0 else "")
        if k > 1:
            axes[row, 0].set_ylabel(f"slice {row + 1}")
    bar = fig.colorbar(ScalarMappable(norm, colormaps[cmap]), ax=axes, fraction=0.046,
                       label="cosine similarity of patch token to [CLS]")
    bar.formatter.set_useOffset(False)
    fig.suptitle(title, fontsize="medium")
    return fig


def int_maps_title(modality: str, case_id: str, model: str, split: str | None, index: int, n: int) -> str:
    """``"[INT] maps | <modality> | case <id>"`` over ``"<model>, <split> split, case <index> of n = <n>"``."""
    where = f"{split} split, " if split else ""
    return f"[INT] maps | {modality} | case {case_id}\n{model}, {where}case {index} of n = {n}"


def write_int_maps(model: EI, inputs: dict[str, torch.Tensor], out_dir: str | os.PathLike,
                   case_ids: Sequence[str] | None = None, present: dict[str, torch.Tensor] | None = None,
                   alpha: float = 0.5, model_name: str = "ei", split: str | None = None) -> list[Path]:
    """Write ``int_maps_<modality>_<case_id>.png`` (see :func:`int_maps_figure`) for every present target.

    Args:
        model_name, split: named in the titles (with the number of cases in ``inputs``).

    Returns:
        The written files, in case then modality order.

    Raises:
        ConfigError: ``case_ids`` does not give one id per case.
    """
    maps = int_similarity_maps(model, inputs, present)
    n = next(iter(inputs.values())).shape[0]
    ids = list(case_ids) if case_ids is not None else [f"case{i}" for i in range(n)]
    if len(ids) != n:
        raise ConfigError(f"write_int_maps: {len(ids)} case ids for a batch of {n}")
    out_dir = Path(out_dir)
    written = []
    for i, cid in enumerate(ids):
        for m in model.modalities:
            if present is not None and m in present and not bool(present[m][i]):
                continue
            branch = model.primary[m]
            x = inputs[m][i: i + 1]
            if branch.encoder.layout.volume:
                x = x.transpose(1, 2)
            k, chans = branch.encoder.layout.k, branch.encoder.layout.chans
            slices = x.reshape(k, chans, *x.shape[-2:]).float().cpu().numpy()
            fig = int_maps_figure(slices, maps[m]["without_int"][i], maps[m]["with_int"][i],
                                  branch.encoder.vit.patch_size, int_maps_title(m, cid, model_name, split, i + 1, n),
                                  alpha)
            path = out_dir / f"int_maps_{safe_name(m)}_{safe_name(cid)}.png"
            save_figure(fig, path)
            written.append(path)
    _log.info("wrote %d [INT] map(s) to %s", len(written), out_dir)
    return written


def int_maps_for_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, split: str = "test",
                     max_cases: int = 8) -> list[Path]:
    """[INT] maps of a finished EI run for the first ``max_cases`` cases of ``split``.

    Args:
        run_dir: the EI run folder (for ``ei_two_stage``: its ``stage2_ei`` folder).
        out_dir: default ``<run_dir>/explain``.

    Raises:
        ConfigError: the run is not an EI run, or ``split`` is not one of its splits.
    """
    from mmdiag.data.dataset import CaseDataset, collate_cases
    from mmdiag.data.sources import load_table
    from mmdiag.evaluation.infer import Predictor

    run_dir = Path(run_dir)
    predictor = Predictor(run_dir)
    cfg = predictor.cfg
    splits = json.loads((run_dir / "splits.json").read_text())["split"]
    if split not in splits:
        raise ConfigError(f"split {split!r} is not in {run_dir / 'splits.json'}; splits: {list(splits)}")
    table = load_table(cfg.data.dataset, cfg.data.root, cfg.data.options)
    pos = {c.case_id: i for i, c in enumerate(table.cases)}
    indices = [pos[c] for c in splits[split] if c in pos][:max_cases]
    if not indices:
        raise ConfigError(f"split {split!r} of {str(run_dir)!r} has no case of the dataset any more")
    ds = CaseDataset(table, indices, predictor.encoders, modalities=list(predictor.spec.modalities), seed=cfg.seed)
    batch = predictor.transform(collate_cases([ds[i] for i in range(len(ds))]), train=False)
    model = predictor.model.eval()
    return write_int_maps(model, batch["inputs"], out_dir or run_dir / "explain", batch["case_id"], batch["present"],
                          model_name=cfg.model.name, split=split)
