"""Imports every model family module so that their ``@register_model`` decorators run. One line per family."""

# ruff: noqa: F401
from mmdiag.models.fusion import baselines
from mmdiag.models.backbones import vit
from mmdiag.models.backbones import medmamba
from mmdiag.models.fusion import vfm_baselines
from mmdiag.models.fusion import ei
from mmdiag.models.backbones import penet
from mmdiag.models.nets import mmcaf_net
from mmdiag.models.nets import mmcaf_baselines
