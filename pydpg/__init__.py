"""pydpg: DDPG for MuJoCo tasks, with a C++ core for the replay buffer and the policy runtime.

The package, from the bottom up (tests/test_import_rules.py holds it to this): ``common`` (envs,
names), ``presets`` (the shipped run files), ``core`` (the algorithm), ``files`` (model files and
checkpoints) and ``contract`` (the observation contract), ``train`` (the run) and ``deploy`` (the
policy file and what runs it), ``experiments`` (sweeps, the SB3 peer) and ``api`` (``pydpg.DDPG``),
``cli`` (the ``pydpg`` command).

The public names load on first use, so that ``import pydpg`` (and the ``pydpg --help`` it serves)
does not pay for torch, gymnasium and MuJoCo until one of them is needed.
"""

import os as _os
import sys as _sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

# libgomp (torch's OpenMP on Linux) spin-waits at every parallel region's barrier by default. With
# torch's default of one thread per core and any other busy process on the machine (a second run, a
# sweep trial, the robot's control loop), the spinning thread holds the core its straggling partner
# needs, and each barrier lasts a scheduler time slice: updates slow down by an order of magnitude
# and more, and `pydpg journey` stalled beside one training run (measured in docs/benchmarks.md,
# "torch's threads beside a busy core"). PASSIVE threads sleep at barriers instead. libgomp reads the
# variable once, when torch loads it, so it is set only if torch is not loaded yet; a value the
# user set is kept.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = _version("pydpg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Batch": "core.batch",
    "ReplayBuffer": "core.replay",
    "DDPG": "api",
    "DDPGConfig": "core.config",
    "Trainer": "train.trainer",
    "TrainConfig": "train.config",
    "Policy": "deploy.runtime",
    "export_policy": "deploy.export",
    "run_sweep": "experiments.sweep",
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
