"""Vision Transformer backbones of the vision foundation models (VFMs) used by EI (paper 003).

One :class:`VisionTransformer` covers DINOv2 ViT-S/14 and ViT-B/14, with and without 4 register tokens, DINO (v1)
ViT-S/16 (RemixFormer++'s window encoder) and the OpenAI CLIP ViT-B/16 image tower. Their published weights load
unchanged from a local file in every real layout (official DINOv2 ``.pth``, DINO, OpenAI CLIP, timm, Hugging Face
transformers) through :func:`checkpoint_filter_fn`.

mmdiag's own key layout (timm names)::

    patch_embed.proj.{weight,bias}   Conv2d(in_chans, C, patch, patch); CLIP has no bias
    cls_token [1, 1, C]              reg_token [1, R, C] (register models only)
    pos_embed [1, 1 + gh*gw, C]      row 0 belongs to [CLS]; register tokens get no position embedding
    norm_pre.*                       CLIP's ln_pre only
    blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}   ls* only with LayerScale
    norm.*                           final LayerNorm
    projection.weight [P, C]         CLIP's 768->512 image projection, only when built with ``proj_dim``
    head.{weight,bias}               classifier (absent when ``num_classes=0``)

Token sequence ``(B, L, C)``: ``[CLS, REG x R, patches (row-major)]``; :attr:`VisionTransformer.num_prefix_tokens`
is ``1 + R``. The forward is split so that EI can add tokens and read any layer::

    tokens = model.embed(x)            # pad, patchify, + [CLS], + position embedding, + registers, (CLIP) norm_pre
    for blk in model.blocks: tokens = blk(tokens)   # nn.ModuleList of Block, each (B, L, C) -> (B, L, C)
    tokens = model.norm(tokens)        # = model.forward_tokens(model.embed(x)) = model.forward_features(x)
    logits = model.forward_head(tokens)  # [CLS] (token 0) -> [projection] -> head
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.models._factory import register_model
from mmdiag.models.layers.attention import Attention
from mmdiag.models.layers.drop import DropPath
from mmdiag.models.layers.input_norm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mmdiag.models.layers.mlp import Mlp, get_act_layer
from mmdiag.models.layers.patch_embed import PatchEmbed
from mmdiag.models.layers.recompute import recompute

__all__ = ["VisionTransformer", "Block", "LayerScale", "checkpoint_filter_fn", "resample_pos_embed"]

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerScale(nn.Module):
    """Per-channel learned scale ``x * gamma`` on a residual branch (DINOv2 / CaiT LayerScale).

    Args:
        dim: channels.
        init_values: initial value of every ``gamma`` entry.
    """

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(ls1(attn(norm1(x))))``, then the same with ``norm2``/``mlp``/``ls2``.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``dim``.
        qkv_bias: bias on the fused qkv projection.
        init_values: LayerScale initial value; ``None`` = no LayerScale (CLIP).
        act_layer: MLP activation class.
        norm_eps: LayerNorm epsilon.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_values: float | None = None, act_layer: type[nn.Module] = nn.GELU, norm_eps: float = 1e-6,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.grad_checkpointing = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """With ``grad_checkpointing`` (training with gradients), the block's activations are recomputed in the
        backward pass instead of stored (same result, less memory)."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return recompute(self._forward, x)
        return self._forward(x)


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], *, antialias: bool = False,
                       offset: float = 0.0) -> torch.Tensor:
    """Bicubically resample the patch rows of a ``[1, 1 + M*M, C]`` position table to ``grid``; row 0 is kept.

    With ``offset == 0`` the target size is given directly (``size=grid``); with ``offset > 0`` it is given as
    ``scale_factor = (g + offset) / M`` per axis, reproducing DINOv2's hub interpolation (which samples at slightly
    different positions). Computed in float32, returned in the input dtype.

    Raises:
        CheckpointError: the table has no square patch grid.
    """
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise CheckpointError(f"pos_embed has {n} patch rows, not a square grid; cannot resample it to {grid}")
    if (m, m) == tuple(grid):
        return pos_embed
    patch = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        size_kw: dict[str, Any] = {"scale_factor": ((grid[0] + offset) / m, (grid[1] + offset) / m)}
    else:
        size_kw = {"size": tuple(grid)}
    patch = F.interpolate(patch, mode="bicubic", align_corners=False, antialias=antialias, **size_kw)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


class VisionTransformer(nn.Module):
    """Vision Transformer of DINOv2 (Oquab et al. 2023; Darcet et al. 2024 registers) and the CLIP image tower.

    Pooling: ``forward_head`` takes the final-normalised [CLS] token (index 0), as DINOv2's and CLIP's heads and EI do.

    Position embeddings: the table covers the grid of ``img_size``. With ``dynamic_img_size`` (DINOv2) it is
    resampled at run time for every other input grid (bicubic; ``interpolate_antialias``/``interpolate_offset`` as in
    the DINOv2 hub models). Without it (CLIP) the input grid must match ``img_size``; build the model with the image
    size you train at and the checkpoint table is resized once at load (bicubic, no antialias, as EI does).

    Args:
        img_size: side of the image the position table covers.
        patch_size: patch side.
        in_chans: input channels.
        num_classes: classifier outputs; ``0`` = no classifier (``forward`` returns pooled features).
        embed_dim: token width ``C``.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        qkv_bias: bias on qkv projections.
        init_values: LayerScale initial value (DINOv2 1.0); ``None`` = no LayerScale.
        reg_tokens: number of register tokens (0 or 4 for the DINOv2 checkpoints).
        pre_norm: LayerNorm ``norm_pre`` after the embedding (CLIP ``ln_pre``).
        patch_bias: bias on the patch projection.
        act_layer: MLP activation, ``"gelu"`` (exact) or ``"quick_gelu"`` (OpenAI CLIP's).
        norm_eps: LayerNorm epsilon (DINOv2 1e-6, CLIP 1e-5).
        dynamic_img_size: resample the position table at run time for any input grid.
        interpolate_antialias: antialias flag of the run-time bicubic resampling.
        interpolate_offset: DINOv2 hub's scale-factor offset of the run-time resampling (0 = exact size).
        proj_dim: width of a bias-free projection applied to the pooled [CLS] before the head (CLIP 512); ``None``
            = no projection.
        drop_rate: dropout on the pooled feature before the head.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
        grad_checkpointing: recompute each block's activations in the backward pass (less memory, about one more
            forward of compute); :meth:`set_grad_checkpointing` switches it later.

    Raises:
        ConfigError: an option is out of range.
    """

    classifier_name = "head"
    output_fmt = explain_fmt = "NLC"
    explain_layer = "norm"

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 0,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, init_values: float | None = None, reg_tokens: int = 0, pre_norm: bool = False,
                 patch_bias: bool = True, act_layer: Literal["gelu", "quick_gelu"] = "gelu", norm_eps: float = 1e-6,
                 dynamic_img_size: bool = False, interpolate_antialias: bool = False, interpolate_offset: float = 0.0,
                 proj_dim: int | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 grad_checkpointing: bool = False):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"img_size={img_size} is not a multiple of patch_size={patch_size}; use "
                              f"{math.ceil(img_size / patch_size) * patch_size} (inputs are zero-padded to it)")
        if reg_tokens < 0 or num_classes < 0:
            raise ConfigError(f"reg_tokens={reg_tokens} and num_classes={num_classes} must be >= 0")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.head_hidden_size = proj_dim or embed_dim
        self.num_reg_tokens = reg_tokens
        self.num_prefix_tokens = 1 + reg_tokens
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.dynamic_img_size = dynamic_img_size
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset

        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer=None, bias=patch_bias,
                                      output_fmt="NLC")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else nn.Identity()
        act = get_act_layer(act_layer)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, init_values=init_values, act_layer=act,
                  norm_eps=norm_eps, drop_path=drop_path_rate * i / max(depth - 1, 1)) for i in range(depth)])
        self.set_grad_checkpointing(grad_checkpointing)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.projection = nn.Linear(embed_dim, proj_dim, bias=False) if proj_dim else nn.Identity()
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg: dict[str, Any] = {}
        self._init_weights()

    @staticmethod
    def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor],
                             model: VisionTransformer) -> dict[str, torch.Tensor]:
        """Convert a published checkpoint to this model's names; see the module-level :func:`checkpoint_filter_fn`."""
        return checkpoint_filter_fn(state_dict, model)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay."""
        return {"pos_embed", "cls_token", "reg_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Regexes grouping parameters into stem / blocks / final norm (timm convention, for layer-wise LR)."""
        return {"stem": r"^cls_token|^reg_token|^pos_embed|^patch_embed|^norm_pre",
                "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm\.", (99999,))]}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh ``Linear(head_hidden_size, num_classes)``; ``0`` removes it."""
        if num_classes < 0:
            raise ConfigError(f"num_classes={num_classes} must be >= 0")
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()

    def _pos_embed_for(self, grid: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        if not self.dynamic_img_size:
            p = self.patch_size
            raise ConfigError(f"input {hw[0]}x{hw[1]} gives a {grid[0]}x{grid[1]} patch grid but the model "
                              f"was built for img_size={self.grid_size[0] * p} ({self.grid_size[0]}x"
                              f"{self.grid_size[1]}); build it with img_size equal to your (square) input size")
        return resample_pos_embed(self.pos_embed, grid, antialias=self.interpolate_antialias,
                                  offset=self.interpolate_offset)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, in_chans, H, W)`` -> tokens ``(B, num_prefix_tokens + gh*gw, C)`` ready for ``blocks``.

        Zero-pads to the patch multiple, embeds patches, prepends [CLS], adds the position embedding (resampled to
        the grid if needed), inserts the register tokens after [CLS] (no position embedding), applies ``norm_pre``.

        Deviation: upstream DINOv2 and CLIP require divisible inputs; EI's modified DINOv2 pads the normalised image
        with zeros on the right/bottom (e.g. 512 -> 518), which this does for every model.

        Raises:
            ConfigError: ``x`` is not a 4-D batch with ``in_chans`` channels, or (fixed-size model) its grid differs.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"expected images (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}; build the "
                              f"model with in_chans={x.shape[1] if x.ndim == 4 else '?'} or fix the input")
        h, w, p = x.shape[-2], x.shape[-1], self.patch_size
        if h % p or w % p:
            x = F.pad(x, (0, -w % p, 0, -h % p))
        tokens = self.patch_embed(x)
        pos = self._pos_embed_for((x.shape[-2] // p, x.shape[-1] // p), (h, w))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos.to(tokens.dtype)
        if self.reg_token is not None:
            reg = self.reg_token.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], reg, tokens[:, 1:]], dim=1)
        return self.norm_pre(tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block's activations in the backward pass (timm's name)."""
        for blk in self.blocks:
            blk.grad_checkpointing = enable

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every block then the final norm on a token sequence ``(B, L, C)`` (extra tokens allowed)."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normalised tokens ``(B, num_prefix_tokens + N, C)``: [CLS], registers, patches."""
        return self.forward_tokens(self.embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the [CLS] token (index 0) of ``forward_features`` output, apply dropout and the optional projection.

        Returns:
            ``(B, head_hidden_size)`` if ``pre_logits`` else logits ``(B, num_classes)`` (pooled features when the
            model has no classifier).
        """
        x = self.projection(self.head_drop(x[:, 0]))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint conversion: every layout is mapped to mmdiag's names (module docstring), recognised by a sentinel key.

_OPENAI_SWAPS = (("conv1.", "patch_embed.proj."), ("transformer.resblocks.", "blocks."), ("ln_pre.", "norm_pre."),
                 ("ln_post.", "norm."), (".ln_1.", ".norm1."), (".ln_2.", ".norm2."), ("attn.in_proj_", "attn.qkv."),
                 ("attn.out_proj.", "attn.proj."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))
_HF_CLIP_SWAPS = (("embeddings.patch_embedding.", "patch_embed.proj."), ("pre_layrnorm.", "norm_pre."),
                  ("post_layernorm.", "norm."), ("encoder.layers.", "blocks."), (".layer_norm1.", ".norm1."),
                  (".layer_norm2.", ".norm2."), ("self_attn.out_proj.", "attn.proj."))
_HF_DINOV2_SWAPS = (("embeddings.patch_embeddings.projection.", "patch_embed.proj."), ("encoder.layer.", "blocks."),
                    ("attention.output.dense.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"),
                    ("layer_scale2.lambda1", "ls2.gamma"), ("layernorm.", "norm."))
_HF_QKV = {"clip": (r"(.*)\.self_attn\.(q|k|v)_proj\.(weight|bias)$", ("q", "k", "v")),
           "dinov2": (r"(.*)\.attention\.attention\.(query|key|value)\.(weight|bias)$", ("query", "key", "value"))}


def _rename(state: Mapping[str, torch.Tensor], swaps: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for old, new in swaps:
            k = k.replace(old, new)
        out[k] = v
    return out


def _take_prefix(state: Mapping[str, torch.Tensor], prefix: str, layout: str) -> dict[str, torch.Tensor]:
    """Keep the keys under ``prefix`` (stripped); log the others (a text tower, a classifier) as dropped."""
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    other = sorted(k for k in state if not k.startswith(prefix))
    if other:
        _log.info("%s checkpoint: dropped %d keys outside %r: %s", layout, len(other), prefix,
                  ", ".join(other[:5]) + (", ..." if len(other) > 5 else ""))
    return inner


def _fuse_qkv(state: dict[str, torch.Tensor], kind: Literal["clip", "dinov2"]) -> dict[str, torch.Tensor]:
    """Concatenate Hugging Face's separate q/k/v projections (rows q, k, v) into ``<block>.attn.qkv``."""
    pattern, order = _HF_QKV[kind]
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out = {}
    for k, v in state.items():
        m = re.fullmatch(pattern, k)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        else:
            out[k] = v
    for (block, param), qkv in parts.items():
        if set(qkv) != set(order):
            raise CheckpointError(f"Hugging Face checkpoint: {block} {param} has projections {sorted(qkv)}; "
                                  f"expected all of {list(order)}")
        out[f"{block}.attn.qkv.{param}"] = torch.cat([qkv[n] for n in order], dim=0)
    return out


def _convert_openai_clip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = _rename(_take_prefix(state, prefix, "OpenAI CLIP"), _OPENAI_SWAPS)
    out["cls_token"] = out.pop("class_embedding").reshape(1, 1, -1)
    out["pos_embed"] = out.pop("positional_embedding").unsqueeze(0)
    if "proj" in out:
        out["projection.weight"] = out.pop("proj").t()  # OpenAI applies x @ proj
    return out


def _convert_hf_clip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    rest = dict(state)
    proj = rest.pop("visual_projection.weight", None)
    out = _fuse_qkv(_rename(_take_prefix(rest, prefix, "Hugging Face CLIP"), _HF_CLIP_SWAPS), "clip")
    out.pop("embeddings.position_ids", None)
    out["cls_token"] = out.pop("embeddings.class_embedding").reshape(1, 1, -1)
    out["pos_embed"] = out.pop("embeddings.position_embedding.weight").unsqueeze(0)
    if proj is not None:
        out["projection.weight"] = proj
    return out


def _convert_hf_dinov2(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = _fuse_qkv(_rename(_take_prefix(state, prefix, "Hugging Face DINOv2"), _HF_DINOV2_SWAPS), "dinov2")
    out = {k.removeprefix("embeddings."): v for k, v in out.items()}
    out["pos_embed"] = out.pop("position_embeddings")
    return _convert_official_dinov2(out)


def _convert_official_dinov2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    if out.pop("mask_token", None) is not None:
        _log.info("DINOv2 checkpoint: dropped mask_token (used only by masked-image pre-training)")
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
    return out


def _detect_layout(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """Return ``(layout, prefix)`` from sentinel keys."""
    if "visual.class_embedding" in state:
        return "openai_clip", "visual."
    if "class_embedding" in state:
        return "openai_clip", ""
    for prefix in ("vision_model.", ""):
        if prefix + "embeddings.patch_embedding.weight" in state:
            return "hf_clip", prefix
    for prefix in ("dinov2.", ""):
        if prefix + "embeddings.patch_embeddings.projection.weight" in state:
            return "hf_dinov2", prefix
    if "mask_token" in state or "register_tokens" in state:
        return "official_dinov2", ""
    for prefix in ("module.backbone.", "backbone."):  # DINO training checkpoint's student / teacher
        if prefix + "cls_token" in state:
            return "dino_train", prefix
    return "timm", ""


def _fix_timm_layout(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    """timm-specific differences from mmdiag's names, in place.

    * timm's DINOv2-with-registers models fold the [CLS] position row into ``cls_token`` and store ``pos_embed``
      without it; a zero row is put back (same outputs).
    * timm's CLIP stores the image projection as ``head`` (with an all-zero bias). For a model built with a
      projection, a checkpoint that has none but has such a ``head`` of the projection's shape next to ``norm_pre``
      gives it to ``projection``. (mmdiag's own checkpoints of such a model always hold ``projection.weight``; for a
      model without projection ``head`` stays the classifier, as in timm.)
    """
    pos = state.get("pos_embed")
    if pos is not None and "reg_token" in state and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        state["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
    head_w, head_b, proj = state.get("head.weight"), state.get("head.bias"), own.get("projection.weight")
    if (proj is not None and "projection.weight" not in state and "norm_pre.weight" in state
            and head_w is not None and head_w.shape == proj.shape and (head_b is None or not head_b.any())):
        state["projection.weight"] = state.pop("head.weight")
        state.pop("head.bias", None)
        _log.info("timm CLIP checkpoint: head.* (zero bias) read as the CLIP projection")


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Convert a DINOv2 / CLIP checkpoint in any published layout to ``model``'s key names.

    Layouts, by sentinel key: OpenAI CLIP (``visual.class_embedding``, or ``class_embedding`` for the visual tower
    alone); Hugging Face CLIPVisionModel(WithProjection)/CLIPModel (``[vision_model.]embeddings.patch_embedding``);
    Hugging Face Dinov2Model/Dinov2WithRegistersModel (``[dinov2.]embeddings.patch_embeddings.projection``);
    official DINOv2 ``.pth`` (``mask_token`` / ``register_tokens``); a DINO (v1) training checkpoint's ``student``
    or ``teacher`` dict (``module.backbone.cls_token`` / ``backbone.cls_token``: the backbone is kept, the projection
    head ``head.*`` dropped); otherwise timm's layout, which is mmdiag's own and also that of the released DINO
    backbones (``dino_deitsmall16_pretrain.pth``) and of ``mmdiag pretrain dino``'s output.

    Then: the CLIP projection is kept if the model has one (``proj_dim``) and dropped with a log line otherwise;
    ``pos_embed`` is resized to the model's grid when it differs (bicubic, no antialias, [CLS] row kept); classifier
    keys absent from the checkpoint keep the model's fresh initialisation, and classifier keys of a model without a
    classifier are dropped (both logged).

    Raises:
        CheckpointError: a Hugging Face q/k/v triple is incomplete, or ``pos_embed`` has no square grid.
    """
    layout, prefix = _detect_layout(state_dict)
    own = model.state_dict()
    if layout == "openai_clip":
        state = _convert_openai_clip(state_dict, prefix)
    elif layout == "hf_clip":
        state = _convert_hf_clip(state_dict, prefix)
    elif layout == "hf_dinov2":
        state = _convert_hf_dinov2(state_dict, prefix)
    elif layout == "official_dinov2":
        state = _convert_official_dinov2(state_dict)
    elif layout == "dino_train":
        state = _take_prefix(state_dict, prefix, "DINO training (student/teacher)")
    else:
        state = dict(state_dict)
        _fix_timm_layout(state, own)
    if layout != "timm":
        _log.info("checkpoint layout %s converted to mmdiag names", layout)
    if "projection.weight" in state and "projection.weight" not in own:
        _log.info("CLIP projection %s dropped: the model has none (build it with proj_dim=%d to keep it)",
                  tuple(state["projection.weight"].shape), state["projection.weight"].shape[0])
        del state["projection.weight"]
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape[1] != own["pos_embed"].shape[1]:
        _log.info("pos_embed resized from %d to %d rows (bicubic)", pos.shape[1], own["pos_embed"].shape[1])
        state["pos_embed"] = resample_pos_embed(pos, model.grid_size)
    head_keys = [k for k in own if k.startswith("head.")]
    if not head_keys and any(k.startswith("head.") for k in state):
        _log.info("checkpoint classifier head.* dropped: the model has no classifier (num_classes=0)")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing_head = [k for k in head_keys if k not in state]
    if missing_head:
        _log.info("checkpoint has no classifier; head (%d outputs) keeps its fresh initialisation", model.num_classes)
        state.update({k: own[k] for k in missing_head})
    return state


# ---------------------------------------------------------------------------------------------------------------------
# Variants

_DINOV2 = dict(img_size=518, patch_size=14, depth=12, init_values=1.0, norm_eps=1e-6, dynamic_img_size=True,
               interpolate_antialias=False, interpolate_offset=0.1)
_DINOV2_REG = dict(_DINOV2, reg_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)
_DINO = dict(img_size=224, patch_size=16, depth=12, norm_eps=1e-6, dynamic_img_size=True, interpolate_offset=0.1)
_CLIP = dict(img_size=224, patch_size=16, pre_norm=True, patch_bias=False, act_layer="quick_gelu", norm_eps=1e-5)


def _create_vit(defaults: dict[str, Any], kwargs: dict[str, Any], mean: tuple[float, ...],
                std: tuple[float, ...]) -> VisionTransformer:
    model = VisionTransformer(**{**defaults, **kwargs})
    side = model.grid_size[0] * model.patch_size
    model.pretrained_cfg = {"mean": mean, "std": std, "input_size": (model.in_chans, side, side),
                            "interpolation": "bicubic"}
    return model


@register_model(options=VisionTransformer)
def dinov2_vits14(**kwargs: Any) -> VisionTransformer:
    """DINOv2 ViT-S/14 (``dinov2_vits14_pretrain.pth``): 384 wide, 6 heads, LayerScale; any input size."""
    return _create_vit(dict(_DINOV2, embed_dim=384, num_heads=6), kwargs, IMAGENET_MEAN, IMAGENET_STD)


@register_model(options=VisionTransformer)
def dinov2_vitb14(**kwargs: Any) -> VisionTransformer:
    """DINOv2 ViT-B/14 (``dinov2_vitb14_pretrain.pth``): 768 wide, 12 heads, LayerScale; any input size."""
    return _create_vit(dict(_DINOV2, embed_dim=768, num_heads=12), kwargs, IMAGENET_MEAN, IMAGENET_STD)


@register_model(options=VisionTransformer)
def dinov2_vits14_reg(**kwargs: Any) -> VisionTransformer:
    """DINOv2 ViT-S/14 with 4 register tokens (``dinov2_vits14_reg4_pretrain.pth``)."""
    return _create_vit(dict(_DINOV2_REG, embed_dim=384, num_heads=6), kwargs, IMAGENET_MEAN, IMAGENET_STD)


@register_model(options=VisionTransformer)
def dinov2_vitb14_reg(**kwargs: Any) -> VisionTransformer:
    """DINOv2 ViT-B/14 with 4 register tokens (``dinov2_vitb14_reg4_pretrain.pth``), the VFM EI uses."""
    return _create_vit(dict(_DINOV2_REG, embed_dim=768, num_heads=12), kwargs, IMAGENET_MEAN, IMAGENET_STD)


@register_model(options=VisionTransformer)
def dino_vits16(**kwargs: Any) -> VisionTransformer:
    """DINO ViT-S/16 (Caron et al. 2021; ``dino_deitsmall16_pretrain.pth``): 384 wide, 6 heads, no LayerScale.

    The 14x14 position table is resampled at run time for other inputs (e.g. 16x16 for RemixFormer++'s 256²
    windows, 6x6 for DINO's 96² local crops) with DINO's ``+0.1`` scale-factor offset.
    """
    return _create_vit(dict(_DINO, embed_dim=384, num_heads=6), kwargs, IMAGENET_MEAN, IMAGENET_STD)


@register_model(options=VisionTransformer)
def clip_vit_b16(**kwargs: Any) -> VisionTransformer:
    """OpenAI CLIP ViT-B/16 image tower: QuickGELU, ``norm_pre``; ``proj_dim=512`` keeps CLIP's projection.

    Pass ``img_size`` (e.g. 448) to train at another resolution: the 14x14 position table is resized once at load.
    Deviation: EI loads these weights through timm's ``vit_base_patch16_clip_224`` (exact GELU, projection dropped);
    ``act_layer="gelu"`` reproduces that.
    """
    return _create_vit(dict(_CLIP, embed_dim=768, num_heads=12), kwargs, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


@register_model(options=VisionTransformer)
def tiny_dinov2(**kwargs: Any) -> VisionTransformer:
    """Test variant with DINOv2's structure (2 blocks, 32 wide, 56 px grid)."""
    return _create_vit(dict(_DINOV2, img_size=56, embed_dim=32, depth=2, num_heads=2), kwargs, IMAGENET_MEAN,
                       IMAGENET_STD)


@register_model(options=VisionTransformer)
def tiny_dinov2_reg(**kwargs: Any) -> VisionTransformer:
    """Test variant with DINOv2-with-registers' structure (2 blocks, 32 wide, 4 registers, 56 px grid)."""
    return _create_vit(dict(_DINOV2_REG, img_size=56, embed_dim=32, depth=2, num_heads=2), kwargs, IMAGENET_MEAN,
                       IMAGENET_STD)


@register_model(options=VisionTransformer)
def tiny_clip(**kwargs: Any) -> VisionTransformer:
    """Test variant with the CLIP image tower's structure (2 blocks, 32 wide, 64 px grid)."""
    return _create_vit(dict(_CLIP, img_size=64, embed_dim=32, depth=2, num_heads=2), kwargs, OPENAI_CLIP_MEAN,
                       OPENAI_CLIP_STD)


@register_model(options=VisionTransformer)
def tiny_dino(**kwargs: Any) -> VisionTransformer:
    """Test variant with DINO ViT-S/16's structure (2 blocks, 32 wide, patch 8, 32 px grid)."""
    return _create_vit(dict(_DINO, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), kwargs,
                       IMAGENET_MEAN, IMAGENET_STD)
