import pytest

from mmdiag.data.schema import DatasetSpec
from mmdiag.errors import UnknownNameError
from mmdiag.evaluation.param_table import count_parameters, parameter_table


def _spec(name, views, side, channels, task):
    return DatasetSpec.model_validate({
        "name": name, "tasks": {"t": task},
        "modalities": {v: {"kind": "image", "channels": channels, "size": [side, side]} for v in views}})


# The three datasets of EI's Table 3 as the paper runs them (views, image side, classes).
MMC = _spec("mmc_amd", ["cfp", "oct"], 448, 3, {"type": "multiclass", "classes": ["n", "d", "p", "w"]})
DERM = _spec("derm7pt", ["clinic", "derm"], 512, 3, {"type": "multiclass", "classes": list("abcde")})
MRNET = _spec("mrnet", ["axial", "coronal", "sagittal"], 256, 12, {"type": "multilabel", "classes": list("abc")})
# Table 3 "Params. (M)" with CLIP: trainable parameters averaged over the three datasets.
TABLE3_CLIP = {"sfusion": 263.4, "dynmm": 402.2, "mm_mil_mor": 5.0}


def test_counts_on_meta_match_the_derivation():
    row, = parameter_table(["coscat"], MMC, vfm="clip_vit_b16")
    # CLIP ViT-B/16 without head at 448 px (785 position rows): 85,799,424 + 588 * 768; heads on 2 * (768 + 1).
    vit = 85_799_424 + 588 * 768
    assert row["trainable"] == row["total"] == 2 * vit + 2 * 769 * 4 + 4
    mor, = parameter_table(["mm_mil_mor"], MMC, vfm="clip_vit_b16")
    gated_attention = 2 * (768 * 1024 + 1024) + 1025
    assert mor["trainable"] == 2 * 1_474_656 + gated_attention + 768 * 4 + 4
    assert mor["total"] == 2 * vit + gated_attention + 768 * 4 + 4 + 2 * 1_474_656
    assert mor["trainable_m"] == pytest.approx(mor["trainable"] / 1e6)


@pytest.mark.parametrize("name", sorted(TABLE3_CLIP))
def test_table3_trainable_parameters_are_reproduced(name):
    mean = sum(parameter_table([name], s, vfm="clip_vit_b16")[0]["trainable"] for s in (MMC, DERM, MRNET)) / 3
    assert round(mean / 1e6, 1) == TABLE3_CLIP[name]


def test_count_parameters_and_unknown_names():
    from torch import nn

    layer = nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == {"trainable": 6, "total": 8}
    with pytest.raises(UnknownNameError, match="coscat"):
        parameter_table(["cosact"], MMC)
