"""Imports every model family module so that their registration decorators run. One line per family."""

# ruff: noqa: F401
from mmdiag.models.backbones import (cnn, medmamba, remixformer_clinical, remixformer_dermoscopy, swin, vit,
                                      vmamba)
from mmdiag.models.nets import baselines, ei, ei_baselines, iimgf_net, remixformer_pp
