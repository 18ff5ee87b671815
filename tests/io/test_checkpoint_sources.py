"""Weights files recognised by content: mmdiag training checkpoints, safetensors of any name, refused pickles."""

import json

import pytest
import torch
from safetensors.torch import save

from mmdiag.errors import CheckpointError
from mmdiag.io.checkpoint import load_checkpoint, load_state_dict_file, save_weights
from mmdiag.training.checkpoint_io import SafetensorsCheckpointIO


def test_mmdiag_training_checkpoint_is_accepted_as_weights(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["loss.class_weight"] = torch.ones(2)  # other modules of the training system are not model weights
    ckpt = {"epoch": 3, "global_step": 12, "state_dict": state,
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4, 3)}}, "param_groups": [{"lr": 0.1}]}]}
    SafetensorsCheckpointIO().save_checkpoint(ckpt, tmp_path / "best.ckpt")
    loaded = load_state_dict_file(tmp_path / "best.ckpt")
    assert set(loaded) == set(model.state_dict())
    other = load_checkpoint(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)), tmp_path / "best.ckpt")
    torch.testing.assert_close(other[0].weight, model[0].weight)


def test_safetensors_detected_by_content_not_extension(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_weights(model, tmp_path / "weights.bin")
    torch.testing.assert_close(load_state_dict_file(tmp_path / "weights.bin")["weight"], model.weight)
    (tmp_path / "fake.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="fake.safetensors"):
        load_state_dict_file(tmp_path / "fake.safetensors")
    other = save({"x": torch.zeros(1)}, metadata={"mmdiag_state": json.dumps({"epoch": 1})})
    (tmp_path / "empty.ckpt").write_bytes(other)
    with pytest.raises(CheckpointError, match="empty.ckpt.*no model weights"):
        load_state_dict_file(tmp_path / "empty.ckpt")


def test_pickle_refusal_in_mmdiags_words(tmp_path):
    torch.save({"weight": torch.zeros(1), "evil": object()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError) as e:
        load_state_dict_file(tmp_path / "pickle.pth")
    msg = str(e.value)
    assert "pickle.pth" in msg and "global 'object'" in msg and "safetensors" in msg
    assert "weights_only" not in msg and "\x1b" not in msg and "Re-running" not in msg
