"""``python -m pydpg --cmake-dir``: where ``find_package(pydpg)`` looks."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from pydpg.deploy.loop import cmake_dir


def cmake_dir_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pydpg --cmake-dir``: print the CMake package directory (as ``pybind11 --cmakedir``)."""
    try:
        print(cmake_dir())
    except FileNotFoundError as e:
        print(f"pydpg: error: {e}", file=sys.stderr)
        return 1
    return 0
