"""Table 1/3 baselines on a CT window + record: contract (forward, backward, presence), DAFT / MMTM semantics,
the single-scale cross-attention and CLIP-style fusions."""

import pytest
import torch

from mmdiag import create_model
from mmdiag.models.nets.mmcaf_baselines import MMTM, DAFTBlock
from mmdiag.models.outputs import AUX_LOSS_KEY

from .test_mmcaf_net import SPEC, _x

CASES = [("daft", {}), ("mmtm", {"backbone": "tiny_penet"}), ("mmcaf_cross_attention", {"backbone": "tiny_penet"}),
         ("mmcaf_clip", {"backbone": "tiny_penet"}), ("late_fusion", {"backbone": "tiny_penet"})]


@pytest.mark.parametrize("name,options", CASES)
def test_contract(name, options):
    torch.manual_seed(0)
    model = create_model(name, spec=SPEC, **options).train()
    out = model(_x(4))
    assert out["diagnosis"].shape == (4, 2) and torch.isfinite(out["diagnosis"]).all()
    total = out["diagnosis"].sum() + sum(w * v for w, v in out.get(AUX_LOSS_KEY, {}).values())
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name,options", CASES[:4])
def test_missing_record_tensor_is_ignored(name, options):
    torch.manual_seed(0)
    model = create_model(name, spec=SPEC, **options).eval()
    x, present = _x(2), {"ct": torch.tensor([True, True]), "record": torch.tensor([True, False])}
    a = model(x, present)["diagnosis"]
    x["record"][1] = 50.0
    torch.testing.assert_close(model(x, present)["diagnosis"], a)


def test_daft_block_is_an_affine_transform_of_the_block_input():
    torch.manual_seed(0)
    blk = DAFTBlock(4, 8, 2, record_dim=3).eval()
    x, r = torch.randn(2, 4, 4, 4, 4), torch.randn(2, 3)
    scale, shift = blk.aux(torch.cat([x.mean((2, 3, 4)), r], 1)).chunk(2, 1)
    expected = blk.block(x * scale[:, :, None, None, None] + shift[:, :, None, None, None])
    torch.testing.assert_close(blk(x, r), expected)


def test_mmtm_gates_lie_in_0_2():
    torch.manual_seed(0)
    m = MMTM(8, 4)
    a, b = torch.ones(3, 8, 2, 2, 2), torch.ones(3, 4)
    a2, b2 = m(a, b)
    assert ((a2 > 0) & (a2 < 2)).all() and ((b2 > 0) & (b2 < 2)).all()
    assert torch.allclose(a2[..., 0, 0, 0], a2[..., 1, 1, 1])  # one gate per channel


def test_clip_term_is_low_for_aligned_pairs_only_in_training():
    torch.manual_seed(0)
    model = create_model("mmcaf_clip", spec=SPEC, backbone="tiny_penet")
    assert AUX_LOSS_KEY in model.train()(_x(4)) and AUX_LOSS_KEY not in model.eval()(_x(4))
    fusion = model.fusion
    with torch.no_grad():
        fusion.proj_img.weight.copy_(torch.eye(24))
        fusion.proj_tab.weight.copy_(torch.eye(24))
        fusion.proj_img.bias.zero_()
        fusion.proj_tab.bias.zero_()
    z = torch.randn(6, 1, 24)
    _, aligned = fusion(z, z)
    _, shuffled = fusion(z, z[torch.tensor([1, 2, 3, 4, 5, 0])])
    assert aligned < shuffled
