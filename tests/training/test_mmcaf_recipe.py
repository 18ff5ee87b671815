"""recipe mmcaf_three_stage end to end on the Lung-PET-CT-Dx fixture tree, from the shipped config."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdiag.config import load_config
from mmdiag.errors import ConfigError
from mmdiag.training.recipes import run_experiment

CONFIG = Path(__file__).parents[2] / "src/mmdiag/configs/mmcaf/mmcaf_lung_pet_ct_dx.yaml"


def _cfg(tmp_path, root, extra=()):
    return load_config(CONFIG, [f"data.root={root}", "data.options.num_slices=4", "data.options.image_size=24",
                                "data.options.split=random", "data.batch_size=2", "model.name=tiny_mmcaf_net",
                                "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                "schedule.warmup_epochs=0", "data.verify=false", f"output_dir={tmp_path / 'runs'}",
                                *extra])


def test_shipped_config_is_the_paper_protocol():
    cfg = load_config(CONFIG, [])
    assert (cfg.recipe, cfg.model.name, cfg.data.batch_size, cfg.trainer.max_epochs) == \
        ("mmcaf_three_stage", "mmcaf_net", 4, 50)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 1e-4, 0.9, 1e-2)
    assert (cfg.data.sampling, cfg.data.tabular_scaling, cfg.trainer.early_stopping) == ("oversample", "minmax", None)


@pytest.mark.slow
def test_three_stages_train_and_hand_over(tmp_path):
    from mmdiag.testing import write_lung_pet_ct_dx

    torch.set_num_threads(1)
    root = write_lung_pet_ct_dx(tmp_path / "data")
    cfg = _cfg(tmp_path, root)
    run_dir = tmp_path / "runs" / cfg.name
    run_experiment(cfg, run_dir)
    record = json.loads((run_dir / "recipe.json").read_text())
    assert list(record["stages"]) == ["penet", "image", "fusion"]
    s1, s2, s3 = (load_file(run_dir / d / "model.safetensors")
                  for d in ("stage1_penet", "stage2_image", "stage3_fusion"))
    for k, v in s1.items():  # PENet frozen after stage 1, image encoder after stage 2
        if k.startswith("image.backbone."):
            torch.testing.assert_close(s2[k], v) and torch.testing.assert_close(s3[k], v)
    for k, v in s2.items():
        if k.startswith("image."):
            torch.testing.assert_close(s3[k], v)
    assert any(k.startswith("fusion.") for k in s3) and not any(k.startswith("fusion.") for k in s2)
    proto = record["stages"]["fusion"]["protocol"]
    assert set(proto["test"]) == {"auc", "acc", "f1", "specificity", "sensitivity", "ppv", "npv"}
    assert 0.0 <= proto["threshold"] <= 1.0 and proto["series"] == {"val": 2, "test": 2}


def test_recipe_refuses_other_models(tmp_path):
    cfg = _cfg(tmp_path, tmp_path, ["model.name=late_fusion", "model.options={}"])
    with pytest.raises(ConfigError, match="mmcaf_three_stage"):
        run_experiment(cfg, tmp_path / "x")


BASELINES = ["daft", "mmtm", "late_fusion", "penet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_configs_train_on_the_fixture(tmp_path, name):
    from mmdiag.testing import write_lung_pet_ct_dx

    torch.set_num_threads(1)
    root = write_lung_pet_ct_dx(tmp_path / "data")
    path = CONFIG.parent / f"{name}_lung_pet_ct_dx.yaml"
    extra = {"daft": [], "mmtm": ["model.options.backbone=tiny_penet"],
             "late_fusion": ["model.options.backbone=tiny_penet"], "penet": []}[name]
    base = [f"data.root={root}", "data.options.num_slices=4", "data.options.image_size=24", "data.options.split=random",
            "data.batch_size=2", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "schedule.warmup_epochs=0", "data.verify=false", f"output_dir={tmp_path / 'runs'}"]
    if name == "penet":
        base.append("model.name=tiny_mmcaf_net")
    cfg = load_config(path, base + extra)
    result = run_experiment(cfg, tmp_path / "runs" / name)
    assert (result.run_dir / "model.safetensors").is_file()
    from mmdiag.evaluation.protocols.mmcaf import evaluate_mmcaf_run

    proto = evaluate_mmcaf_run(result.run_dir)
    assert proto["series"] == {"val": 2, "test": 2} and 0.0 <= proto["test"]["acc"] <= 1.0
