"""Parameter-efficient fine-tuning: inject adapters into any model by module name, freeze the rest, save adapters.

Methods (``PEFT_METHODS``): ``lp``, ``fpt``, ``vpt``, ``bitfit``, ``lora``, ``loramoe``, ``mor``, ``mor_nobypass``.
Defaults reproduce the trainable counts of the EI paper's Table 7 on ViT-B (see ``docs/peft.md``).

Example:
    >>> model = apply_peft(create_model("clip_vit_b16", num_classes=4), "mor")
    >>> trainable_parameter_report(model)["trainable"]
    1477732
"""

from mmdiag.models.peft.base_weights import load_base_weights
from mmdiag.models.peft.bitfit import BitFitConfig
from mmdiag.models.peft.inject import (
    PEFT_METHODS,
    AdapterLayer,
    FullFinetuningConfig,
    LinearProbingConfig,
    NoMatchingModuleError,
    PeftConfig,
)
from mmdiag.models.peft.lora import LoRA, LoraConfig, LoRALinear, merge_lora
from mmdiag.models.peft.loramoe import LoRAMoE, LoRAMoEConfig
from mmdiag.models.peft.model import apply_peft, trainable_parameter_report
from mmdiag.models.peft.mor import MoR, MoRConfig, MoRNoBypassConfig
from mmdiag.models.peft.state import (
    adapter_checkpoint,
    adapter_state_dict,
    load_adapter_checkpoint,
    load_adapter_state_dict,
)
from mmdiag.models.peft.vpt import VPTBlock, VptConfig

__all__ = [
    "adapter_checkpoint",
    "load_adapter_checkpoint",
    "apply_peft",
    "load_base_weights",
    "trainable_parameter_report",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "merge_lora",
    "PEFT_METHODS",
    "PeftConfig",
    "LinearProbingConfig",
    "FullFinetuningConfig",
    "BitFitConfig",
    "LoraConfig",
    "LoRAMoEConfig",
    "MoRConfig",
    "MoRNoBypassConfig",
    "VptConfig",
    "AdapterLayer",
    "LoRA",
    "LoRALinear",
    "LoRAMoE",
    "MoR",
    "VPTBlock",
    "NoMatchingModuleError",
]
