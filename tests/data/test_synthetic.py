import numpy as np
import torch

from mmdiag.data.synthetic import CLASSES, synthetic


def _bits(y):
    return y // 4, (y // 2) % 2, y % 2


def test_same_seed_same_data():
    a, b, c = synthetic(n_cases=40, seed=5), synthetic(n_cases=40, seed=5), synthetic(n_cases=40, seed=6)
    np.testing.assert_array_equal(a.cases[7].inputs["clinical"], b.cases[7].inputs["clinical"])
    assert a.cases[7].inputs["record"] == b.cases[7].inputs["record"]
    assert not np.array_equal(a.cases[7].inputs["clinical"], c.cases[7].inputs["clinical"])


def test_each_modality_carries_exactly_its_bit():
    """The documented ceilings: given one modality's bit, the label is uniform over 4 classes (Bayes ACC 25 %)."""
    table = synthetic(n_cases=4000, seed=0, with_volume=True)
    y = table.label_matrix("diagnosis")
    u, v, w = _bits(y)
    assert len(CLASSES) == 8 and np.bincount(y).min() > 400
    for bit in (u, v, w):
        for value in (0, 1):
            counts = np.bincount(y[bit == value], minlength=8)
            assert (counts > 0).sum() == 4  # four classes remain possible
            assert counts.max() / counts.sum() < 0.29  # none dominates: best guess ≈ 25 %
    # ... and each bit is readable from its own modality by a simple rule
    ring = []
    for c in table.cases[:500]:  # a ring is dark at the centre of its bright pixels, a disk is bright there
        grey = c.inputs["clinical"].mean(0)
        ys, xs = np.nonzero(grey > 0.6)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        ring.append(grey[cy - 1:cy + 2, cx - 1:cx + 2].mean() < 0.6)
    assert (np.array(ring) == (u[:500] == 1)).mean() > 0.95
    marker = np.array([c.inputs["record"]["marker"] for c in table.cases])
    assert ((marker > 0) == (w == 1)).mean() > 0.99
    ct = np.stack([c.inputs["ct"] for c in table.cases[:500]])
    d = ct.shape[2]
    assert ((ct[:, 0, d // 2:].mean((1, 2, 3)) > ct[:, 0, : d // 2].mean((1, 2, 3))) == (w[:500] == 1)).mean() > 0.97
    derm = torch.from_numpy(np.stack([c.inputs["dermoscopy"] for c in table.cases[:500]]).mean(1))
    horizontal_energy = (derm[:, 1:] - derm[:, :-1]).abs().mean((1, 2))  # changes along y: horizontal stripes
    vertical_energy = (derm[:, :, 1:] - derm[:, :, :-1]).abs().mean((1, 2))
    assert ((horizontal_energy > vertical_energy).numpy() == (v[:500] == 1)).mean() > 0.95


def test_missing_and_multitask_options():
    table = synthetic(n_cases=400, seed=0, multitask=True, missing={"clinical": 0.25})
    absent = sum(not table.present(c, "clinical") for c in table.cases)
    assert 60 < absent < 140
    assert table.spec.tasks["findings"].type == "multilabel"
    y = table.label_matrix("diagnosis")
    np.testing.assert_array_equal(table.label_matrix("findings")[:, 0], y // 4)
