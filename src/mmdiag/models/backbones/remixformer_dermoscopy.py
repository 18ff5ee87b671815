"""RemixFormer++ dermoscopy branch (paper 001 §III-C): HRWE window encoder, MSTA texture attention, region encoder.

The image (1024² or 2048²) is cut into non-overlapping 256² windows (row-major). Each window goes through a ViT-S/16
(:class:`~mmdiag.models.backbones.vit.VisionTransformer`, 16×16 patch grid); its final-normalised [CLS] is the window
embedding ``E^WE_i`` and MSTA turns its patch tokens into a texture embedding ``E^TE_i`` (eqs. 15–17). The region
encoder ``R_φ2`` (ViT blocks) runs over ``[E^cls; E^HWE_1..N_W]`` and returns ``(g^D, l^D)``.

Memory: windows are encoded ``chunk_size`` at a time, so the activations alive at once are those of one chunk plus
the ``N_W`` window embeddings; with ``grad_checkpoint`` the training step keeps only each chunk's input and output
too (the chunk is re-run in the backward pass).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_model
from mmdiag.models.backbones.vit import Block, VisionTransformer, resample_pos_embed
from mmdiag.models.layers.recompute import recompute

__all__ = ["MSTA", "HRWE", "DermoscopyBranch", "OursD", "window_partition"]


class MSTA(nn.Module):
    """Multi-Scale Texture Attention (paper 001 §III-C, eqs. 15–17).

    ``a_{j,k} = y_j · t_k``; ``c_{j,k} = softmax_k(−s_k a_{j,k})``; ``E_k = Σ_j c_{j,k} y_j``; the ``K_s`` template
    embeddings are concatenated and projected back to ``dim``.

    Choice: ``s_k`` is a scalar per template (the text writes ``s_k ∈ R^{d_s}`` but uses it as a scalar in eq. 15);
    templates ~ U(±1/√(K_s·dim)), scales ~ U(−1, 0) as Deep-TEN's encoding layer initialises them.
    Deviation: with ``proj="concat_linear"`` (the text: concatenation + a linear layer, 4.72M parameters at
    K_s = 32, dim = 384) Ours-D has ≈47.7M parameters, not Table XIV's 43.0M; ``proj="mean"`` averages the ``K_s``
    embeddings instead (no parameters) for the count the table gives.

    Args:
        dim: token width.
        num_templates: ``K_s``.
        proj: ``"concat_linear"`` or ``"mean"``.
    """

    def __init__(self, dim: int, num_templates: int = 32, proj: Literal["concat_linear", "mean"] = "concat_linear"):
        super().__init__()
        if proj not in ("concat_linear", "mean"):
            raise ConfigError(f"msta_proj={proj!r}; valid: 'concat_linear', 'mean'")
        bound = 1.0 / math.sqrt(num_templates * dim)
        self.templates = nn.Parameter(torch.empty(num_templates, dim).uniform_(-bound, bound))
        self.scales = nn.Parameter(torch.empty(num_templates).uniform_(-1.0, 0.0))
        self.proj = nn.Linear(num_templates * dim, dim) if proj == "concat_linear" else None

    def assignment(self, y: torch.Tensor) -> torch.Tensor:
        """Soft assignment ``c`` ``(N, L, K_s)`` of each patch token to the templates (eqs. 15–16)."""
        return torch.softmax(-self.scales * (y @ self.templates.t()), dim=-1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(N, L, dim)`` → texture embedding ``(N, dim)``."""
        e = self.assignment(y).transpose(1, 2) @ y  # (N, K_s, dim), eq. 17
        return self.proj(e.flatten(1)) if self.proj is not None else e.mean(1)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut ``(B, C, H, W)`` into row-major windows ``(B, N_W, C, window, window)``; the grid ``(gh, gw)``.

    Choice: a side that is not a multiple of ``window`` is zero-padded on the right/bottom.
    """
    b, c, h, w = x.shape
    if h % window or w % window:
        x = F.pad(x, (0, -w % window, 0, -h % window))
    gh, gw = x.shape[-2] // window, x.shape[-1] // window
    win = x.reshape(b, c, gh, window, gw, window).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, window, window)
    return win, (gh, gw)


class HRWE(nn.Module):
    """High-Resolution Window Encoder (paper 001 §III-C): per-window ViT [CLS] (+ MSTA texture embedding).

    Args:
        encoder: the window encoder ``T_φ1`` (a ViT built for ``window_size`` inputs, no classifier).
        window_size: window side in pixels.
        msta: the texture module, or ``None`` (Table VII "+HRWE" row: ``E^HWE = E^WE``).
        chunk_size: windows encoded at once (all windows of the batch are flattened first).
        grad_checkpoint: in training, recompute each chunk in the backward pass instead of keeping its activations.
    """

    def __init__(self, encoder: VisionTransformer, window_size: int, msta: MSTA | None, chunk_size: int = 16,
                 grad_checkpoint: bool = False):
        super().__init__()
        if chunk_size < 1:
            raise ConfigError(f"chunk_size={chunk_size} must be >= 1")
        self.encoder = encoder
        self.msta = msta
        self.window_size = window_size
        self.chunk_size = chunk_size
        self.grad_checkpoint = grad_checkpoint

    def encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Windows ``(n, C, w, w)`` → ``E^HWE`` ``(n, dim)``."""
        tokens = self.encoder.forward_features(windows)
        e = tokens[:, 0]
        if self.msta is not None:
            e = e + self.msta(tokens[:, self.encoder.num_prefix_tokens:])
        return e

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``(B, C, H, W)`` → window embeddings ``(B, N_W, dim)`` and the window grid."""
        win, grid = window_partition(x, self.window_size)
        b, n = win.shape[:2]
        flat = win.flatten(0, 1)
        outs = []
        for chunk in flat.split(self.chunk_size):
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                outs.append(recompute(self.encode_windows, chunk))
            else:
                outs.append(self.encode_windows(chunk))
        return torch.cat(outs).reshape(b, n, -1), grid


class DermoscopyBranch(nn.Module):
    """RemixFormer++ dermoscopy branch: HRWE + MSTA + region encoder ``R_φ2`` (paper 001 §III-C).

    ``forward_features(x)`` → final-normalised region tokens ``(B, 1 + N_W, dim)`` (``"NLC"``);
    ``forward(x)`` → ``(g^D, l^D)`` = (image [CLS] ``(B, dim)``, window tokens ``(B, N_W, dim)``).
    :class:`OursD` adds the classifier.

    Choice: the region encoder has a learnable position embedding over the window grid of ``img_size``
    (``(1 + N_W) × dim``, the text mentions none), bicubically resampled for other grids; its blocks have the window
    encoder's width/heads. Window-encoder position embeddings of a 224² checkpoint are resampled to the 16×16 grid
    at load (:func:`~mmdiag.models.backbones.vit.checkpoint_filter_fn`).

    Args:
        img_size: image side the region position table covers (1024 → 16 windows, 2048 → 64).
        window_size: window side (256).
        patch_size: window-encoder patch side (16).
        in_chans: input channels.
        embed_dim: token width (ViT-S: 384).
        depth: window-encoder blocks.
        num_heads: attention heads (both encoders).
        region_depth: region-encoder blocks.
        msta: add the MSTA texture embedding.
        num_templates: MSTA ``K_s``.
        msta_proj: see :class:`MSTA`.
        chunk_size: windows encoded at once.
        grad_checkpoint: recompute window chunks in the backward pass.
        drop_path_rate: stochastic depth of both encoders' last blocks.
    """

    output_fmt = explain_fmt = "NLC"
    explain_layer = "norm"

    def __init__(self, img_size: int = 1024, window_size: int = 256, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 region_depth: int = 12, msta: bool = True, num_templates: int = 32,
                 msta_proj: Literal["concat_linear", "mean"] = "concat_linear", chunk_size: int = 16,
                 grad_checkpoint: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        if img_size % window_size:
            raise ConfigError(f"img_size={img_size} is not a multiple of window_size={window_size}")
        self.num_features = embed_dim
        self.in_chans = in_chans
        encoder = VisionTransformer(img_size=window_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                    embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                    drop_path_rate=drop_path_rate)
        self.hrwe = HRWE(encoder, window_size, MSTA(embed_dim, num_templates, msta_proj) if msta else None,
                         chunk_size=chunk_size, grad_checkpoint=grad_checkpoint)
        self.grid_size = (img_size // window_size, img_size // window_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, drop_path=drop_path_rate * i / max(region_depth - 1, 1))
            for i in range(region_depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def window_encoder(self) -> VisionTransformer:
        """``T_φ1``: load DINO weights into this (``checkpoint_filter_fn`` of the ViT)."""
        return self.hrwe.encoder

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", *(f"hrwe.encoder.{k}" for k in self.hrwe.encoder.no_weight_decay())}

    def region_tokens(self, emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``[E^cls; E^HWE] + pos`` ``(B, 1 + N_W, dim)`` ready for the region blocks."""
        pos = self.pos_embed if grid == self.grid_size else resample_pos_embed(self.pos_embed, grid)
        return torch.cat([self.cls_token.expand(emb.shape[0], -1, -1), emb], 1) + pos

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` → final-normalised region tokens ``(B, 1 + N_W, dim)``."""
        emb, grid = self.hrwe(x)
        tokens = self.region_tokens(emb, grid)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g^D, l^D)``: the image [CLS] ``(B, dim)`` and the window tokens ``(B, N_W, dim)``."""
        tokens = self.forward_features(x)
        return tokens[:, 0], tokens[:, 1:]


class OursD(DermoscopyBranch):
    """Ours-D as an image classifier (timm's API): ``Linear(g^D)`` on the dermoscopy branch.

    Args:
        num_classes: classifier outputs (0 = none: ``forward`` returns ``g^D``).
        **kwargs: options of :class:`DermoscopyBranch`.
    """

    classifier_name = "head"

    def __init__(self, num_classes: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x))


_TINY = dict(img_size=64, window_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, region_depth=1,
             num_templates=4, chunk_size=2)


@register_model(options=(OursD, DermoscopyBranch), paper="remixformer")
def remixformer_d(**kwargs: Any) -> OursD:
    """RemixFormer++ Ours-D: ViT-S/16 HRWE on 256² windows of a 1024² image, MSTA (K_s = 32), region encoder."""
    return OursD(**kwargs)


@register_model(options=(OursD, DermoscopyBranch), paper="remixformer")
def tiny_remixformer_d(**kwargs: Any) -> OursD:
    """Test variant: 64² image, 32² windows of 8² patches, width 32, one block per encoder, 4 templates."""
    return OursD(**{**_TINY, **kwargs})
