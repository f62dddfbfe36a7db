"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, loopback only, no dashboard) for every test that needs it: starting Ray
    takes seconds. Skipped where the optional extra is not installed."""
    pytest.importorskip("ray")
    from pydpg import ray_session

    ray = ray_session.init(num_cpus=2)
    yield ray
    ray_session.shutdown()
