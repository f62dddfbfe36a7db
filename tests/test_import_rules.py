"""The package's architecture, read from its own imports (ast, nothing is imported here).

Imports run one way, down these layers; a package imports from its own layer only within itself:

    cli  ->  experiments, api  ->  train, deploy  ->  files, contract  ->  core  ->  presets  ->  common, _core

- deploy (the policy file and what runs it) never imports train (the training run);
- core (the algorithm) never imports gymnasium, not even through what it imports;
- no import cycle anywhere, counting imports inside functions (not those under ``if TYPE_CHECKING``,
  which never run);
- an import inside a function says why in a comment (on its line or the one above): such imports
  are for import time (``pydpg --help`` loads no torch) or optional extras, never to hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pydpg"

# The unit a module belongs to (its first two name parts) and that unit's layer.
LAYERS = {
    "pydpg._core": 0,
    "pydpg.common": 0,
    "pydpg.presets": 1,
    "pydpg.core": 2,
    "pydpg.files": 3,
    "pydpg.contract": 3,
    "pydpg.train": 4,
    "pydpg.deploy": 4,
    "pydpg.experiments": 5,
    "pydpg.api": 5,
    "pydpg.cli": 6,
    "pydpg.__main__": 7,
}
ROOT = "pydpg"  # the package itself: its version, its lazy public names; anyone may import it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


class Import:
    def __init__(self, source: str, target: str, line: int, local: bool, commented: bool):
        self.source, self.target, self.line, self.local, self.commented = source, target, line, local, commented

    def __repr__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}" + (" (in a function)" if self.local else "")


def _imports(path: Path, modules: set[str]) -> list[Import]:
    source = module_name(path)
    is_package = path.name == "__init__.py"
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    found: list[Import] = []

    def commented(node: ast.stmt) -> bool:
        here = lines[node.lineno - 1]
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        return "#" in here or above.startswith("#")

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never runs: names for annotations only
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = source.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                # `from pkg import name`: the submodule pkg.name where there is one, else pkg
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in child.names]
            for t in targets:
                found.append(Import(source, t, child.lineno, local, commented(child)))
            visit(child, inner)

    visit(tree, False)
    return found


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files} | {"pydpg._core"}
    return [imp for f in files for imp in _imports(f, modules)]


def own(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.target == ROOT or i.target.startswith(ROOT + ".")]


def test_every_module_has_a_layer(graph):
    modules = {module_name(f) for f in PACKAGE.rglob("*.py")} - {ROOT}
    assert [m for m in sorted(modules) if unit(m) not in LAYERS] == []


def test_imports_run_down_the_layers(graph):
    wrong = []
    for i in own(graph):
        if i.target == ROOT or unit(i.source) == unit(i.target) or i.source == ROOT:
            continue
        if LAYERS[unit(i.target)] >= LAYERS[unit(i.source)]:
            wrong.append(i)
    assert wrong == [], "imports that run up or sideways: " + "; ".join(map(repr, wrong))


def test_deploy_never_imports_train(graph):
    assert [i for i in graph if i.source.startswith("pydpg.deploy") and i.target.startswith("pydpg.train")] == []


def _closure(graph: list[Import], start: str) -> set[str]:
    edges: dict[str, set[str]] = {}
    for i in graph:
        edges.setdefault(i.source, set()).add(i.target)
    seen, todo = set(), [m for m in edges if m == start or m.startswith(start + ".")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(edges.get(m, ()))
    return seen


def test_core_never_imports_gymnasium(graph):
    reached = _closure(graph, "pydpg.core")
    assert not any(m == "gymnasium" or m.startswith("gymnasium.") for m in reached), sorted(
        m for m in reached if m.startswith("pydpg")
    )


def test_no_import_cycles(graph):
    edges: dict[str, set[str]] = {}
    for i in own(graph):
        if i.target != ROOT and i.source != ROOT:
            edges.setdefault(i.source, set()).add(i.target)
    # Tarjan's strongly connected components; any with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert cycles == []


def test_imports_inside_functions_say_why(graph):
    silent = [i for i in own(graph) if i.local and not i.commented]
    assert silent == [], "function-local imports without a comment saying why: " + "; ".join(map(repr, silent))


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks themselves: a cycle, an upward import and a silent local import are found."""
    pkg = tmp_path / "pydpg"
    (pkg / "core").mkdir(parents=True)
    (pkg / "train").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from pydpg.train import b\n")
    (pkg / "train" / "b.py").write_text("def f():\n    from pydpg.core import a\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        files = sorted(pkg.rglob("*.py"))
        modules = {module_name(f) for f in files}
        g = [imp for f in files for imp in _imports(f, modules)]
        with pytest.raises(AssertionError, match="run up or sideways"):
            test_imports_run_down_the_layers(g)
        with pytest.raises(AssertionError):
            test_no_import_cycles(g)
        with pytest.raises(AssertionError, match="without a comment"):
            test_imports_inside_functions_say_why(g)
    finally:
        PACKAGE = saved
