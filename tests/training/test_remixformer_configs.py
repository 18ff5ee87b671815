"""The shipped RemixFormer++ configs train tiny variants end to end on the native-layout fixtures."""

from __future__ import annotations

import pytest

from mmdiag.config import load_config
from mmdiag.data.transforms import build_image_augment
from mmdiag.testing import write_derm7pt, write_pad_ufes20
from mmdiag.testing.isic import write_isic2018
from mmdiag.testing.remixformer import TINY_OVERRIDES
from mmdiag.training.run import train


@pytest.mark.parametrize("name", ["t3_pad_ufes20", "t4_isic2018", "t4_isic2019", "t5_isic_attr", "t6_derm7pt",
                                  "t7_derm7pt_ablation"])
def test_shipped_recipe(name):
    cfg = load_config(f"remixformer/{name}", [])
    assert (cfg.optim.name, cfg.optim.lr, cfg.schedule.name, cfg.model.name) == ("sgd", 1e-4, "cosine",
                                                                                 "remixformer_pp")
    assert len(cfg.data.augment["image"]) == 6 and build_image_augment(cfg.data.augment["image"]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("name,use,writer", [("t3_pad_ufes20", "C", write_pad_ufes20),
                                             ("t3_pad_ufes20", "CM", write_pad_ufes20),
                                             ("t6_derm7pt", "D", write_derm7pt), ("t6_derm7pt", "CDM", write_derm7pt),
                                             ("t4_isic2018", "D", write_isic2018), ("t5_isic_attr", "D", write_isic2018)])
def test_tiny_variant_trains_from_the_shipped_config(tmp_path, name, use, writer):
    root = writer(tmp_path / "data")
    cfg = load_config(f"remixformer/{name}", [f"output_dir={tmp_path}", f"name={use}", f"data.root={root}",
                                               f"model.options.use={use}", *TINY_OVERRIDES,
                                               *(["data.split.folds=2", "data.split.val_fraction=0.5"] if "isic" in name else [])])
    result = train(cfg)
    tasks = result.metrics["tasks"]
    expect = {"t6_derm7pt": 8, "t5_isic_attr": 1}.get(name, 1)
    assert len(tasks) == expect and ("attributes" in tasks if name == "t5_isic_attr" else "diagnosis" in tasks)
    assert all(0.0 <= t["auc"] <= 1.0 or t["auc"] != t["auc"] for t in tasks.values())
    assert (result.run_dir / "model.safetensors").is_file()
