"""Distributed collection on Ray core: many collectors, one learner (the Ape-X DPG shape).

``RayCollector`` is the Trainer's collector when ``TrainConfig.workers = N >= 1``:

* N ``CollectorWorker`` Ray actors each step ``n_envs`` envs (their own SyncVectorEnv, through the
  same ``VectorStepper`` as a local run: the autoreset step is never stored) with a CPU copy of the
  actor, and return chunks of ``chunk_steps`` vector steps as NumPy arrays. Each env of each worker
  is its own n-step stream in the learner's buffer.
* Weights (and the normalizer's statistics) are broadcast every ``broadcast_every`` learner updates
  with one ``ray.put`` of NumPy arrays: the same object reference goes with every worker's next
  rollout request, so the object store holds one copy that every worker reads.
* The learner asks each worker for one chunk at a time and consumes the chunks one by one, doing
  the updates each chunk makes due before it takes the next (``Trainer._update``). A fast worker
  therefore waits for the learner: the replay ratio is the configured one whatever the workers'
  speed (Reverb's SampleToInsertRatio), and metrics.csv reports the achieved ratio.
* The chunks are taken from the workers in turn (``worker_order = "fixed"``): each worker's next
  request leaves at a fixed point of the learner's sequence, with the weights of that point, so a
  run is a function of its seed and not of the workers' speeds. ``"arrival"`` takes whichever
  chunk comes first (Ape-X), for workers of unequal speed, and gives up that reproducibility.
* The observation statistics live in the learner, which folds in every observation the workers
  saw (``Chunk.seen_obs``); workers normalize with the statistics that came with the weights.
* Evaluation runs noiselessly on its own ``EvalWorker``, seeded as a local run's.
* A worker that dies is restarted by Ray (``max_restarts``); the learner closes its open n-step
  returns (as truncations), counts the restart and carries on; nothing stored is lost. When no
  worker delivers for ``worker_timeout_s`` the run stops with an error.

Resume restores the learner, optimizers, buffer and normalizer; workers start new episodes, so a
distributed resume is not bit-exact (a local one is).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from typing import Any, Optional

import numpy as np
import torch

from pydpg.common.envs import EvalResult, evaluate, make_env, make_vec_env
from pydpg.contract.wrappers import contract_wrapper
from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.noise import make_noise
from pydpg.core.normalizer import RunningNormalizer, standardize
from pydpg.core.replay import ReplayBuffer
from pydpg.train import ray_session
from pydpg.train.collect import Chunk, VectorStepper
from pydpg.train.config import TrainConfig

CHUNK_STEPS = 50  # vector steps per chunk: ~50 updates of learner work per chunk at a replay ratio of 1


def worker_sigma_scale(index: int, workers: int, spread: float) -> float:
    """Worker ``index``'s multiplier of the exploration sigma: log-spaced over [e^-spread, e^spread]
    across workers, so they explore at different scales (the idea of Ape-X's per-actor epsilon,
    Horgan et al. 2018, for Gaussian/OU noise); 1 for every worker when ``spread`` is 0."""
    if workers <= 1 or spread == 0:
        return 1.0
    return math.exp(spread * (2.0 * index / (workers - 1) - 1.0))


def _cpu_agent(config: dict, obs_dim: int, act_dim: int) -> DDPGAgent:
    torch.set_num_threads(1)  # a worker's actor is tiny; many workers share the machine's cores
    cfg = DDPGConfig.from_dict({**config, "device": "cpu"})
    return DDPGAgent.from_dims(obs_dim, act_dim, cfg, device="cpu")


class _Acting:
    """The worker side of a broadcast: loads weights and statistics, normalizes observations."""

    def _load(self, weights: Optional[dict]) -> None:
        if weights is None or weights["version"] == self.version:
            return
        self.agent.actor.load_state_dict({k: torch.from_numpy(v) for k, v in weights["actor"].items()})
        self.norm = weights["norm"]
        self.version = weights["version"]

    def _normalized(self, obs: np.ndarray) -> np.ndarray:
        if self.norm is None:
            return obs
        n = self.norm
        return standardize(torch.as_tensor(obs, dtype=torch.float32), n["mean"], n["var"], n["eps"], n["clip"]).numpy()


class CollectorWorker(_Acting):
    """One Ray actor: ``n_envs`` envs, a CPU actor, its own noise and RNG streams."""

    def __init__(
        self,
        index: int,
        env_id: str,
        env_kwargs: dict,
        n_envs: int,
        config: dict,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        seed: int,
        sigma_scale: float,
        contracts: Optional[dict] = None,
    ):
        try:
            vec = make_vec_env(env_id, n_envs, env_kwargs, wrapper=contract_wrapper(**(contracts or {})))
        except Exception as e:  # the learner re-raises it, naming the worker and the env
            raise RuntimeError(f"worker {index} cannot make env {env_id!r}: {type(e).__name__}: {e}") from None
        self.agent = _cpu_agent(config, obs_dim, act_dim)
        noise_cfg = DDPGConfig.from_dict(
            {
                **config,
                "device": "cpu",
                "exploration_sigma": config["exploration_sigma"] * sigma_scale,
                "ou_sigma": config["ou_sigma"] * sigma_scale,
            }
        )
        self.index, self.seed = index, seed
        import ray

        # A Ray restart runs __init__ again with the same arguments: a fresh incarnation tells the
        # learner (whose pending request may have finished before the death, so it saw no error),
        # and its episodes must not replay its predecessor's.
        self.incarnation = uuid.uuid4().hex
        self.reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        seq = np.random.SeedSequence([seed, 1 + index])  # distinct from the learner's streams and each other's
        rng, noise_rng = (np.random.default_rng(s) for s in seq.spawn(2))
        self.stepper = VectorStepper(
            vec, low, high, make_noise(noise_cfg, act_dim, n_envs, noise_rng), rng, stream_offset=index * n_envs
        )
        self.version, self.norm, self.generation = -1, None, -1

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        """Its process id (an operator's kill -9, a test's)."""
        return os.getpid()

    def rollout(self, steps: int, warmup: bool, weights: Optional[dict], generation: int) -> Chunk:
        """``steps`` vector steps as one chunk. A new ``generation`` (the learner saw this worker
        restart) starts new episodes from fresh seeds, so a restarted worker does not replay its
        predecessor's episodes."""
        first = None
        if generation != self.generation:
            salt = int(self.incarnation[:8], 16) if self.reconstructed else 0
            first = self.stepper.reset(seed=(self.seed + 104729 * (1 + self.index) + 7919 * generation + salt) % 2**32)
            self.generation = generation
        self._load(weights)
        act = lambda obs, noise: self.agent.act(self._normalized(obs), noise)  # noqa: E731
        chunk = Chunk.concat([self.stepper.step(self.stepper.choose(warmup, act)) for _ in range(steps)])
        if first is not None:  # the reset observations count in the statistics too
            chunk.seen_obs = np.concatenate([first, chunk.seen_obs])
        chunk.source, chunk.incarnation = self.index, self.incarnation
        return chunk


class EvalWorker(_Acting):
    """Noiseless evaluation episodes on its own env, away from the learner's process."""

    def __init__(
        self, env_id: str, env_kwargs: dict, config: dict, obs_dim: int, act_dim: int, contracts: Optional[dict] = None
    ):
        self.env = make_env(env_id, env_kwargs, wrapper=contract_wrapper(**(contracts or {})))
        self.agent = _cpu_agent(config, obs_dim, act_dim)
        self.version, self.norm = -1, None

    def evaluate(self, weights: dict, episodes: int, seed: int) -> EvalResult:
        self._load(weights)
        return evaluate(lambda obs: self.agent.act(self._normalized(obs)), self.env, episodes, seed)


RETRY_PAUSE_S = 0.25  # between asks of a restarting worker


def _actor_died(ray, e: BaseException) -> bool:
    return isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


class RayCollector:
    """The Trainer's collector over N Ray worker actors (see the module docstring)."""

    kind = "ray"

    def __init__(
        self,
        config: DDPGConfig,
        train: TrainConfig,
        env_id: str,
        obs_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        *,
        actor: torch.nn.Module,
        normalizer: Optional[RunningNormalizer],
        buffer: ReplayBuffer,
    ):
        """Start ``train.workers`` collectors of ``env_id`` and an evaluation worker. ``actor`` and
        ``normalizer`` are the learner's own (read at each broadcast); ``buffer`` is where the
        learner stores chunks (its open n-step returns are closed when a worker dies)."""
        self.ray = ray = ray_session.init(train.ray_address)
        self.actor, self.normalizer, self.buffer = actor, normalizer, buffer
        self.max_restarts = train.worker_max_restarts
        self.n = train.workers
        # Each collector steps its envs without pause: more of them than the cluster has CPUs only
        # time-share (and a typo of 1e9 filled 3 GB in 90 s creating actors). Refused by name.
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if self.n > max(cpus, 1):
            raise ValueError(
                f"--workers {self.n} exceeds the Ray cluster's {cpus} CPUs: each collector runs "
                f"continuously on one; use at most {max(cpus, 1)} (add nodes for more)"
            )
        self.n_envs = train.n_envs
        self.broadcast_every = train.broadcast_every
        self.timeout = train.worker_timeout_s
        config = config.to_dict()
        dims = (obs_dim, len(low))
        worker = ray.remote(CollectorWorker).options(max_restarts=train.worker_max_restarts, max_task_retries=0)
        # Distinct worker seeds from the run's seed, reproducible.
        seeds = np.random.SeedSequence(train.seed).generate_state(self.n)
        self.workers = [
            worker.remote(
                i,
                env_id,
                train.env_kwargs,
                train.n_envs,
                config,
                *dims,
                low,
                high,
                int(seeds[i]),
                worker_sigma_scale(i, self.n, train.worker_noise_spread),
                {"action": train.action, "observation": train.observation, "randomization": train.randomization},
            )
            for i in range(self.n)
        ]
        # An evaluation is idempotent (the same weights object, the same seed), so one whose worker
        # died is run again, whole, on the restarted worker.
        self.eval_worker = (
            ray.remote(EvalWorker)
            .options(max_restarts=train.worker_max_restarts, max_task_retries=train.worker_max_restarts)
            .remote(env_id, train.env_kwargs, config, *dims, {"action": train.action, "observation": train.observation})
        )
        # A worker's start imports torch, Gymnasium and MuJoCo: seconds, minutes on a loaded machine.
        start_timeout = max(self.timeout, 180.0)
        try:  # an env a worker cannot make is an error now, in the learner, naming it
            ray.get([w.ready.remote() for w in self.workers], timeout=start_timeout)
        except Exception as e:
            self.close()
            if isinstance(e, ray.exceptions.GetTimeoutError):
                raise RuntimeError(f"the Ray workers did not start within {start_timeout:g} s") from None
            raise RuntimeError(f"the Ray workers did not start: {_cause(e)}") from None
        self.generation = [0] * self.n
        self.incarnation: list[Optional[str]] = [None] * self.n
        self.restarts = 0
        self.chunks = 0
        self.broadcasts = 0
        self.dead: set[int] = set()
        # A restarting worker answers "temporarily unavailable" until its new life begins: asked
        # again after a pause (not counted as a death: one kill once cost three restarts of the
        # budget and left the restarted actor unused).
        self.retry_at = [0.0] * self.n
        self.chunks_by_worker = [0] * self.n
        self.fixed_order, self._turn = train.worker_order == "fixed", 0
        self.pending: dict[Any, int] = {}
        self.last_chunk_time = time.monotonic()
        self._weights_at = -1
        self._stats_count = None  # the normalizer's count in the last broadcast
        self.weights = None
        self.weights_changed(0, force=True)

    # ------------------------------------------------------------------ weights
    def weights_changed(self, n_grad: int, force: bool = False) -> None:
        """Broadcast every ``broadcast_every`` updates: one ray.put shared by every worker."""
        if not force and n_grad - self._weights_at < self.broadcast_every:
            return
        actor = {k: v.detach().cpu().numpy() for k, v in self.actor.state_dict().items()}
        norm = None
        if self.normalizer is not None:
            d = self.normalizer.to_dict()
            norm = {"mean": d["mean"].numpy(), "var": d["var"].numpy(), "eps": d["eps"], "clip": d["clip"]}
            self._stats_count = float(d["count"])
        # The version is the broadcast's number, not n_grad: before learning_starts n_grad stays 0
        # while the statistics change, and workers skip a version they already hold.
        self.weights = self.ray.put({"actor": actor, "norm": norm, "version": self.broadcasts})
        self._weights_at = n_grad
        self.broadcasts += 1

    def _stale(self, n_grad: int) -> bool:
        """The last broadcast is not the learner's state now (weights or statistics)."""
        return self._weights_at != n_grad or (
            self.normalizer is not None and float(self.normalizer.count) != self._stats_count
        )

    # ------------------------------------------------------------------ collection
    def _request(self, i: int, warmup: bool) -> None:
        ref = self.workers[i].rollout.remote(CHUNK_STEPS, warmup, self.weights, self.generation[i])
        self.pending[ref] = i

    def collect(self, warmup: bool) -> Chunk:
        """The next chunk: the next worker's in turn (``worker_order = "fixed"``), or whichever
        worker's comes first ("arrival"). A worker found dead on the way has its streams closed and
        its restart counted; the wait goes on for its next life's chunk, or (gone for good) for the
        others'."""
        waiting_since = time.monotonic()  # a pause of the learner's (between run calls) is no worker's fault
        while True:
            busy = set(self.pending.values())
            now = time.monotonic()
            for i in range(self.n):
                if i not in busy and i not in self.dead and self.retry_at[i] <= now:
                    self._request(i, warmup)
            retrying = [self.retry_at[i] for i in range(self.n) if i not in self.dead and self.retry_at[i] > now]
            if not self.pending and not retrying:
                raise RuntimeError(f"all {self.n} Ray workers are gone (restarts exhausted: {self.restarts} restarts)")
            if self.fixed_order:
                while self._turn in self.dead:
                    self._turn = (self._turn + 1) % self.n
                waiting_for = [ref for ref, w in self.pending.items() if w == self._turn]
            else:
                waiting_for = list(self.pending)
            if not waiting_for:  # the worker waited for is restarting: ask it again when its pause ends
                self._check_progress(waiting_since, None)
                time.sleep(max(0.0, min(retrying) - now))
                continue
            ready, _ = self.ray.wait(
                waiting_for, num_returns=1, timeout=min([self.timeout] + [max(0.01, r - now) for r in retrying])
            )
            if not ready and retrying:
                self._check_progress(waiting_since, None)
                continue
            if not ready:
                raise RuntimeError(
                    f"no Ray worker delivered a chunk for {self.timeout:g} s "
                    f"({len(self.dead)} of {self.n} gone after {self.restarts} restarts)"
                )
            i = self.pending.pop(ready[0])
            try:
                chunk = self.ray.get(ready[0])
            except Exception as e:
                if not _actor_died(self.ray, e):
                    raise RuntimeError(f"Ray worker {i} failed: {_cause(e)}") from None
                self._lost(i, e, waiting_since)
                continue
            if self.incarnation[i] is not None and chunk.incarnation != self.incarnation[i]:
                # Restarted between two requests: its old episodes ended unseen, before this chunk's.
                self._close_streams(i)
                self.restarts += 1
            self.incarnation[i] = chunk.incarnation
            self._turn = (i + 1) % self.n
            self.last_chunk_time = time.monotonic()
            self.chunks += 1
            self.chunks_by_worker[i] += 1
            self._request(i, warmup)  # keep the worker busy while the learner updates
            return chunk

    def _close_streams(self, i: int) -> None:
        """Worker i's episodes ended unseen: close their open n-step returns (as truncations), or the
        next episode's rewards would complete them."""
        for s in range(i * self.n_envs, (i + 1) * self.n_envs):
            self.buffer.end_episode(s)

    def _check_progress(self, waiting_since: float, error: Optional[BaseException]) -> None:
        if time.monotonic() - max(self.last_chunk_time, waiting_since) > self.timeout:
            raise RuntimeError(
                f"no Ray worker delivered a chunk for {self.timeout:g} s"
                + (f"; the last one lost: {_cause(error)}" if error is not None else "")
            )

    def _lost(self, i: int, error: BaseException, waiting_since: float) -> None:
        """Worker i's request failed: it died (a restart is counted, its open episodes closed), or it
        is restarting ("temporarily unavailable": asked again after a pause, nothing counted)."""
        if isinstance(error, self.ray.exceptions.ActorUnavailableError):
            self.retry_at[i] = time.monotonic() + RETRY_PAUSE_S
            self._check_progress(waiting_since, error)
            return
        self._close_streams(i)
        self.incarnation[i] = None  # its next life's chunks are expected, not a second restart
        self.restarts += 1
        self.generation[i] += 1
        if self.generation[i] > self.max_restarts:
            self.dead.add(i)  # Ray will not bring it back
        self._check_progress(waiting_since, error)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: int, seed: int, n_grad: int) -> EvalResult:
        """Noiseless episodes on the evaluation worker, of the learner's policy after ``n_grad``
        updates (the one best_model.pt stores with the result)."""
        self.weights_changed(n_grad, force=self._stale(n_grad))
        try:
            return self.ray.get(self.eval_worker.evaluate.remote(self.weights, episodes, seed))
        except Exception as e:
            if _actor_died(self.ray, e):
                raise RuntimeError(f"the evaluation worker is gone (restarts exhausted): {_cause(e)}") from e
            raise RuntimeError(f"evaluation on the Ray eval worker failed: {_cause(e)}") from e

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> dict[str, Any]:
        return {"worker_restarts": self.restarts}

    def load_state_dict(self, s: dict[str, Any], *, buffer: ReplayBuffer, **_: Any) -> None:
        """Only the restart count comes back: workers start new episodes (not an exact resume).
        ``buffer`` is the run's restored one, where chunks go from now on."""
        self.restarts = int(s.get("worker_restarts", 0))
        self.buffer = buffer

    def stats(self) -> dict[str, Any]:
        return {
            "workers": self.n,
            "worker_restarts": self.restarts,
            "chunks": self.chunks,
            "chunks_by_worker": list(self.chunks_by_worker),
            "broadcasts": self.broadcasts,
            "chunk_steps": CHUNK_STEPS,
        }

    def close(self) -> None:
        for w in [*getattr(self, "workers", []), getattr(self, "eval_worker", None)]:
            if w is not None:
                try:
                    self.ray.kill(w, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.pending = {}


def _cause(e: BaseException) -> str:
    """The message a user needs from a Ray error: the original exception's, where Ray wraps one."""
    cause = getattr(e, "cause", None) or getattr(e, "__cause__", None)
    text = str(cause if cause is not None else e)
    return text.strip().splitlines()[-1] if text.strip() else type(e).__name__
