"""Swin Transformer (Liu et al. 2021) and its class-token variant CLS-Swin (RemixFormer++, paper 001 Sec. III-B.1).

One :class:`SwinTransformer` covers plain Swin (average-pooled head, timm/official weights) and, with
``class_token=True``, the CLS-WMSA encoder of RemixFormer++'s clinical branch: a [CLS] token that attends to every
patch token while patch tokens attend within their (shifted) window plus the [CLS] key (eqs. 1-5).

Any input size: the image is zero-padded to the patch multiple, each block pads its map right/bottom to the window
multiple (keys on padded positions receive exactly zero attention, the [CLS] query ignores them too) and crops back,
and patch merging pads odd sides with zeros. Blocks whose map is no larger than the window do not shift.

mmdiag's key layout is timm's (>= 0.9)::

    patch_embed.{proj,norm}.*                         Conv2d(in_chans, C, 4, 4) + LayerNorm
    cls_token [1, 1, C]                               class_token only
    layers.s.downsample.{norm [4C'], reduction}       s >= 1: PatchMerging(C' -> 2C') that starts stage s
    layers.s.cls_downsample.{weight,bias}             class_token only, s >= 1: Linear(C' -> 2C') for the [CLS]
    layers.s.blocks.b.{norm1, attn.qkv, attn.relative_position_bias_table [(2ws-1)^2, heads], attn.proj,
                       norm2, mlp.fc1, mlp.fc2}
    norm.*                                            final LayerNorm
    head.fc.{weight,bias}                             classifier (absent when num_classes=0)

The official release (``swin_tiny_patch4_window7_224.pth``) puts stage s's merging at ``layers.{s-1}.downsample``,
the classifier at ``head.*`` and stores ``relative_position_index`` / ``attn_mask`` buffers:
:func:`checkpoint_filter_fn` converts it (buffers accepted and ignored; here they are rebuilt, non-persistent).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiag.errors import ConfigError
from mmdiag.models._factory import register_model
from mmdiag.models.layers.drop import DropPath
from mmdiag.models.layers.mlp import Mlp
from mmdiag.models.layers.patch_embed import PatchEmbed, PatchMerging
from mmdiag.models.layers.windows import (padded_windows, relative_position_index, window_attention_mask,
                                          window_partition, window_reverse)

__all__ = ["SwinTransformer", "SwinBlock", "SwinStage", "WindowAttention", "checkpoint_filter_fn"]

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias (W-MSA), optionally with a class token
    (CLS-WMSA, paper 001 eqs. 1-5).

    Without [CLS]: softmax(q k^T / sqrt(d_h) + B + mask) v per window. With [CLS] (eq. 1-4): each window's queries
    attend to ``[k_cls; k_window]``; the [CLS] query attends to ``[k_cls; every patch key]``.

    Choice: the relative-position bias of the [CLS] row/column is zero (the ``(2ws-1)^2 x heads`` table of the
    ImageNet checkpoint loads unchanged); the shift mask never masks the [CLS] key.

    Args:
        dim: token width.
        num_heads: attention heads.
        window_size: window side ``ws``.
        qkv_bias: bias on the fused qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"WindowAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, length, _ = t.shape
        return self.qkv(t).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, xw: Tensor, cls: Tensor | None = None, mask: Tensor | None = None,
                pad: Tensor | None = None, scores: bool = False) -> tuple[Tensor, Tensor | None, tuple | None]:
        """Attend.

        Args:
            xw: window tokens ``(B * nW, N, C)`` (:func:`window_partition` order).
            cls: normalised class tokens ``(B, 1, C)`` or ``None``.
            mask: additive mask ``(nW, N, N)`` (:func:`window_attention_mask`) or ``None``.
            pad: bool ``(nW, N)``, padded window tokens (hidden from the [CLS] query), or ``None``.
            scores: also return the scaled [CLS]-patch logits of eqs. 6-7 (needs ``cls``).

        Returns:
            ``(window outputs (B*nW, N, C), cls output (B, 1, C) or None, (O1, O2) or None)`` with ``O1`` = [CLS]
            query vs patch keys and ``O2`` = patch queries vs [CLS] key, each ``(B, heads, nW, N)``, ``-inf`` on padding.
        """
        bw, n, c = xw.shape
        q, k, v = self._split(xw)  # (B*nW, h, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, -1).permute(2, 0, 1)  # (h, N, N)
        logits = (q * self.scale) @ k.transpose(-2, -1) + bias
        if cls is None:
            if mask is not None:
                nw = mask.shape[0]
                logits = (logits.reshape(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).reshape_as(logits)
            out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
            return self.proj(out), None, None
        b = cls.shape[0]
        nw = bw // b
        qc, kc, vc = self._split(cls)  # (B, h, 1, d)
        kc_w, vc_w = kc.repeat_interleave(nw, 0), vc.repeat_interleave(nw, 0)
        to_cls = (q * self.scale) @ kc_w.transpose(-2, -1)  # (B*nW, h, N, 1)
        logits = torch.cat([to_cls, logits], -1)
        if mask is not None:
            full = F.pad(mask, (1, 0))  # the [CLS] key is never masked
            logits = (logits.reshape(b, nw, self.num_heads, n, n + 1) + full[None, :, None]).reshape_as(logits)
        out = (logits.softmax(-1) @ torch.cat([vc_w, v], 2)).transpose(1, 2).reshape(bw, n, c)
        # [CLS] query against [CLS] and every patch key (eq. 1)
        k_all = k.reshape(b, nw, self.num_heads, n, self.head_dim).permute(0, 2, 1, 3, 4)  # (B, h, nW, N, d)
        v_all = v.reshape(b, nw, self.num_heads, n, self.head_dim).permute(0, 2, 1, 3, 4).flatten(2, 3)
        o1 = torch.einsum("bhd,bhwnd->bhwn", qc[:, :, 0] * self.scale, k_all)
        if pad is not None:
            o1 = o1.masked_fill(pad, float("-inf"))
        self_logit = (qc * self.scale * kc).sum(-1)  # (B, h, 1)
        att = torch.cat([self_logit, o1.flatten(2)], -1).softmax(-1)
        out_c = (att[..., :1, None] * vc[:, :, 0:1]).squeeze(2) + torch.einsum("bhl,bhld->bhd", att[..., 1:], v_all)
        out_c = out_c.reshape(b, 1, c)
        extra = None
        if scores:
            o2 = to_cls[..., 0].reshape(b, nw, self.num_heads, n).transpose(1, 2)
            if pad is not None:
                o2 = o2.masked_fill(pad, float("-inf"))
            extra = (o1, o2)
        return self.proj(out), self.proj(out_c), extra


class SwinBlock(nn.Module):
    """Swin Transformer block: (shifted) window attention and MLP, pre-norm residuals, on a ``(B, H, W, C)`` map
    (and the [CLS] token, which shares the block's norms, attention projections and MLP — paper 001 Sec. III-B.1).

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: window side.
        shift_size: cyclic shift (``0`` = W-MSA, ``ws // 2`` = SW-MSA); not applied when the map is no larger than
            the window.
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias on qkv.
        drop_path: stochastic depth.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, cls: Tensor | None = None,
                scores: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Map ``(B, H, W, C)`` (+ [CLS] ``(B, 1, C)``) -> same shapes, and S^attn ``(B, H, W)`` when ``scores``.

        Deviation: official Swin fixes the window to ``min(H, W)`` when the map is no larger than the window; here
        the window keeps its size and the map is padded with masked keys (identical when ``H = W = ws``).
        """
        b, h, w, c = x.shape
        ws = self.window_size
        shift = self.shift_size if min(h, w) > ws else 0
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        xn = F.pad(self.norm1(x), (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            xn = torch.roll(xn, (-shift, -shift), (1, 2))
        padded = hp > h or wp > w
        mask = window_attention_mask(h, w, hp, wp, ws, shift, x.device).to(x.dtype) if shift or padded else None
        pad = padded_windows(h, w, hp, wp, ws, shift, x.device) if padded and cls is not None else None
        out, out_c, logits = self.attn(window_partition(xn, ws), None if cls is None else self.norm1(cls), mask, pad,
                                       scores)
        out = window_reverse(out, ws, hp, wp)
        if shift:
            out = torch.roll(out, (shift, shift), (1, 2))
        x = x + self.drop_path(out[:, :h, :w])
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if cls is not None:
            cls = cls + self.drop_path(out_c)
            cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        s_attn = None
        if logits is not None:
            grids = [window_reverse(o.permute(0, 2, 3, 1).reshape(-1, ws * ws, self.attn.num_heads), ws, hp, wp)
                     for o in logits]
            if shift:
                grids = [torch.roll(g, (shift, shift), (1, 2)) for g in grids]
            o1, o2 = (g[:, :h, :w].reshape(b, h * w, -1).softmax(1) for g in grids)  # eqs. 6-7 softmax over N_P
            s_attn = (o1 * o2).mean(-1).reshape(b, h, w)  # eq. 8
        return x, cls, s_attn


class SwinStage(nn.Module):
    """One Swin stage: optional 2x2 patch merging (and a ``Linear(C' -> C)`` for the [CLS]), then blocks alternating
    W-MSA and SW-MSA.

    Choice (paper 001 silent; the notes' parameter arithmetic): the [CLS] token crosses patch merging through
    ``cls_downsample = Linear(C', 2C')`` with bias, which makes Table X's Swin-T count 27.9M.
    """

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: int, downsample: bool,
                 class_token: bool, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: Sequence[float] = (0.0,)):
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else None
        self.cls_downsample = nn.Linear(in_dim, dim) if downsample and class_token else None
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias,
                      drop_path[i]) for i in range(depth)])

    def forward(self, x: Tensor, cls: Tensor | None = None,
                scores: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(B, H, W, C')`` (+ [CLS]) -> ``(B, H/2, W/2, C)``; S^attn of the last block when ``scores``."""
        if self.downsample is not None:
            x = self.downsample(F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2)))
            if cls is not None:
                cls = self.cls_downsample(cls)
        s_attn = None
        for i, blk in enumerate(self.blocks):
            x, cls, s_attn = blk(x, cls, scores and i == len(self.blocks) - 1)
        return x, cls, s_attn


class SwinHead(nn.Module):
    """Pooling (the [CLS] token, or the average over the map), dropout and ``fc`` (timm's ``head.fc`` names)."""

    def __init__(self, in_features: int, num_classes: int, class_token: bool, drop_rate: float = 0.0):
        super().__init__()
        self.class_token = class_token
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x[:, 0] if self.class_token else x.mean((1, 2))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    """Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows"); with
    ``class_token=True`` the CLS-Swin global encoder of RemixFormer++ (paper 001 Sec. III-B.1, eqs. 1-5).

    ``forward_features`` returns the final-normalised map ``(B, H, W, C)`` (``output_fmt="NHWC"``), or with a class
    token the tokens ``(B, 1 + H*W, C)`` = ``[g^cls, g^patch]`` (``output_fmt="NLC"``). The head pools the [CLS]
    token, or averages the map.

    Args:
        patch_size: patch-embedding stride.
        in_chans: input channels.
        num_classes: classifier outputs (``0``: none).
        embed_dim: stage-1 width (doubles per stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: window side.
        mlp_ratio: MLP hidden width / width.
        qkv_bias: bias on qkv projections.
        class_token: CLS-WMSA with a [CLS] token (RemixFormer++).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the last block (linear from 0).

    Raises:
        ConfigError: ``depths`` and ``num_heads`` differ in length, or a width is not divisible by its heads.
    """

    classifier_name = "head.fc"

    def __init__(self, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.2):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ConfigError(f"depths={tuple(depths)} and num_heads={tuple(num_heads)} must have the same length")
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.class_token = class_token
        self.patch_size = patch_size
        self.window_size = window_size
        self.output_fmt = self.explain_fmt = "NLC" if class_token else "NHWC"
        self.explain_layer = "norm"
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_features = self.head_hidden_size = dims[-1]
        self.feature_info = [dict(num_chs=d, reduction=patch_size * 2 ** i, module=f"layers.{i}")
                             for i, d in enumerate(dims)]
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer=nn.LayerNorm, output_fmt="NHWC")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.layers = nn.ModuleList()
        for i, (d, h) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(SwinStage(dims[max(i - 1, 0)], dims[i], d, h, window_size, i > 0, class_token,
                                         mlp_ratio, qkv_bias, rates[start:start + d]))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = SwinHead(dims[-1], num_classes, class_token, drop_rate)
        self.pretrained_cfg: dict[str, Any] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("relative_position_bias_table") or name == "cls_token":
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: SwinTransformer) -> dict[str, Tensor]:
        """Convert an official / timm Swin checkpoint; see the module-level :func:`checkpoint_filter_fn`."""
        return checkpoint_filter_fn(state_dict, model)

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay."""
        return {"cls_token"} | {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem / stages (timm convention)."""
        return {"stem": r"^patch_embed|^cls_token",
                "blocks": r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+)\.downsample", (0,)),
                                                            (r"^layers\.(\d+)\.cls_downsample", (0,)),
                                                            (r"^layers\.(\d+)\.\w+\.(\d+)", None),
                                                            (r"^norm", (99999,))]}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head.fc`` by a fresh ``Linear(num_features, num_classes)``; ``0`` removes it."""
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0")
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Image ``(B, in_chans, H, W)`` -> stage-1 map ``(B, H/4, W/4, C)`` (zero-padded to the patch multiple) and
        the [CLS] token ``(B, 1, C)`` (``None`` without class token).

        Raises:
            ConfigError: ``x`` is not a batch of ``in_chans``-channel images.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"expected images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        p = self.patch_size
        x = self.patch_embed(F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p)))
        cls = self.cls_token.expand(x.shape[0], -1, -1) if self.cls_token is not None else None
        return x, cls

    def forward_tokens(self, x: Tensor, scores: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Final-normalised map ``(B, h, w, C)``, final-normalised [CLS] ``(B, 1, C)`` (or ``None``) and, when
        ``scores``, S^attn ``(B, h, w)`` of the last block (eqs. 6-8; needs the class token)."""
        if scores and not self.class_token:
            raise ConfigError("S^attn needs the class token: build the model with class_token=True")
        x, cls = self.embed(x)
        s_attn = None
        for i, stage in enumerate(self.layers):
            x, cls, s_attn = stage(x, cls, scores and i == len(self.layers) - 1)
        return self.norm(x), None if cls is None else self.norm(cls), s_attn

    def forward_features(self, x: Tensor) -> Tensor:
        x, cls, _ = self.forward_tokens(x)
        return x if cls is None else torch.cat([cls, x.flatten(1, 2)], 1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None) -> list[Tensor]:
        """Stage outputs as channels-first maps ``(B, C_s, H_s, W_s)``; the last stage's is final-normalised.

        Args:
            indices: stage indices, or an int ``n`` for the last ``n`` stages (default: all).

        Raises:
            ConfigError: an index outside ``0..len(depths)-1``.
        """
        n = len(self.layers)
        take = range(n) if indices is None else range(n - indices, n) if isinstance(indices, int) else indices
        take = sorted(take)
        if any(not 0 <= i < n for i in take):
            raise ConfigError(f"forward_intermediates: indices {list(take)} outside 0..{n - 1}")
        x, cls = self.embed(x)
        out = []
        for i, stage in enumerate(self.layers[:take[-1] + 1]):
            x, cls, _ = stage(x, cls)
            if i in take:
                out.append((self.norm(x) if i == n - 1 else x).permute(0, 3, 1, 2))
        return out


def _convert_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official layout -> timm's: merging moves to the stage it starts, ``head.*`` -> ``head.fc.*``."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) + 1)
        elif parts[0] == "head":
            parts.insert(1, "fc")
        out[".".join(parts)] = v
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: SwinTransformer) -> dict[str, Tensor]:
    """Convert a Swin checkpoint (official release or timm) to ``model``'s key names.

    The official layout is recognised by its sentinel ``layers.0.downsample.reduction.weight`` (timm's stage 0 has
    no merging). ``relative_position_index`` and ``attn_mask`` buffers are dropped (rebuilt here). A classifier in a
    checkpoint for a model without one is dropped; a model's classifier or class-token parameters (``cls_token``,
    ``cls_downsample``) absent from the checkpoint keep their fresh initialisation (both logged).
    """
    state = {k: v for k, v in state_dict.items()
             if not k.endswith("relative_position_index") and not k.endswith("attn_mask")}
    if "layers.0.downsample.reduction.weight" in state:
        state = _convert_official(state)
        _log.info("official Swin checkpoint converted to timm names")
    own = model.state_dict()
    if not any(k.startswith("head.") for k in own):
        dropped = [k for k in state if k.startswith("head.")]
        if dropped:
            _log.info("checkpoint classifier dropped: the model has no classifier (num_classes=0)")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    fresh = [k for k in own if k not in state and (k.startswith("head.") or k == "cls_token" or ".cls_downsample." in k)]
    if fresh:
        _log.info("newly initialised (not in the checkpoint): %s", ", ".join(fresh))
        state.update({k: own[k] for k in fresh})
    return state


# ---------------------------------------------------------------------------------------------------------------------
# Variants

_SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
_TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, drop_path_rate=0.0)


def _create_swin(defaults: dict[str, Any], kwargs: dict[str, Any]) -> SwinTransformer:
    model = SwinTransformer(**{**defaults, **kwargs})
    model.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (model.in_chans, 224, 224),
                            "interpolation": "bicubic"}
    return model


@register_model(options=SwinTransformer)
def swin_t(**kwargs: Any) -> SwinTransformer:
    """Swin-T (``swin_tiny_patch4_window7_224``): 96 wide, depths 2-2-6-2, window 7; any input size."""
    return _create_swin(_SWIN_T, kwargs)


@register_model(options=SwinTransformer)
def swin_t_cls(**kwargs: Any) -> SwinTransformer:
    """CLS-Swin-T (RemixFormer++ global encoder, paper 001 eqs. 1-5): Swin-T with CLS-WMSA, classified on [CLS]."""
    return _create_swin(dict(_SWIN_T, class_token=True), kwargs)


@register_model(options=SwinTransformer)
def tiny_swin(**kwargs: Any) -> SwinTransformer:
    """Test variant with Swin's structure (16 wide, 4 stages of 2 blocks, window 4)."""
    return _create_swin(_TINY, kwargs)


@register_model(options=SwinTransformer)
def tiny_swin_cls(**kwargs: Any) -> SwinTransformer:
    """Test variant of CLS-Swin (16 wide, 4 stages of 2 blocks, window 4)."""
    return _create_swin(dict(_TINY, class_token=True), kwargs)
