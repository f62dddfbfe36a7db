"""pydpg: DDPG for MuJoCo tasks, with a C++ core for the replay buffer and the policy runtime.

The public names load on first use, so that ``import pydpg`` (and the ``pydpg --help`` it serves)
does not pay for torch, gymnasium and MuJoCo until one of them is needed.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("pydpg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Batch": "batch",
    "ReplayBuffer": "replay",
    "DDPG": "api",
    "DDPGConfig": "config",
    "Trainer": "trainer",
    "TrainConfig": "trainer",
    "Policy": "runtime",
    "export_policy": "export",
    "run_sweep": "sweep",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'pydpg' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
