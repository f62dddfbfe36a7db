"""The cross-computation tests (conftest.CROSS_COMPUTATION_MODULES) once more under a second
arithmetic: MKL_CBWR=COMPATIBLE, MKL's conditional-numerical-reproducibility code path, which rounds
differently on the same CPU (its GEMMs sum in another order). A tolerance that only held for this
machine's default kernels fails here, as it would on another CPU. The portable, non-MKL kernels are
covered inside those modules (``mlp_kernels="portable"``, ``MlpUpdater(portable=True)``).

MKL_CBWR=AVX2 is the other setting one might try; on AMD CPUs MKL ignores it (it reads back as
AUTO), so COMPATIBLE is the one that changes the arithmetic everywhere MKL runs.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
INSIDE = os.environ.get("PYDPG_SECOND_ARITHMETIC")
# mkl_cbwr_get(MKL_CBWR_BRANCH) answers: 1 no CNR (the default), 2 AUTO, 3 COMPATIBLE, ...
MKL_CBWR_BRANCH, MKL_CBWR_COMPATIBLE = 1, 3


def mkl_branch() -> int | None:
    """The CNR branch MKL inside libtorch computes with, or None without MKL (aarch64 wheels)."""
    lib_dir = Path(torch.__file__).parent / "lib"
    try:
        lib = ctypes.CDLL(str(lib_dir / "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    torch.randn(8, 8) @ torch.randn(8, 8)  # MKL reads MKL_CBWR when it first runs
    return get(MKL_CBWR_BRANCH)


@pytest.mark.cross_computation
def test_the_arithmetic_in_force_is_the_one_asked_for():
    """Inside the second run MKL really computes on its COMPATIBLE branch (else this file proves
    nothing); outside it, the default."""
    branch = mkl_branch()
    if branch is None:
        pytest.skip("this torch has no MKL: its one arithmetic is the portable one")
    if INSIDE == "COMPATIBLE":
        assert branch == MKL_CBWR_COMPATIBLE
    elif "MKL_CBWR" not in os.environ:
        assert branch == 1


@pytest.mark.skipif(INSIDE is not None, reason="this is the second run itself")
def test_cross_computation_tests_pass_under_mkl_compatible():
    if mkl_branch() is None:
        pytest.skip("this torch has no MKL: there is no second MKL arithmetic to try")
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "PYDPG_SECOND_ARITHMETIC": "COMPATIBLE"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "cross_computation",
            "-o",
            "addopts=-ra",
            str(ROOT / "tests"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = "\n".join(run.stdout.splitlines()[-40:])
    print(tail)
    assert run.returncode == 0, (
        f"the cross-computation tests failed under MKL_CBWR=COMPATIBLE:\n{tail}\n{run.stderr[-2000:]}"
    )
