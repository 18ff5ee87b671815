"""Focal loss option of MultiTaskLoss against the binary focal loss written out on the logit difference."""

import torch
import torch.nn.functional as F

from mmdiag.data.schema import TaskSpec
from mmdiag.training.losses import MultiTaskLoss

TASKS = {"diagnosis": TaskSpec(type="binary", classes=("A", "G"))}


def test_two_logit_focal_equals_binary_focal_of_the_difference():
    torch.manual_seed(0)
    z = torch.randn(16, 2)
    y = torch.randint(0, 2, (16,))
    y[3] = -1
    total, _ = MultiTaskLoss(TASKS, focal_gamma=2.0)({"diagnosis": z}, {"diagnosis": y})
    d, known = z[:, 1] - z[:, 0], y >= 0
    p = torch.sigmoid(d)
    pt = torch.where(y == 1, p, 1 - p)
    bce = F.binary_cross_entropy_with_logits(d, y.clamp_min(0).float(), reduction="none")
    torch.testing.assert_close(total, ((1 - pt) ** 2 * bce)[known].mean())


def test_gamma_zero_is_cross_entropy():
    z, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    total, _ = MultiTaskLoss(TASKS)({"diagnosis": z}, {"diagnosis": y})
    torch.testing.assert_close(total, F.cross_entropy(z, y))
