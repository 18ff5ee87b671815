"""load_base_weights: a plain model's weights loaded after PEFT injection equal loading first and injecting after."""

from __future__ import annotations

import pytest
import torch

import mmdiag
from mmdiag.errors import CheckpointError
from mmdiag.models.peft import apply_peft, load_base_weights


def _plain_state() -> dict[str, torch.Tensor]:
    """A tiny ViT's weights, away from any initialisation."""
    torch.manual_seed(0)
    plain = mmdiag.create_model("tiny_dinov2", num_classes=3)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_()
    return {k: v.clone() for k, v in plain.state_dict().items()}


def _build(method: str, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Same construction and adapter RNG streams; with ``state``, the weights are loaded before injection."""
    torch.manual_seed(1)
    model = mmdiag.create_model("tiny_dinov2", num_classes=3)
    if state is not None:
        model.load_state_dict(state)
    torch.manual_seed(2)
    return apply_peft(model, method)


@pytest.mark.parametrize("method", ["lora", "mor", "vpt", "loramoe"])
def test_loading_after_injection_equals_loading_before(method):
    state = _plain_state()
    first = _build(method, state)
    after = load_base_weights(_build(method), state)
    expected, got = first.state_dict(), after.state_dict()
    assert list(got) == list(expected)
    assert any(".base_layer." in k for k in got)  # the names really differ from the plain ones
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(after.eval()(x), first.eval()(x))
    assert not _build(method).state_dict()["cls_token"].equal(got["cls_token"])  # the load did change the model


def test_a_model_without_adapters_loads_strictly():
    state = _plain_state()
    torch.manual_seed(1)
    model = load_base_weights(mmdiag.create_model("tiny_dinov2", num_classes=3), state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_mismatches_are_named_and_nothing_is_copied():
    state = _plain_state()
    model = _build("lora")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    missing = {k: v for k, v in state.items() if k != "blocks.0.mlp.fc1.weight"}
    with pytest.raises(CheckpointError, match=r"(?s)weights.bin does not fit.*missing keys \(1\): blocks.0.mlp.fc1.weight"):
        load_base_weights(model, missing, source="weights.bin")
    adapter_key = next(k for k in model.state_dict() if ".lora." in k)
    with pytest.raises(CheckpointError, match=rf"unexpected keys \(1\): {adapter_key}"):
        load_base_weights(model, {**state, adapter_key: torch.zeros(1)})
    wrong = {**state, "head.weight": torch.zeros(5, state["head.weight"].shape[1])}
    with pytest.raises(CheckpointError, match=r"wrong shapes \(1\): head.weight \(5, \d+\) vs \(3, \d+\)"):
        load_base_weights(model, wrong)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
