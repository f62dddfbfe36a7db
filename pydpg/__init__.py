"""pydpg: DDPG for MuJoCo tasks, with a C++ core for the replay buffer and the policy runtime."""

from importlib.metadata import PackageNotFoundError, version as _version

import torch  # noqa: F401  (loads libtorch and libc10 before the extension that links them)

from .batch import Batch
from .replay import ReplayBuffer

try:
    __version__ = _version("pydpg")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["Batch", "ReplayBuffer", "__version__"]
