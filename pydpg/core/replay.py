"""The replay buffer: C++ storage and samplers (pydpg._core), handing out torch tensors.

``add`` and ``extend`` are the C++ methods themselves (no Python in between); ``sample`` wraps
the C++ gather into one float32 block and splits it into zero-copy torch views.
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from typing import Optional, Sequence, Union

import numpy as np
import torch

from pydpg import _core
from pydpg.core.batch import Batch

# Added to |TD error| so no transition gets priority 0 (Schaul et al. 2016, §3.3); the C++ buffer
# floors stored priorities at the same constant (csrc/train/replay_buffer.hpp kMinPriority).
MIN_PRIORITY: float = _core.MIN_PRIORITY

FormatError = _core.FormatError
Shape = Union[int, Sequence[int]]


def _as_shape(shape: Shape, name: str) -> tuple:
    if isinstance(shape, Integral) and not isinstance(shape, bool):
        return (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {type(shape).__name__}") from None
    if not dims or not all(isinstance(d, Integral) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"{name} must be a non-empty tuple of ints, got {shape!r}")
    if any(d <= 0 for d in dims):
        raise ValueError(f"{name} must hold positive sizes, got {dims}")
    return tuple(int(d) for d in dims)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


class ReplayBuffer(_core.ReplayBuffer):
    """Fixed-capacity ring of transitions with uniform or prioritized sampling and n-step returns.

    Args:
        capacity: number of transitions kept; the oldest is overwritten first. Storage
            (float32) is allocated at construction; ``MemoryError`` names the bytes if it cannot be.
        obs_shape, action_shape: shapes of one observation / action.
        prioritized: proportional prioritized replay (Schaul et al. 2015, sec. 3.3).
        alpha: priority exponent, P(i) = p_i^alpha / sum_k p_k^alpha (0.6: Schaul et al., Table 3).
        n_step: length of the multi-step return stored with each transition.
        gamma: discount used for the n-step return; each sample carries ``discount = gamma**k``.
        seed: seeds the buffer's own RNG; the same seed gives the same batches.

    ``add(obs, action, reward, next_obs, terminated, truncated)`` stores one transition;
    ``extend`` takes the same arguments with a leading dimension N, row i coming from environment
    i (or from ``env_ids[i]``), which is what keeps n-step returns of parallel environments apart.
    Arrays may be NumPy arrays or CPU torch tensors of any real dtype; float32 C-contiguous input
    is read in place, anything else is converted once. NaN or Inf is refused with ValueError.

    Thread-safe: any number of threads may add/extend while others sample. The GIL is released
    while C++ gathers or stores batches.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: Shape,
        action_shape: Shape,
        *,
        prioritized: bool = False,
        alpha: float = 0.6,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: Optional[int] = None,
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, Integral):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if isinstance(n_step, bool) or not isinstance(n_step, Integral):
            raise TypeError(f"n_step must be an int, got {type(n_step).__name__}")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, Integral):
                raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
            if not 0 <= seed < 2**64:
                raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        super().__init__(
            int(capacity),
            list(_as_shape(obs_shape, "obs_shape")),
            list(_as_shape(action_shape, "action_shape")),
            prioritized=bool(prioritized),
            alpha=_real(alpha, "alpha"),
            n_step=int(n_step),
            gamma=_real(gamma, "gamma"),
            seed=None if seed is None else int(seed),
        )
        self._cache_layout()

    def _cache_layout(self) -> None:
        obs_dim, act_dim, _ = self._row_layout
        self._split = [obs_dim, act_dim, 1, obs_dim, 1, 1]
        self._per = self.prioritized
        obs_shape, action_shape = self.obs_shape, self.action_shape
        self._obs_view = None if len(obs_shape) == 1 else obs_shape
        self._act_view = None if len(action_shape) == 1 else action_shape

    def sample(self, batch_size: int, beta: float = 0.4, device: Optional[Union[str, torch.device]] = None) -> Batch:
        """A batch of ``batch_size`` transitions as torch tensors (views of one float32 block).

        Uniform with replacement, or for a prioritized buffer stratified proportional sampling with
        importance weights ``(N*P(i))**-beta / max_j w_j`` (beta: Schaul et al. anneal it from 0.4
        to 1). With ``device``, the block moves in one copy and is split there.
        """
        if self._per:
            rows, weights, ids = self._sample_prioritized(batch_size, beta)
        else:
            rows = self._sample_rows(batch_size)
        batch = self._as_batch(rows, device)
        if not self._per:
            return batch
        weights, ids = torch.from_numpy(weights), torch.from_numpy(ids)
        if device is not None:
            weights, ids = weights.to(device), ids.to(device)
        return batch._replace(weights=weights, indices=ids)

    def _as_batch(self, rows: np.ndarray, device: Optional[Union[str, torch.device]] = None) -> Batch:
        block = torch.from_numpy(rows)
        if device is not None:
            block = block.to(device, non_blocking=True)
        obs, action, reward, next_obs, done, discount = block.split_with_sizes(self._split, 1)
        if self._obs_view is not None:
            obs = obs.unflatten(1, self._obs_view)
            next_obs = next_obs.unflatten(1, self._obs_view)
        if self._act_view is not None:
            action = action.unflatten(1, self._act_view)
        return Batch(obs, action, reward, next_obs, done, discount)

    def get(self, indices=None) -> Batch:
        """The stored transitions with these ids (insertion numbers, as ``sample`` returns them),
        default all of them, oldest first, as a Batch without weights: what the buffer holds,
        for inspection and tests. Ids never stored, or since overwritten, raise ValueError."""
        if indices is None:
            indices = np.arange(self.total_added - len(self), self.total_added, dtype=np.int64)
        elif isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        return self._as_batch(self._get_rows(indices))

    def update_priorities(self, indices, priorities) -> None:
        """Set the raw priorities (e.g. |TD error|) of sampled transitions, by the ids ``sample``
        returned. Ids of transitions since overwritten, or never stored, raise ValueError."""
        # Hand NumPy to C++: a tensor would go through __array__ on every call of a per-update path.
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        if isinstance(priorities, torch.Tensor):
            priorities = priorities.detach().to("cpu", torch.float64).numpy()
        if isinstance(priorities, np.ndarray):
            priorities = priorities.reshape(-1)
        self._update_priorities(indices, priorities)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write contents, position, priorities, open n-step returns and RNG state to ``path``,
        atomically (a temp file renamed over the target). ``ReplayBuffer.load`` restores it and
        sampling continues exactly as it would have."""
        super().save(os.fspath(path))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ReplayBuffer":
        """Restore a buffer written by ``save``. Raises FileNotFoundError/OSError if it cannot be
        read, and ``pydpg.core.replay.FormatError`` (a ValueError) if it is not a pydpg buffer file, has
        another format version, or is truncated or corrupt."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no ReplayBuffer file at '{path}'")
        buf = cls(1, 1, 1)
        buf._load_from(path)
        buf._cache_layout()
        return buf
