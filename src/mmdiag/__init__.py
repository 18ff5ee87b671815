"""mmdiag: multimodal medical-image disease classification.

The public API (docs/api.md): :func:`load_dataset_spec`, :func:`create_model` (image models with ``num_classes``,
multimodal models with ``spec``), :func:`list_models`, :func:`load_config`, :func:`train` and :func:`load_run`.
"""

from mmdiag.api import load_config, load_dataset_spec, load_run, train
from mmdiag.errors import MmdiagError
from mmdiag.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["load_dataset_spec", "create_model", "list_models", "load_config", "train", "load_run", "MmdiagError",
           "__version__"]
