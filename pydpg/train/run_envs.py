"""A run's envs, opened once at its start: the local vector env (or none, when Ray workers collect),
the evaluation env, and the spaces the agent is built for. The run's stated observation spec is
checked against the env here, before any training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from pydpg.common.envs import EnvLike, make_env, make_vec_env
from pydpg.contract.wrappers import contract_wrapper
from pydpg.train.config import TrainConfig, check_observation


@dataclass
class RunEnvs:
    vec: Optional[Any]  # gymnasium's SyncVectorEnv of n_envs; None when workers collect
    eval_env: Optional[Any]  # None without evaluation, or when a worker evaluates
    name: str  # the env id, or the instance's type
    low: np.ndarray  # the action Box's bounds, float64
    high: np.ndarray
    obs_dim: int
    act_dim: int

    def close(self) -> None:
        for env in (self.vec, self.eval_env):
            if env is not None:
                env.close()


def open_run_envs(env: EnvLike, train: TrainConfig) -> RunEnvs:
    """Open what the run steps and evaluates; on any error nothing stays open."""
    # The spaces come from the local vector env, or (workers) from one env made here, which
    # also fails early and clearly for an env this machine cannot make.
    # Stated specs are bound to the env here: their errors come now. Evaluation envs get the action
    # contract and the observation history but no randomization (an evaluation measures the nominal robot).
    wrap = contract_wrapper(train.action, train.observation)
    train_wrap = contract_wrapper(train.action, train.observation, train.randomization)
    if train.observation is not None:  # before any env is wrapped with it: the clearest message
        check_observation(train.observation, env, train.env_kwargs)
    vec = make_vec_env(env, train.n_envs, train.env_kwargs, train_wrap) if not train.workers else None
    probe = vec if vec is not None else make_vec_env(env, 1, train.env_kwargs, train_wrap)
    name = train.env_id or getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
    box = probe.single_action_space
    low, high = box.low.astype(np.float64), box.high.astype(np.float64)
    obs_dim, act_dim = int(probe.single_observation_space.shape[0]), int(box.shape[0])
    if probe is not vec:
        probe.close()
    try:
        eval_env = make_env(env, train.env_kwargs, wrapper=wrap) if train.eval_every > 0 and not train.workers else None
    except ValueError:
        if vec is not None:
            vec.close()
        raise
    return RunEnvs(vec, eval_env, name, low, high, obs_dim, act_dim)
