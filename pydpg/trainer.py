"""The training run: collect with N envs, store real transitions, update, evaluate, log, checkpoint.

Collection is a collector's job (pydpg.collect): the envs of this process (``LocalCollector``), or
Ray worker actors (``pydpg.distributed.RayCollector``, ``TrainConfig.workers``). The loop below is
the same for both: take a chunk, store it, make the updates it made due, evaluate, checkpoint.

One step of ``Trainer`` with the local collector:

1. act: uniform random in [-1, 1] for the first ``learning_starts`` steps (sfujim/TD3 main.py,
   CleanRL), then ``mu(s) + noise``; ``envs.scale_action`` maps to the env's units;
2. step the ``SyncVectorEnv`` (Gymnasium's next-step autoreset); store each env's transition unless
   that env was in its autoreset step (its "transition" goes from the final observation to the
   reset observation and is not one the MDP made). ``terminated`` and ``truncated`` go to the
   buffer separately: only termination stops bootstrapping (``Batch.done``);
3. one gradient update per env step after ``learning_starts`` (``train_freq``/``gradient_steps``);
4. every ``eval_every`` steps: ``eval_episodes`` noiseless episodes on a separate env reset with
   seed ``seed + 100`` (as sfujim/TD3's ``eval_policy``), a metrics row, TensorBoard scalars;
5. every ``checkpoint_every`` steps: an atomic checkpoint (``pydpg.checkpoint``).

Steps count real transitions, summed over envs. On CPU a run is a deterministic function of its
seed, and ``Trainer.resume`` continues a checkpoint exactly as the uninterrupted run would have:
agent, optimizers, normalizer, buffer, every RNG stream, counters and each env's simulator state
are restored (see ``envs.get_env_state`` for what env state is and which envs support it).
What a checkpoint holds, and how each part goes back, is ``pydpg.run_state``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from . import checkpoint as ckpt_io
from .agent import DDPG as DDPGAgent
from .config import DDPGConfig, _did_you_mean
from .collect import Chunk, LocalCollector, VectorStepper
from .envs import EnvLike, EvalResult, evaluate, make_env, make_vec_env
from .noise import make_noise
from .normalizer import RunningNormalizer
from .replay import ReplayBuffer
from .run_log import METRICS_COLUMNS, Progress, RunLogger, read_metrics  # noqa: F401  (re-exported)
from .run_state import (RunCounters, agent_from_model, load_matching_buffer, load_model,  # noqa: F401
                        make_policy, model_dict, restore_run_state, run_state)

BEST_MODEL = "best_model.pt"  # in the run directory (TrainConfig.save_best)
PER_EPS = 1e-6  # added to |TD error| so no transition gets priority 0 (Schaul et al. 2016, §3.3)


# ---------------------------------------------------------------------------------------- run settings
MAX_WORKERS = 4096  # collectors of one learner; a cluster's CPU count bounds a run further (distributed.py)
OBSERVATION_CHECK_STEPS = 50  # a run's stated observation is verified over this many env steps at start


def check_observation(spec: dict, env: EnvLike, env_kwargs: Optional[dict] = None,
                      steps: int = OBSERVATION_CHECK_STEPS) -> None:
    """Verify a run's stated observation spec against a fresh copy of its env before training: a
    spec the env cannot satisfy (unknown field or name, a slice out of range, another version,
    another robot's spec, an empty list) or one that does not reproduce its observations is a
    ValueError now, not at export hours later. Export verifies it again, longer."""
    from .observation import ObservationError, ObservationMismatch, verify_report

    # A fresh copy; an instance with no spec to copy from is checked itself (training resets it after).
    own = isinstance(env, str) or getattr(env, "spec", None) is not None
    single = make_env(env, env_kwargs or {}) if own else env
    try:
        verify_report(spec, single, steps=steps)
    except (ObservationMismatch, ObservationError) as e:
        raise ValueError(f"the run's observation spec ([observation]) does not fit {_env_label(env)}: {e}") from None
    except TypeError as e:  # not a MuJoCo env
        raise ValueError(f"the run states an observation spec ([observation]), but {e}") from None
    finally:
        if own:
            single.close()


def _env_label(env: EnvLike) -> str:
    return env if isinstance(env, str) else (getattr(getattr(env, "spec", None), "id", None) or type(env).__name__)


@dataclass
class TrainConfig:
    """Everything about a run that is not the learning algorithm (that is ``DDPGConfig``)."""

    env_id: Optional[str] = None
    env_kwargs: dict = field(default_factory=dict)  # to gym.make, e.g. {"xml_file": "robot.xml"}
    seed: int = 0  # seeds torch, numpy, the envs and the noise; a run is a function of it
    total_steps: int = 1_000_000  # sfujim/TD3 max_timesteps, CleanRL total_timesteps
    n_envs: int = 1  # envs stepped together (a vector env); 1 as in sfujim/TD3 and CleanRL
    eval_every: int = 5_000  # sfujim/TD3 eval_freq; 0 = no evaluation
    eval_episodes: int = 10  # sfujim/TD3 eval_policy(eval_episodes=10)
    eval_seed_offset: int = 100  # eval env seeded seed + 100, as sfujim/TD3's eval_policy
    checkpoint_every: int = 50_000  # 0 = only the final checkpoint
    keep_checkpoints: int = 1  # the previous one is deleted only after the new one is complete
    target_return: Optional[float] = None  # stop early once an eval mean reaches it
    # The observation spec (pydpg.observation) of a config file's [observation] table: stored with
    # the run so that `pydpg export` of its checkpoints checks and ships it. None: the task preset's.
    observation: Optional[dict] = None
    # Distributed collection (pydpg.distributed): 0 = the envs are stepped in this process;
    # N >= 1 = N Ray actors, each stepping n_envs envs with a CPU copy of the actor.
    workers: int = 0
    ray_address: Optional[str] = None  # None: a local Ray (loopback only); else join this cluster
    broadcast_every: int = 100  # learner updates between weight broadcasts to the workers (Ape-X: 400)
    worker_noise_spread: float = 0.0  # worker i's sigma = sigma * exp(spread * (2i/(N-1) - 1)); 0: all equal
    worker_max_restarts: int = 3  # Ray restarts a dead worker this many times
    worker_timeout_s: float = 60.0  # every worker gone for this long: the run stops with an error
    # "fixed": chunks are taken from the workers in turn, so a run is a function of its seed, not of
    # the workers' speeds (a slow worker holds the others back). "arrival": whichever comes first,
    # Ape-X's way, for workers of unequal speed; runs then differ with timing.
    worker_order: str = "fixed"
    # torch's intra-op threads in the training process; None: torch's choice (all cores). Stored with
    # the run so that --resume runs on the count it started with. The count changes the arithmetic
    # (Ant resumed from one checkpoint on 2 and on 1 thread evaluated 2522 and 2712 5k steps later)
    # and the speed (beside another run on 2 cores: 23 env steps/s on 2 threads, 60 on 1).
    threads: Optional[int] = None
    # Write OUT/best_model.pt (a model file) at each evaluation that beats every earlier one, as SB3's
    # EvalCallback(best_model_save_path) does. A long run's last policy can sit in a dip (CrossQ on
    # Walker2d, seed 1: best evaluation 5045, 38 at 295k of 300k); this is the one to export then.
    save_best: bool = True

    def validate(self) -> "TrainConfig":
        def check(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check("env_id", self.env_id is None or (isinstance(self.env_id, str) and self.env_id != ""),
              "None or a non-empty string")
        check("env_kwargs", isinstance(self.env_kwargs, dict), "a dict (TOML table [env])")
        check("seed", is_int(self.seed) and 0 <= self.seed < 2**32, "an int in [0, 2**32)")
        for name in ("total_steps", "n_envs", "eval_episodes", "keep_checkpoints"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1")
        for name in ("eval_every", "checkpoint_every", "eval_seed_offset", "workers", "worker_max_restarts"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 0, "an int >= 0")
        check("broadcast_every", is_int(self.broadcast_every) and self.broadcast_every >= 1, "an int >= 1")
        check("workers", self.workers <= MAX_WORKERS, f"at most {MAX_WORKERS} (the cluster's CPUs bound it further)")
        if self.ray_address is not None and self.workers == 0:
            raise ValueError(f"TrainConfig.ray_address {self.ray_address!r} is set but workers is 0: the address is "
                             "where the collectors run (--workers N); without workers the run is local")
        check("ray_address", self.ray_address is None or (isinstance(self.ray_address, str) and self.ray_address != ""),
              "None or a non-empty string")
        for name in ("worker_noise_spread", "worker_timeout_s"):
            v = getattr(self, name)
            check(name, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                  "a finite number >= 0")
        check("worker_order", self.worker_order in ("fixed", "arrival"), '"fixed" or "arrival"')
        check("save_best", isinstance(self.save_best, bool), "a bool")
        check("threads", self.threads is None or (is_int(self.threads) and self.threads >= 1), "None or an int >= 1")
        t = self.target_return
        check("target_return", t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and t == t),
              "None or a number")
        if self.observation is not None:
            from .observation import as_spec

            try:
                self.observation = as_spec(self.observation)
            except TypeError as e:
                raise ValueError(f"TrainConfig.observation: {e}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError("unknown TrainConfig key(s): " + ", ".join(f"{k!r}{_did_you_mean(k, known)}" for k in unknown))
        return cls(**d).validate()


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """A DDPG training run on ``env`` (an id or a gymnasium.Env; default ``train.env_id``).

    ``out_dir`` None keeps everything in memory (``history``); otherwise the run writes
    ``metrics.csv``, ``tb/``, ``checkpoints/``, ``summary.json`` and ``learning_curve.png`` there.
    ``model`` (a model dict, see ``pydpg.checkpoint``) starts from stored weights and normalizer.
    """

    def __init__(self, config: DDPGConfig, train: TrainConfig, env: Optional[EnvLike] = None,
                 out_dir: Union[str, os.PathLike, None] = None, *, progress: bool = False,
                 verbose: bool = False, tensorboard: bool = True, model: Optional[dict] = None):
        self.config = config.validate()
        self.train_cfg = train = TrainConfig.from_dict(train.validate().to_dict())  # ours to update
        env = env if env is not None else train.env_id
        if env is None:
            raise ValueError("no environment: pass env or set TrainConfig.env_id")
        if isinstance(env, str) and train.env_id is None:
            train.env_id = env
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress_enabled, self.verbose, self.tensorboard = progress, verbose, tensorboard
        seed = train.seed

        torch.manual_seed(seed)  # network initialization and the agent's target-noise generator
        rng_seq = np.random.SeedSequence(seed).spawn(3)
        rng = np.random.default_rng(rng_seq[0])  # warm-up actions
        if train.workers and not isinstance(env, str):
            raise ValueError("workers > 0 needs an env id: each worker makes its own envs")
        if config.policy_checkpoints and (train.n_envs != 1 or train.workers):
            raise ValueError("DDPGConfig.policy_checkpoints needs one local env (n_envs=1, workers=0): it assesses "
                             f"one fixed policy on whole episodes; got n_envs={train.n_envs}, workers={train.workers}")
        # The spaces come from the local vector env, or (workers) from one env made here, which
        # also fails early and clearly for an env this machine cannot make.
        vec = make_vec_env(env, train.n_envs, train.env_kwargs) if not train.workers else None
        probe = vec if vec is not None else make_vec_env(env, 1, train.env_kwargs)
        self.env_name = train.env_id or getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
        box = probe.single_action_space
        self.low, self.high = box.low.astype(np.float64), box.high.astype(np.float64)
        self.obs_dim = int(probe.single_observation_space.shape[0])
        self.act_dim = int(box.shape[0])
        if probe is not vec:
            probe.close()
        if train.observation is not None:
            try:
                check_observation(train.observation, env, train.env_kwargs)
            except ValueError:
                if vec is not None:
                    vec.close()
                raise
        try:
            self.eval_env = make_env(env, train.env_kwargs) if train.eval_every > 0 and not train.workers else None
        except ValueError:
            if vec is not None:
                vec.close()
            raise

        self.agent = DDPGAgent.from_dims(self.obs_dim, self.act_dim, config)
        self.normalizer = RunningNormalizer(self.obs_dim).to(self.agent.device) if config.obs_normalization else None
        self.policy = make_policy(self.agent, self.normalizer)
        noise_rng = np.random.default_rng(rng_seq[1])
        self.buffer = ReplayBuffer(config.buffer_size, self.obs_dim, self.act_dim, prioritized=config.prioritized,
                                   alpha=config.per_alpha, n_step=config.n_step, gamma=config.gamma,
                                   seed=int(rng_seq[2].generate_state(1, np.uint64)[0]))

        # Where the run is (checkpointed with the model, the buffer and the collector's state).
        self.counters = RunCounters(next_eval=train.eval_every, next_ckpt=train.checkpoint_every)
        if vec is not None:
            stepper = VectorStepper(vec, self.low, self.high, make_noise(config, self.act_dim, train.n_envs, noise_rng),
                                    rng)
            stepper.reset(seed)
            if self.normalizer is not None:
                self.normalizer.update(stepper.obs)
            self.collector = LocalCollector(stepper, self._act)
        if model is not None:  # after the reset above, whose observations the model's statistics never saw
            load_model(model, self.agent, self.normalizer, self.obs_dim, self.act_dim)
        if vec is None:
            from .distributed import RayCollector

            self.collector = RayCollector(self, env, rng, noise_rng)
        self._last_ckpt_step: Optional[int] = None
        self._best_model_step: Optional[int] = None  # the evaluation OUT/best_model.pt holds, once written
        self._burst = False  # policy checkpoints: an assessment ended, the owed updates are due
        self._on_eval: Optional[Callable[[dict[str, Any]], None]] = None

    # Where the run is, read-only (``counters`` is the one place it lives and is checkpointed).
    step = property(lambda self: self.counters.step, doc="environment steps stored so far")
    n_grad = property(lambda self: self.counters.n_grad, doc="gradient updates made so far")
    episodes = property(lambda self: self.counters.episodes, doc="training episodes ended so far")
    history = property(lambda self: self.counters.history, doc="the metrics rows, one per evaluation")
    best = property(lambda self: self.counters.best, doc="the best evaluation so far")
    reached_target = property(lambda self: self.counters.reached_target, doc="an eval reached target_return")
    next_eval = property(lambda self: self.counters.next_eval, doc="the step count of the next evaluation")

    def _act(self, obs: np.ndarray, noise) -> np.ndarray:
        return self.agent.act(obs if self.normalizer is None else self.normalizer.normalize(obs), noise)

    @property
    def vec(self):
        """The local vector env (None when workers collect)."""
        return getattr(self.collector, "stepper", None) and self.collector.stepper.vec

    @property
    def noise(self):
        return getattr(self.collector, "stepper", None) and self.collector.stepper.noise

    # ------------------------------------------------------------------ the loop
    def run(self, total_steps: Optional[int] = None, stop_at: Optional[int] = None,
            on_eval: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
        """Train until ``total_steps`` (default ``train.total_steps``) or an eval mean reaches
        ``target_return``; then a final evaluation, checkpoint, ``summary.json`` and plot.

        ``stop_at`` returns early, once ``step >= stop_at``, with none of the end-of-run work (as an
        interrupted run would); ``Trainer.resume`` or another ``run`` call continues from there.
        ``on_eval`` sees each new metrics row as it is logged (``pydpg.sweep`` reports them to Tune).
        """
        if on_eval is not None and not callable(on_eval):
            raise TypeError(f"on_eval must be a callable taking a metrics row, got {type(on_eval).__name__}")
        if total_steps is not None:
            self.train_cfg.total_steps = int(total_steps)
            self.train_cfg.validate()
        total = self.train_cfg.total_steps
        logger = self._open_logger()
        self._on_eval = on_eval
        progress = Progress(total, bar=self.progress_enabled, lines=self.verbose)
        if self.counters.step == 0 and self.verbose:
            progress.write(f"training {self.env_name} for {total} steps, seed {self.train_cfg.seed}, "
                           f"{self.train_cfg.n_envs} env(s), device {self.agent.device}"
                           + (f", output in {self.out_dir}" if self.out_dir else ""))
            critic = self.agent.config.critic_widths
            if self.agent.device.type == "cpu" and max(critic, default=0) >= 1024:
                # preset crossq's 2048-2048 critic: measured at ~24x a 256-256 update on one core.
                progress.write(f"note: a {'-'.join(map(str, critic))} critic is slow on a CPU (2048-2048: ~0.2 s per "
                               "update on a quiet core, ~24x a 256-256 one, docs/benchmarks.md); "
                               "--set critic_hidden=[256,256] is the setting measured on CPUs")
        # torch has one thread pool per process: the run's count holds while it trains, and the
        # caller's comes back after (DDPG.load of a 1-thread run leaves a notebook's torch alone).
        caller_threads = torch.get_num_threads()
        if self.train_cfg.threads is not None:
            torch.set_num_threads(self.train_cfg.threads)
        t_start = time.perf_counter()
        t_mark = t_start
        try:
            with self._sigint_between_steps():
                while self.counters.step < total and not self.counters.reached_target:
                    if stop_at is not None and self.counters.step >= stop_at:
                        self.counters.train_time += time.perf_counter() - t_mark
                        return self.summary()
                    if self._interrupted:
                        now = time.perf_counter()
                        self.counters.train_time += now - t_mark
                        t_mark = now
                        if self.out_dir is not None:
                            self.save_checkpoint(_elapsed_in_run=now - t_start)
                        raise KeyboardInterrupt
                    t_mark = self._one_step(logger, progress, t_start, t_mark)
            now = time.perf_counter()
            self.counters.train_time += now - t_mark
            final_eval = self.train_cfg.eval_every > 0 and (not self.counters.history or self.counters.history[-1]["step"] != self.counters.step)
            if final_eval:
                self._evaluate_and_log(logger, progress, now - t_start)
            self.counters.elapsed += time.perf_counter() - t_start
            t_start = None
            if self.out_dir is not None:
                if final_eval or self._last_ckpt_step != self.counters.step:  # the checkpoint holds the final row too
                    self.save_checkpoint()
                self._finish_outputs()
            summary = self.summary()
            if self.verbose:
                progress.write(self._summary_line(summary))
            return summary
        finally:
            if torch.get_num_threads() != caller_threads:
                torch.set_num_threads(caller_threads)
            self._on_eval = None
            if t_start is not None:
                self.counters.elapsed += time.perf_counter() - t_start
            progress.close()
            if logger is not None:
                logger.close()

    def _one_step(self, logger, progress: "Progress", t_start: float, t_mark: float) -> float:
        """Collect one chunk, make the updates it made due, and evaluate/checkpoint when due.
        Returns the time training (not evaluation or checkpointing) resumed at."""
        self._insert(self.collector.collect(warmup=self.counters.step < self.config.learning_starts))
        if self._update():
            self.collector.weights_changed(self.counters.n_grad)
        if self.train_cfg.eval_every and self.counters.step >= self.counters.next_eval:
            while self.counters.next_eval <= self.counters.step:
                self.counters.next_eval += self.train_cfg.eval_every
            now = time.perf_counter()
            self.counters.train_time += now - t_mark
            self._evaluate_and_log(logger, progress, now - t_start)
            t_mark = time.perf_counter()
        if self.train_cfg.checkpoint_every and self.counters.step >= self.counters.next_ckpt and self.out_dir is not None:
            while self.counters.next_ckpt <= self.counters.step:
                self.counters.next_ckpt += self.train_cfg.checkpoint_every
            now = time.perf_counter()
            self.counters.train_time += now - t_mark
            self.save_checkpoint(_elapsed_in_run=now - t_start)
            t_mark = time.perf_counter()
        if progress.bar is not None:
            span = self.counters.train_time + (time.perf_counter() - t_mark)
            progress.update(self.counters.step, self.counters.step / span if span > 0 else 0.0,
                            None if not self.counters.history else self.counters.history[-1]["eval_mean"])
        return t_mark

    @contextlib.contextmanager
    def _sigint_between_steps(self):
        """Ctrl-C stops the run between two steps, after a checkpoint of that step (the state is
        whole there; a KeyboardInterrupt raised inside an update or an insert would not leave it
        so), then raises KeyboardInterrupt. A second Ctrl-C interrupts at once."""
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _insert(self, chunk: Chunk) -> None:
        """Store a chunk's transitions (n-step per stream) and fold its observations in."""
        if chunk.steps:
            self.buffer.extend(chunk.obs, chunk.action, chunk.reward, chunk.next_obs, chunk.terminated,
                               chunk.truncated, env_ids=chunk.streams)
        self.counters.interval["returns"].extend(chunk.returns)
        checkpoints = self.agent.checkpoints
        if checkpoints is not None and self.counters.step + chunk.steps >= self.config.learning_starts:
            for ret in chunk.returns:  # TD7: assess the current policy on each training episode
                train, save = checkpoints.episode_ended(ret)
                if save:  # policy checkpoints run one local env: a chunk is one step, so this is the episode's end
                    self.agent.save_policy_checkpoint(self.counters.step + chunk.steps)
                self._burst = self._burst or train
        self.counters.episodes += len(chunk.returns)
        if self.normalizer is not None and len(chunk.seen_obs):
            self.normalizer.update(chunk.seen_obs)
        self.counters.step += chunk.steps

    def _update(self) -> bool:
        """The updates due at this step count: ``gradient_steps`` per ``train_freq`` steps after
        ``learning_starts``. Collection waits for them (the learner consumes chunks only between
        updates), so the replay ratio is the configured one however fast the collectors are, as
        Reverb's SampleToInsertRatio holds it. With TD7's policy checkpoints they wait for the end
        of an assessment (``_insert`` marks it), then all run. True when any update ran."""
        cfg = self.config
        due = max(0, self.counters.step - cfg.learning_starts) // cfg.train_freq * cfg.gradient_steps
        checkpoints = self.agent.checkpoints
        if checkpoints is not None:  # TD7: the updates owed wait for the end of an assessment
            burst, self._burst = self._burst, False
            if not burst:
                return False
        if self.counters.n_grad >= due or len(self.buffer) == 0:
            return False
        if checkpoints is not None:
            checkpoints.updates_made(self.counters.n_grad, due)
        device = self.agent.device
        acc = self.counters.interval
        while self.counters.n_grad < due:
            if cfg.prioritized:  # importance-sampling exponent annealed to 1 over the run (Schaul et al. 2016)
                frac = min(1.0, self.counters.step / self.train_cfg.total_steps)
                batch = self.buffer.sample(cfg.batch_size, cfg.per_beta0 + (1.0 - cfg.per_beta0) * frac, device)
            else:
                batch = self.buffer.sample(cfg.batch_size, device=device)
            if self.normalizer is not None:
                batch = batch._replace(obs=self.normalizer(batch.obs), next_obs=self.normalizer(batch.next_obs))
            if cfg.lap:  # LAP corrects its sampling through the Huber loss, not weights
                batch = batch._replace(weights=None)
            info = self.agent.update(batch)
            if cfg.lap:  # its priorities are >= 1 already
                self.buffer.update_priorities(batch.indices, info["td_errors"])
                if info["targets_updated"]:
                    self.buffer.reset_max_priority()
            elif cfg.prioritized:
                self.buffer.update_priorities(batch.indices, info["td_errors"] + PER_EPS)
            self.counters.n_grad += 1
            acc["n"] += 1
            acc["critic_loss"] += info["critic_loss"]
            acc["q_mean"] += info["q_mean"]
            if not math.isnan(info["actor_loss"]):
                acc["n_actor"] += 1
                acc["actor_loss"] += info["actor_loss"]
        return True

    # ------------------------------------------------------------------ evaluation and logging
    def evaluate(self, episodes: Optional[int] = None, seed: Optional[int] = None) -> EvalResult:
        """Noiseless episodes on the eval env, first reset with ``seed`` (default seed + 100)."""
        if seed is None:
            seed = self.train_cfg.seed + self.train_cfg.eval_seed_offset
        episodes = episodes or self.train_cfg.eval_episodes
        if self.train_cfg.workers:
            return self.collector.evaluate(episodes, seed)  # on its own worker
        if self.eval_env is None:
            self.eval_env = make_env(self.train_cfg.env_id or self.vec.envs[0], self.train_cfg.env_kwargs)
        return evaluate(self.policy, self.eval_env, episodes, seed)

    def _evaluate_and_log(self, logger: Optional[RunLogger], progress: Progress, run_elapsed: float) -> None:
        result = self.evaluate()
        c = self.counters
        acc = c.interval
        span = c.train_time - acc["train_time"]
        row = {
            "step": c.step,
            "wall_time": round(c.elapsed + run_elapsed, 3),
            "sps": (c.step - acc["step"]) / span if span > 0 else math.nan,
            "eval_mean": result.mean,
            "eval_std": result.std,
            "critic_loss": acc["critic_loss"] / acc["n"] if acc["n"] else math.nan,
            "actor_loss": acc["actor_loss"] / acc["n_actor"] if acc["n_actor"] else math.nan,
            "q_mean": acc["q_mean"] / acc["n"] if acc["n"] else math.nan,
            "train_return": float(np.mean(acc["returns"])) if acc["returns"] else math.nan,
            # Updates per stored transition over the interval, once learning has started.
            "replay_ratio": (acc["n"] / (c.step - max(acc["step"], self.config.learning_starts))
                             if c.step > max(acc["step"], self.config.learning_starts) else math.nan),
            "episodes": c.episodes,
        }
        updates = acc["n"]
        c.history.append(row)
        if c.best is None or result.mean > c.best["eval_mean"]:
            c.best = {"step": c.step, "eval_mean": result.mean, "eval_std": result.std}
            if self.out_dir is not None and self.train_cfg.save_best:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                ckpt_io.write_model(self.out_dir / BEST_MODEL, {
                    **self.model_dict(), "evaluation": {"step": c.step, "mean": result.mean, "std": result.std}})
                self._best_model_step = c.step
        target = self.train_cfg.target_return
        if target is not None and result.mean >= target:
            c.reached_target = True
        c.new_interval()
        if logger is not None:
            logger.log(row)
        # Before learning_starts the interval has no updates; "critic nan" there read as a diverged critic.
        if updates:
            learner = f"critic {row['critic_loss']:.4g} | q {row['q_mean']:.4g}"
        elif c.step <= self.config.learning_starts:
            learner = f"no updates yet (random actions until step {self.config.learning_starts})"
        else:
            learner = "no updates in this interval"
        progress.write(f"step {c.step:>9} | eval {result.mean:9.2f} +/- {result.std:7.2f} | "
                       f"{row['sps']:6.0f} sps | {learner}")
        if self._on_eval is not None:
            self._on_eval(row)

    def _open_logger(self) -> Optional[RunLogger]:
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resume_step = self.counters.step if (self.counters.step > 0 or self.counters.history) else None
        return RunLogger(self.out_dir, resume_step, self.tensorboard)

    def summary(self) -> dict[str, Any]:
        last = self.counters.history[-1] if self.counters.history else None
        from . import __version__

        return {
            "env_id": self.env_name,
            "seed": self.train_cfg.seed,
            "steps": self.counters.step,
            "gradient_steps": self.counters.n_grad,
            "episodes": self.counters.episodes,
            "wall_time_s": round(self.counters.elapsed, 3),
            "sps": round(self.counters.step / self.counters.train_time, 2) if self.counters.train_time > 0 else None,
            "final_eval": None if last is None else {"step": last["step"], "mean": last["eval_mean"],
                                                      "std": last["eval_std"]},
            "best_eval": None if self.counters.best is None else {
                "step": self.counters.best["step"], "mean": self.counters.best["eval_mean"],
                "std": self.counters.best["eval_std"],
                "model": BEST_MODEL if self._best_model_step == self.counters.best["step"] else None},
            "reached_target": self.counters.reached_target,
            "collector": {"kind": self.collector.kind, **self.collector.stats()},
            "config": self.config.to_dict(),
            "train": self.train_cfg.to_dict(),
            "pydpg_version": __version__,
        }

    @staticmethod
    def _summary_line(s: dict[str, Any]) -> str:
        fin, best = s["final_eval"], s["best_eval"]
        ev = "" if fin is None else (f", final eval {fin['mean']:.2f} +/- {fin['std']:.2f}, best {best['mean']:.2f} "
                                     f"at step {best['step']}" + (f" ({best['model']})" if best.get("model") else ""))
        return f"done: {s['steps']} steps in {s['wall_time_s']:.0f} s{ev}"

    def _finish_outputs(self) -> None:
        summary = self.summary()
        ckpt_io.atomic_write_bytes(self.out_dir / "summary.json", json.dumps(summary, indent=2).encode())
        if (self.out_dir / "metrics.csv").exists() and self.counters.history:
            from .plotting import plot_learning_curve

            plot_learning_curve(self.out_dir / "metrics.csv", self.out_dir / "learning_curve.png",
                                title=f"{self.env_name} (seed {self.train_cfg.seed})")

    # ------------------------------------------------------------------ model / checkpoint
    def model_dict(self) -> dict[str, Any]:
        """The agent as a model dict (``pydpg.checkpoint`` describes the keys)."""
        return model_dict(self.config, self.train_cfg.to_dict(), self.obs_dim, self.act_dim, self.low, self.high,
                          self.agent, self.normalizer)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the model file (weights, optimizers, normalizer, config; no replay buffer)."""
        ckpt_io.write_model(path, self.model_dict())

    def save_checkpoint(self, _elapsed_in_run: float = 0.0) -> Path:
        """Checkpoint everything needed to resume exactly into ``out_dir/checkpoints``."""
        if self.out_dir is None:
            raise ValueError("this run has no output directory to checkpoint into")
        state = run_state(self.counters, self.agent.device, self.collector.state_dict(), _elapsed_in_run)
        meta = {"env_id": self.env_name, "seed": self.train_cfg.seed, "time": time.time()}
        path = ckpt_io.save_checkpoint(self.out_dir / "checkpoints", self.counters.step, self.model_dict(), state,
                                       self.buffer, meta, keep=self.train_cfg.keep_checkpoints)
        self._last_ckpt_step = self.counters.step
        return path

    @classmethod
    def resume(cls, path: Union[str, os.PathLike], env: Optional[EnvLike] = None,
               out_dir: Union[str, os.PathLike, None] = None, total_steps: Optional[int] = None,
               device: Optional[str] = None, threads: Optional[int] = None, **kwargs: Any) -> "Trainer":
        """A Trainer continuing the checkpoint at ``path`` (run dir, checkpoints dir or checkpoint dir).

        The run directory defaults to the one the checkpoint is in. ``env`` is needed only if the
        run was started from an env instance rather than an id. ``total_steps`` may extend the run;
        ``threads`` replaces the run's stored thread count (and is stored for the next resume).
        """
        ckpt = ckpt_io.load_checkpoint(path, map_location=device or None)
        model, state = ckpt.model, ckpt.trainer
        config = DDPGConfig.from_dict(model["config"])
        if device is not None:
            config.device = device
        train = TrainConfig.from_dict(model["run"])
        if total_steps is not None:
            train.total_steps = int(total_steps)
        if threads is not None:
            train.threads = threads
        if out_dir is None and ckpt.path.parent.name == "checkpoints":
            out_dir = ckpt.path.parent.parent
        t = cls(config, train, env, out_dir, model=model, **kwargs)
        t.buffer = load_matching_buffer(ckpt.buffer_path, like=t.buffer)
        # Only now (everything read): a checkpoint a killed save had moved aside goes back home.
        ckpt_io.clean_partial(ckpt.path.parent)
        t._load_state(state)
        return t

    def _load_state(self, s: dict[str, Any]) -> None:
        restore_run_state(s, self.counters, self.agent.device)
        self._last_ckpt_step = self.counters.step
        self._adopt_best_model()
        self.collector.load_state_dict(s, buffer=self.buffer, normalizer=self.normalizer,
                                       seed=self.train_cfg.seed, step=self.counters.step)

    def _adopt_best_model(self) -> None:
        """On resume: keep OUT/best_model.pt if it is the restored best evaluation's. A file from an
        evaluation after the checkpoint (the resume replays those steps, exactly only on the same
        machine and thread count) or from another run is moved aside, named for its step, and
        replaced by this run's next best."""
        path = None if self.out_dir is None else self.out_dir / BEST_MODEL
        if path is None or not path.is_file():
            return
        try:
            ev = ckpt_io.read_model(path, map_location="cpu").get("evaluation") or {}
        except ckpt_io.CheckpointError:
            ev = {}
        best = self.counters.best
        if best is not None and ev.get("step") == best["step"] and ev.get("mean") == best["eval_mean"]:
            self._best_model_step = best["step"]
            return
        aside = path.with_name(f"best_model.step{ev.get('step', 'unknown')}-before-resume.pt")
        os.replace(path, aside)
        warnings.warn(f"{path} is not the best evaluation of the checkpoint resumed from (it holds step "
                      f"{ev.get('step', '?')}'s); moved to {aside.name}")

    def close(self) -> None:
        self.collector.close()
        if self.eval_env is not None:
            self.eval_env.close()
