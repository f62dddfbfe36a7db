"""The custom robot's Gymnasium env (``ArmReach-v0``), its observation spec, and an action spec for
commanding it by joint position targets.

The env assembles its observation in numpy, the way a robotics engineer writes one for a robot of
their own. ``OBSERVATION_SPEC`` states the same observation as data, for pydpg: ``pydpg export``
checks it against this env's observations over 200 steps and stores it in the policy file, and the
C++ side (``pydpg run``, or your own loop through ``pydpg::ObservationBuilder``) rebuilds it from
mjData by MuJoCo names, so editing the model cannot silently shift an index.

    import arm_env                     # registers ArmReach-v0
    env = gymnasium.make("ArmReach-v0")
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.spaces import Box

XML = str(Path(__file__).resolve().parent / "arm.xml")

OBSERVATION_SPEC = {
    "version": 1,
    "terms": [
        {"field": "sensordata", "names": ["shoulder_pos", "elbow_pos"], "fn": "cos"},
        {"field": "sensordata", "names": ["shoulder_pos", "elbow_pos"], "fn": "sin"},
        {"field": "sensordata", "names": ["shoulder_vel", "elbow_vel"], "clip": [-20.0, 20.0]},
        {"field": "sensordata", "names": "gyro"},
        {"field": "sensordata", "names": "accel", "scale": 0.1},
        {
            "field": "site_xpos",
            "names": "fingertip",
            "stop": 2,
            "minus": {"field": "site_xpos", "names": "target", "stop": 2},
        },
    ],
}

# The arm commanded by joint position targets, as a position-controlled robot is: each policy output
# in [-1, 1] is a target of default pose + 1.5 rad * a, and a PD law (kp 2, kd 0.1 per unit of ctrl;
# the motors' gear is 0.5 N m) turns it into the motors' ctrl at every 0.01 s physics step while the
# policy acts at 25 Hz. Targets move at most 0.5 per control step; a NaN action holds the last one.
# Train with it (`pydpg train ArmReach-v0 --config` a file with this as its [action] table, or
# TrainConfig.action), and the policy file carries it to `pydpg run` and to robot_loop.cpp.
ACTION_SPEC_PD = {
    "version": 1,
    "actuators": [
        {"actuator": "shoulder", "scale": 1.5, "pd": {"kp": 2.0, "kd": 0.1, "torque_limit": 1.0}},
        {"actuator": "elbow", "scale": 1.4, "pd": {"kp": 2.0, "kd": 0.1, "torque_limit": 1.0}},
    ],
    "max_delta": 0.5,
    "safe_action": "hold",
}

# What the real arm may get wrong, for training under domain randomization (a config file's
# [randomization] table, or TrainConfig.randomization): link masses and joint damping +-20 % per
# episode, the action applied 0 or 1 control steps late, and sensor noise. The policy file records it.
RANDOMIZATION_SPEC = {
    "version": 1,
    "model": [
        {"field": "body_mass", "names": ["upper", "fore"], "scale": [0.8, 1.2]},
        {"field": "dof_damping", "names": ["shoulder", "elbow"], "scale": [0.8, 1.2]},
    ],
    "action": {"delay": [0, 1]},
    "observation": {"noise": 0.005},
}


class ArmReachEnv(MujocoEnv):
    """Reach the target with the fingertip: reward = -distance - 0.01 |action|^2, 200 steps of 0.04 s."""

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 25}

    def __init__(self, frame_skip: int = 4, **kwargs):
        super().__init__(XML, frame_skip, observation_space=Box(-np.inf, np.inf, (14,), np.float64), **kwargs)

    def _tip_to_target(self) -> np.ndarray:
        return (self.data.site("fingertip").xpos - self.data.site("target").xpos)[:2]

    def _get_obs(self) -> np.ndarray:
        s = self.data.sensor
        angles = np.array([s("shoulder_pos").data[0], s("elbow_pos").data[0]])
        speeds = np.clip([s("shoulder_vel").data[0], s("elbow_vel").data[0]], -20.0, 20.0)
        return np.concatenate(
            [np.cos(angles), np.sin(angles), speeds, s("gyro").data, 0.1 * s("accel").data, self._tip_to_target()]
        )

    def step(self, action):
        self.do_simulation(action, self.frame_skip)
        obs = self._get_obs()
        reward = -float(np.linalg.norm(self._tip_to_target())) - 0.01 * float(np.square(action).sum())
        return obs, reward, False, False, {}

    def reset_model(self) -> np.ndarray:
        qpos = self.init_qpos + self.np_random.uniform(-0.1, 0.1, self.model.nq)
        radius, angle = self.np_random.uniform(0.1, 0.35), self.np_random.uniform(-np.pi, np.pi)
        qpos[2:] = radius * np.cos(angle), radius * np.sin(angle)
        qvel = self.init_qvel + self.np_random.uniform(-0.005, 0.005, self.model.nv)
        qvel[2:] = 0.0
        self.set_state(qpos, qvel)
        return self._get_obs()


if "ArmReach-v0" not in gym.registry:
    gym.register(id="ArmReach-v0", entry_point=ArmReachEnv, max_episode_steps=200)
