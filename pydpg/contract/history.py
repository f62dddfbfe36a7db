"""Observation history: a policy that reads the last k values of some terms, trained as it will run.

A term of the observation spec (pydpg.contract.observation) may state ``"history": k``: the policy
then reads that term's last k control steps, oldest first and the current step last (IsaacLab's
``history_length`` order), k times the term's width. After a reset every slot holds the episode's
first value. The C++ ``ObservationBuilder`` keeps the rings (allocated when it is bound, nothing
allocated per step); the control loop resets it at each episode's start and builds once per step.

A simulator's own observation has no history: it is the spec's *base* (every term once, as
``without_history`` writes it), and the run checks at its start that the base reproduces the env's
observation. ``ObservationHistory`` is the Gymnasium wrapper that turns that observation into the
policy's, through the same C++ rings (``build_from_current``): whatever the env's observation holds,
its noise from domain randomization included, is what the history remembers, as a robot's past
readings keep their noise.
"""

from __future__ import annotations

from typing import Any, Union

import gymnasium as gym
import numpy as np

from pydpg.common.envs import find_wrapper
from pydpg.contract.observation import ObservationBuilder, as_spec


def has_history(spec: dict) -> bool:
    """Whether any term of ``spec`` states a history longer than one step."""
    return any(_history(t) > 1 for t in as_spec(spec)["terms"])


def without_history(spec: dict) -> dict:
    """``spec`` with every term read once: the base, which a simulator's own observation holds."""
    spec = as_spec(spec)
    return {**spec, "terms": [{k: v for k, v in t.items() if k != "history"} for t in spec["terms"]]}


def observing(env: gym.Env, spec: dict) -> gym.Env:
    """``env`` as a policy of ``spec`` observes it: through ObservationHistory when the spec has a
    history and ``env`` has no such wrapper yet, else ``env`` itself (what verification checks)."""
    if not has_history(spec) or find_wrapper(env, ObservationHistory) is not None:
        return env
    return ObservationHistory(env, spec)


def _history(term: Any) -> int:
    h = term.get("history", 1) if isinstance(term, dict) else 1
    return h if isinstance(h, int) and not isinstance(h, bool) else 1


class ObservationHistory(gym.Wrapper):
    """A Gymnasium MuJoCo env whose observation is ``spec``'s, history terms included.

    The inner env's observation must be the spec's base (``without_history(spec)``; the run verifies
    so before it trains). Its values, inputs included at their places, go through the C++ builder's
    rings: reset() restarts them, each step records one control step."""

    def __init__(self, env: gym.Env, spec: Union[dict, list]):
        super().__init__(env)
        base = env.unwrapped
        if not hasattr(base, "model"):
            raise ValueError(
                f"observation history needs a MuJoCo env (a model to bind to); {type(base).__name__} is not one"
            )
        self.builder = ObservationBuilder(spec, base.model)
        width = int(np.prod(env.observation_space.shape))
        if width != self.builder.base_size:
            raise ValueError(
                f"the observation spec's base (its terms without history) has {self.builder.base_size} values, "
                f"the env observes {width}: a history term extends the env's own observation"
            )
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.builder.size,), np.float64)

    @property
    def spec(self):
        """The inner env's spec: a copy made from it is plain, as ActionContract's (see there)."""
        return self.env.spec

    def observe(self, obs) -> np.ndarray:
        """The policy's observation from the inner env's ``obs``, recording this control step."""
        return self.builder.build_from_current(np.asarray(obs, dtype=np.float64).reshape(-1)).astype(np.float64)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.builder.reset()
        return self.observe(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observe(obs), reward, terminated, truncated, info

    # The rings are part of the env's state (pydpg.common.envs.get_env_state): resume stays exact.
    def wrapper_state(self) -> dict[str, Any]:
        return self.builder.history_state()

    def load_wrapper_state(self, s: dict[str, Any]) -> None:
        self.builder.load_history_state(s)
