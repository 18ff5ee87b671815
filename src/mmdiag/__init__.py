"""mmdiag: multimodal medical-image disease classification."""

from mmdiag.errors import MmdiagError
from mmdiag.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "MmdiagError", "__version__"]
