"""The training run: collect with N envs, store real transitions, update, evaluate, log, checkpoint.

Collection is a collector's job (pydpg.train.collect): the envs of this process (``LocalCollector``), or
Ray worker actors (``pydpg.train.distributed.RayCollector``, ``TrainConfig.workers``). The loop below is
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
5. every ``checkpoint_every`` steps: an atomic checkpoint (``pydpg.files.checkpoint``).

Steps count real transitions, summed over envs. On CPU a run is a deterministic function of its
seed, and ``Trainer.resume`` continues a checkpoint exactly as the uninterrupted run would have:
agent, optimizers, normalizer, buffer, every RNG stream, counters and each env's simulator state
are restored (see ``envs.get_env_state`` for what env state is and which envs support it).
What a checkpoint holds, and how each part goes back, is ``pydpg.train.run_state``'s; how the
parts are built and seeded, ``pydpg.train.assemble``'s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from pydpg.common.envs import EnvLike, EvalResult, evaluate, make_env
from pydpg.contract.wrappers import contract_wrapper
from pydpg.core.config import DDPGConfig
from pydpg.files import checkpoint as ckpt_io
from pydpg.files.model import model_dict
from pydpg.train.assemble import assemble_run, check_run_shape
from pydpg.train.config import TrainConfig
from pydpg.train.interrupt import sigint_between_steps
from pydpg.train.learner import Learner
from pydpg.train.report import RunReport, summary_line
from pydpg.train.run_envs import open_run_envs
from pydpg.train.run_log import Progress
from pydpg.train.run_state import RunCounters, load_matching_buffer, open_for_resume, restore_run_state, run_state


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """A DDPG training run on ``env`` (an id or a gymnasium.Env; default ``train.env_id``).

    ``out_dir`` None keeps everything in memory (``history``); otherwise the run writes
    ``metrics.csv``, ``tb/``, ``checkpoints/``, ``summary.json`` and ``learning_curve.png`` there.
    ``model`` (a model dict, see ``pydpg.files.checkpoint``) starts from stored weights and normalizer.
    """

    def __init__(
        self,
        config: DDPGConfig,
        train: TrainConfig,
        env: Optional[EnvLike] = None,
        out_dir: Union[str, os.PathLike, None] = None,
        *,
        progress: bool = False,
        verbose: bool = False,
        tensorboard: bool = True,
        model: Optional[dict] = None,
    ):
        self.config = config.validate()
        self.train_cfg = train = TrainConfig.from_dict(train.validate().to_dict())  # ours to update
        env = env if env is not None else train.env_id
        if env is None:
            raise ValueError("no environment: pass env or set TrainConfig.env_id")
        if isinstance(env, str) and train.env_id is None:
            train.env_id = env
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress_enabled, self.verbose, self.tensorboard = progress, verbose, tensorboard
        check_run_shape(config, train, env)
        envs = open_run_envs(env, train)
        self.eval_env, self.env_name = envs.eval_env, envs.name
        self.low, self.high, self.obs_dim, self.act_dim = envs.low, envs.high, envs.obs_dim, envs.act_dim
        try:
            parts = assemble_run(config, train, env, envs, model)
        except BaseException:
            envs.close()
            raise
        self.agent, self.normalizer, self.policy = parts.agent, parts.normalizer, parts.policy
        self.collector = parts.collector
        # Where the run is (checkpointed with the model, the buffer and the collector's state).
        self.counters = RunCounters(next_eval=train.eval_every, next_ckpt=train.checkpoint_every)
        self._last_ckpt_step: Optional[int] = None
        self.learner = Learner(self.agent, parts.buffer, self.normalizer, config, train, self.counters)
        self.report = RunReport(config, train, self.counters, self.out_dir, self.env_name, tensorboard)

    buffer = property(lambda self: self.learner.buffer, doc="the replay buffer (the learner's)")

    # Where the run is, read-only (``counters`` is the one place it lives and is checkpointed).
    step = property(lambda self: self.counters.step, doc="environment steps stored so far")
    n_grad = property(lambda self: self.counters.n_grad, doc="gradient updates made so far")
    episodes = property(lambda self: self.counters.episodes, doc="training episodes ended so far")
    history = property(lambda self: self.counters.history, doc="the metrics rows, one per evaluation")
    best = property(lambda self: self.counters.best, doc="the best evaluation so far")
    reached_target = property(lambda self: self.counters.reached_target, doc="an eval reached target_return")
    next_eval = property(lambda self: self.counters.next_eval, doc="the step count of the next evaluation")

    @property
    def vec(self):
        """The local vector env (None when workers collect)."""
        return getattr(self.collector, "stepper", None) and self.collector.stepper.vec

    @property
    def noise(self):
        return getattr(self.collector, "stepper", None) and self.collector.stepper.noise

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        total_steps: Optional[int] = None,
        stop_at: Optional[int] = None,
        on_eval: Optional[Callable[[dict[str, Any]], None]] = None,
    ) -> dict[str, Any]:
        """Train until ``total_steps`` (default ``train.total_steps``) or an eval mean reaches
        ``target_return``; then a final evaluation, checkpoint, ``summary.json`` and plot.

        ``stop_at`` returns early, once ``step >= stop_at``, with none of the end-of-run work (as an
        interrupted run would); ``Trainer.resume`` or another ``run`` call continues from there.
        ``on_eval`` sees each new metrics row as it is logged (``pydpg.experiments.sweep`` reports them to Tune).
        """
        if on_eval is not None and not callable(on_eval):
            raise TypeError(f"on_eval must be a callable taking a metrics row, got {type(on_eval).__name__}")
        if total_steps is not None:
            self.train_cfg.total_steps = int(total_steps)
            self.train_cfg.validate()
        total = self.train_cfg.total_steps
        logger = self.report.open_logger()
        self.report.on_eval = on_eval
        progress = Progress(total, bar=self.progress_enabled, lines=self.verbose)
        if self.counters.step == 0 and self.verbose:
            for line in self.report.start_lines(self.agent.device, self.agent.config.critic_widths):
                progress.write(line)
        # torch has one thread pool per process: the run's count holds while it trains, and the
        # caller's comes back after (DDPGAgent.load of a 1-thread run leaves a notebook's torch alone).
        caller_threads = torch.get_num_threads()
        if self.train_cfg.threads is not None:
            torch.set_num_threads(self.train_cfg.threads)
        t_start = time.perf_counter()
        t_mark = t_start
        try:
            with sigint_between_steps() as interrupt:
                while self.counters.step < total and not self.counters.reached_target:
                    if stop_at is not None and self.counters.step >= stop_at:
                        self.counters.train_time += time.perf_counter() - t_mark
                        return self.summary()
                    if interrupt.requested:
                        now = time.perf_counter()
                        self.counters.train_time += now - t_mark
                        t_mark = now
                        if self.out_dir is not None:
                            self.save_checkpoint(_elapsed_in_run=now - t_start)
                        raise KeyboardInterrupt
                    t_mark = self._one_step(logger, progress, t_start, t_mark)
            now = time.perf_counter()
            self.counters.train_time += now - t_mark
            final_eval = self.train_cfg.eval_every > 0 and (
                not self.counters.history or self.counters.history[-1]["step"] != self.counters.step
            )
            if final_eval:
                self.report.record(self.evaluate(), now - t_start, self.model_dict, logger, progress)
            self.counters.elapsed += time.perf_counter() - t_start
            t_start = None
            if self.out_dir is not None:
                if final_eval or self._last_ckpt_step != self.counters.step:  # the checkpoint holds the final row too
                    self.save_checkpoint()
                self.report.finish(self.summary())
            summary = self.summary()
            if self.verbose:
                progress.write(summary_line(summary))
            return summary
        finally:
            if torch.get_num_threads() != caller_threads:
                torch.set_num_threads(caller_threads)
            self.report.on_eval = None
            if t_start is not None:
                self.counters.elapsed += time.perf_counter() - t_start
            progress.close()
            if logger is not None:
                logger.close()

    def _one_step(self, logger, progress: "Progress", t_start: float, t_mark: float) -> float:
        """Collect one chunk, make the updates it made due, and evaluate/checkpoint when due.
        Returns the time training (not evaluation or checkpointing) resumed at."""
        self.learner.insert(self.collector.collect(warmup=self.counters.step < self.config.learning_starts))
        if self.learner.update():
            self.collector.weights_changed(self.counters.n_grad)
        if self.train_cfg.eval_every and self.counters.step >= self.counters.next_eval:
            while self.counters.next_eval <= self.counters.step:
                self.counters.next_eval += self.train_cfg.eval_every
            t_mark = self._off_the_clock(
                t_mark,
                lambda now: self.report.record(self.evaluate(), now - t_start, self.model_dict, logger, progress),
            )
        if (
            self.train_cfg.checkpoint_every
            and self.counters.step >= self.counters.next_ckpt
            and self.out_dir is not None
        ):
            while self.counters.next_ckpt <= self.counters.step:
                self.counters.next_ckpt += self.train_cfg.checkpoint_every
            t_mark = self._off_the_clock(t_mark, lambda now: self.save_checkpoint(_elapsed_in_run=now - t_start))
        if progress.bar is not None:
            span = self.counters.train_time + (time.perf_counter() - t_mark)
            progress.update(
                self.counters.step,
                self.counters.step / span if span > 0 else 0.0,
                None if not self.counters.history else self.counters.history[-1]["eval_mean"],
            )
        return t_mark

    def _off_the_clock(self, t_mark: float, work: Callable[[float], Any]) -> float:
        """``work(now)`` outside the training time (evaluation, checkpoints); returns the new mark."""
        now = time.perf_counter()
        self.counters.train_time += now - t_mark
        work(now)
        return time.perf_counter()

    # ------------------------------------------------------------------ evaluation and logging
    def evaluate(self, episodes: Optional[int] = None, seed: Optional[int] = None) -> EvalResult:
        """Noiseless episodes on the eval env, first reset with ``seed`` (default seed + 100)."""
        if seed is None:
            seed = self.train_cfg.seed + self.train_cfg.eval_seed_offset
        episodes = episodes or self.train_cfg.eval_episodes
        if self.train_cfg.workers:
            return self.collector.evaluate(episodes, seed, self.counters.n_grad)  # on its own worker
        if self.eval_env is None:
            self.eval_env = make_env(
                self.train_cfg.env_id or self.vec.envs[0],
                self.train_cfg.env_kwargs,
                wrapper=contract_wrapper(self.train_cfg.action, self.train_cfg.observation),
            )
        return evaluate(self.policy, self.eval_env, episodes, seed)

    def summary(self) -> dict[str, Any]:
        """The run so far: steps, evaluations, timing, configs (summary.json at the end)."""
        return self.report.summary(self.collector.kind, self.collector.stats())

    # ------------------------------------------------------------------ model / checkpoint
    def model_dict(self) -> dict[str, Any]:
        """The agent as a model dict (``pydpg.files.checkpoint`` describes the keys)."""
        return model_dict(
            self.config,
            self.train_cfg.to_dict(),
            self.obs_dim,
            self.act_dim,
            self.low,
            self.high,
            self.agent,
            self.normalizer,
        )

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the model file (weights, optimizers, normalizer, config; no replay buffer)."""
        ckpt_io.write_model(path, self.model_dict())

    def save_checkpoint(self, _elapsed_in_run: float = 0.0) -> Path:
        """Checkpoint everything needed to resume exactly into ``out_dir/checkpoints``."""
        if self.out_dir is None:
            raise ValueError("this run has no output directory to checkpoint into")
        state = run_state(self.counters, self.agent.device, self.collector.state_dict(), _elapsed_in_run)
        meta = {"env_id": self.env_name, "seed": self.train_cfg.seed, "time": time.time()}
        path = ckpt_io.save_checkpoint(
            self.out_dir / "checkpoints",
            self.counters.step,
            self.model_dict(),
            state,
            self.buffer,
            meta,
            keep=self.train_cfg.keep_checkpoints,
        )
        self._last_ckpt_step = self.counters.step
        return path

    @classmethod
    def resume(
        cls,
        path: Union[str, os.PathLike],
        env: Optional[EnvLike] = None,
        out_dir: Union[str, os.PathLike, None] = None,
        total_steps: Optional[int] = None,
        device: Optional[str] = None,
        threads: Optional[int] = None,
        **kwargs: Any,
    ) -> "Trainer":
        """A Trainer continuing the checkpoint at ``path`` (run dir, checkpoints dir or checkpoint dir).

        The run directory defaults to the one the checkpoint is in. ``env`` is needed only if the
        run was started from an env instance rather than an id. ``total_steps`` may extend the run;
        ``threads`` replaces the run's stored thread count (and is stored for the next resume).
        """
        ckpt, config, train, out_dir = open_for_resume(path, device, total_steps, threads, out_dir)
        t = cls(config, train, env, out_dir, model=ckpt.model, **kwargs)
        t.learner.buffer = load_matching_buffer(ckpt.buffer_path, like=t.buffer)
        # Only now (everything read): a checkpoint a killed save had moved aside goes back home.
        ckpt_io.clean_partial(ckpt.path.parent)
        t._load_state(ckpt.trainer)
        return t

    def _load_state(self, s: dict[str, Any]) -> None:
        restore_run_state(s, self.counters, self.agent.device)
        self._last_ckpt_step = self.counters.step
        self.report.adopt_best_model()
        self.collector.load_state_dict(
            s, buffer=self.buffer, normalizer=self.normalizer, seed=self.train_cfg.seed, step=self.counters.step
        )

    def close(self) -> None:
        self.collector.close()
        if self.eval_env is not None:
            self.eval_env.close()
