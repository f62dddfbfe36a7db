"""Shared fixtures, and the set of tests that compare two different computations."""

from pathlib import Path

import pytest

# Before any test module loads torch, so that the suite's torch threads wait as a pydpg user's do
# (OMP_WAIT_POLICY, pydpg/__init__.py).
import pydpg  # noqa: F401


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, loopback only, no dashboard) for every test that needs Ray: starting
    one takes seconds. ``pydpg.train.ray_session.init`` reuses a session that is up, so code under test
    that calls it joins this one. Ray is in the test extra, so a missing Ray is an error here (its
    message names the extra), not a skip. Nothing may import ray before this fixture: the first
    import must be ray_session.init's, which sets Ray's loopback-only mode before it."""
    from pydpg.train import ray_session

    ray = ray_session.init(num_cpus=2)
    yield ray
    ray_session.shutdown()


@pytest.fixture(scope="session")
def alloc_check(tmp_path_factory):
    """tests/cpp/alloc_check, built once against the installed package: a C++ program that counts
    every heap allocation in its process (the runtime's, the observation builder's, the action map's,
    the randomization's). Skips where there is no cmake or C++ compiler."""
    from policy_helpers import cmake_build, have_cmake

    if not have_cmake():
        pytest.skip("needs cmake and a C++ compiler")
    build = tmp_path_factory.mktemp("alloc_check")
    cmake_build(Path(__file__).parent / "cpp" / "alloc_check", build)
    return build / "alloc_check"


# Modules whose tests compare two different computations of the same numbers (batch shapes, BLAS
# kernels, the runtime's kernels against torch's, a hand-written backward pass against autograd,
# another library): their tolerances are bounds derived from the computation (pydpg.deploy.rounding,
# tests/update_bounds.py), never figures measured here. test_second_arithmetic.py runs them again
# under MKL's other code path, so a tolerance that holds only under this machine's rounding fails
# before it reaches another machine.
CROSS_COMPUTATION_MODULES = {
    "test_rounding",
    "test_runtime",
    "test_runtime_properties",
    "test_export",
    "test_mlp_update",
    "test_peer_parity",
    "test_crossq",
    "test_td7",
    "test_collection_parity",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cross_computation: compares two different computations of the same "
        "numbers (run again under a second arithmetic by test_second_arithmetic.py)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).stem in CROSS_COMPUTATION_MODULES:
            item.add_marker(pytest.mark.cross_computation)
