"""Collection: stepping environments with the current policy into chunks of transitions.

The training loop (pydpg.train.trainer.Trainer) consumes chunks from a ``Collector`` and does not
care where they came from:

* ``LocalCollector``: today's ``n_envs`` copies in a SyncVectorEnv, stepped in the learner's
  process with the learner's own actor; exact checkpoints and resume.
* ``pydpg.train.distributed.RayCollector``: Ray actors, each stepping its own vector env with a CPU copy of
  the actor (the Ape-X DPG shape, Horgan et al. 2018).

Both step their envs through one ``VectorStepper``, so the rule for Gymnasium's next-step
autoreset lives in one place: an env that ended its episode on the previous step is reset by this
step instead of being stepped, and (final obs, ignored action, reset obs) is not a transition of
the MDP, so it is never stored.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional, Protocol

import numpy as np

from pydpg.common.envs import get_env_state, scale_action, set_env_state
from pydpg.files import checkpoint as ckpt_io


@dataclasses.dataclass
class Chunk:
    """Transitions from one collector, rows aligned; ``streams[i]`` is the n-step stream (one per
    env of each collector) row i belongs to."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    streams: np.ndarray
    seen_obs: np.ndarray  # every observation the envs produced (reset ones too): normalizer statistics
    returns: list  # returns of the episodes that ended in this chunk
    source: int = 0  # the collector (worker) it came from
    incarnation: str = ""  # which life of that worker made it (a Ray restart starts a new one)

    @property
    def steps(self) -> int:
        return int(self.obs.shape[0])

    @staticmethod
    def concat(chunks: list["Chunk"]) -> "Chunk":
        fields = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "streams", "seen_obs")
        out = {f: np.concatenate([getattr(c, f) for c in chunks]) for f in fields}
        return Chunk(
            **out,
            returns=[r for c in chunks for r in c.returns],
            source=chunks[0].source,
            incarnation=chunks[0].incarnation,
        )


class VectorStepper:
    """A vector env plus the per-env episode state the autoreset rule needs (current observations,
    which envs reset on their next step, running returns) and the exploration noise/RNG.

    ``stream_offset`` makes this stepper's n-step streams distinct from other collectors'.
    """

    def __init__(self, vec, low: np.ndarray, high: np.ndarray, noise, rng: np.random.Generator, stream_offset: int = 0):
        self.vec, self.low, self.high, self.noise, self.rng = vec, low, high, noise, rng
        self.n = vec.num_envs
        self.act_dim = int(vec.single_action_space.shape[0])
        self.streams = np.arange(self.n, dtype=np.int64) + stream_offset
        self.obs: Optional[np.ndarray] = None
        self.autoreset = np.zeros(self.n, dtype=bool)
        self.ep_return = np.zeros(self.n)
        self.ep_length = np.zeros(self.n, dtype=np.int64)

    def reset(self, seed: Optional[int]) -> np.ndarray:
        self.obs, _ = self.vec.reset(seed=seed)
        self.autoreset[:] = False
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        return self.obs

    def choose(self, warmup: bool, act: Callable[[np.ndarray, Any], np.ndarray]) -> np.ndarray:
        """Actions in [-1, 1]: uniform during warm-up (TD3's start_timesteps), else ``act(obs, noise)``."""
        if warmup:
            return self.rng.uniform(-1.0, 1.0, size=(self.n, self.act_dim)).astype(np.float32)
        return act(self.obs, self.noise)

    def step(self, unit: np.ndarray) -> Chunk:
        next_obs, reward, terminated, truncated, _ = self.vec.step(scale_action(unit, self.low, self.high))
        real = ~self.autoreset
        rows = np.flatnonzero(real)
        chunk = Chunk(
            self.obs[rows],
            unit[rows],
            reward[rows],
            next_obs[rows],
            terminated[rows],
            truncated[rows],
            self.streams[rows],
            next_obs,
            [],
        )
        if self.noise is not None and not real.all():
            self.noise.reset(np.flatnonzero(~real))  # a new episode starts its noise afresh
        self.ep_return[real] += reward[real]
        self.ep_length[real] += 1
        ended = terminated | truncated
        for i in np.flatnonzero(ended):
            chunk.returns.append(float(self.ep_return[i]))
        self.ep_return[ended] = 0.0
        self.ep_length[ended] = 0
        self.autoreset = ended
        self.obs = next_obs
        return chunk

    # Checkpoints: the keys are those pydpg <= 0.2 wrote at the top level of the trainer state.
    def state_dict(self) -> dict[str, Any]:
        return {
            "obs": ckpt_io.to_torch(np.asarray(self.obs)),
            "autoreset": ckpt_io.to_torch(self.autoreset),
            "ep_return": ckpt_io.to_torch(self.ep_return),
            "ep_length": ckpt_io.to_torch(self.ep_length),
            "rng": self.rng.bit_generator.state,
            "noise": None if self.noise is None else self.noise.get_state(),
            "envs": ckpt_io.to_torch([get_env_state(e) for e in self.vec.envs]),
        }

    def load_state_dict(self, s: dict[str, Any]) -> list[int]:
        """Restore; returns the envs whose simulator state could not be captured (their episodes must
        restart: the caller decides how)."""
        self.obs = ckpt_io.to_numpy(s["obs"]).copy()
        self.autoreset = ckpt_io.to_numpy(s["autoreset"]).copy()
        self.ep_return = ckpt_io.to_numpy(s["ep_return"]).copy()
        self.ep_length = ckpt_io.to_numpy(s["ep_length"]).copy()
        self.rng.bit_generator.state = s["rng"]
        if self.noise is not None:
            self.noise.set_state(s["noise"])
        env_states = ckpt_io.to_numpy(s["envs"])
        if len(env_states) != len(self.vec.envs):
            raise ckpt_io.CheckpointError(f"checkpoint has {len(env_states)} envs, this run {len(self.vec.envs)}")
        lost = []
        for i, (env, st) in enumerate(zip(self.vec.envs, env_states)):
            if st is not None:
                set_env_state(env, st)
            else:
                lost.append(i)
        # SyncVectorEnv's own record of which envs reset on their next step.
        self.vec._autoreset_envs = self.autoreset.copy()
        return lost

    def restart_episode(self, i: int, seed: int) -> np.ndarray:
        """Start a new episode in env ``i`` now (its old one ended unseen by the buffer)."""
        obs, _ = self.vec.envs[i].reset(seed=seed)
        self.obs[i] = obs
        self.autoreset[i] = False
        self.vec._autoreset_envs = self.autoreset.copy()
        self.ep_return[i], self.ep_length[i] = 0.0, 0
        if self.noise is not None:
            self.noise.reset([i])
        return obs


class Collector(Protocol):
    """What the training loop asks of whoever steps the envs. A collector gets what it needs when it
    is made, explicitly (its envs, the learner's actor, normalizer and buffer), never the Trainer."""

    kind: str  # "local" or "ray", in the run's summary

    def collect(self, warmup: bool) -> Chunk:
        """The next chunk of transitions; random actions while ``warmup``."""
        ...

    def weights_changed(self, n_grad: int) -> None:
        """The learner's actor (or statistics) changed; ``n_grad`` updates so far."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The collector's part of a checkpoint."""
        ...

    def load_state_dict(self, s: dict[str, Any], *, buffer, normalizer, seed: int, step: int) -> None:
        """Restore its part; ``buffer`` and ``normalizer`` are the run's restored ones."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for the run's summary."""
        ...

    def close(self) -> None: ...


class LocalCollector:
    """The envs stepped in the learner's process: one vector step per ``collect`` call."""

    kind = "local"

    def __init__(self, stepper: VectorStepper, act: Callable[[np.ndarray, Any], np.ndarray]):
        self.stepper, self.act = stepper, act

    def collect(self, warmup: bool) -> Chunk:
        return self.stepper.step(self.stepper.choose(warmup, self.act))

    def weights_changed(self, n_grad: int) -> None:
        """The learner's actor is the one acting here: nothing to send."""

    def state_dict(self) -> dict[str, Any]:
        return self.stepper.state_dict()

    def load_state_dict(self, s: dict[str, Any], *, buffer, normalizer, seed: int, step: int) -> None:
        """Continue exactly where the checkpoint stopped, each env in its own episode. An env whose
        simulator state could not be captured starts a new episode, seeded from (seed, step) so the
        resumed run is still reproducible."""
        stepper = self.stepper
        lost = stepper.load_state_dict(s)
        if not lost:
            return
        warnings.warn(
            f"env(s) {lost} cannot be captured (not MuJoCo, no state_dict()): "
            "their episodes restart at the checkpoint, so this resume is not exact"
        )
        for i in lost:
            obs = stepper.restart_episode(i, seed + 7919 * (step + i + 1))
            # The old episode ended here, unseen by the buffer: close its open n-step returns as a
            # truncation (else the new episode's rewards would complete them); the new episode's
            # first observation goes into the statistics like any other's.
            buffer.end_episode(i)
            if normalizer is not None:
                normalizer.update(obs[None])

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.stepper.vec.close()
