"""The ei_two_stage recipe end to end on a tiny manifest dataset: stage folders, initialisation, prior, resume."""

import json
import math
from importlib import resources

import pytest
import torch
import yaml

import mmdiag.training.ei_recipe  # noqa: F401  (registers the recipe)
from mmdiag.config import load_config
from mmdiag.errors import ConfigError
from mmdiag.io.checkpoint import load_state_dict_file
from mmdiag.training.ei_recipe import _prior, stage_configs
from mmdiag.training.recipes import run_experiment

CONFIGS = resources.files("mmdiag").joinpath("configs", "ei")


def _cfg(tmp_path, manifest_yaml, *extra):
    return load_config(None, [
        f"output_dir={tmp_path}", "name=ei", "recipe=ei_two_stage", f"data.dataset={manifest_yaml}",
        "data.modalities=[photo, scope]", "data.batch_size=8", "data.split.folds=3", "model.name=ei",
        "model.options.vfm=tiny_dinov2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.early_stopping.monitor=val/mean/map", "optim.name=sgd", "optim.momentum=0.95",
        "schedule.name=cyclic", "schedule.base_lr=1e-5", "schedule.max_lr=1e-3", "schedule.step_size_up=4", *extra])


def test_two_stages_end_to_end_with_resume_and_int_maps(tmp_path, manifest_yaml):
    cfg = _cfg(tmp_path, manifest_yaml)
    result = run_experiment(cfg)
    run = tmp_path / "ei"
    assert result.run_dir == run / "stage2_ei"
    for stage in ("stage1_photo", "stage1_scope", "stage2_ei"):
        assert (run / stage / "report.md").is_file() and (run / stage / "model.safetensors").is_file(), stage
    stage1 = yaml.safe_load((run / "stage1_scope" / "config.yaml").read_text())
    assert stage1["model"] == {"name": "ei_unimodal", "options": {"vfm": "tiny_dinov2", "modality": "scope"},
                               "checkpoint": None, "peft": None, "peft_options": {}}
    assert stage1["data"]["modalities"] == ["scope"] and stage1["optim"]["momentum"] == 0.95
    record = json.loads((run / "recipe.json").read_text())
    scores = {m: r["best"] for m, r in record["stage1"].items()}
    assert set(scores) == {"photo", "scope"} and all(isinstance(s, float) for s in scores.values())
    assert record["prior_modality"] == _prior(scores, "max", "val/mean/map")
    final = yaml.safe_load((run / "stage2_ei" / "config.yaml").read_text())
    assert final["recipe"] is None and final["model"]["name"] == "ei"
    assert final["model"]["options"]["prior_modality"] == record["prior_modality"]
    assert final["model"]["options"]["init_runs"] == {m: str(run / f"stage1_{m}") for m in ("photo", "scope")}
    assert "diagnosis" in result.metrics["tasks"]
    # the frozen base of the EI model is exactly the stage-1 base (only adapters, heads, [INT] and gate trained)
    ei_state = load_state_dict_file(run / "stage2_ei" / "model.safetensors")
    uni_state = load_state_dict_file(run / "stage1_photo" / "model.safetensors")
    base = [k for k in uni_state if k.startswith("encoder.vit.") and ("base_layer" in k or "patch_embed" in k)]
    assert base and all((ei_state[f"primary.photo.{k}"] == uni_state[k]).all() for k in base)

    stamps = {p: p.stat().st_mtime_ns for p in run.glob("*/model.safetensors")}
    again = run_experiment(cfg, resume=True)  # every stage finished: nothing is retrained
    assert again.run_dir == result.run_dir and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with pytest.raises(ConfigError, match="already holds a run"):
        run_experiment(cfg)

    from mmdiag.cli.main import main

    assert main(["explain", "int-maps", "--run", str(result.run_dir), "--cases", "2"]) == 0
    maps = sorted((result.run_dir / "explain").glob("int_maps_*.png"))
    cases = {p.stem.split("_", 3)[3] for p in maps}
    assert len(maps) == 4 and len(cases) == 2
    assert sorted(p.name for p in maps) == sorted(f"int_maps_{m}_{c}.png" for c in cases for m in ("photo", "scope"))


def test_stage_configs_check_the_model(tmp_path, manifest_yaml):
    cfg = _cfg(tmp_path, manifest_yaml, "model.options.int_layer=1", "model.options.vfm_peft=lora",
               "model.options.slices={photo: 1, scope: 1}")
    stages = stage_configs(cfg, ["photo", "scope"])
    assert list(stages) == ["stage1_photo", "stage1_scope"]
    assert stages["stage1_photo"].model.options == {"vfm": "tiny_dinov2", "vfm_peft": "lora", "modality": "photo",
                                                    "slices": {"photo": 1}}
    assert stages["stage1_scope"].data.modalities == ["scope"] and stages["stage1_scope"].recipe is None
    with pytest.raises(ConfigError, match="trains model.name=ei; the config names 'late_fusion'"):
        stage_configs(_cfg(tmp_path, manifest_yaml, "model.name=late_fusion"), ["photo"])
    with pytest.raises(ConfigError, match="model.options.vfm_peft"):
        stage_configs(_cfg(tmp_path, manifest_yaml, "model.peft=mor"), ["photo"])


def test_prior_is_the_best_stage1_modality():
    assert _prior({"cfp": 0.7, "oct": 0.9}, "max", "val/mean/map") == "oct"
    assert _prior({"cfp": 0.7, "oct": 0.7}, "max", "val/mean/map") == "oct"  # ties: the later modality
    assert _prior({"a": 0.3, "b": 0.2, "c": math.nan}, "min", "val/loss") == "b"
    with pytest.raises(ConfigError, match="prior_modality"):
        _prior({"a": math.nan}, "max", "val/mean/map")


@pytest.mark.parametrize("name,writer", [("ei_mmc_amd", "write_mmc_amd"), ("ei_derm7pt", "write_derm7pt"),
                                         ("ei_mrnet", "write_mrnet")])
def test_protocol_configs_build_ei_on_the_native_layouts(tmp_path, name, writer):
    """Each packaged protocol reads its dataset (tiny native fixture, EI split lists) and feeds EI one batch."""
    import importlib

    from mmdiag.data.dataset import CaseDataset, collate_cases
    from mmdiag.data.sources import load_table
    from mmdiag.data.transforms import BatchTransform, build_image_augment
    from mmdiag.models._builder import build_for_dataset

    root = getattr(importlib.import_module(f"mmdiag.testing.{writer.removeprefix('write_')}"), writer)(tmp_path)
    cfg = load_config(CONFIGS / f"{name}.yaml", [f"data.root={root}", "data.options.image_size=28",
                                                 "model.options.vfm=tiny_dinov2", "model.options.vfm_checkpoint=null"])
    assert (cfg.recipe, cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay, cfg.data.batch_size) == \
        ("ei_two_stage", "sgd", 0.95, 1e-4, 8)
    assert (cfg.schedule.name, cfg.schedule.base_lr, cfg.schedule.max_lr) == ("cyclic", 1e-5, 1e-3)
    es = cfg.trainer.early_stopping
    assert (es.monitor, es.mode, es.patience, cfg.trainer.check_val_every_n_epoch) == ("val/mean/map", "max", 10, 1)
    assert build_image_augment(cfg.data.augment["image"]) is not None
    table = load_table(cfg.data.dataset, cfg.data.root, cfg.data.options)
    modalities = cfg.data.modalities or list(table.spec.modalities)
    spec = table.spec.restrict(modalities)
    torch.manual_seed(0)
    model = build_for_dataset(spec, cfg.model.name, cfg.model.options).eval()
    train = [i for i, c in enumerate(table.cases) if c.split == "train"]
    batch = collate_cases([CaseDataset(table, train[:2], {}, modalities=modalities)[i] for i in range(2)])
    batch = BatchTransform(spec)(batch, train=False)
    with torch.no_grad():
        out = model(batch["inputs"], batch["present"])
    task = spec.main_task
    assert out[task].shape == (2, spec.tasks[task].num_outputs)
    slices = {"ei_mrnet": 4}.get(name, 1)
    assert all(model.primary[m].encoder.num_slices == slices for m in modalities)


@pytest.mark.slow
def test_prior_from_the_training_cases(tmp_path, manifest_yaml):
    from mmdiag.training.ei_recipe import training_score

    run_experiment(_cfg(tmp_path, manifest_yaml, "model.options.prior_modality=best_train"))
    record = json.loads((tmp_path / "ei" / "recipe.json").read_text())
    assert record["prior_rule"] == "best_train"
    train = {m: r["train"] for m, r in record["stage1"].items()}
    assert all(0.0 <= s <= 1.0 for s in train.values())
    assert record["prior_modality"] == _prior(train, "max", "val/mean/map")
    final = yaml.safe_load((tmp_path / "ei" / "stage2_ei" / "config.yaml").read_text())
    assert final["model"]["options"]["prior_modality"] == record["prior_modality"]
    # the recorded score is the stage-1 model's mAP on its training split, recomputed here through other code
    import numpy as np
    from sklearn.metrics import average_precision_score

    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.predict import predict_loader
    from mmdiag.evaluation.robustness import load_run_data

    stage = tmp_path / "ei" / "stage1_photo"
    predictor = Predictor(stage)
    loader, _ = load_run_data(predictor, stage, "train")  # PNG cases: the training dataset reads as in evaluation
    preds = predict_loader(predictor.model, predictor.spec, loader, predictor.transform)
    y, p = preds.y_true["diagnosis"], preds.y_prob["diagnosis"]
    expected = np.mean([average_precision_score(y == c, p[:, c]) for c in (0, 1)])
    assert train["photo"] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ConfigError, match="val/loss"):
        training_score(stage, "val/loss")


def test_prior_rule_or_modality_is_checked(tmp_path, manifest_yaml):
    with pytest.raises(ConfigError, match=r"prior_modality='best_trian'.*best_train"):
        run_experiment(_cfg(tmp_path, manifest_yaml, "model.options.prior_modality=best_trian"))
