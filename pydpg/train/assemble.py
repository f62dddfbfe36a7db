"""The parts a run is built from, in the order that keeps a run a function of its seed: the seeded
streams, the agent and normalizer, the replay buffer, and the collector (the envs of this process or
Ray workers), with stored weights loaded where a model dict is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from pydpg.common.envs import EnvLike
from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.noise import make_noise
from pydpg.core.normalizer import RunningNormalizer
from pydpg.core.replay import ReplayBuffer
from pydpg.files.model import load_model, make_policy
from pydpg.train.collect import Collector, LocalCollector, VectorStepper
from pydpg.train.config import TrainConfig
from pydpg.train.distributed import RayCollector
from pydpg.train.run_envs import RunEnvs


@dataclass
class RunParts:
    agent: DDPGAgent
    normalizer: Optional[RunningNormalizer]
    policy: Any  # the noiseless policy (normalizer then actor), for evaluation
    buffer: ReplayBuffer
    collector: Collector


def check_run_shape(config: DDPGConfig, train: TrainConfig, env: EnvLike) -> None:
    """What the collectors cannot do, refused before any env is opened."""
    if train.workers and not isinstance(env, str):
        raise ValueError("workers > 0 needs an env id: each worker makes its own envs")
    if config.policy_checkpoints and (train.n_envs != 1 or train.workers):
        raise ValueError(
            "DDPGConfig.policy_checkpoints needs one local env (n_envs=1, workers=0): it assesses "
            f"one fixed policy on whole episodes; got n_envs={train.n_envs}, workers={train.workers}"
        )


def assemble_run(
    config: DDPGConfig, train: TrainConfig, env: EnvLike, envs: RunEnvs, model: Optional[dict] = None
) -> RunParts:
    seed = train.seed
    torch.manual_seed(seed)  # network initialization and the agent's target-noise generator
    rng_seq = np.random.SeedSequence(seed).spawn(3)  # warm-up actions, exploration noise, the buffer
    agent = DDPGAgent.from_dims(envs.obs_dim, envs.act_dim, config)
    normalizer = RunningNormalizer(envs.obs_dim).to(agent.device) if config.obs_normalization else None
    buffer = ReplayBuffer(
        config.buffer_size,
        envs.obs_dim,
        envs.act_dim,
        prioritized=config.prioritized,
        alpha=config.per_alpha,
        n_step=config.n_step,
        gamma=config.gamma,
        seed=int(rng_seq[2].generate_state(1, np.uint64)[0]),
    )

    def act(obs: np.ndarray, noise) -> np.ndarray:
        return agent.act(obs if normalizer is None else normalizer.normalize(obs), noise)

    collector: Optional[Collector] = None
    if envs.vec is not None:
        noise = make_noise(config, envs.act_dim, train.n_envs, np.random.default_rng(rng_seq[1]))
        stepper = VectorStepper(envs.vec, envs.low, envs.high, noise, np.random.default_rng(rng_seq[0]))
        stepper.reset(seed)
        if normalizer is not None:
            normalizer.update(stepper.obs)
        collector = LocalCollector(stepper, act)
    if model is not None:  # after the reset above, whose observations the model's statistics never saw
        load_model(model, agent, normalizer, envs.obs_dim, envs.act_dim)
    if collector is None:  # workers: they start from the (loaded) actor and normalizer
        collector = RayCollector(
            config,
            train,
            env,
            envs.obs_dim,
            envs.low,
            envs.high,
            actor=agent.actor,
            normalizer=normalizer,
            buffer=buffer,
        )
    return RunParts(agent, normalizer, make_policy(agent, normalizer), buffer, collector)
