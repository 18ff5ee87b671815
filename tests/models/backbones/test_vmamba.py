"""VMamba v2 (vssm1_tiny_0230s): official layout and count, strict loading, v05_noz SS2D against VMamba's form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmdiag import create_model
from mmdiag.errors import CheckpointError, ConfigError
from mmdiag.models.layers.ss2d import SS2D
from mmdiag.ops import selective_scan_ref

LAYOUT = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts" / "vmamba_tiny_0230s.json"


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(s, generator=g) for k, s in json.loads(LAYOUT.read_text())["state_dict"]}


def test_layout_and_parameter_count_equal_official():
    with torch.device("meta"):
        model = create_model("vmamba_tiny_s1l8")
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == dict(json.loads(LAYOUT.read_text())["state_dict"])
    assert sum(p.numel() for p in model.parameters()) == 30_249_064


def test_official_checkpoint_loads_strictly(tmp_path):
    state = official_state()
    path = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    torch.save({"model": state, "epoch": 264}, path)
    model = create_model("vmamba_tiny_s1l8", checkpoint=path, drop_path_rate=0.0).eval()
    assert torch.equal(model.layers[2].blocks[7].op.A_logs, state["layers.2.blocks.7.op.A_logs"])
    assert torch.equal(model.classifier.head.weight, state["classifier.head.weight"])
    headless = create_model("vmamba_tiny_s1l8", num_classes=0, checkpoint=path)
    assert torch.equal(headless.patch_embed[5].weight, state["patch_embed.5.weight"])
    state.pop("layers.1.downsample.1.weight")
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="layers.1.downsample.1.weight"):
        create_model("vmamba_tiny_s1l8", checkpoint=path)


def test_classifier_contract_and_intermediates():
    model = create_model("tiny_vmamba", num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    assert model(x).shape == (2, 3)
    maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    feats = model.forward_features(x)
    assert torch.allclose(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    with pytest.raises(ConfigError, match="smaller than its total stride 32"):
        model(torch.randn(1, 1, 16, 16))


def test_v05_noz_ss2d_equals_grouped_conv1d_form():
    """SS2D(gated=False, d_state=1, expand=1, conv_bias=False) against VMamba v2's own computation: grouped 1-D
    convolutions for x/dt projections, a sequential scan, channels-first LayerNorm, no z gating."""
    torch.manual_seed(0)
    d, h, w, k = 8, 3, 4, 4
    op = SS2D(d, d_state=1, expand=1.0, gated=False, conv_bias=False, scan_impl="auto").eval()
    with torch.no_grad():
        op.out_norm.weight.uniform_(0.5, 1.5)
        op.out_norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, h, w, d)
    with torch.no_grad():
        got = op(x)
        u = F.silu(op.conv2d(op.in_proj(x).permute(0, 3, 1, 2)))  # (B, D, H, W)
        row = u.flatten(2)
        col = u.transpose(2, 3).flatten(2)
        xs = torch.stack([row, col, row.flip(-1), col.flip(-1)], 1)  # (B, K, D, L)
        L = h * w
        x_dbl = F.conv1d(xs.reshape(2, k * d, L), op.x_proj_weight.reshape(-1, d, 1), groups=k).view(2, k, -1, L)
        r, n = op.dt_rank, op.d_state
        dts, Bs, Cs = x_dbl.split([r, n, n], dim=2)
        dts = F.conv1d(dts.reshape(2, -1, L), op.dt_projs_weight.reshape(k * d, -1, 1), groups=k)
        ys = selective_scan_ref(xs.reshape(2, k * d, L), dts, -op.A_logs.exp(), Bs, Cs, op.Ds,
                                delta_bias=op.dt_projs_bias.reshape(-1), delta_softplus=True).view(2, k, d, L)
        y = ys[:, 0] + ys[:, 2].flip(-1)
        y = y + (ys[:, 1] + ys[:, 3].flip(-1)).view(2, d, w, h).transpose(2, 3).reshape(2, d, L)
        y = F.layer_norm(y.transpose(1, 2), (d,), op.out_norm.weight, op.out_norm.bias).view(2, h, w, d)
        want = op.out_proj(y)
    assert torch.allclose(got, want, atol=1e-5)
