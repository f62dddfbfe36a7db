"""The code's style, as its configs state it: ruff (lint and format; pyproject.toml [tool.ruff]) over
the Python, clang-format (.clang-format) over the C++. Both tools come with the test extra at the
versions the configs were written for; each check takes about a second."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ["pydpg", "tests", "benchmarks", "examples", "docs"]
CPP_DIRS = ["csrc", "include", "tests/cpp", "examples"]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')")
    return found


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_lint():
    r = run([tool("ruff"), "check", *PYTHON])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_format():
    r = run([tool("ruff"), "format", "--check", *PYTHON])
    assert r.returncode == 0, "run `ruff format` on: " + r.stdout[-4000:] + r.stderr[-2000:]


def test_clang_format():
    files = sorted(
        str(p.relative_to(ROOT))
        for d in CPP_DIRS
        for p in (ROOT / d).rglob("*")
        if p.suffix in (".cpp", ".hpp", ".h", ".cc")
    )
    assert files, "no C++ files found"
    r = run([tool("clang-format"), "--dry-run", "--Werror", *files])
    assert r.returncode == 0, "run `clang-format -i` on: " + r.stderr[-4000:]
