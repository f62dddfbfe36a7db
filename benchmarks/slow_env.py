"""A simulator costlier than the learner, for benchmarks/bench_distributed.py: InvertedPendulum-v5
whose every step also sleeps ``step_cost_s`` (2 ms by default), as a contact-rich or rendered robot
would take. Ray workers make it by id, ``benchmarks.slow_env:SlowPendulum-v0`` (gymnasium imports
the module named before the colon, which registers the id)."""

from __future__ import annotations

import time

import gymnasium as gym


class SlowStep(gym.Wrapper):
    def __init__(self, env: gym.Env, step_cost_s: float = 0.002):
        super().__init__(env)
        self.step_cost_s = step_cost_s

    def step(self, action):
        time.sleep(self.step_cost_s)
        return self.env.step(action)


def make_slow_pendulum(step_cost_s: float = 0.002, **kwargs) -> gym.Env:
    return SlowStep(gym.make("InvertedPendulum-v5", **kwargs).unwrapped, step_cost_s)


if "SlowPendulum-v0" not in gym.registry:
    gym.register("SlowPendulum-v0", entry_point=make_slow_pendulum, max_episode_steps=1000)
