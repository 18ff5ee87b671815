"""Augmentation: kornia for 2D images (batched, on the training device), MONAI for 3D volumes (per case)."""

from mmdiag.data.transforms.augment import BatchTransform, build_image_augment, build_volume_transform

__all__ = ["BatchTransform", "build_image_augment", "build_volume_transform"]
