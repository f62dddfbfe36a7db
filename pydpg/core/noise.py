"""Exploration noise added to the actor's output, in the actor's normalized [-1, 1] action units.

Both processes draw from a caller-supplied ``numpy.random.Generator`` (reproducible runs) and keep
one row of state per parallel environment: ``sample()`` returns ``[n_envs, act_dim]``. Their
``get_state()`` dicts hold only Python numbers, strings and lists, so a checkpoint containing them
loads with ``torch.load(weights_only=True)`` and needs no pickle.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

EnvIds = Union[None, int, Sequence[int], np.ndarray]


class _Noise:
    def __init__(self, act_dim: int, n_envs: int, rng: Optional[np.random.Generator]):
        if act_dim <= 0 or n_envs <= 0:
            raise ValueError(f"act_dim and n_envs must be positive, got {act_dim}, {n_envs}")
        self.act_dim, self.n_envs = int(act_dim), int(n_envs)
        self.rng = rng if rng is not None else np.random.default_rng()

    def reset(self, env_ids: EnvIds = None) -> None:
        """Start a new episode for ``env_ids`` (all envs when None)."""

    def get_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class GaussianNoise(_Noise):
    """i.i.d. N(0, sigma^2) per step and action dimension.

    ``sigma`` is in [-1, 1] units, i.e. a fraction of the action half-range: the TD3 paper's
    exploration noise "N(0, 0.1)" (``expl_noise * max_action`` in sfujim/TD3 main.py, CleanRL's
    ``exploration_noise * action_scale``) is ``sigma=0.1`` here.
    """

    def __init__(self, act_dim: int, sigma: float = 0.1, n_envs: int = 1, rng: Optional[np.random.Generator] = None):
        super().__init__(act_dim, n_envs, rng)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def sample(self) -> np.ndarray:
        return self.rng.normal(0.0, self.sigma, size=(self.n_envs, self.act_dim))

    def __repr__(self) -> str:
        return f"GaussianNoise(act_dim={self.act_dim}, sigma={self.sigma}, n_envs={self.n_envs})"


class OrnsteinUhlenbeckNoise(_Noise):
    """Temporally correlated noise of Lillicrap et al. 2015 (§7: theta=0.15, sigma=0.2).

    Euler-Maruyama step x += theta*(mu - x)*dt + sigma*sqrt(dt)*N(0, 1), dt=1e-2 as in OpenAI
    baselines' ``OrnsteinUhlenbeckActionNoise``. The stationary std is ~sigma/sqrt(2*theta) ~ 0.37
    whatever dt is; dt sets the correlation time, ~1/(theta*dt) ~ 670 steps, so within an episode
    the process behaves like a slowly drifting random walk from ``mu`` (std ~ sigma*sqrt(t*dt)).
    The paper applied it for inertial physics tasks; modern baselines use Gaussian noise instead.
    """

    def __init__(
        self,
        act_dim: int,
        theta: float = 0.15,
        sigma: float = 0.2,
        dt: float = 1e-2,
        n_envs: int = 1,
        mu: float = 0.0,
        rng: Optional[np.random.Generator] = None,
    ):
        super().__init__(act_dim, n_envs, rng)
        if theta < 0 or sigma < 0 or dt <= 0:
            raise ValueError(f"need theta >= 0, sigma >= 0, dt > 0; got {theta}, {sigma}, {dt}")
        self.theta, self.sigma, self.dt, self.mu = float(theta), float(sigma), float(dt), float(mu)
        self.x = np.full((self.n_envs, self.act_dim), self.mu)

    def reset(self, env_ids: EnvIds = None) -> None:
        # Each episode starts the process from its mean: noise must not carry over an episode boundary.
        self.x[slice(None) if env_ids is None else env_ids] = self.mu

    def sample(self) -> np.ndarray:
        drift = self.theta * (self.mu - self.x) * self.dt
        self.x += drift + self.sigma * np.sqrt(self.dt) * self.rng.standard_normal(self.x.shape)
        return self.x.copy()

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "x": self.x.tolist()}

    def set_state(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.shape != self.x.shape:
            raise ValueError(f"OU state has shape {x.shape}, this process has {self.x.shape}")
        super().set_state(state)
        self.x[...] = x

    def __repr__(self) -> str:
        return (
            f"OrnsteinUhlenbeckNoise(act_dim={self.act_dim}, theta={self.theta}, sigma={self.sigma}, "
            f"dt={self.dt}, n_envs={self.n_envs})"
        )


def make_noise(config, act_dim: int, n_envs: int = 1, rng: Optional[np.random.Generator] = None) -> Optional[_Noise]:
    """The exploration process a ``DDPGConfig`` asks for (None for ``exploration_noise="none"``)."""
    kind = config.exploration_noise
    if kind == "gaussian":
        return GaussianNoise(act_dim, config.exploration_sigma, n_envs, rng)
    if kind == "ou":
        return OrnsteinUhlenbeckNoise(act_dim, config.ou_theta, config.ou_sigma, config.ou_dt, n_envs, rng=rng)
    if kind == "none":
        return None
    raise ValueError(f"exploration_noise must be 'gaussian', 'ou' or 'none', got {kind!r}")
