import pytest
import torch

from mmdiag.errors import CheckpointError
from mmdiag.io.checkpoint import load_checkpoint, load_state_dict_file, save_weights


def test_wrapped_state_dicts_and_safetensors_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    assert set(load_state_dict_file(tmp_path / "w.pth")) == {"weight", "bias"}
    save_weights(model, tmp_path / "w.safetensors")
    other = load_checkpoint(torch.nn.Linear(3, 2), tmp_path / "w.safetensors")
    torch.testing.assert_close(other.weight, model.weight)


def test_mismatch_lists_keys_and_file(tmp_path):
    torch.save({"weight": torch.zeros(2, 3), "extra": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"(?s)bad\.pth.*missing keys \(1\): bias.*unexpected keys \(1\): extra"):
        load_checkpoint(torch.nn.Linear(3, 2), tmp_path / "bad.pth")


def test_pickled_objects_and_torchscript_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(1), "evil": object()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="pickle.pth"):
        load_state_dict_file(tmp_path / "pickle.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(CheckpointError, match="TorchScript archive.*state_dict"):
        load_state_dict_file(tmp_path / "scripted.pt")
