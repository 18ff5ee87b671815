"""RemixFormer++ explanations: region-encoder window attention, record-field permutation importance, the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mmdiag.data.schema import CategoricalField, DatasetSpec, ImageModality, NumericField, TabularModality, TaskSpec
from mmdiag.explain.permutation import field_columns, permutation_importance
from mmdiag.explain.window_attention import region_attention, window_attention_figure, window_attention_title
from mmdiag.models.backbones.remixformer_dermoscopy import DermoscopyBranch

TINY = dict(img_size=64, window_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, region_depth=2,
            num_templates=4)


def test_window_attention_reproduces_the_last_blocks_cls_output():
    torch.manual_seed(0)
    m = DermoscopyBranch(**TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    w = region_attention(m, x)
    assert w.shape == (2, 2, 3) and bool((w > 0).all()) and bool((w.flatten(1).sum(1) < 1).all())
    # per head, the weights rebuild the [CLS] output of the block's attention (computed by SDPA)
    emb, grid = m.hrwe(x)
    tok = m.region_tokens(emb, grid)
    tok = m.blocks[0](tok)
    blk = m.blocks[1]
    h = blk.norm1(tok)
    q, k, v = blk.attn.qkv(h).reshape(2, 7, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    a = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / 4.0, -1)  # (B, H, 1, 7)
    cls_out = blk.attn.proj((a @ v).transpose(1, 2).reshape(2, 1, 32))[:, 0]
    torch.testing.assert_close(cls_out, blk.attn(h)[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, a[:, :, 0, 1:].mean(1).reshape(2, 2, 3))


def test_figure_draws_one_block_per_window_with_title_grid_and_colour_bar():
    img = np.zeros((3, 64, 96), dtype=np.float32)
    attn = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    title = window_attention_title("derm", "c1", "remixformer_pp", "test", 1, 2)
    assert title == "Region-encoder window attention | derm | case c1\nremixformer_pp, test split, case 1 of n = 2"
    fig = window_attention_figure(img, attn, 32, title)
    assert fig._suptitle.get_text() == title
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "attention of [CLS] to the window (mean over heads)"
    assert bars[0].get_ylim() == pytest.approx((0.0, 1.0))
    image, over = (ax for ax in fig.axes if ax.get_label() != "<colorbar>")
    assert [image.get_title(), over.get_title()] == ["image", "2 x 3 windows of 32 px"]
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in (image, over))
    blocks = over.get_images()[1].get_array()
    assert blocks.shape == (64, 96) and (blocks[:32, 32:64] == 1.0).all() and (blocks[32:, 64:] == 0.5).all()
    assert sorted(round(line.get_xdata()[0]) for line in over.get_lines() if line.get_xdata()[0] == line.get_xdata()[1]
                  ) == [32, 64]  # vertical window borders (at -0.5 px)


class _OnlyField(nn.Module):
    """Predicts class 1 when the first categorical value of field ``a`` is set (ignores everything else)."""

    def forward(self, inputs, present=None):
        r = inputs["record"]
        return {"t": torch.stack([1 - r[:, 0], r[:, 0]], 1)}


def test_permutation_importance_finds_the_only_used_field():
    spec = DatasetSpec(name="p", modalities={"img": ImageModality(size=(8, 8)), "record": TabularModality(fields={
        "a": CategoricalField(values=("y", "n")), "b": NumericField(), "c": CategoricalField(values=("u", "v", "w"))})},
        tasks={"t": TaskSpec(type="binary", classes=("neg", "pos"))})
    assert field_columns(spec.modalities["record"]) == {"a": slice(0, 2), "b": slice(2, 4), "c": slice(4, 7)}
    g = torch.Generator().manual_seed(0)
    n = 200
    lab = torch.randint(0, 2, (n,), generator=g)
    rec = torch.zeros(n, 7)
    rec[:, 0], rec[:, 1] = lab.float(), 1 - lab.float()
    rec[:, 2] = torch.randn(n, generator=g)
    rec[torch.arange(n), 4 + torch.randint(0, 3, (n,), generator=g)] = 1
    inputs = {"img": torch.zeros(n, 3, 8, 8), "record": rec}
    present = {"img": torch.ones(n, dtype=torch.bool), "record": torch.ones(n, dtype=torch.bool)}
    lab[:5] = -1
    frame = permutation_importance(_OnlyField(), spec, inputs, present, lab, repeats=3)
    assert list(frame.columns) == ["neg", "pos", "all"]
    assert (frame.loc[["b", "c"]].to_numpy() == 0).all()
    assert (frame.loc["a"] > 0.3).all()


@pytest.mark.slow
def test_cli_writes_panels_and_importance(tmp_path):
    from mmdiag.cli.main import main
    from mmdiag.config import load_config
    from mmdiag.testing import write_derm7pt
    from mmdiag.training.run import train

    from mmdiag.testing.remixformer import TINY_OVERRIDES

    root = write_derm7pt(tmp_path / "data")
    cfg = load_config("remixformer/t6_derm7pt", [f"output_dir={tmp_path}", "name=cdm", f"data.root={root}",
                                                 *TINY_OVERRIDES, "trainer.max_epochs=1"])
    run = train(cfg).run_dir
    assert main(["explain", "window-attention", "--run", str(run), "--cases", "2"]) == 0
    pngs = sorted((run / "explain").glob("window_attention_*.png"))
    assert len(pngs) == 2 and all(p.name.startswith("window_attention_dermoscopy_") for p in pngs)
    assert Image.open(pngs[0]).size[0] > 2 * 64  # two panels and a colour bar
    assert main(["explain", "permutation", "--run", str(run), "--repeats", "2"]) == 0
    frame = pd.read_csv(run / "explain" / "permutation_diagnosis_test.csv", index_col=0)
    spec = DatasetSpec.model_validate_json((run / "dataset_spec.json").read_text())
    assert list(frame.index) == list(spec.modalities["record"].fields)
    assert len(frame.columns) == 6  # 5 diagnoses + all
    assert (run / "explain" / "permutation_diagnosis_test.png").is_file()
