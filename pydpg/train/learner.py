"""The learner's side of the loop: what happens to each chunk of transitions the collector brings.

``insert`` stores it (n-step per stream), folds its observations into the normalizer's statistics,
and lets TD7's policy checkpoints assess the training episodes it ended; ``update`` then makes the
gradient updates the step count has made due (``gradient_steps`` per ``train_freq`` steps after
``learning_starts``), with PER's or LAP's priorities, and their statistics for the next metrics row.
"""

from __future__ import annotations

import math
from typing import Optional

from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.normalizer import RunningNormalizer
from pydpg.core.replay import MIN_PRIORITY, ReplayBuffer
from pydpg.train.collect import Chunk
from pydpg.train.config import TrainConfig
from pydpg.train.run_state import RunCounters


class Learner:
    """The agent, its replay buffer and normalizer, fed chunk by chunk (``counters`` is the run's)."""

    def __init__(
        self,
        agent: DDPGAgent,
        buffer: ReplayBuffer,
        normalizer: Optional[RunningNormalizer],
        config: DDPGConfig,
        train: TrainConfig,
        counters: RunCounters,
    ):
        self.agent, self.buffer, self.normalizer = agent, buffer, normalizer
        self.config, self.train, self.counters = config, train, counters
        self.burst = False  # policy checkpoints: an assessment ended, the owed updates are due

    def insert(self, chunk: Chunk) -> None:
        """Store a chunk's transitions (n-step per stream) and fold its observations in."""
        if chunk.steps:
            self.buffer.extend(
                chunk.obs,
                chunk.action,
                chunk.reward,
                chunk.next_obs,
                chunk.terminated,
                chunk.truncated,
                env_ids=chunk.streams,
            )
        self.counters.interval["returns"].extend(chunk.returns)
        checkpoints = self.agent.checkpoints
        if checkpoints is not None and self.counters.step + chunk.steps >= self.config.learning_starts:
            for ret in chunk.returns:  # TD7: assess the current policy on each training episode
                train, save = checkpoints.episode_ended(ret)
                if save:  # policy checkpoints run one local env: a chunk is one step, so this is the episode's end
                    self.agent.save_policy_checkpoint(self.counters.step + chunk.steps)
                self.burst = self.burst or train
        self.counters.episodes += len(chunk.returns)
        if self.normalizer is not None and len(chunk.seen_obs):
            self.normalizer.update(chunk.seen_obs)
        self.counters.step += chunk.steps

    def update(self) -> bool:
        """The updates due at this step count: ``gradient_steps`` per ``train_freq`` steps after
        ``learning_starts``. Collection waits for them (the learner consumes chunks only between
        updates), so the replay ratio is the configured one however fast the collectors are, as
        Reverb's SampleToInsertRatio holds it. With TD7's policy checkpoints they wait for the end
        of an assessment (``insert`` marks it), then all run. True when any update ran."""
        cfg = self.config
        due = max(0, self.counters.step - cfg.learning_starts) // cfg.train_freq * cfg.gradient_steps
        checkpoints = self.agent.checkpoints
        if checkpoints is not None:  # TD7: the updates owed wait for the end of an assessment
            burst, self.burst = self.burst, False
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
                frac = min(1.0, self.counters.step / self.train.total_steps)
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
                self.buffer.update_priorities(batch.indices, info["td_errors"] + MIN_PRIORITY)
            self.counters.n_grad += 1
            acc["n"] += 1
            acc["critic_loss"] += info["critic_loss"]
            acc["q_mean"] += info["q_mean"]
            if not math.isnan(info["actor_loss"]):
                acc["n_actor"] += 1
                acc["actor_loss"] += info["actor_loss"]
        return True
