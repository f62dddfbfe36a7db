"""Shared fixtures."""

import pytest

# Before any test module loads torch, so that the suite's torch threads wait as a pydpg user's do
# (OMP_WAIT_POLICY, pydpg/__init__.py).
import pydpg  # noqa: F401


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, loopback only, no dashboard) for every test that needs Ray: starting
    one takes seconds. ``pydpg.ray_session.init`` reuses a session that is up, so code under test
    that calls it joins this one. Ray is in the test extra, so a missing Ray is an error here (its
    message names the extra), not a skip. Nothing may import ray before this fixture: the first
    import must be ray_session.init's, which sets Ray's loopback-only mode before it."""
    from pydpg import ray_session

    ray = ray_session.init(num_cpus=2)
    yield ray
    ray_session.shutdown()
