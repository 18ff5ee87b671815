"""Adapters that read public datasets in their native on-disk layouts. Importing this package registers them."""

from mmdiag.data.adapters import derm7pt  # noqa: F401
from mmdiag.data.adapters import isic  # noqa: F401
from mmdiag.data.adapters import lung_pet_ct_dx  # noqa: F401
from mmdiag.data.adapters import mmc_amd  # noqa: F401
from mmdiag.data.adapters import mrnet  # noqa: F401
from mmdiag.data.adapters import medmnist  # noqa: F401
from mmdiag.data.adapters import pad_ufes20  # noqa: F401
