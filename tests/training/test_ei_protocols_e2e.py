"""EI (two-stage recipe) and every Table 3 baseline train end to end on the MMC-AMD, Derm7pt and MRNet fixtures
(native layouts, the EI split lists) from the shipped protocol config of each dataset, with tiny ViTs and 1 epoch."""

import importlib
import json

import pytest

from mmdiag.cli.main import main

BASELINES = ["coscat", "mm_mil", "sfusion", "raddiag", "dynmm", "mmrad", "unimodel", "mm_mil_mor", "mmrad_mor"]
# the configs' crops are sized for 448-512 px; an epoch is one pass over the fixture, not the authors' 1,280-1,899 cases
TINY = ["data.options.image_size=28", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "data.batch_size=4", "data.verify=false", "data.augment={}", "data.epoch_size=null"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mmc_amd", "derm7pt", "mrnet"])
def test_ei_and_every_baseline_train_from_the_protocol_config(tmp_path, dataset):
    writer = getattr(importlib.import_module(f"mmdiag.testing.{dataset}"), f"write_{dataset}")
    root = writer(tmp_path / "data")
    config = ["--config", f"ei/ei_{dataset}", f"data.root={root}", *TINY]
    ei_run = tmp_path / "ei"
    assert main(["train", "--output", str(ei_run), *config, "model.options.vfm=tiny_dinov2",
                 "model.options.vfm_checkpoint=null"]) == 0
    recipe = json.loads((ei_run / "recipe.json").read_text())
    assert recipe and (ei_run / "stage2_ei" / "report.md").is_file()
    for name in BASELINES:
        run = tmp_path / name
        assert main(["train", "--output", str(run), *config, "recipe=null", f"model.name={name}",
                     "model.options={vfm: tiny_dinov2}"]) == 0, name
        metrics = json.loads((run / "metrics.json").read_text())
        per_class = next(iter(metrics["tasks"].values()))["per_class"]
        assert all({"ap", "auc", "s2"} <= set(row) for row in per_class.values()), name
        report = (run / "report.md").read_text()
        assert "| class | support |" in report and "s2" in report, name
    assert main(["summary", str(ei_run), *(str(tmp_path / n) for n in BASELINES)]) == 0
