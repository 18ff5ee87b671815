"""Writers of tiny datasets in native formats, for tests and examples. Nothing is downloaded."""

from mmdiag.testing.derm7pt import write_derm7pt
from mmdiag.testing.lung_pet_ct_dx import write_lung_pet_ct_dx
from mmdiag.testing.medmnist import write_medmnist
from mmdiag.testing.mmc_amd import write_mmc_amd
from mmdiag.testing.mrnet import write_mrnet
from mmdiag.testing.pad_ufes20 import write_pad_ufes20
from mmdiag.testing.writers import write_manifest_dataset, write_png

__all__ = ["write_manifest_dataset", "write_png", "write_derm7pt", "write_lung_pet_ct_dx", "write_mmc_amd", "write_mrnet", "write_medmnist",
           "write_pad_ufes20"]
