"""csrc/'s architecture, read from its own ``#include`` lines (the C++ twin of test_import_rules).

Includes run one way, down these layers (a folder includes its own files freely):

    csrc/python (the bindings)  ->  csrc/deploy, csrc/train  ->  include/pydpg (public), csrc/common

- csrc/train (replay buffer, the update) never includes csrc/deploy or the public runtime headers, and
  csrc/deploy never includes csrc/train: training and deployment build and link apart;
- include/pydpg holds what users' programs include: it includes only itself (installed as it is);
- only csrc/python names pybind11 or Python ("the C++ core has no Python in it");
- every quoted include names exactly one file of the tree (a short name never means two files), and
  there is no include cycle.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {  # folder -> the folders it may include from (besides itself)
    "csrc/python": {"csrc/deploy", "csrc/train", "include/pydpg", "csrc/common"},
    "csrc/deploy": {"include/pydpg", "csrc/common"},
    "csrc/train": {"csrc/common"},
    "include/pydpg": set(),
    "csrc/common": set(),
}
PYTHON_ONLY = re.compile(r"^\s*#\s*include\s*[<\"](pybind11/|Python\.h)", re.M)
QUOTED = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
SOURCES = (".hpp", ".h", ".cpp", ".cc")


def _files(root: Path) -> dict[str, Path]:
    """Every C++ file of the layered folders, keyed by its path from ``root``."""
    return {
        p.relative_to(root).as_posix(): p
        for folder in FOLDERS
        if (root / folder).is_dir()
        for p in sorted((root / folder).rglob("*"))
        if p.suffix in SOURCES
    }


def _folder(rel: str) -> str:
    return next(f for f in FOLDERS if rel.startswith(f + "/"))


def violations(root: Path) -> list[str]:
    """Every broken rule in the tree at ``root``, one line each (empty: the tree keeps them all)."""
    files = _files(root)
    by_name: dict[str, list[str]] = {}
    for rel in files:
        folder = _folder(rel)
        by_name.setdefault(rel[len(folder) + 1 :], []).append(rel)  # "x.hpp" in its folder's include dir
        if folder == "include/pydpg":
            by_name.setdefault("pydpg/" + rel[len(folder) + 1 :], []).append(rel)  # <pydpg/x.hpp>
    found, edges = [], {rel: set() for rel in files}
    for rel, path in files.items():
        text = path.read_text()
        folder = _folder(rel)
        if folder != "csrc/python" and PYTHON_ONLY.search(text):
            found.append(f"{rel}: names pybind11/Python outside csrc/python")
        for name in QUOTED.findall(text):
            targets = by_name.get(name, [])
            if len(targets) != 1:
                found.append(f'{rel}: include "{name}" names {len(targets)} files of the tree {targets}')
                continue
            target = targets[0]
            edges[rel].add(target)
            to = _folder(target)
            if to != folder and to not in FOLDERS[folder]:
                found.append(f"{rel}: includes {target} ({folder} may not include {to})")
    # cycles: a depth-first search over the include edges
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append("include cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_cpp_file_is_in_a_layered_folder():
    stray = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "csrc").rglob("*")
        if p.suffix in SOURCES and p.relative_to(ROOT).as_posix() not in _files(ROOT)
    ]
    assert not stray, f"C++ files outside the layered folders: {stray}"
    assert len(_files(ROOT)) > 20  # the scan sees the tree


def test_includes_run_down_the_layers():
    assert violations(ROOT) == []


def _plant(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


@pytest.mark.parametrize(
    "rel, text, expected",
    [
        ("csrc/train/bad.cpp", '#include "runtime.hpp"\n', "csrc/train may not include csrc/deploy"),
        ("csrc/deploy/bad.cpp", '#include "buffer.hpp"\n', "csrc/deploy may not include csrc/train"),
        ("include/pydpg/bad.hpp", '#include "blas.hpp"\n', "include/pydpg may not include csrc/common"),
        ("csrc/common/bad.hpp", '#include "pydpg/api.hpp"\n', "csrc/common may not include include/pydpg"),
        ("csrc/deploy/bad.cpp", "#include <pybind11/pybind11.h>\n", "outside csrc/python"),
        ("csrc/train/bad.cpp", '#include "missing.hpp"\n', "names 0 files"),
        ("csrc/deploy/buffer.hpp", "", "names 2 files"),  # a second buffer.hpp makes the name ambiguous
        ("csrc/train/loop.hpp", '#include "buffer.hpp"\n', "include cycle"),
    ],
)
def test_the_rules_catch_what_they_forbid(tmp_path, rel, text, expected):
    _plant(tmp_path, "csrc/train/buffer.hpp", "#include <vector>\n")
    _plant(tmp_path, "csrc/deploy/runtime.hpp", '#include "pydpg/api.hpp"\n#include "blas.hpp"\n')
    _plant(tmp_path, "include/pydpg/api.hpp", "#include <string>\n")
    _plant(tmp_path, "csrc/common/blas.hpp", "")
    _plant(tmp_path, "csrc/python/module.cpp", '#include <pybind11/pybind11.h>\n#include "runtime.hpp"\n')
    assert violations(tmp_path) == []  # the clean tree passes
    if expected == "include cycle":
        _plant(tmp_path, "csrc/train/buffer.hpp", '#include "loop.hpp"\n')
    if expected == "names 2 files":
        _plant(tmp_path, "csrc/train/user.cpp", '#include "buffer.hpp"\n')
    _plant(tmp_path, rel, text)
    found = violations(tmp_path)
    assert any(expected in line for line in found), found
