import torch

from mmdiag.config.schema import OptimConfig, ScheduleConfig
from mmdiag.data.synthetic import synthetic
from mmdiag.data.transforms import BatchTransform
from mmdiag.training.losses import MultiTaskLoss
from mmdiag.models.outputs import AUX_KEY, AUX_LOSS_KEY
from mmdiag.training.system import MultimodalSystem


def test_auxiliary_terms_are_weighted_into_the_loss():
    spec = synthetic(n_cases=20).spec
    loss = MultiTaskLoss(spec.tasks)
    system = MultimodalSystem(torch.nn.Identity(), spec, loss, OptimConfig(), ScheduleConfig(), 1, BatchTransform(spec))
    main, aux = torch.randn(4, 8), torch.randn(4, 8)
    labels = {"diagnosis": torch.tensor([0, 1, 2, 3])}
    out = {"diagnosis": main, AUX_KEY: {"branch": (0.3, {"diagnosis": aux})}, AUX_LOSS_KEY: {"gate": (0.1, torch.tensor(2.0))}}
    total, parts = system._loss(out, labels)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(total, ce(main, labels["diagnosis"]) + 0.3 * ce(aux, labels["diagnosis"]) + 0.2)
    assert set(parts) == {"diagnosis", "branch", "gate"}
