"""The one place that decides which contract wrappers an env gets, and in which order.

Innermost the action contract (the policy's outputs are its inputs: ``ActionContract``), then the
domain randomization (its action noise and delay act on the policy's outputs, its observation noise
on the env's observation), outermost the observation history (it remembers the observations the
randomization made, noise included, as a robot's past readings keep theirs). Training envs get all
three; evaluation, export's checks, replay and `pydpg eval` get the first and the last: they measure
the nominal robot.
"""

from __future__ import annotations

from typing import Callable, Optional

import gymnasium as gym

from pydpg.contract.action import ActionContract, as_action_spec
from pydpg.contract.history import ObservationHistory, has_history
from pydpg.contract.randomization import DomainRandomization, as_randomization_spec


def contract_wrapper(
    action: Optional[dict] = None, observation: Optional[dict] = None, randomization: Optional[dict] = None
) -> Optional[Callable[[gym.Env], gym.Env]]:
    """What an env of a run gets for its specs (``TrainConfig.action``, ``.observation``,
    ``.randomization``), or None when it needs no wrapper. Each spec is checked here, so its errors
    come before any env is made. An observation spec without history needs no wrapper: the env's
    own observation is the policy's (a run verifies so at its start)."""
    action = None if action is None else as_action_spec(action)
    randomization = None if randomization is None else as_randomization_spec(randomization)
    history = observation if observation is not None and has_history(observation) else None
    if action is None and randomization is None and history is None:
        return None

    def wrap(env: gym.Env) -> gym.Env:
        if action is not None:
            env = ActionContract(env, action)
        if randomization is not None:
            env = DomainRandomization(env, randomization)
        if history is not None:
            env = ObservationHistory(env, history)
        return env

    return wrap
