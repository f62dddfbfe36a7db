"""A tiny env whose episodes end after a few steps, by termination or by time limit, for exact
checks of what the trainer stores.

Observation ``[t, stop_at, episode_tag]``: ``t`` counts steps in the episode, ``stop_at`` is where
this episode terminates (drawn at reset from {2, 3, 4, 9}; 9 never happens before the 5-step time
limit truncates), ``episode_tag`` a random number identifying the episode. The reward is ``t`` after
the step plus the action's first component, so stored rewards show which action was applied.
"""

import gymnasium as gym
import numpy as np

ID = "PydpgToy-v0"
MAX_STEPS = 5


class ToyEnv(gym.Env):
    def __init__(self, act_dim: int = 2, discrete: bool = False, unbounded: bool = False):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        if discrete:
            self.action_space = gym.spaces.Discrete(3)
        elif unbounded:
            self.action_space = gym.spaces.Box(-np.inf, np.inf, (act_dim,), np.float32)
        else:
            self.action_space = gym.spaces.Box(np.float32(-2), np.float32(4), (act_dim,), np.float32)
        self.t, self.stop_at, self.tag = 0, 9, 0.0

    def _obs(self):
        return np.array([self.t, self.stop_at, self.tag], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.stop_at = int(self.np_random.choice([2, 3, 4, 9]))
        self.tag = float(self.np_random.uniform())
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = float(self.t) + float(np.asarray(action).reshape(-1)[0])
        return self._obs(), reward, self.t == self.stop_at, False, {}

    # The trainer's exact-resume protocol for non-MuJoCo envs.
    def state_dict(self):
        return {"t": self.t, "stop_at": self.stop_at, "tag": self.tag}

    def load_state_dict(self, state):
        self.t, self.stop_at, self.tag = int(state["t"]), int(state["stop_at"]), float(state["tag"])


class NoStateToyEnv(ToyEnv):
    """The same env without the state protocol: resume cannot restore it exactly."""

    state_dict = None  # type: ignore[assignment]
    load_state_dict = None  # type: ignore[assignment]

    def __getattribute__(self, name):
        if name in ("state_dict", "load_state_dict"):
            raise AttributeError(name)
        return super().__getattribute__(name)


def register() -> None:
    if ID not in gym.registry:
        gym.register(ID, entry_point=ToyEnv, max_episode_steps=MAX_STEPS)
        gym.register("PydpgToyDiscrete-v0", entry_point=ToyEnv, kwargs={"discrete": True}, max_episode_steps=5)
        gym.register("PydpgToyUnbounded-v0", entry_point=ToyEnv, kwargs={"unbounded": True}, max_episode_steps=5)
        gym.register("PydpgToyNoState-v0", entry_point=NoStateToyEnv, max_episode_steps=MAX_STEPS)


register()
