"""PENet: stage shapes of the paper's input, stochastic depth schedule, contract, stem folding."""

import torch

from mmdiag import create_model
from mmdiag.models.backbones.penet import PENet


def test_stage_shapes_on_the_paper_input_meta():
    with torch.device("meta"):
        net = create_model("penet", num_classes=2)
        maps = net.forward_intermediates(torch.empty(1, 1, 12, 192, 192))
    assert [tuple(m.shape) for m in maps] == [(1, 256, 6, 48, 48), (1, 512, 3, 24, 24), (1, 1024, 2, 12, 12)]
    assert net.num_features == 1024


def test_stochastic_depth_grows_linearly_to_the_rate():
    net = PENet(num_classes=0, drop_path_rate=0.5)
    probs = [b.drop_path.drop_prob for s in net.stages for b in s]
    assert len(probs) == 13 and probs[0] == 0.0 and abs(probs[-1] - 0.5 * 12 / 13) < 1e-9


def test_tiny_contract_and_intermediates():
    torch.manual_seed(0)
    net = create_model("tiny_penet", num_classes=3)
    x = torch.rand(2, 1, 8, 32, 32)
    y = net(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    maps = net.forward_intermediates(x, [0, 2])
    assert [m.shape[1] for m in maps] == [16, 64]
    net.reset_classifier(0)
    assert net(x).shape == (2, net.num_features)


def test_three_channel_stem_folds_into_one():
    torch.manual_seed(0)
    three, one = PENet(in_chans=3, **_tiny()).eval(), PENet(in_chans=1, **_tiny()).eval()
    state = one.checkpoint_filter_fn({"module." + k: v for k, v in three.state_dict().items()}, one)
    one.load_state_dict(state)
    x = torch.rand(1, 1, 8, 32, 32)
    torch.testing.assert_close(one(x), three(x.expand(-1, 3, -1, -1, -1)), rtol=1e-4, atol=1e-5)


def _tiny():
    return dict(num_classes=2, stem_width=8, planes=(8, 16, 32), depths=(1, 1, 1), cardinality=4, gn_divisor=4)
