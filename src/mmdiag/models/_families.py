"""Imports every model family module so that their registration decorators run. One line per family."""

# ruff: noqa: F401
from mmdiag.models.backbones import (cnn, medmamba, penet, remixformer_clinical, remixformer_dermoscopy, swin, vit,
                                      vmamba)
from mmdiag.models.nets import (baselines, ei, ei_baselines, iimgf_net, mmcaf_baselines, mmcaf_net,
                                remixformer_pp)
