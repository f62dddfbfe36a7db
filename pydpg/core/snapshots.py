"""TD7's policy checkpoints (Fujimoto et al. 2023; sfujim/TD7 ``maybe_train_and_checkpoint``),
called snapshots here (``PolicySnapshots``) so as not to be confused with a run's checkpoints
(``pydpg.files.checkpoint``); the config key keeps TD7's name, ``policy_checkpoints``.

An off-policy agent's latest policy is not its best: one update can make it worse for a while.
TD7 therefore deploys (and evaluates) a *checkpoint*: the last policy whose worst return over an
assessment of a few whole training episodes beat the checkpoint's. To assess a policy it must stay
fixed for those episodes, so training waits until the assessment ends and then catches up with all
the updates it owes (the same number as without checkpoints, made in a burst):

* each episode's return lowers the assessment's minimum;
* if the minimum falls below the checkpoint's, the assessment stops early: train;
* once the policy has been assessed for ``episodes_per_assessment`` episodes without doing so, it
  becomes the checkpoint (its minimum the one to beat): train.

Until 750k updates an assessment is one episode; after, 20, and the bar is lowered to 0.9 of the
checkpoint's minimum (TD7's values below). Exploration always uses the current policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

EPISODES_LATE = 20  # TD7 max_eps_when_checkpointing
LATE_AFTER_UPDATES = 750_000  # TD7 steps_before_checkpointing
RESET_WEIGHT = 0.9  # TD7 reset_weight


@dataclass
class PolicySnapshots:
    """The assessment's bookkeeping. ``episode_ended`` says what to do after each training
    episode; ``updates_made`` moves to the late regime. Plain numbers only: it is checkpointed as
    a dict (``state_dict``)."""

    episodes_per_assessment: int = 1
    best_min_return: float = -math.inf  # the checkpoint's minimum (TD7 starts at -1e8)
    min_return: float = math.inf  # this assessment's minimum so far
    episodes: int = 0  # in this assessment
    started: bool = False  # an episode has ended since learning started
    # The env step at which the checkpoint was taken (0: the initial actor; None: unknown, a run
    # checkpointed before this was recorded). An export reports it, since the deployed policy can
    # be many steps older than the run.
    saved_at_step: Optional[int] = 0

    def episode_ended(self, episode_return: float) -> tuple[bool, bool]:
        """(train now, checkpoint the current policy first), for an episode that ended after
        learning started. The first such episode is not assessed: it began with random warm-up
        actions (TD7 allows training only from the episode after)."""
        if not self.started:
            self.started = True
            return False, False
        self.episodes += 1
        self.min_return = min(self.min_return, float(episode_return))
        if self.min_return < self.best_min_return:
            self._new_assessment()
            return True, False
        if self.episodes >= self.episodes_per_assessment:
            self.best_min_return = self.min_return
            self._new_assessment()
            return True, True
        return False, False

    def updates_made(self, before: int, after: int) -> None:
        """TD7 switches regimes just before its update number ``LATE_AFTER_UPDATES`` + 1; it only
        matters at the next episode end, so doing it once per burst is the same."""
        if before <= LATE_AFTER_UPDATES < after:
            # TD7 multiplies whatever the sign: a negative minimum moves up. Kept as published.
            self.best_min_return *= RESET_WEIGHT
            self.episodes_per_assessment = EPISODES_LATE

    def _new_assessment(self) -> None:
        self.episodes, self.min_return = 0, math.inf

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        fields = set(asdict(self))
        if set(state) not in (fields, fields - {"saved_at_step"}):  # without it: saved before it was kept
            raise ValueError(f"policy checkpoint state: expected keys {sorted(fields)}, got {sorted(state)}")
        saved_at = state.get("saved_at_step")
        if saved_at is not None and (isinstance(saved_at, bool) or not isinstance(saved_at, int) or saved_at < 0):
            raise ValueError(
                f"policy checkpoint state: saved_at_step must be an env step >= 0 or None, got {saved_at!r}"
            )
        self.saved_at_step = saved_at
        self.episodes_per_assessment, self.episodes = int(state["episodes_per_assessment"]), int(state["episodes"])
        self.started = bool(state["started"])
        self.best_min_return, self.min_return = float(state["best_min_return"]), float(state["min_return"])
