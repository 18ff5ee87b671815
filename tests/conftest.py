"""Shared fixtures: tiny datasets in native formats, built per test session (nothing is downloaded)."""

from __future__ import annotations

import pytest

from mmdiag.testing import write_manifest_dataset


@pytest.fixture(scope="session")
def manifest_yaml(tmp_path_factory):
    """A bring-your-own-data example: PNG photo + grey PNG scope + record, binary task, 24 cases / 12 patients."""
    return write_manifest_dataset(tmp_path_factory.mktemp("manifest"), n_cases=24)
