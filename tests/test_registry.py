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


def test_the_papers_models_name_their_paper():
    from mmdiag.models._registry import paper_of

    assert paper_of("iimgf_net").startswith("IIMGF-Net") and paper_of("medmamba_t").startswith("MedMamba")
    assert paper_of("ei").startswith("EI") and paper_of("mmcaf_net").startswith("MMCAF-Net")
    assert paper_of("remixformer_pp").startswith("RemixFormer++") and paper_of("late_fusion") is None
