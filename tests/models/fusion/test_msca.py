"""MSCA / single-scale cross-attention fusion on the shared attention: runs saved with the earlier separate q/k/v
layout load strictly through MMCAF-Net's ``checkpoint_filter_fn`` and give the earlier outputs."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from mmdiag import create_model
from mmdiag.data.schema import DatasetSpec, NumericField, TabularModality, TaskSpec, VolumeModality
from mmdiag.io.checkpoint import load_checkpoint
from mmdiag.models.fusion.msca import MSCA, CrossAttentionFusion

SPEC = DatasetSpec(name="toy", modalities={
    "ct": VolumeModality(channels=1, size=(12, 32, 32)),
    "record": TabularModality(fields={"age": NumericField(), "t_stage": NumericField()})},
    tasks={"diagnosis": TaskSpec(type="binary", classes=("A", "G"))})


def _old_cross_attention(lin: dict[str, Callable[[Tensor], Tensor]], heads: int, x: Tensor, c: Tensor) -> Tensor:
    """The earlier ``CrossAttention``: separate q/k/v Linears, no output projection, residual on the query."""
    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(lin["q"](x)), split(lin["k"](c)), split(lin["v"](c)))
    return out.transpose(1, 2).reshape(x.shape) + x


def _old_layout(state: dict[str, Tensor], prefix: str, dim: int) -> dict[str, nn.Linear]:
    """Replace the attention at ``prefix`` by fresh separate q/k/v Linears under their earlier names."""
    del state[prefix + "qkv.weight"], state[prefix + "qkv.bias"]
    lin = {p: nn.Linear(dim, dim) for p in "qkv"}
    for p, m in lin.items():
        state.update({f"{prefix}{p}.{t}": v for t, v in m.state_dict().items()})
    return lin


@pytest.mark.parametrize("fusion", ["msca", "cross_attention"])
def test_separate_qkv_runs_load_and_keep_their_outputs(tmp_path, fusion):
    torch.manual_seed(0)
    model = create_model("tiny_mmcaf_net", spec=SPEC, fusion=fusion).eval()
    fuse = model.fusion
    assert isinstance(fuse, MSCA if fusion == "msca" else CrossAttentionFusion)
    attns = list(fuse.attn) if fusion == "msca" else [fuse.attn]
    prefixes = [f"fusion.attn.{s}." for s in range(len(attns))] if fusion == "msca" else ["fusion.attn."]
    state = dict(model.state_dict())
    old = [_old_layout(state, p, a.head_dim * a.num_heads) for p, a in zip(prefixes, attns, strict=True)]
    assert not any(k.endswith("qkv.weight") for k in state)
    save_file(state, tmp_path / "model.safetensors")
    load_checkpoint(model, tmp_path / "model.safetensors")  # strict: every key converted
    g = torch.Generator().manual_seed(1)
    for attn, lin in zip(attns, old, strict=True):
        dim = attn.head_dim * attn.num_heads
        x, c = torch.randn(2, 4, dim, generator=g), torch.randn(2, 3, dim, generator=g)
        want = _old_cross_attention(lin, attn.num_heads, x, c)
        torch.testing.assert_close(attn(x, context=c) + x, want, rtol=1e-5, atol=1e-6)


def test_msca_forward_equals_the_earlier_math():
    """MSCA end to end against a re-statement of its earlier forward with separate q/k/v and the residual."""
    torch.manual_seed(0)
    msca = MSCA(24, (4, 2, 2)).eval()
    img, tab = torch.randn(3, 4, 24), torch.randn(3, 1, 24)
    lin = []
    for a in msca.attn:
        d = a.head_dim * a.num_heads
        w, b = a.qkv.weight.split(d), a.qkv.bias.split(d)
        lin.append({p: (lambda t, w=w[i], b=b[i]: F.linear(t, w, b)) for i, p in enumerate("qkv")})
    img0 = msca.norm_img(img.transpose(1, 2)).transpose(1, 2)
    tab0 = msca.norm_tab(tab.transpose(1, 2)).transpose(1, 2)
    i_s, t_s, outs = img0, tab0, []
    for s, a in enumerate(msca.attn):
        o_i = _old_cross_attention(lin[s], a.num_heads, i_s, t_s)
        o_t = _old_cross_attention(lin[s], a.num_heads, t_s, i_s)
        outs.append((o_i.mean(1) + o_t.mean(1)) / 2)
        if s < 2:
            i_s, t_s = msca.down[s](img0) + msca.lift_img[s](o_i), msca.down[s](tab0) + msca.lift_tab[s](o_t)
    want = msca.bsf[0](outs[0], msca.bsf[1](outs[1], outs[2]))
    torch.testing.assert_close(msca(img, tab), want, rtol=1e-5, atol=1e-6)
