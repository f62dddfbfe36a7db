"""The custom robot of examples/custom_robot (an MJCF with joint encoders, an IMU and sites; not a
Gymnasium task), end to end without training: its observation spec reproduces its env, export
refuses a wrong spec, `pydpg run` drives it and its trace replays through the env with the same
observations, and the C++ example builds against the installed package and runs the policy.

Observation differences are held to ``float_bounds.OBS_PARITY`` (2^-24 + 2^-48): both sides read the
same mjData (the replay re-runs the same physics from bit-exact states with the same float32 ctrl),
the spec's operations are the env's own float64 ones (cos, sin, clip, x 0.1, a difference), and the
C++ builder rounds once to float32; sin/cos come from two libraries, each within 4 ulps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from float_bounds import OBS_PARITY
from policy_helpers import cmake_build, have_cmake

from pydpg.common.envs import initial_states
from pydpg.contract.observation import ObservationMismatch, verify
from pydpg.core.agent import DDPGAgent
from pydpg.deploy.export import export_policy
from pydpg.deploy.loop import replay_trace, run_policy
from pydpg.deploy.policy_file import read_metadata

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_robot"
sys.path.insert(0, str(EXAMPLE))
import arm_env  # noqa: E402  (registers ArmReach-v0)


@pytest.fixture(scope="module")
def arm_policy(tmp_path_factory):
    env = gym.make("ArmReach-v0")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arm") / "arm.pt"
    export_policy(DDPGAgent.from_dims(14, 2), path, env=env, observation_spec=arm_env.OBSERVATION_SPEC, verbose=False)
    env.close()
    return path


def test_spec_reproduces_the_env_and_travels_in_the_policy(arm_policy):
    env = gym.make("ArmReach-v0")
    assert verify(arm_env.OBSERVATION_SPEC, env, steps=300, seed=1) <= OBS_PARITY
    meta = read_metadata(arm_policy)
    assert meta["observation"] == arm_env.OBSERVATION_SPEC
    assert meta["task"] == {"frame_skip": 4, "timestep": 0.01, "control_hz": 25.0, "max_episode_steps": 200}
    wrong = {
        **arm_env.OBSERVATION_SPEC,
        "terms": [
            *arm_env.OBSERVATION_SPEC["terms"][:4],
            {"field": "sensordata", "names": "accel"},  # unscaled
            arm_env.OBSERVATION_SPEC["terms"][5],
        ],
    }
    with pytest.raises(ObservationMismatch, match=r"term 'sensordata\(accel\)'"):
        export_policy(
            DDPGAgent.from_dims(14, 2), arm_policy.parent / "wrong.pt", env=env, observation_spec=wrong, verbose=False
        )
    env.close()


def test_loop_trace_replays_through_the_env(arm_policy, tmp_path):
    env = gym.make("ArmReach-v0")
    states = initial_states(env, 2, seed=5)
    out = run_policy(arm_policy, initial_states=states, realtime=False, quiet=True, trace=tmp_path / "t.csv")
    assert out["lengths"] == [200, 200] and "returns" not in out  # no reward code in C++
    replay = replay_trace(tmp_path / "t.csv", env)
    assert all(r["steps"] == 200 and r["max_obs_diff"] <= OBS_PARITY for r in replay), replay
    assert all(r["termination_agrees"] for r in replay)
    env.close()


@pytest.mark.skipif(not have_cmake(), reason="needs cmake and a C++ compiler")
def test_cpp_example_builds_observations_from_mjdata(arm_policy, tmp_path):
    cmake_build(EXAMPLE, tmp_path / "build")
    run = subprocess.run(
        [str(tmp_path / "build" / "robot_loop"), str(arm_policy), str(EXAMPLE / "arm.xml"), "50"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(run.stdout)
    assert result["steps"] == 50 and result["obs_dim"] == 14 and 0 <= result["final_distance"] < 1
    bad = subprocess.run(
        [
            str(tmp_path / "build" / "robot_loop"),
            str(arm_policy),
            str(Path(gym.make("Reacher-v5").unwrapped.fullpath)),
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "no sensor named 'shoulder_pos'" in bad.stderr


class ArmWithPrevAction(arm_env.ArmReachEnv):
    """The arm whose observation also carries the previous action, as many robot policies do."""

    def __init__(self, **kwargs):
        self._prev = np.zeros(2)
        super().__init__(**kwargs)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (16,), np.float64)

    def _get_obs(self):
        return np.concatenate([super()._get_obs(), self._prev])

    def step(self, action):
        self._prev = np.asarray(action, dtype=np.float64).copy()
        return super().step(action)

    def reset_model(self):
        self._prev = np.zeros(2)
        return super().reset_model()


def test_prev_action_input_through_export_loop_and_replay(tmp_path):
    if "ArmReachPrevAction-v0" not in gym.registry:
        gym.register(id="ArmReachPrevAction-v0", entry_point=ArmWithPrevAction, max_episode_steps=50)
    env = gym.make("ArmReachPrevAction-v0")
    spec = {
        **arm_env.OBSERVATION_SPEC,
        "terms": [*arm_env.OBSERVATION_SPEC["terms"], {"input": "prev_action", "size": 2}],
    }
    torch.manual_seed(1)
    export_policy(DDPGAgent.from_dims(16, 2), tmp_path / "p.pt", env=env, observation_spec=spec, verbose=False)
    out = run_policy(
        tmp_path / "p.pt",
        initial_states=initial_states(env, 2, seed=3),
        realtime=False,
        quiet=True,
        trace=tmp_path / "t.csv",
    )
    replay = replay_trace(tmp_path / "t.csv", env)
    assert out["lengths"] == [50, 50] and all(r["max_obs_diff"] <= OBS_PARITY for r in replay), replay
    env.close()


def test_train_and_deploy_script_runs_end_to_end(tmp_path, capsys):
    """The README's steps 1-3 for the custom robot, briefly: train, export with the spec checked, run the
    C++ loop and replay it; the loop's actions earn the Python evaluation's returns."""
    import importlib

    script = importlib.import_module("train_and_deploy")
    assert script.main(["--steps", "1200", "--out", str(tmp_path / "arm"), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    python = out.split("return, Python evaluation : ")[1].split("\n")[0]
    cpp = out.split("return, C++ loop (replay) : ")[1].split("\n")[0]
    assert python == cpp, out
    diff = float(out.split("largest observation difference, loop vs env: ")[1].split("\n")[0])
    # The script prints it with 2 significant digits (.2g), which may round it up by up to half a unit
    # of the second digit: at most 5 %.
    assert diff <= OBS_PARITY * 1.05


@pytest.fixture(scope="module")
def arm_pd_policy(tmp_path_factory):
    """An (untrained) arm policy under the example's PD position-target contract."""
    from pydpg.contract.action import ActionContract

    env = ActionContract(gym.make("ArmReach-v0"), arm_env.ACTION_SPEC_PD)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("arm_pd") / "arm_pd.pt"
    export_policy(
        DDPGAgent.from_dims(14, 2),
        path,
        env=env,
        observation_spec=arm_env.OBSERVATION_SPEC,
        action_spec=arm_env.ACTION_SPEC_PD,
        verbose=False,
    )
    env.close()
    return path


def test_pd_contract_loop_and_replay_agree(arm_pd_policy, tmp_path):
    """`pydpg run`'s loop drives the arm through the PD law at 100 Hz under a 25 Hz policy; the env
    replays its trace through the same contract and observes what the loop's policy saw (to
    OBS_PARITY), step for step: the env's map and the loop's drove the same motors alike."""
    from pydpg.contract.action import ActionContract

    assert read_metadata(arm_pd_policy)["action"]["actuators"][0]["pd"]["kp"] == 2.0
    env = ActionContract(gym.make("ArmReach-v0"), arm_env.ACTION_SPEC_PD)
    states = initial_states(env, 2, seed=5)
    out = run_policy(arm_pd_policy, initial_states=states, replay=env, realtime=False, quiet=True)
    env.close()
    assert out["lengths"] == [200, 200] and out["action"]["commands"] == 400
    assert out["max_obs_diff"] <= OBS_PARITY and all(r["steps"] == 200 for r in out["replay"])


@pytest.mark.skipif(not have_cmake(), reason="needs cmake and a C++ compiler")
def test_cpp_example_runs_the_pd_contract(arm_pd_policy, tmp_path):
    cmake_build(EXAMPLE, tmp_path / "build")
    run = subprocess.run(
        [str(tmp_path / "build" / "robot_loop"), str(arm_pd_policy), str(EXAMPLE / "arm.xml"), "50"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(run.stdout)
    assert result["steps"] == 50 and result["safe_actions"] == 0 and 0 <= result["final_distance"] < 1


def test_the_readmes_action_table_is_the_examples_spec(tmp_path):
    """examples/custom_robot/README.md's [action] TOML is arm_env.ACTION_SPEC_PD, read as a run config."""
    from pydpg.train.config import resolve

    text = (EXAMPLE / "README.md").read_text()
    block = text.split("```toml\n[action]", 1)[1].split("```", 1)[0]
    (tmp_path / "arm_pd.toml").write_text("[action]" + block)
    _, train = resolve(env_id="ArmReach-v0", config_file=tmp_path / "arm_pd.toml")
    assert train.action == arm_env.ACTION_SPEC_PD


def test_train_and_deploy_script_randomized(tmp_path, capsys):
    """The README's randomized journey, briefly: trained under arm_env.RANDOMIZATION_SPEC, the loop
    under the same randomization earns the Python evaluation's returns, and the robustness report
    follows."""
    import importlib

    script = importlib.import_module("train_and_deploy")
    args = ["--steps", "1200", "--out", str(tmp_path / "arm"), "--episodes", "2", "--randomize"]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    python = out.split("return, Python evaluation : ")[1].split("\n")[0]
    cpp = out.split("return, C++ loop (replay) : ")[1].split("\n")[0]
    assert python == cpp, out
    assert "keeps >= 80 % of its nominal return under delay" in out and "body_mass" in out
    assert read_metadata(tmp_path / "arm" / "policy.pt")["randomization"]["action"]["delay"] == [0, 1]
