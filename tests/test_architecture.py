"""The layering of the package: imports point one way (data → models → training/evaluation/explain → cli)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "mmdiag"
# a package may import from itself and from the packages listed for it
ALLOWED = {
    "ops": set(),
    "data": {"io", "config"},
    "models": {"ops", "data", "io"},
    "training": {"data", "models", "evaluation", "io", "config", "ops"},
    "evaluation": {"data", "models", "training", "io", "config"},
    "explain": {"data", "models", "evaluation", "training", "io", "config"},
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmdiag."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mmdiag.")}
    return out


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_one_way(layer):
    common = {"errors", "registry", layer}
    bad = {str(f.relative_to(SRC)): sorted(_imports(f) - ALLOWED[layer] - common)
           for f in (SRC / layer).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_no_hard_torchvision_or_timm_import():
    for f in SRC.rglob("*.py"):
        tree = ast.parse(f.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"torchvision", "timm"}, f
