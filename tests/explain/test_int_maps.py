"""[INT] patch-similarity maps (paper 003, Fig. 2): values, shapes and the PNG overlays."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmdiag import create_model
from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import ConfigError
from mmdiag.explain.int_maps import int_similarity_maps, render_int_overlay, write_int_maps

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


def test_overlay_panels():
    image = np.random.default_rng(0).random((3, S, S)).astype(np.float32) * 4 - 2  # any range is shown min-max
    off, on = torch.rand(1, 3, 3), torch.rand(1, 3, 3)
    panel = render_int_overlay([image], off, on, patch=14)
    assert panel.shape == (S, 3 * S, 3) and panel.dtype == np.uint8
    scaled = (image - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(panel[:, :S] / 255, np.transpose(scaled, (1, 2, 0)), atol=1 / 255)
    assert not np.array_equal(panel[:, S:2 * S], panel[:, 2 * S:])


def test_png_overlays_are_written_for_present_targets(model, inputs, tmp_path):
    present = {"cfp": torch.tensor([True, True]), "oct": torch.tensor([True, False])}
    files = write_int_maps(model, inputs, tmp_path, ["a", "b"], present)
    assert [p.name for p in files] == ["a_cfp.png", "a_oct.png", "b_cfp.png"]
    assert np.asarray(Image.open(tmp_path / "a_oct.png")).shape == (2 * S, 3 * S, 3)  # a row per slice
    assert np.asarray(Image.open(tmp_path / "b_cfp.png")).shape == (S, 3 * S, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_cfp.png", "a_oct.png", "b_cfp.png"]  # no temp files
    with pytest.raises(ConfigError, match="1 case ids for a batch of 2"):
        write_int_maps(model, inputs, tmp_path, ["a"])
    with pytest.raises(ConfigError, match="need an EI model.*UnimodalVFM"):
        int_similarity_maps(model.aux["cfp"], inputs)
