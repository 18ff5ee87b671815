"""Imports every model family module so that their ``@register_model`` decorators run. One line per family."""

# ruff: noqa: F401
from mmdiag.models.fusion import baselines
from mmdiag.models.backbones import vit
from mmdiag.models.backbones import medmamba
from mmdiag.models.fusion import vfm_baselines
from mmdiag.models.fusion import ei
from mmdiag.models.backbones import remixformer_dermoscopy
from mmdiag.models.nets import remixformer_pp
from mmdiag.models.backbones import swin
from mmdiag.models.backbones import remixformer_clinical
