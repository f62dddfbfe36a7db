"""The state of a training run as one unit: what a checkpoint holds, and how each part goes back.

A checkpoint (``pydpg.checkpoint`` writes and reads the files, atomically) has three parts:

- the model dict: both configs, the dims, the action bounds, the agent (networks, targets,
  optimizers) and the normalizer (``model_dict`` / ``load_model``; ``agent_from_model`` rebuilds
  an agent from one without a run);
- the replay buffer, a file of the C++ core's own (``load_matching_buffer`` refuses another run's);
- the run state (``run_state`` / ``restore_run_state``): ``RunCounters`` (steps, updates, the
  evaluation record, the schedule), the torch RNG streams, and the collector's own part (the local
  collector: each env's simulator state, observations, noise and warm-up RNGs; the Ray collector:
  its restart count). The collector writes and restores its part itself.

``Trainer`` owns one of each and goes through this module for every checkpoint and resume; the
keys are those pydpg 0.2 wrote, so its checkpoints still resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from . import checkpoint as ckpt_io
from .agent import DDPG as DDPGAgent
from .config import DDPGConfig
from .normalizer import RunningNormalizer
from .replay import ReplayBuffer


# ---------------------------------------------------------------------------------------- the model
def make_policy(agent: DDPGAgent, normalizer: Optional[RunningNormalizer]) -> Callable[[np.ndarray], np.ndarray]:
    """The noiseless policy obs -> action in [-1, 1] (one obs or a batch); ``envs.scale_action``
    gives env units. Used by training, evaluation, the CLI and ``pydpg.DDPG.predict``."""
    normalize = normalizer.normalize if normalizer is not None else (lambda obs: obs)
    return lambda obs: agent.act(normalize(obs), deploy=True)


def model_dict(config: DDPGConfig, run: dict[str, Any], obs_dim: int, act_dim: int, low: np.ndarray,
               high: np.ndarray, agent: DDPGAgent, normalizer: Optional[RunningNormalizer]) -> dict[str, Any]:
    """The agent as a model dict (``pydpg.checkpoint`` describes the keys); ``run`` is the
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


def load_model(model: dict[str, Any], agent: DDPGAgent, normalizer: Optional[RunningNormalizer],
               obs_dim: int, act_dim: int) -> None:
    """Load a model dict's weights, optimizers and statistics into a run's own agent and normalizer,
    refusing one made for other dims or the other obs_normalization setting."""
    if (int(model["obs_dim"]), int(model["act_dim"])) != (obs_dim, act_dim):
        raise ValueError(f"model has obs/act dims ({model['obs_dim']}, {model['act_dim']}), this env has "
                         f"({obs_dim}, {act_dim})")
    agent.load_state_dict(model["agent"])
    if (model["normalizer"] is None) != (normalizer is None):
        raise ValueError("model and config disagree on obs_normalization")
    if normalizer is not None:
        src = RunningNormalizer.from_dict(model["normalizer"])
        normalizer.load_state_dict(src.state_dict())
        normalizer.eps, normalizer.clip = src.eps, src.clip


def agent_from_model(model: dict[str, Any], device: Union[str, torch.device, None] = None
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


# ---------------------------------------------------------------------------------------- the buffer
def load_matching_buffer(path: Path, like: ReplayBuffer) -> ReplayBuffer:
    """The checkpoint's replay buffer, refused unless it is laid out as the run's own (``like``)."""
    try:
        loaded = ReplayBuffer.load(path)
    except (ValueError, OSError) as e:
        raise ckpt_io.CheckpointError(f"replay buffer {path}: {e}") from e
    fields = ("obs_shape", "action_shape", "capacity", "prioritized", "n_step", "gamma")
    wrong = [f"{f} {getattr(loaded, f)} (the run has {getattr(like, f)})"
             for f in fields if getattr(loaded, f) != getattr(like, f)]
    if wrong:
        raise ckpt_io.CheckpointError(f"replay buffer {path} does not belong to this run: {', '.join(wrong)}")
    return loaded


# ---------------------------------------------------------------------------------------- the run state
def _new_interval(step: int, train_time: float) -> dict[str, Any]:
    """Sums over the updates and episodes since the last metrics row (its averages)."""
    return {"n": 0, "n_actor": 0, "critic_loss": 0.0, "actor_loss": 0.0, "q_mean": 0.0, "returns": [],
            "step": step, "train_time": train_time}


@dataclass
class RunCounters:
    """Where a run is: steps stored, updates made, episodes ended, the next evaluation and
    checkpoint, its times, every evaluation row so far and the best, and the sums behind the next
    metrics row."""

    next_eval: int
    next_ckpt: int
    step: int = 0
    n_grad: int = 0
    episodes: int = 0
    elapsed: float = 0.0  # wall time of all Trainer.run calls, evaluation included
    train_time: float = 0.0  # the same without evaluation and checkpointing
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Optional[dict[str, float]] = None
    reached_target: bool = False
    interval: dict[str, Any] = field(default_factory=lambda: _new_interval(0, 0.0))

    _INTS = ("step", "n_grad", "episodes", "next_eval", "next_ckpt")

    def new_interval(self) -> None:
        self.interval = _new_interval(self.step, self.train_time)

    def state_dict(self, elapsed_in_run: float = 0.0) -> dict[str, Any]:
        """``elapsed_in_run``: the time of the ``run`` call in progress, not yet in ``elapsed``."""
        return {**{k: getattr(self, k) for k in self._INTS},
                "elapsed": self.elapsed + elapsed_in_run, "train_time": self.train_time,
                "history": self.history, "best": self.best, "reached_target": self.reached_target,
                "interval": self.interval}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        for k in self._INTS:
            setattr(self, k, int(s[k]))
        self.elapsed, self.train_time = float(s["elapsed"]), float(s["train_time"])
        self.history, self.best, self.reached_target = list(s["history"]), s["best"], bool(s["reached_target"])
        self.interval = dict(s["interval"])
        self.interval.setdefault("returns", [])


def run_state(counters: RunCounters, device: torch.device, collector_state: dict[str, Any],
              elapsed_in_run: float = 0.0) -> dict[str, Any]:
    """The trainer part of a checkpoint: counters, torch RNG streams (network init is done; they
    drive TD3's target noise and anything else an update draws), and the collector's part, flat,
    under the keys pydpg 0.2 used."""
    return {**counters.state_dict(elapsed_in_run),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            **collector_state}


def restore_run_state(s: dict[str, Any], counters: RunCounters, device: torch.device) -> None:
    """Counters and RNG streams back from ``run_state``'s dict (the collector restores its own part)."""
    counters.load_state_dict(s)
    torch.set_rng_state(s["torch_rng"])
    if s["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(s["cuda_rng"])
