import pytest
import torch

from mmdiag.errors import CheckpointError
from mmdiag.training.checkpoint_io import SafetensorsCheckpointIO, decode_state, encode_state


def test_nested_state_round_trips_without_pickle(tmp_path):
    opt_state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "amsgrad": False,
                                   "maximize": None}]}
    ckpt = {"epoch": 2, "state_dict": {"w": torch.randn(2, 3), "empty": torch.zeros(0)},
            "optimizer_states": [opt_state], "loops": {"fit_loop": {"progress": {"total": 5}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val/x'}": {"best_model_score": torch.tensor(0.5),
                                                                  "best_model_path": "/a/b.ckpt"}},
            "score": float("nan")}
    io = SafetensorsCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(ckpt, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind
    back = io.load_checkpoint(path)
    assert back["epoch"] == 2 and back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["optimizer_states"][0]["state"]) == [0]  # integer keys survive
    torch.testing.assert_close(back["state_dict"]["w"], ckpt["state_dict"]["w"])
    torch.testing.assert_close(back["optimizer_states"][0]["state"][0]["exp_avg"],
                               opt_state["state"][0]["exp_avg"])
    assert back["callbacks"]["ModelCheckpoint{'monitor': 'val/x'}"]["best_model_path"] == "/a/b.ckpt"
    assert back["score"] != back["score"]  # NaN
    from safetensors.torch import load_file

    assert "state_dict.w" in load_file(str(path))  # plain safetensors: readable by any tool


def test_unstorable_values_are_refused_with_their_path():
    with pytest.raises(CheckpointError, match="'a.fn'"):
        encode_state({"a": {"fn": object()}}, {})
    assert decode_state(encode_state({"k": [1, (2, 3)]}, {}), {}) == {"k": [1, (2, 3)]}
