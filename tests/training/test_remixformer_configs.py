"""The shipped RemixFormer++ configs train tiny variants end to end on the native-layout fixtures."""

from __future__ import annotations

import pytest

from mmdiag.config import load_config
from mmdiag.data.transforms import build_image_augment
from mmdiag.testing import write_derm7pt, write_pad_ufes20
from mmdiag.testing.remixformer import TINY_OVERRIDES
from mmdiag.training.run import train


@pytest.mark.parametrize("name", ["t3_pad_ufes20", "t6_derm7pt", "t7_derm7pt_ablation"])
def test_shipped_recipe(name):
    cfg = load_config(f"remixformer/{name}", [])
    assert (cfg.optim.name, cfg.optim.lr, cfg.schedule.name, cfg.model.name) == ("sgd", 1e-4, "cosine",
                                                                                 "remixformer_pp")
    assert len(cfg.data.augment["image"]) == 6 and build_image_augment(cfg.data.augment["image"]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("name,use,writer", [("t3_pad_ufes20", "C", write_pad_ufes20),
                                             ("t3_pad_ufes20", "CM", write_pad_ufes20),
                                             ("t6_derm7pt", "D", write_derm7pt), ("t6_derm7pt", "CDM", write_derm7pt)])
def test_tiny_variant_trains_from_the_shipped_config(tmp_path, name, use, writer):
    root = writer(tmp_path / "data")
    cfg = load_config(f"remixformer/{name}", [f"output_dir={tmp_path}", f"name={use}", f"data.root={root}",
                                               f"model.options.use={use}", *TINY_OVERRIDES])
    result = train(cfg)
    tasks = result.metrics["tasks"]
    assert (len(tasks) == 8) if name == "t6_derm7pt" else ("diagnosis" in tasks)
    assert all(0.0 <= t["acc"] <= 1.0 for t in tasks.values())
    assert (result.run_dir / "model.safetensors").is_file()
