"""No import cycles inside ``pipeline/``, lazy imports included.

The graph has an edge A -> B for every import statement of module A that names module B,
wherever it sits (module level, inside functions or classes); only imports under
``if TYPE_CHECKING:`` are left out, since they never run. Python's semantics decide the rest:

* ``import P.M`` / ``from P.M import x`` import ``P.M``; ``from P import x`` imports ``P.x`` when
  ``x`` is a submodule, else it needs ``P`` itself (a name its ``__init__`` defines);
* importing ``P.M`` first runs every enclosing package's ``__init__`` not yet running, so it also
  gives edges A -> P for each package P above B that does not contain A (code inside P is only
  reached once P's ``__init__`` has started, so that edge is no loop).

A cycle in this graph is a loop some order of first imports can hit half-initialised, and a
dependency knot either way; the test names it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (packages as their ``__init__``)."""
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> modules of the same top-level package it imports (see the module docstring)."""
    modules = module_names(package_dir)
    top = package_dir.name
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.split(".")[0] != top:
                    continue
                while target and target not in modules:  # ``import pipeline.x.y`` of a non-module: its package
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for n in range(1, len(parts) + 1):
                    b = ".".join(parts[:n])
                    inside = module == b or module.startswith(b + ".")
                    if b == target or not inside:
                        if b != module:
                            graph[module].add(b)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = dfs(start)
            if found:
                return found
    return None


def test_pipeline_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "pipeline.codecs.spec" in graph and graph["pipeline.cli"], "the graph was not built"
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_checker_finds_a_cycle_closed_by_a_lazy_import(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import g\n\ndef f():\n    return g()\n",
        "pkg/b.py": "def g():\n    from . import a\n    return a\n",
    })
    assert import_graph(pkg)["pkg.b"] == {"pkg.a"}
    assert find_cycle(import_graph(pkg)) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])


def test_checker_follows_packages_and_type_checking(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .sub import thing\n",
        "pkg/sub/__init__.py": "from .low import thing\n",
        "pkg/sub/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.top import T\nthing = 1\n",
        "pkg/top.py": "import pkg.sub.low\nT = 1\n",
    })
    graph = import_graph(pkg)
    # from a module inside pkg.sub: the submodule only; from outside: pkg.sub's __init__ too
    assert graph["pkg.sub"] == {"pkg.sub.low"}
    assert graph["pkg.top"] == {"pkg.sub", "pkg.sub.low"}
    assert graph["pkg.sub.low"] == set()  # TYPE_CHECKING is left out
    assert find_cycle(graph) is None
    (pkg / "sub" / "low.py").write_text("thing = 1\n\ndef f():\n    import pkg.top\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle is not None and "pkg.top" in cycle and "pkg.sub.low" in cycle


def test_checker_counts_from_package_import_of_a_submodule(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "from .a import x\n",
    })
    assert import_graph(pkg)["pkg.a"] == {"pkg.b"}  # pkg is running already: b is what a needs
    assert find_cycle(import_graph(pkg)) is not None


def test_checker_counts_a_name_from_a_package_init(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n\ndef name():\n    return 1\n",
        "pkg/a.py": "def f():\n    from . import name\n    return name()\n",
    })
    assert import_graph(pkg)["pkg.a"] == {"pkg"}
    assert find_cycle(import_graph(pkg)) in (["pkg", "pkg.a", "pkg"], ["pkg.a", "pkg", "pkg.a"])
