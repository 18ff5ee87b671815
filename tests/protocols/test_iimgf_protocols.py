"""IIMGF-Net protocols end to end: the Derm7pt 8-task config on the native-layout fixture, and a DECT-LNM-style
manifest (three grey crops per energy level stacked as one modality's channels) under 5-fold cross-validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmdiag.cli.main import main
from mmdiag.data.transforms import BatchTransform, build_image_augment
from mmdiag.models.nets.iimgf_net import OFFICIAL_HEADS
from mmdiag.testing.derm7pt import write_derm7pt

TINY = ["data.options.image_size=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "data.batch_size=4", "data.verify=false", "model.options.backbone=tiny_vmamba",
        "model.options.backbone_checkpoint=null"]


@pytest.mark.slow
def test_derm7pt_config_trains_and_reports_8_task_means(tmp_path):
    root = write_derm7pt(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--config", "iimgf/iimgf_derm7pt", "--output", str(run), f"data.root={root}", *TINY]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["tasks"]) == list(OFFICIAL_HEADS.values())
    for key in ("acc", "auc", "sensitivity", "specificity"):
        per_task = [t[key] for t in metrics["tasks"].values()]
        assert metrics["mean"][key] == pytest.approx(np.nanmean(per_task))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["early_stopping"]["monitor"] == "val/mean/acc" and cfg["optim"]["name"] == "adam"
    out = tmp_path / "ig"
    assert main(["explain", "ig", "--run", str(run), "--task", "diag", "--cases", "1", "--steps", "4",
                 "--baseline", "blur", "--output", str(out)]) == 0
    assert sorted(p.name.split("_")[1] for p in out.glob("ig_*.png")) == ["clinical", "dermoscopy"]


def test_paired_augmentation_gives_both_images_the_same_geometry():
    torch.manual_seed(0)
    from mmdiag.models.nets.iimgf_net import derm7pt_8task_spec

    spec = derm7pt_8task_spec(image_size=32)
    aug = build_image_augment([{"name": "RandomAffine", "degrees": 45.0, "scale": [0.5, 1.5], "p": 1.0},
                               {"name": "RandomHorizontalFlip", "p": 0.5}])
    img = torch.rand(4, 3, 32, 32)
    batch = {"inputs": {"clinical": img, "dermoscopy": img.clone()},
             "present": {"clinical": torch.ones(4, dtype=torch.bool), "dermoscopy": torch.ones(4, dtype=torch.bool)}}
    paired = BatchTransform(spec, aug, paired=True)(batch, train=True)["inputs"]
    assert torch.equal(paired["clinical"], paired["dermoscopy"])
    unpaired = BatchTransform(spec, aug, paired=False)(batch, train=True)["inputs"]
    assert not torch.equal(unpaired["clinical"], unpaired["dermoscopy"])


def write_dect_study(folder, n_cases=20, size=40):
    """Three grey PNG crops per energy level per case, stacked into one (H, W, 3) .npy per modality (docs recipe)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_cases):
        label = i % 2
        row = {"case_id": f"p{i:03d}", "lnm": ["negative", "positive"][label]}
        for kev in ("kev100", "kev150"):
            crops = []
            for j in range(3):
                a = rng.integers(0, 120, (size, size)).astype(np.uint8)
                a[10:30, 10:30] += np.uint8(100 * label)
                path = folder / f"{row['case_id']}_{kev}_{j}.png"
                Image.fromarray(a, mode="L").save(path)
                crops.append(np.asarray(Image.open(path)))
            np.save(folder / f"{row['case_id']}_{kev}.npy", np.stack(crops, axis=-1))
            row[kev] = f"{row['case_id']}_{kev}.npy"
        rows.append(row)
    import pandas as pd

    pd.DataFrame(rows).to_csv(folder / "cases.csv", index=False)
    study = {"name": "dect_lnm", "manifest": "cases.csv",
             "modalities": {k: {"kind": "image", "channels": 3, "size": [32, 32]} for k in ("kev100", "kev150")},
             "tasks": {"lnm": {"type": "binary", "classes": ["negative", "positive"]}}}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(study))
    return folder / "dataset.yaml"


@pytest.mark.slow
def test_dect_style_manifest_five_fold_cv(tmp_path, capsys):
    data = tmp_path / "dect"
    data.mkdir()
    study = write_dect_study(data)
    out = tmp_path / "cv"
    assert main(["cv", f"data.dataset={study}", "model.name=iimgf_net", "model.options.backbone=tiny_vmamba",
                 "--output", str(out), "--folds", "5", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 "data.batch_size=4", "data.verify=false", "optim.lr=1e-4"]) == 0
    cv = json.loads((out / "cv_metrics.json").read_text())
    assert len(cv["summary"]["mean/acc"]["values"]) == 5
    assert "mean/auc" in capsys.readouterr().out
