"""Adapters that read public datasets in their native on-disk layouts. Importing this package registers them."""
