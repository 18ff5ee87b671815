"""[INT] patch-similarity maps (paper 003, Fig. 2): values, shapes and the figures (title, colour bar)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmdiag import create_model
from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError
from mmdiag.explain.int_maps import int_maps_figure, int_maps_title, int_similarity_maps, write_int_maps

S = 42  # tiny_dinov2_reg: patch 14 -> 3x3 grid after [CLS] + 4 registers
SPEC = DatasetSpec.model_validate({
    "name": "toy", "tasks": {"dx": {"type": "binary", "classes": ["n", "p"]}},
    "modalities": {"cfp": {"kind": "image", "size": [S, S]},
                   "oct": {"kind": "image", "channels": 2, "size": [S, S]}}})  # two grey slices


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("ei", spec=SPEC, vfm="tiny_dinov2_reg").eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return {"cfp": torch.rand(2, 3, S, S, generator=g), "oct": torch.rand(2, 2, S, S, generator=g)}


def test_maps_are_cls_patch_cosine_similarities_with_and_without_int(model, inputs):
    maps = int_similarity_maps(model, inputs)
    assert set(maps) == {"cfp", "oct"}
    assert maps["cfp"]["with_int"].shape == (2, 1, 3, 3) and maps["oct"]["without_int"].shape == (2, 2, 3, 3)
    tokens = model.primary["oct"].encode(inputs["oct"])[0]  # no [INT]
    expected = F.cosine_similarity(tokens[:, :, 5:], tokens[:, :, :1], dim=-1).view(2, 2, 3, 3)
    torch.testing.assert_close(maps["oct"]["without_int"], expected)
    for m in maps.values():
        assert m["with_int"].abs().max() <= 1 + 1e-6
        assert not torch.allclose(m["with_int"], m["without_int"])  # the [INT] token changes the map


def _colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_figure_names_model_split_and_n_and_has_a_colour_bar():
    image = np.random.default_rng(0).random((3, S, S)).astype(np.float32) * 4 - 2  # any range is shown min-max
    off, on = torch.rand(2, 3, 3) * 0.5, torch.rand(2, 3, 3) * 0.5 + 0.3
    title = int_maps_title("oct", "c/7", "ei", "test", 2, 8)
    assert title == "[INT] maps | oct | case c/7\nei, test split, case 2 of n = 8"
    fig = int_maps_figure([image, image], off, on, 14, title)
    assert fig._suptitle.get_text() == title
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6  # a row per slice: image | without [INT] | with [INT]
    assert [ax.get_title() for ax in panels[:3]] == ["image", "without [INT]", "with [INT]"]
    assert [panels[i].get_ylabel() for i in (0, 3)] == ["slice 1", "slice 2"]
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in panels)  # image panels: no axes
    (bar,) = _colour_bars(fig)
    assert bar.get_ylabel() == "cosine similarity of patch token to [CLS]"
    lo, hi = bar.get_ylim()  # one scale for every map of the figure: the range shown, in similarity units
    shown = [ax.get_images()[1].get_array() for ax in panels if len(ax.get_images()) == 2]
    assert len(shown) == 4 and all(s.shape == (S, S) for s in shown)
    assert lo == pytest.approx(min(s.min() for s in shown)) and hi == pytest.approx(max(s.max() for s in shown))
    assert float(min(off.min(), on.min())) <= lo < hi <= float(max(off.max(), on.max()))
    scaled = (image - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(panels[0].get_images()[0].get_array(), np.transpose(scaled, (1, 2, 0)), atol=1e-6)
    assert panels[2].get_images()[1].norm.vmin == pytest.approx(lo)


def test_png_figures_are_written_for_present_targets(model, inputs, tmp_path):
    present = {"cfp": torch.tensor([True, True]), "oct": torch.tensor([True, False])}
    files = write_int_maps(model, inputs, tmp_path, ["a", "b/2"], present, split="val")
    assert [p.name for p in files] == ["int_maps_cfp_a.png", "int_maps_oct_a.png", "int_maps_cfp_b_2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)  # no temp files
    w, h = Image.open(tmp_path / "int_maps_oct_a.png").size
    w1, h1 = Image.open(tmp_path / "int_maps_cfp_a.png").size
    assert w == w1 and h > h1  # a row per slice
    with pytest.raises(ConfigError, match="1 case ids for a batch of 2"):
        write_int_maps(model, inputs, tmp_path, ["a"])
    with pytest.raises(ConfigError, match="need an EI model.*UnimodalVFM"):
        int_similarity_maps(model.aux["cfp"], inputs)
