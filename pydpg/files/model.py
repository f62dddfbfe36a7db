"""The model dict: what a model file (``model.pt``, ``best_model.pt``) and a checkpoint's model
part hold, and how an agent goes in and comes back out. ``pydpg.files.checkpoint`` writes and
reads the files; training (``pydpg.train``) and export (``pydpg.deploy``) both come here, so the
policy file's side needs nothing of the training run.

Keys: both configs (``config``: DDPGConfig, ``run``: TrainConfig, as dicts), the dims, the action
bounds, the agent (networks, targets, optimizers) and the normalizer.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.normalizer import RunningNormalizer


def make_policy(agent: DDPGAgent, normalizer: Optional[RunningNormalizer]) -> Callable[[np.ndarray], np.ndarray]:
    """The noiseless policy obs -> action in [-1, 1] (one obs or a batch); ``envs.scale_action``
    gives env units. Used by training, evaluation, the CLI and ``pydpg.DDPG.predict``."""
    normalize = normalizer.normalize if normalizer is not None else (lambda obs: obs)
    return lambda obs: agent.act(normalize(obs), deploy=True)


def model_dict(
    config: DDPGConfig,
    run: dict[str, Any],
    obs_dim: int,
    act_dim: int,
    low: np.ndarray,
    high: np.ndarray,
    agent: DDPGAgent,
    normalizer: Optional[RunningNormalizer],
) -> dict[str, Any]:
    """The agent as a model dict (``pydpg.files.checkpoint`` describes the keys); ``run`` is the
    TrainConfig as a dict."""
    return {
        "config": config.to_dict(),
        "run": run,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "action_low": torch.as_tensor(low, dtype=torch.float64),
        "action_high": torch.as_tensor(high, dtype=torch.float64),
        "agent": agent.state_dict(),
        "normalizer": None if normalizer is None else normalizer.to_dict(),
    }


def load_model(
    model: dict[str, Any], agent: DDPGAgent, normalizer: Optional[RunningNormalizer], obs_dim: int, act_dim: int
) -> None:
    """Load a model dict's weights, optimizers and statistics into a run's own agent and normalizer,
    refusing one made for other dims or the other obs_normalization setting."""
    if (int(model["obs_dim"]), int(model["act_dim"])) != (obs_dim, act_dim):
        raise ValueError(
            f"model has obs/act dims ({model['obs_dim']}, {model['act_dim']}), this env has ({obs_dim}, {act_dim})"
        )
    agent.load_state_dict(model["agent"])
    if (model["normalizer"] is None) != (normalizer is None):
        raise ValueError("model and config disagree on obs_normalization")
    if normalizer is not None:
        src = RunningNormalizer.from_dict(model["normalizer"])
        normalizer.load_state_dict(src.state_dict())
        normalizer.eps, normalizer.clip = src.eps, src.clip


def agent_from_model(
    model: dict[str, Any], device: Union[str, torch.device, None] = None
) -> tuple[DDPGAgent, Optional[RunningNormalizer]]:
    """Rebuild the agent (and normalizer) stored in a model dict, without a run."""
    config = DDPGConfig.from_dict(model["config"])
    if device is not None:
        config.device = str(device)
    agent = DDPGAgent.from_dims(int(model["obs_dim"]), int(model["act_dim"]), config)
    agent.load_state_dict(model["agent"])
    normalizer = None
    if model["normalizer"] is not None:
        normalizer = RunningNormalizer.from_dict(model["normalizer"]).to(agent.device)
    return agent, normalizer
