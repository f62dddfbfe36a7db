"""The batch a replay buffer hands to an update: plain torch tensors, one row per transition."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class Batch(NamedTuple):
    """A sampled minibatch.

    ``done`` is 1.0 only where the environment *terminated*; a time-limit truncation keeps
    ``done == 0`` so the critic target still bootstraps from ``next_obs``. ``discount`` is
    gamma**k for the k environment steps an n-step return covered (gamma itself for n = 1), so a
    critic target is always ``reward + discount * (1 - done) * Q'(next_obs, mu'(next_obs))``.
    """

    obs: torch.Tensor  # [B, *obs_shape]
    action: torch.Tensor  # [B, *action_shape]
    reward: torch.Tensor  # [B, 1]
    next_obs: torch.Tensor  # [B, *obs_shape]
    done: torch.Tensor  # [B, 1]
    discount: torch.Tensor  # [B, 1]
    weights: Optional[torch.Tensor] = None  # [B, 1] importance weights (prioritized only)
    indices: Optional[torch.Tensor] = None  # [B] int64 ids for update_priorities (prioritized only)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self))
