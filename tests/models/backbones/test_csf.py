"""CSF (RemixFormer++ clinical branch) on the shared attention: earlier runs' nn.MultiheadAttention weights load
(through the model's checkpoint_filter_fn) and give the same output."""

import torch
from torch import nn

from mmdiag.models.backbones.remixformer_clinical import CSF, ClinicalBranch
from mmdiag.models.layers.attention import Attention


def test_multihead_attention_state_converts_and_keeps_the_output():
    torch.manual_seed(0)
    dim, heads = 32, 4
    old_lg, old_gl = (nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(2))
    csf = CSF(dim, heads).eval()
    old = {f"csf.norm_{n}.{p}": t for n in "gl" for p, t in getattr(csf, f"norm_{n}").state_dict().items()}
    old.update({f"csf.attn_lg.{k}": v for k, v in old_lg.state_dict().items()})
    old.update({f"csf.attn_gl.{k}": v for k, v in old_gl.state_dict().items()})
    new = Attention.convert_multihead_state(old)
    csf.load_state_dict({k[len("csf."):]: v for k, v in new.items()}, strict=True)
    g_cls, l_cls = torch.randn(2, dim), torch.randn(2, dim)
    g_patch, l_patch = torch.randn(2, 5, dim), torch.randn(2, 7, dim)
    g_c, l_c = csf(g_cls, g_patch, l_cls, l_patch)
    tg = csf.norm_g(torch.cat([g_cls[:, None], l_patch], 1))
    tl = csf.norm_l(torch.cat([l_cls[:, None], g_patch], 1))
    with torch.no_grad():
        want_g = tg[:, 0] + old_lg.eval()(tg[:, :1], tg[:, 1:], tg[:, 1:], need_weights=False)[0][:, 0]
        want_l = tl[:, 0] + old_gl.eval()(tl[:, :1], tl[:, 1:], tl[:, 1:], need_weights=False)[0][:, 0]
    torch.testing.assert_close(g_c, want_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l_c, want_l, rtol=1e-5, atol=1e-6)
    assert ClinicalBranch.checkpoint_filter_fn({"csf.attn_lg.in_proj_weight": old["csf.attn_lg.in_proj_weight"]},
                                               None) == {"csf.attn_lg.qkv.weight": old["csf.attn_lg.in_proj_weight"]}
