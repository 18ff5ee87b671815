"""The layering of the package: imports point one way (data → models → training/evaluation/explain → cli), and the
module import graph has no cycles."""

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
    "evaluation": {"data", "models", "io", "config"},
    "explain": {"data", "models", "evaluation", "io", "config"},
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


def _module_name(path: Path, root: Path) -> str:
    parts = ("mmdiag",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The package modules a file imports, at module level or inside functions (``if TYPE_CHECKING:`` blocks are not
    run, so they do not count). ``from mmdiag.a import b`` names module ``mmdiag.a.b`` when that is a module."""
    out: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("mmdiag"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mmdiag"}
        stack.extend(ast.iter_child_nodes(node))
    return out & modules


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module → the package modules it imports (explicit imports only: a parent package's ``__init__`` that Python
    runs on the way is not an edge)."""
    files = {_module_name(f, root): f for f in root.rglob("*.py")}
    return {name: _imported(ast.parse(f.read_text()), set(files)) - {name} for name, f in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_cycle_finder_reports_the_path_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_graph_sees_function_level_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "mmdiag"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from mmdiag.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mmdiag.sub.a\n"
                                      "import mmdiag.c\n")
    (pkg / "c.py").write_text("from mmdiag.sub.a import f\n")
    graph = import_graph(pkg)
    assert graph["mmdiag.sub.a"] == {"mmdiag.sub.b"} and graph["mmdiag.sub.b"] == {"mmdiag.c"}
    assert find_cycle(graph) == ["mmdiag.c", "mmdiag.sub.a", "mmdiag.sub.b", "mmdiag.c"]


def test_the_package_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_hard_torchvision_or_timm_import():
    for f in SRC.rglob("*.py"):
        tree = ast.parse(f.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"torchvision", "timm"}, f


def test_explainers_read_the_model_contract_not_model_classes():
    """Grad-CAM, t-SNE and robustness know no model or block class: layouts come from ``output_fmt``, layers from
    ``explain_layers``, features from ``forward_features``."""
    for rel in ("explain/gradcam.py", "explain/tsne.py", "evaluation/robustness.py"):
        used = {n.module for n in ast.walk(ast.parse((SRC / rel).read_text()))
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("mmdiag.models")}
        assert used <= {"mmdiag.models.contract", "mmdiag.models.outputs"}, (rel, used)
