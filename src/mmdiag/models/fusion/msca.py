"""MMCAF-Net's fusion (paper 002 §2.3, Eqs. 4-10): multi-scale cross-attention (MSCA) with bidirectional scale
fusion (BSF), as the authors' ``MultiScale_Fusion`` builds it.

Both modalities are normalised (a BatchNorm each), then for scales ``s = 1, 2, 3`` of widths 24 / 12 / 6::

    o_s^img = CA_s(img_s, tab_s),  o_s^tab = CA_s(tab_s, img_s),  out_s = mean(o_s^img, o_s^tab)
    img_{s+1} = down_{s+1}(img) + W^img_s o_s^img,   tab_{s+1} = down_{s+1}(tab) + W^tab_s o_s^tab

with the inverted-pyramid projections ``down_2: 24→12``, ``down_3: 24→6`` (Linear → ReLU → Dropout) shared by both
modalities and one cross-attention per scale used in both directions (heads 4 / 2 / 2). Scales merge from the
coarsest up: ``f = BSF_24(out_1, BSF_12(out_2, out_3))``. 4,848 parameters at width 24, as in the code.

With one token per modality (the paper's model) the softmax over one key is 1, each cross-attention reduces to
``V(context) + query`` and its ``q``/``k`` projections get no gradient (notes §4). ``tokens`` > 1 on the image side
(:class:`~mmdiag.models.nets.mmcaf_net.MMCAFNet`'s ``fusion_tokens="pyramid"``) makes the tabular → image direction
a real attention; per-scale outputs are then averaged over each modality's tokens before the two are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.models.layers.attention import Attention

__all__ = ["AlignedFusion", "BSF", "CrossAttentionFusion", "MSCA"]


class BSF(nn.Module):
    """Bidirectional Scale Fusion (paper 002 §2.3, Eq. 10): merges a scale ``x`` (``dim``) with the next coarser ``y``
    (``dim / 2``): linear alignment, element-wise product, softmax importance over features, merge.

    ``x' = W_x x``, ``y' = W_y y``, ``A = softmax(x' ⊙ y')``, ``out = (x' + x' ⊙ A) + (y' + y' ⊙ A)``.

    Args:
        dim: width of ``x`` and of the output.
        y_dim: width of ``y`` (default ``dim // 2``).
    """

    def __init__(self, dim: int, y_dim: int | None = None):
        super().__init__()
        self.align_x = nn.Linear(dim, dim)
        self.align_y = nn.Linear(y_dim or dim // 2, dim)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = self.align_x(x), self.align_y(y)
        a = torch.softmax(x * y, dim=-1)
        return x + x * a + y + y * a


def _norm_tokens(norm: nn.BatchNorm1d, x: Tensor) -> Tensor:
    return norm(x.transpose(1, 2)).transpose(1, 2)


def _attend(attn: Attention, x: Tensor, context: Tensor) -> Tensor:
    """The code's cross-attention ``CA(x, context)``: ``attn`` (q/k/v with bias, no output projection) from ``x`` to
    ``context`` plus the residual on the unprojected query ``x``."""
    return attn(x, context=context) + x


class MSCA(nn.Module):
    """Multi-Scale Cross-Attention (paper 002 §2.3, Eqs. 4-9) with BSF merging; see the module docstring.

    Deviation: the paper's Eqs. 4-9 read as generic multi-head attention with an output projection; the code (followed
    here) has none, adds the unprojected query as a residual, and shares each scale's attention between directions.

    Args:
        dim: width of both modalities' features (24).
        heads: heads per scale (4, 2, 2); the number of scales is ``len(heads)``, widths ``dim / 2**s``.
        drop_rate: dropout of the projections ``down_s``.

    Raises:
        ConfigError: ``dim`` not divisible by ``2**(scales-1)`` or a scale width not divisible by its heads.
    """

    def __init__(self, dim: int = 24, heads: Sequence[int] = (4, 2, 2), drop_rate: float = 0.5):
        super().__init__()
        n = len(heads)
        if n < 2 or dim % 2 ** (n - 1):
            raise ConfigError(f"MSCA: dim={dim} must be divisible by 2**{n - 1} for {n} scales (heads={list(heads)})")
        widths = [dim // 2**s for s in range(n)]
        self.widths = widths
        self.norm_img = nn.BatchNorm1d(dim)
        self.norm_tab = nn.BatchNorm1d(dim)
        self.down = nn.ModuleList(nn.Sequential(nn.Linear(dim, w), nn.ReLU(), nn.Dropout(drop_rate))
                                  for w in widths[1:])
        self.attn = nn.ModuleList(Attention(w, h, proj=False) for w, h in zip(widths, heads, strict=True))
        self.lift_img = nn.ModuleList(nn.Linear(widths[s], widths[s + 1]) for s in range(n - 1))
        self.lift_tab = nn.ModuleList(nn.Linear(widths[s], widths[s + 1]) for s in range(n - 1))
        self.bsf = nn.ModuleList(BSF(w) for w in widths[:-1])
        self.num_features = dim

    def forward(self, img: Tensor, tab: Tensor) -> Tensor:
        """Fuse image tokens ``(B, N, dim)`` and tabular tokens ``(B, M, dim)`` into ``(B, dim)``."""
        img0, tab0 = _norm_tokens(self.norm_img, img), _norm_tokens(self.norm_tab, tab)
        img_s, tab_s, outs = img0, tab0, []
        for s, attn in enumerate(self.attn):
            o_img, o_tab = _attend(attn, img_s, tab_s), _attend(attn, tab_s, img_s)
            outs.append((o_img.mean(1) + o_tab.mean(1)) / 2)
            if s + 1 < len(self.attn):
                img_s = self.down[s](img0) + self.lift_img[s](o_img)
                tab_s = self.down[s](tab0) + self.lift_tab[s](o_tab)
        fused = outs[-1]
        for s in range(len(outs) - 2, -1, -1):
            fused = self.bsf[s](outs[s], fused)
        return fused


class CrossAttentionFusion(nn.Module):
    """Single-scale cross-attention fusion (paper 002 Table 3 "Cross-Attention"; the code's ``Simple_Fuse``): the
    first MSCA scale alone, both directions through one attention, outputs averaged.

    Args:
        dim: feature width (24).
        num_heads: heads (4).
    """

    def __init__(self, dim: int = 24, num_heads: int = 4):
        super().__init__()
        self.norm_img = nn.BatchNorm1d(dim)
        self.norm_tab = nn.BatchNorm1d(dim)
        self.attn = Attention(dim, num_heads, proj=False)
        self.num_features = dim

    def forward(self, img: Tensor, tab: Tensor) -> Tensor:
        """Image tokens ``(B, N, dim)`` and tabular tokens ``(B, M, dim)`` → ``(B, dim)``."""
        img, tab = _norm_tokens(self.norm_img, img), _norm_tokens(self.norm_tab, tab)
        return (_attend(self.attn, img, tab).mean(1) + _attend(self.attn, tab, img).mean(1)) / 2


class AlignedFusion(nn.Module):
    """CLIP-style aligned fusion (paper 002 Table 3 "CLIP"; Radford et al. 2021): both modalities projected to a
    shared space and L2-normalised; a symmetric InfoNCE loss pulls a case's image and record together against the
    other cases of the batch; the two embeddings are concatenated and projected back to ``dim``.

    Choice: the paper names the baseline only; temperature learnable from 0.07 (CLIP's initialisation), the
    contrastive term is returned for the training system to add (:data:`~mmdiag.models.outputs.AUX_LOSS_KEY`).

    Args:
        dim: feature width (24).
    """

    def __init__(self, dim: int = 24):
        super().__init__()
        self.proj_img = nn.Linear(dim, dim)
        self.proj_tab = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.merge = nn.Linear(2 * dim, dim)
        self.num_features = dim

    def forward(self, img: Tensor, tab: Tensor, pairs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pooled image ``(B, N, dim)`` and record ``(B, M, dim)`` tokens → fused ``(B, dim)`` and the contrastive
        loss over the cases where ``pairs`` (bool ``(B,)``, default all) is true (0 with fewer than two)."""
        zi = nn.functional.normalize(self.proj_img(img.mean(1)), dim=-1)
        zt = nn.functional.normalize(self.proj_tab(tab.mean(1)), dim=-1)
        keep = torch.ones(len(zi), dtype=torch.bool, device=zi.device) if pairs is None else pairs
        if int(keep.sum()) < 2:
            loss = zi.sum() * 0.0
        else:
            logits = self.logit_scale.exp() * zi[keep] @ zt[keep].T
            target = torch.arange(len(logits), device=logits.device)
            loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
        return self.merge(torch.cat([zi, zt], -1)), loss
