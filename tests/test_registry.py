import pytest

from mmdiag.errors import MmdiagError, UnknownNameError
from mmdiag.registry import Registry


def test_registration_lookup_listing_and_errors():
    reg = Registry("widget", "mmdiag widgets")

    @reg.register
    def alpha():
        return 1

    reg.register(lambda: 2, name="tiny_beta")
    assert reg.get("alpha")() == 1 and "alpha" in reg
    assert reg.names() == ["alpha"] and reg.names(include_hidden=True) == ["alpha", "tiny_beta"]
    with pytest.raises(MmdiagError, match="registered twice"):
        reg.register(alpha)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'alpah'; did you mean 'alpha'\? \(`mmdiag widgets`"):
        reg.get("alpah")
