"""DINO (v1) ViT-S/16: the released backbone layout and the training checkpoint's student/teacher layouts load
strictly into ``dino_vits16``; position embeddings resampled with DINO's +0.1 offset."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmdiag
from mmdiag.errors import CheckpointError
from mmdiag.io.checkpoint import save_weights

LAYOUT = Path(__file__).parents[2] / "fixtures" / "checkpoint_layouts" / "official_dino_deitsmall16_pretrain.json"


def _layout():
    return json.loads(LAYOUT.read_text())


def test_released_backbone_loads_strictly_with_its_values(tmp_path):
    spec = _layout()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in spec["state_dict"].items()}
    assert sum(v.numel() for v in state.values()) == spec["num_elements"]
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    model = mmdiag.create_model("dino_vits16", checkpoint=path)
    own = model.state_dict()
    assert sorted(own) == sorted(state)
    assert all(torch.equal(own[k], state[k]) for k in state)
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 257, 384)  # a 256² window: 16x16 patches + [CLS]


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone."])
def test_training_checkpoint_teacher_and_student_drop_the_head(prefix):
    spec = _layout()
    state = {prefix + k: torch.empty(s, device="meta") for k, s in spec["state_dict"].items()}
    state |= {prefix.replace("backbone.", "") + k: torch.empty(s, device="meta")
              for k, s in spec["dino_head_layout"].items()}
    with torch.device("meta"):
        model = mmdiag.create_model("dino_vits16")
    out = model.checkpoint_filter_fn(state, model)
    own = model.state_dict()
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in own.items()}


def test_run_time_position_resampling_uses_dino_offset():
    model = mmdiag.create_model("tiny_dino").eval()  # 32 px table, patch 8 -> 4x4 grid
    x = torch.randn(1, 3, 48, 48)  # 6x6 grid
    m, g, c = 4, 6, 32
    grid = model.pos_embed[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2)
    # DINO's interpolate_pos_encoding: scale_factor = (g + 0.1) / sqrt(N), bicubic
    ref = F.interpolate(grid, scale_factor=((g + 0.1) / math.sqrt(m * m),) * 2, mode="bicubic")
    ref = torch.cat([model.pos_embed[:, :1], ref.permute(0, 2, 3, 1).reshape(1, g * g, c)], dim=1)
    with torch.no_grad():
        patches = model.patch_embed(x)
        tokens = torch.cat([model.cls_token, patches], dim=1) + ref
        assert torch.allclose(model.embed(x), tokens, atol=1e-6)


def test_layout_of_another_family_is_refused(tmp_path):
    state = {k: torch.zeros(s) for k, s in _layout()["state_dict"].items() if not k.startswith("blocks.11")}
    path = tmp_path / "cut.safetensors"
    save_weights(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.11"):
        mmdiag.create_model("dino_vits16", checkpoint=path)
