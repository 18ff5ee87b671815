"""Corruptions do what their table says; severity 0 is the clean evaluation; the report files."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmdiag import create_model
from mmdiag.config.schema import DataConfig
from mmdiag.data.datamodule import MultimodalDataModule
from mmdiag.data.manifest import load_manifest_dataset
from mmdiag.data.transforms import BatchTransform
from mmdiag.errors import ConfigError, UnknownNameError
from mmdiag.evaluation.metrics import evaluate_tasks
from mmdiag.evaluation.predict import predict_loader
from mmdiag.evaluation.robustness import (CORRUPTIONS, _plot, PAPER_METRICS, corrupt, evaluate_robustness, resolve_run,
                                          write_robustness)


def test_severity_zero_is_the_identity_and_every_corruption_changes_the_image():
    x = torch.rand(2, 3, 64, 64) * 0.6 + 0.2  # blur sigma at severity 1: 0.32 pixels
    for name in CORRUPTIONS:
        assert corrupt(x, name, 0) is x
        for s in range(1, 6):
            y = corrupt(x, name, s)
            assert y.shape == x.shape and not torch.equal(y, x), (name, s)
            assert 0 <= float(y.min()) and float(y.max()) <= 1, (name, s)


def test_rotation_by_90_degrees_is_rot90_counter_clockwise():
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(corrupt(x, "rotation", 5), torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-5)


def test_translation_shifts_right_and_down_with_zero_fill():
    x = torch.rand(1, 1, 20, 40)
    y = corrupt(x, "translation", 1)  # 0.05 of 40 x 20: 2 pixels right, 1 pixel down
    expected = torch.zeros_like(x)
    expected[..., 1:, 2:] = x[..., :-1, :-2]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)


def test_color_temperature_is_a_per_channel_gain_and_leaves_grey_images_alone():
    x = torch.full((1, 3, 4, 4), 0.5)
    y = corrupt(x, "color_temperature", 2)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.6, 0.5, 0.4]))
    grey = torch.rand(1, 1, 4, 4)
    assert torch.equal(corrupt(grey, "color_temperature", 5), grey)
    assert torch.allclose(corrupt(torch.ones(1, 3, 2, 2), "color_temperature", 5)[0, :, 0, 0],
                          torch.tensor([1.0, 1.0, 0.5]))  # clipped


def test_noise_is_seeded_per_case_and_scales_with_severity():
    x = torch.full((3, 1, 64, 64), 0.5)
    idx = torch.tensor([7, 8, 9])
    n1 = corrupt(x, "gaussian_noise", 1, idx) - 0.5
    n5 = corrupt(x, "gaussian_noise", 5, idx) - 0.5
    assert abs(float(n1.std()) - 0.04) < 0.003 and abs(float(n5.std()) - 0.20) < 0.015
    unclipped = (n5.abs() < 0.5 - 1e-6)
    torch.testing.assert_close(n5[unclipped] / 0.20, n1[unclipped] / 0.04, rtol=0, atol=1e-4)
    alone = corrupt(x[2:], "gaussian_noise", 1, idx[2:]) - 0.5  # same case, other batch position
    torch.testing.assert_close(alone[0], n1[2], rtol=0, atol=0)
    assert not torch.equal(n1[0], n1[1])
    assert not torch.equal(corrupt(x, "gaussian_noise", 1, idx, seed=1), n1 + 0.5)


def test_blur_is_a_gaussian_with_sigma_relative_to_the_image_size():
    x = torch.rand(1, 2, 40, 60)
    sigma = 0.03 * 40  # severity 5, shorter side 40
    k = 2 * math.ceil(3 * sigma) + 1
    t = torch.arange(k) - k // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(2, 1, k, k)
    expected = F.conv2d(F.pad(x, [k // 2] * 4, mode="reflect"), kernel, groups=2)
    torch.testing.assert_close(corrupt(x, "gaussian_blur", 5), expected, rtol=0, atol=1e-5)


def test_brightness_adds_and_contrast_pulls_towards_the_mean():
    x = torch.rand(2, 1, 8, 8) * 0.5
    torch.testing.assert_close(corrupt(x, "brightness", 3), x + 0.3)
    mean = x.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", 4), (x - mean) * 0.3 + mean)


def test_bad_names_and_severities():
    with pytest.raises(UnknownNameError, match="'rotate'.*did you mean 'rotation'"):
        corrupt(torch.rand(1, 3, 8, 8), "rotate", 1)
    with pytest.raises(ConfigError, match="severity must be 0..5, got 6"):
        corrupt(torch.rand(1, 3, 8, 8), "rotation", 6)
    with pytest.raises(ConfigError, match=r"2D image batches.*\(1, 3, 4, 8, 8\)"):
        corrupt(torch.rand(1, 3, 4, 8, 8), "rotation", 1)


@pytest.fixture(scope="module")
def setup(manifest_yaml):
    table = load_manifest_dataset(manifest_yaml)
    dm = MultimodalDataModule(table, DataConfig(batch_size=3), split={"train": [], "test": list(range(6))},
                              encoder_state={"record": {"age": [50.0, 10.0]}})
    dm.setup("test")
    torch.manual_seed(0)
    model = create_model("late_fusion", spec=dm.spec).eval()
    return dm, model, BatchTransform(dm.spec)


def test_severity_zero_reproduces_the_clean_evaluation_exactly(setup):
    dm, model, transform = setup
    result = evaluate_robustness(model, dm.spec, dm.loader("test"), transform, ["brightness"], modalities=["photo"])
    preds = predict_loader(model, dm.spec, dm.loader("test"), transform)
    clean = evaluate_tasks(dm.spec.tasks, preds.y_true, preds.y_prob)["tasks"]["diagnosis"]
    assert list(result["results"]) == ["brightness"]
    for name, rows in result["results"].items():
        assert [r["severity"] for r in rows] == [0, 1, 2, 3, 4, 5]
        assert [r["level"] for r in rows[1:]] == list(CORRUPTIONS[name].levels)
        for m in PAPER_METRICS:
            assert rows[0]["tasks"]["diagnosis"][m] == clean[m], m
    assert result["clean"]["tasks"]["diagnosis"]["n"] == 6
    with pytest.raises(ConfigError, match=r"\['record'\] given, the run has \['photo', 'scope'\]"):
        evaluate_robustness(model, dm.spec, dm.loader("test"), transform, ["rotation"], modalities=["record"])


class _Spy(torch.nn.Module):
    """Records the inputs the model is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, inputs, present=None):
        self.seen.append({k: v.clone() for k, v in inputs.items()})
        return self.model(inputs, present)


def test_only_the_chosen_modality_is_corrupted_before_the_model(setup):
    dm, model, transform = setup
    spy = _Spy(model)
    evaluate_robustness(spy, dm.spec, dm.loader("test"), transform, ["rotation", "brightness"], modalities=["photo"])
    assert len(spy.seen) == 2 * 11  # 2 batches x (clean + 2 corruptions x 5 severities)
    clean, rot90, bright = spy.seen[0], spy.seen[5], spy.seen[8]
    torch.testing.assert_close(rot90["photo"], torch.rot90(clean["photo"], 1, dims=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(bright["photo"], (clean["photo"] + 0.3).clamp(0, 1))
    for seen in spy.seen[:11]:
        assert torch.equal(seen["scope"], clean["scope"]) and torch.equal(seen["record"], clean["record"])


def test_report_files(setup, tmp_path):
    dm, model, transform = setup
    result = evaluate_robustness(model, dm.spec, dm.loader("test"), transform, ["contrast"])
    result.update(run="RUN", weights="W", data="D", corrupted_modalities=["photo", "scope"], seed=0,
                  corruptions={"contrast": {"parameter": CORRUPTIONS["contrast"].parameter,
                                            "levels": list(CORRUPTIONS["contrast"].levels)}})
    paths = write_robustness(result, dm.spec, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert {f"robustness_{m}.png" for m in PAPER_METRICS} <= {p.name for p in paths}
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["results"]["contrast"][0]["tasks"]["diagnosis"]["acc"] == result["clean"]["tasks"]["diagnosis"]["acc"]
    md = (tmp_path / "robustness.md").read_text()
    assert md.count("| corruption | 0 | 1 | 2 | 3 | 4 | 5 |") == len(PAPER_METRICS)
    assert "| contrast | factor towards the mean grey level | 0.8 | 0.6 | 0.4 | 0.3 | 0.2 |" in md
    assert "## diagnosis: Specificity (n = 6)" in md
    result["model"] = "late_fusion"
    fig = _plot(result, dm.spec, "auc", tmp_path / "auc.png")
    ax = fig.axes[0]
    assert ax.get_title() == "diagnosis (n = 6)" and ax.get_ylabel() == "AUC" and ax.get_xlabel()
    assert "late_fusion, D" in fig._suptitle.get_text()
    low, high = result["clean"]["ci95"]["diagnosis"]["auc"]
    assert low <= result["clean"]["tasks"]["diagnosis"]["auc"] <= high
    band_y = ax.transData.inverted().transform(ax.patches[0].get_verts())[:, 1]
    assert (band_y.min(), band_y.max()) == (pytest.approx(low), pytest.approx(high))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["clean 95 % CI", "contrast"]
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # legend outside, clear of the lines


def test_resolve_run(tmp_path):
    with pytest.raises(ConfigError, match=r"--run '.*nope' is not a folder"):
        resolve_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a run folder"):
        resolve_run(tmp_path)
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"--run '.*model.safetensors' is not a folder"):
        resolve_run(tmp_path / "model.safetensors")  # --run names the folder; a file goes to --weights
    assert resolve_run(tmp_path) == (tmp_path, None)
    assert resolve_run(tmp_path, tmp_path / "model.safetensors") == (tmp_path, None)
    assert resolve_run(tmp_path, tmp_path / "other.safetensors") == (tmp_path, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match=r"--weights '.*absent.safetensors' does not exist"):
        resolve_run(tmp_path, tmp_path / "absent.safetensors")
