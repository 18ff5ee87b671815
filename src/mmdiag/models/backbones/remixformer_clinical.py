"""RemixFormer++ clinical branch (paper 001 Sec. III-B): CLS-Swin global encoder, lesion selection (LSM) by attention
sampling, local encoder sharing stages 1-3, cross-scale fusion (CSF); and Ours-C, the clinical-only classifier.

Data flow (default configuration, paper 001 Sec. IV-B)::

    X^C (B, 3, 896, 896) --resize--> (B, 3, 384, 384) --G_theta (CLS-Swin-T)--> g^cls (B, 768), g^patch (B, 144, 768),
                                                                               S^attn (B, 12, 12)      (eqs. 1-8)
    LSM: K_p = 4 cells of the 12x12 grid (sampled from S^attn in training, top-K at inference) -> 4 crops 224^2 of X^C
    L_theta (stages 1-3 of G_theta + own stage 4 + norm) on each crop -> [l^cls, l^patch] (B, 4, 50, 768)
    eq. 9 Monte-Carlo average over the crops -> phi (B, 50, 768) = [l^cls, l^patch]
    CSF(g^cls, g^patch, l^cls, l^patch) -> g^C, l^C (B, 768 each)                                   (eqs. 10-14)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_model
from mmdiag.models.backbones.swin import IMAGENET_MEAN, IMAGENET_STD, SwinTransformer
from mmdiag.models.backbones.swin import checkpoint_filter_fn as swin_filter
from mmdiag.models.layers.attention import Attention

__all__ = ["LSM", "CSF", "ClinicalBranch", "RemixFormerC", "sample_positions", "expectation_with_replacement",
           "expectation_without_replacement", "crop_boxes", "extract_crops", "tiny_clinical_branch"]

_log = logging.getLogger(__name__)

Sampling = Literal["topk", "ats_replace", "ats_no_replace"]
Estimator = Literal["unbiased", "official"]


# ---------------------------------------------------------------------------------------------------------------------
# Attention sampling (Katharopoulos & Fleuret 2019), the training-time selection of LSM (eq. 9)

def sample_positions(a: Tensor, k: int, replace: bool, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``k`` positions per row of the distribution ``a`` ``(B, P)``: i.i.d. (``replace``) or ordered draws
    without replacement (each next draw proportional to ``a`` over the positions not yet drawn). Returns ``(B, k)``."""
    return torch.multinomial(a.detach(), k, replacement=replace, generator=generator)


def _expand(w: Tensor, f: Tensor) -> Tensor:
    return w.reshape(w.shape + (1,) * (f.dim() - w.dim()))


def expectation_with_replacement(a: Tensor, idx: Tensor, f: Tensor) -> Tensor:
    """Monte-Carlo estimate of E_{i~a}[f_i] from i.i.d. draws (paper 001 eq. 9), with an unbiased gradient.

    The value is ``mean_k f_k``; the surrogate ``mean_k (a_k / sg(a_k)) f_k`` adds the score-function gradient
    ``<g, f_k> / a_k`` with respect to the attention (the with-replacement backward of attention sampling).

    Args:
        a: attention distribution ``(B, P)`` (rows sum to 1).
        idx: drawn positions ``(B, N)``.
        f: features of the drawn positions ``(B, N, ...)``.

    Returns:
        ``(B, ...)``.
    """
    a_k = a.gather(1, idx)
    return (_expand(a_k / a_k.detach(), f) * f).mean(1)


class _OfficialNoReplacement(torch.autograd.Function):
    """The without-replacement expectation of the attention-sampling reference code with its hand-written backward
    (``idiap/attention-sampling`` ``ats/core/expectation.py``), reproduced to show its bias (notes §10)."""

    @staticmethod
    def forward(ctx, a_k: Tensor, f: Tensor) -> Tensor:  # noqa: D102 - see class
        n = a_k.shape[1]
        pm = 1 - (torch.cumsum(a_k, 1) - a_k)
        prefix = torch.cumsum(_expand(a_k, f) * f, 1) - _expand(a_k, f) * f
        big_f = prefix + _expand(pm, f) * f
        ctx.save_for_backward(a_k, f, big_f, pm)
        return big_f.sum(1) / n

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102 - see class
        a_k, f, big_f, pm = ctx.saved_tensors
        n = a_k.shape[1]
        k = torch.arange(n, device=a_k.device, dtype=a_k.dtype)
        g = g.unsqueeze(1)
        prev_f = torch.cumsum(f, 1) - f
        term = big_f * _expand(pm / a_k, f) + prev_f - _expand(k.expand_as(a_k), f) * f
        dims = tuple(range(2, f.dim()))
        grad_a = (g * term).sum(dims) / n if dims else g * term / n
        grad_f = _expand((pm + (n - 1 - k) * a_k) / n, f) * g
        return grad_a, grad_f


def expectation_without_replacement(a: Tensor, idx: Tensor, f: Tensor, estimator: Estimator = "unbiased") -> Tensor:
    """Estimate of E_{i~a}[f_i] from ordered draws without replacement (attention sampling's default mode).

    Value: ``mean_k F_k`` with ``F_k = sum_{m<k} a_m f_m + (1 - sum_{m<k} a_m) f_k`` (each ``F_k`` unbiased).

    Gradient: ``"unbiased"`` (ours, notes §10) differentiates ``F_k`` pathwise and adds the score-function term
    ``sg(F_k) * d log P(q_1..q_k)`` with ``log P = sum_{j<=k} log a_j - log(1 - sum_{m<j} a_m)``; ``"official"`` is the
    reference code's hand-written backward, which is biased for ``N >= 2`` (kept to demonstrate it; do not train
    with it).

    Args:
        a: attention distribution ``(B, P)``.
        idx: ordered distinct draws ``(B, N)`` (:func:`sample_positions` with ``replace=False``).
        f: features ``(B, N, ...)``.
        estimator: ``"unbiased"`` or ``"official"``.

    Raises:
        ConfigError: unknown ``estimator``.
    """
    a_k = a.gather(1, idx)
    if estimator == "official":
        return _OfficialNoReplacement.apply(a_k, f)
    if estimator != "unbiased":
        raise ConfigError(f"estimator={estimator!r}; valid: 'unbiased', 'official'")
    prev = torch.cumsum(a_k, 1) - a_k
    pm = 1 - prev
    wf = _expand(a_k, f) * f
    big_f = torch.cumsum(wf, 1) - wf + _expand(pm, f) * f
    log_p = torch.cumsum(torch.log(a_k) - torch.log(pm), 1)
    score = _expand(log_p - log_p.detach(), f)
    return (big_f + big_f.detach() * score).mean(1)


# ---------------------------------------------------------------------------------------------------------------------
# Crops

def crop_boxes(idx: Tensor, grid: tuple[int, int], image_size: tuple[int, int], crop_size: int) -> Tensor:
    """Top-left corners ``(B, K, 2)`` (row, col) of ``crop_size`` crops centred on grid cells ``idx`` (row-major).

    The centre of cell ``(r, c)`` is ``((r + 1/2) H / gh, (c + 1/2) W / gw)``. Deviation: at the border the crop is
    shifted inside the image (attention sampling zero-pads outside pixels instead).
    """
    gh, gw = grid
    h, w = image_size
    r, c = idx // gw, idx % gw
    top = torch.round((r.float() + 0.5) * h / gh - crop_size / 2).clamp(0, h - crop_size)
    left = torch.round((c.float() + 0.5) * w / gw - crop_size / 2).clamp(0, w - crop_size)
    return torch.stack([top, left], -1).long()


def extract_crops(x: Tensor, boxes: Tensor, crop_size: int) -> Tensor:
    """Crops ``(B, K, C, s, s)`` of images ``x`` ``(B, C, H, W)`` at corners ``boxes`` ``(B, K, 2)``."""
    b, k = boxes.shape[:2]
    ar = torch.arange(crop_size, device=x.device)
    rows = (boxes[..., 0, None] + ar)[:, :, :, None]  # (B, K, s, 1)
    cols = (boxes[..., 1, None] + ar)[:, :, None, :]  # (B, K, 1, s)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    return x.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 1, 4, 2, 3)


class LSM(nn.Module):
    """Lesion Selection Module (paper 001 Sec. III-B.2, eqs. 6-9): K_p crops of the full-resolution image around the
    cells with high S^attn, and the eq. 9 average of their local features.

    Deviation: the paper both picks "the K_p largest S^attn" and samples "N i.i.d. indices"; here training samples
    (``sampling``) and evaluation takes the top K_p. ``"ats_replace"`` (default) draws i.i.d. from ``a = S/sum S``
    with the unbiased score-function gradient; ``"ats_no_replace"`` draws without replacement and uses
    ``estimator`` (``"unbiased"``, ours, or the biased ``"official"``); ``"topk"`` also trains on the top K_p (no
    gradient reaches the attention).

    Args:
        k_p: crops per image.
        crop_size: crop side in pixels of the input image.
        sampling: training-time selection.
        estimator: gradient estimator of ``"ats_no_replace"``.

    Raises:
        ConfigError: unknown ``sampling``/``estimator``, or ``k_p < 1``.
    """

    def __init__(self, k_p: int = 4, crop_size: int = 224, sampling: Sampling = "ats_replace",
                 estimator: Estimator = "unbiased"):
        super().__init__()
        if sampling not in ("topk", "ats_replace", "ats_no_replace"):
            raise ConfigError(f"lsm sampling={sampling!r}; valid: 'topk', 'ats_replace', 'ats_no_replace'")
        if estimator not in ("unbiased", "official"):
            raise ConfigError(f"lsm estimator={estimator!r}; valid: 'unbiased', 'official'")
        if k_p < 1:
            raise ConfigError(f"k_p={k_p} must be >= 1")
        self.k_p, self.crop_size, self.sampling, self.estimator = k_p, crop_size, sampling, estimator

    def select(self, s_attn: Tensor, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Positions, distribution, crop corners and crops.

        Args:
            s_attn: ``(B, gh, gw)`` from the global encoder's last block.
            image: full-resolution images ``(B, C, H, W)``.

        Returns:
            ``idx (B, K)`` (row-major cells), ``a (B, gh*gw)``, ``boxes (B, K, 2)``, ``crops (B, K, C, s, s)``.

        Raises:
            ConfigError: the crop is larger than the image, or more crops than cells without replacement.
        """
        b, gh, gw = s_attn.shape
        h, w = image.shape[-2:]
        if self.crop_size > min(h, w):
            raise ConfigError(f"lsm crop_size={self.crop_size} exceeds the clinical image {h}x{w}")
        a = s_attn.reshape(b, -1)
        a = a / a.sum(1, keepdim=True)
        if self.k_p > a.shape[1] and (self.sampling != "ats_replace" or not self.training):
            raise ConfigError(f"k_p={self.k_p} crops but S^attn has only {gh}x{gw} cells")
        if self.training and self.sampling != "topk":
            idx = sample_positions(a, self.k_p, replace=self.sampling == "ats_replace")
        else:
            idx = a.detach().topk(self.k_p, 1).indices
        boxes = crop_boxes(idx, (gh, gw), (h, w), self.crop_size)
        return idx, a, boxes, extract_crops(image, boxes, self.crop_size)

    def aggregate(self, a: Tensor, idx: Tensor, f: Tensor) -> Tensor:
        """Eq. 9: ``(B, K, ...)`` local features of the crops -> ``(B, ...)`` with the configured estimator."""
        if not self.training or self.sampling == "topk":
            return f.mean(1)
        if self.sampling == "ats_replace":
            return expectation_with_replacement(a, idx, f)
        return expectation_without_replacement(a, idx, f, self.estimator)


class CSF(nn.Module):
    """Cross-Scale Fusion (paper 001 Sec. III-B.4, eqs. 10-14): the global [CLS] attends to the local patch tokens
    and the local [CLS] to the global patch tokens; each result is added to its normalised [CLS].

    ``t_g = LN_g([g^cls; l^patch]) = [g~; l^]``, ``g^C = g~ + Linear(MHA(g~, l^, l^))``; symmetrically
    ``t_l = LN_l([l^cls; g^patch]) = [l~; g^]``, ``l^C = l~ + Linear(MHA(l~, g^, g^))`` (W^Q, W^K, W^V with bias;
    the eq. 14 ``linear`` is the attention's output projection).

    Choice: one LayerNorm per assembled tensor, ``num_heads`` = 24 for Swin-T (head dim 32), no MLP — the notes'
    parameter arithmetic (48.3M - 43.6M = 2 x 4 x (768^2 + 768)).
    """

    def __init__(self, dim: int, num_heads: int = 24):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"CSF: dim={dim} is not divisible by num_heads={num_heads}")
        self.norm_g = nn.LayerNorm(dim)
        self.norm_l = nn.LayerNorm(dim)
        self.attn_lg = Attention(dim, num_heads)
        self.attn_gl = Attention(dim, num_heads)

    def forward(self, g_cls: Tensor, g_patch: Tensor, l_cls: Tensor, l_patch: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, D)``, ``(B, Ng, D)``, ``(B, D)``, ``(B, Nl, D)`` -> ``g^C, l^C`` ``(B, D)`` each."""
        tg = self.norm_g(torch.cat([g_cls[:, None], l_patch], 1))
        tl = self.norm_l(torch.cat([l_cls[:, None], g_patch], 1))
        g_t, l_hat, l_t, g_hat = tg[:, :1], tg[:, 1:], tl[:, :1], tl[:, 1:]
        g_c = g_t + self.attn_lg(g_t, context=l_hat)
        l_c = l_t + self.attn_gl(l_t, context=g_hat)
        return g_c[:, 0], l_c[:, 0]


class ClinicalBranch(nn.Module):
    """RemixFormer++ clinical image branch (paper 001 Sec. III-B, Fig. 4-5): G_theta (CLS-Swin) on the downsampled
    image, LSM crops of the full-resolution image through L_theta, CSF.

    L_theta shares the patch embedding, the [CLS] token and stages 1-3 (with their [CLS] projections) with G_theta;
    its stage 4 (patch merging, blocks, [CLS] projection) and final norm are its own, initialised as a copy of
    G_theta's (the notes' reading of Table X: 43.6M).

    Deviation (notes §3, open): eq. 9 averages the whole local token set ``[l^cls, l^patch]`` over the crops.

    Args:
        in_chans: image channels.
        embed_dim, depths, num_heads, window_size, drop_path_rate: the CLS-Swin encoder (Swin-T by default).
        global_size: side the clinical image is resized to for G_theta (``None``: used as given).
        k_p, crop_size, sampling, estimator: :class:`LSM`.
        csf: fuse with :class:`CSF`; without it ``g^C = g^cls`` and ``l^C = l^cls`` (Table VII "+LSM").
        csf_heads: CSF attention heads.

    Attributes:
        num_features: width ``D`` of ``g^C`` and ``l^C``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, drop_path_rate: float = 0.2,
                 global_size: int | None = 384, k_p: int = 4, crop_size: int = 224, sampling: Sampling = "ats_replace",
                 estimator: Estimator = "unbiased", csf: bool = True, csf_heads: int = 24):
        super().__init__()
        self.global_encoder = SwinTransformer(in_chans=in_chans, num_classes=0, embed_dim=embed_dim, depths=depths,
                                              num_heads=num_heads, window_size=window_size, class_token=True,
                                              drop_path_rate=drop_path_rate)
        self.local_stage = copy.deepcopy(self.global_encoder.layers[-1])
        self.local_norm = copy.deepcopy(self.global_encoder.norm)
        self.lsm = LSM(k_p, crop_size, sampling, estimator)
        self.num_features = self.global_encoder.num_features
        self.explain_layer, self.explain_fmt = "global_encoder.norm", self.global_encoder.output_fmt
        self.csf = CSF(self.num_features, csf_heads) if csf else None
        self.global_size = global_size

    def _local(self, crops: Tensor) -> Tensor:
        """L_theta: crops ``(N, C, s, s)`` -> final-normalised tokens ``(N, 1 + n, D)`` = ``[l^cls, l^patch]``."""
        enc = self.global_encoder
        x, cls = enc.embed(crops)
        for stage in enc.layers[:-1]:
            x, cls, _ = stage(x, cls)
        x, cls, _ = self.local_stage(x, cls)
        return self.local_norm(torch.cat([cls, x.flatten(1, 2)], 1))

    def forward_with_attention(self, x: Tensor) -> dict[str, Tensor]:
        """Run the branch and keep what explains it.

        Returns:
            ``g_C``, ``l_C`` ``(B, D)``; ``s_attn`` ``(B, gh, gw)`` (eq. 8); ``idx`` ``(B, K)`` selected cells;
            ``boxes`` ``(B, K, 2)`` crop corners (row, col) in ``x``'s pixels; ``crop_size`` (0-d).
        """
        xg = x
        if self.global_size is not None and tuple(x.shape[-2:]) != (self.global_size, self.global_size):
            xg = F.interpolate(x, size=(self.global_size, self.global_size), mode="bilinear", align_corners=False,
                               antialias=True)
        g_map, g_cls, s_attn = self.global_encoder.forward_tokens(xg, scores=True)
        idx, a, boxes, crops = self.lsm.select(s_attn, x)
        b, k = idx.shape
        local = self._local(crops.flatten(0, 1))
        phi = self.lsm.aggregate(a, idx, local.reshape(b, k, *local.shape[1:]))
        g_cls = g_cls[:, 0]
        if self.csf is None:
            g_c, l_c = g_cls, phi[:, 0]
        else:
            g_c, l_c = self.csf(g_cls, g_map.flatten(1, 2), phi[:, 0], phi[:, 1:])
        return {"g_C": g_c, "l_C": l_c, "s_attn": s_attn, "idx": idx, "boxes": boxes,
                "crop_size": torch.tensor(self.lsm.crop_size)}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Clinical images ``(B, C, H, W)`` -> ``(g^C, l^C)``, each ``(B, D)``."""
        out = self.forward_with_attention(x)
        return out["g_C"], out["l_C"]

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: ClinicalBranch) -> dict[str, Tensor]:
        """A Swin checkpoint (official or timm layout) -> this branch's names: G_theta gets it whole, L_theta's
        stage 4 and norm a copy of its stage 4 and norm; class-token and CSF parameters keep their fresh
        initialisation (logged). A state dict already in the branch's names is returned as is (runs written before
        CSF used the shared attention get its names)."""
        if "patch_embed.proj.weight" not in state_dict:
            return Attention.convert_multihead_state(dict(state_dict))
        last = len(model.global_encoder.layers) - 1
        swin = swin_filter(state_dict, model.global_encoder)
        out = {f"global_encoder.{k}": v for k, v in swin.items()}
        out.update({k.replace(f"layers.{last}.", "local_stage.", 1): v for k, v in swin.items()
                    if k.startswith(f"layers.{last}.")})
        out.update({k.replace("norm.", "local_norm.", 1): v for k, v in swin.items() if k.startswith("norm.")})
        own = model.state_dict()
        fresh = [k for k in own if k not in out]
        if fresh:
            _log.info("clinical branch: %d tensors not in the Swin checkpoint keep their initialisation (%s...)",
                      len(fresh), ", ".join(fresh[:4]))
            out.update({k: own[k] for k in fresh})
        return out


class RemixFormerC(nn.Module):
    """Ours-C (paper 001 Tables III, VII, X): the clinical branch alone with a linear classifier on
    ``concat(g^C, l^C)``.

    Choice (paper silent): ``Linear(2D, num_classes)`` on the concatenation.

    Args:
        num_classes: classifier outputs (``0``: none, ``forward`` returns the features).
        drop_rate: dropout before the classifier.
        **kwargs: :class:`ClinicalBranch` options.
    """

    classifier_name = "head"
    output_fmt = "NC"

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0, **kwargs: Any):
        super().__init__()
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0")
        self.branch = ClinicalBranch(**kwargs)
        self.num_classes = num_classes
        self.num_features = 2 * self.branch.num_features
        self.explain_layer, self.explain_fmt = f"branch.{self.branch.explain_layer}", self.branch.explain_fmt
        self.in_chans = self.branch.global_encoder.in_chans
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg: dict[str, Any] = {}

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: RemixFormerC) -> dict[str, Tensor]:
        """A Swin checkpoint initialises the branch (:meth:`ClinicalBranch.checkpoint_filter_fn`); the head stays.
        Earlier runs' ``nn.MultiheadAttention`` names in CSF are renamed."""
        if "patch_embed.proj.weight" not in state_dict:
            return Attention.convert_multihead_state(dict(state_dict))
        out = {f"branch.{k}": v for k, v in ClinicalBranch.checkpoint_filter_fn(state_dict, model.branch).items()}
        out.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
        return out

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh ``Linear(num_features, num_classes)``; ``0`` removes it."""
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.cat(self.branch(x), -1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _create(defaults: dict[str, Any], kwargs: dict[str, Any], side: int) -> RemixFormerC:
    model = RemixFormerC(**{**defaults, **kwargs})
    model.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (model.in_chans, side, side),
                            "interpolation": "bilinear"}
    return model


_TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, drop_path_rate=0.0,
             global_size=64, k_p=2, crop_size=32, csf_heads=4)


@register_model(options=(RemixFormerC, ClinicalBranch), paper="remixformer")
def remixformer_c(**kwargs: Any) -> RemixFormerC:
    """Ours-C: RemixFormer++ clinical branch (CLS-Swin-T, LSM 4 x 224^2 crops of the 896^2 image, CSF) + linear head."""
    return _create({}, kwargs, 896)


@register_model(options=(RemixFormerC, ClinicalBranch), paper="remixformer")
def tiny_remixformer_c(**kwargs: Any) -> RemixFormerC:
    """Test variant of Ours-C: 16-wide CLS-Swin with window 4, 64^2 global view, 2 crops of 32^2 (128^2 input)."""
    return _create(_TINY, kwargs, 128)


def tiny_clinical_branch(**kwargs: Any) -> ClinicalBranch:
    """The clinical branch of :func:`tiny_remixformer_c` (for the multimodal net's tests; input 128^2)."""
    return ClinicalBranch(**{**_TINY, **kwargs})
