"""The state of a training run as one unit: what a checkpoint holds, and how each part goes back.

A checkpoint (``pydpg.files.checkpoint`` writes and reads the files, atomically) has three parts:

- the model dict (``pydpg.files.model``): both configs, the dims, the action bounds, the agent
  and the normalizer;
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
from typing import Any, Optional

import torch

from pydpg.core.config import DDPGConfig
from pydpg.core.replay import ReplayBuffer
from pydpg.files import checkpoint as ckpt_io
from pydpg.train.config import TrainConfig


# ---------------------------------------------------------------------------------------- the buffer
def load_matching_buffer(path: Path, like: ReplayBuffer) -> ReplayBuffer:
    """The checkpoint's replay buffer, refused unless it is laid out as the run's own (``like``)."""
    try:
        loaded = ReplayBuffer.load(path)
    except (ValueError, OSError) as e:
        raise ckpt_io.CheckpointError(f"replay buffer {path}: {e}") from e
    fields = ("obs_shape", "action_shape", "capacity", "prioritized", "n_step", "gamma")
    wrong = [
        f"{f} {getattr(loaded, f)} (the run has {getattr(like, f)})"
        for f in fields
        if getattr(loaded, f) != getattr(like, f)
    ]
    if wrong:
        raise ckpt_io.CheckpointError(f"replay buffer {path} does not belong to this run: {', '.join(wrong)}")
    return loaded


# ---------------------------------------------------------------------------------------- the run state
def _new_interval(step: int, train_time: float) -> dict[str, Any]:
    """Sums over the updates and episodes since the last metrics row (its averages)."""
    return {
        "n": 0,
        "n_actor": 0,
        "critic_loss": 0.0,
        "actor_loss": 0.0,
        "q_mean": 0.0,
        "returns": [],
        "step": step,
        "train_time": train_time,
    }


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
        return {
            **{k: getattr(self, k) for k in self._INTS},
            "elapsed": self.elapsed + elapsed_in_run,
            "train_time": self.train_time,
            "history": self.history,
            "best": self.best,
            "reached_target": self.reached_target,
            "interval": self.interval,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        for k in self._INTS:
            setattr(self, k, int(s[k]))
        self.elapsed, self.train_time = float(s["elapsed"]), float(s["train_time"])
        self.history, self.best, self.reached_target = list(s["history"]), s["best"], bool(s["reached_target"])
        self.interval = dict(s["interval"])
        self.interval.setdefault("returns", [])


def run_state(
    counters: RunCounters, device: torch.device, collector_state: dict[str, Any], elapsed_in_run: float = 0.0
) -> dict[str, Any]:
    """The trainer part of a checkpoint: counters, torch RNG streams (network init is done; they
    drive TD3's target noise and anything else an update draws), and the collector's part, flat,
    under the keys pydpg 0.2 used."""
    return {
        **counters.state_dict(elapsed_in_run),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        **collector_state,
    }


def restore_run_state(s: dict[str, Any], counters: RunCounters, device: torch.device) -> None:
    """Counters and RNG streams back from ``run_state``'s dict (the collector restores its own part)."""
    counters.load_state_dict(s)
    torch.set_rng_state(s["torch_rng"])
    if s["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(s["cuda_rng"])


# ---------------------------------------------------------------------------------------- resuming
def open_for_resume(
    path, device: Optional[str], total_steps: Optional[int], threads: Optional[int], out_dir
) -> tuple[ckpt_io.Checkpoint, DDPGConfig, TrainConfig, Any]:
    """The checkpoint at ``path`` and the configs a resumed run uses: the stored ones, with a new
    ``device``, ``total_steps`` (to extend the run) or ``threads`` (stored for the next resume) where
    given. The run directory defaults to the one the checkpoint is in."""
    ckpt = ckpt_io.load_checkpoint(path, map_location=device or None)
    config = DDPGConfig.from_dict(ckpt.model["config"])
    if device is not None:
        config.device = device
    train = TrainConfig.from_dict(ckpt.model["run"])
    if total_steps is not None:
        train.total_steps = int(total_steps)
    if threads is not None:
        train.threads = threads
    if out_dir is None and ckpt.path.parent.name == "checkpoints":
        out_dir = ckpt.path.parent.parent
    return ckpt, config, train, out_dir
