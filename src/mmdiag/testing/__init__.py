"""Writers of tiny datasets in native formats, for tests and examples. Nothing is downloaded."""

from mmdiag.testing.writers import write_manifest_dataset, write_png

__all__ = ["write_manifest_dataset", "write_png"]
