"""The C++ control loop (`pydpg run`) and C++ users of the installed package.

The return-parity tests are the proof that the loop does what the training env did: the same
policy, started from the same initial states, must earn the same return in the C++ loop (MuJoCo C
API, no Python) as in the Python evaluation (pydpg.common.envs.evaluate). The loop has no reward code: its
return is the env's reward for the loop's actions, from its trace replayed through the env, which
also measures its observations against the env's and checks it ended each episode where the env
did.

Tolerances: the replay is the same physics as the loop's (the loop links the mujoco wheel's own
libmujoco and steps it with the same float32 ctrl from the same bit-exact states), so the loop's
observations differ from the env's only by the C++ builder's one float32 rounding and sin/cos from
two libraries: ``float_bounds.OBS_PARITY`` (2^-24 + 2^-48), derived, on every CPU. Returns are
compared exactly where both sides compute the same thing (InvertedPendulum's reward is 1 per step;
the HalfCheetah test runs the same runtime on the same float32 observations in both)."""

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
from policy_helpers import cmake_build, have_cmake, pendulum_actor

from pydpg.cli.run import run_main
from pydpg.common.envs import MUJOCO_TASKS, evaluate, initial_states
from pydpg.core.agent import DDPGAgent
from pydpg.core.normalizer import RunningNormalizer
from pydpg.deploy.export import export_policy
from pydpg.deploy.loop import ControlLoopError, cmake_dir, control_loop_path, run_policy
from pydpg.deploy.runtime import Policy
from pydpg.files.model import make_policy

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TRAINED_PENDULUM = ROOT / "tests" / "data" / "inverted_pendulum_30k.pt"


def start_states(env_id: str, seed: int, episodes: int) -> np.ndarray:
    env = gym.make(env_id)
    try:
        return initial_states(env, episodes, seed)
    finally:
        env.close()


def test_inverted_pendulum_return_matches_python(tmp_path):
    env = gym.make("InvertedPendulum-v5")
    actor = pendulum_actor()
    agent = DDPGAgent(actor, [torch.nn.Linear(5, 1)])
    path = tmp_path / "pendulum.pt"
    export_policy(agent, path, env=env, verbose=False)
    python = evaluate(make_policy(agent, None), env, 3, seed=11)
    assert (python.lengths == 1000).all()  # the controller balances: a non-trivial 1000-step run
    cpp = run_policy(
        path, initial_states=start_states("InvertedPendulum-v5", 11, 3), replay=env, realtime=False, quiet=True
    )
    assert cpp["lengths"] == python.lengths.tolist()
    # InvertedPendulum-v5 pays 1 per step that does not terminate: equal lengths, equal float sums of
    # 1.0, exactly, though the loop's mlp backend and torch's actor round differently.
    np.testing.assert_array_equal(cpp["returns"], python.returns)
    assert cpp["max_obs_diff"] <= OBS_PARITY and all(r["termination_agrees"] for r in cpp["replay"])
    assert cpp["backend"] == "mlp" and cpp["latency_us"]["count"] == 3000
    env.close()


def test_half_cheetah_return_matches_python(tmp_path):
    """A policy with observation normalization on a chaotic task: 1000 steps per episode.

    The claim under test is that the loop *is* the env (observation, ctrl, physics, reward). Python
    therefore evaluates the very function the loop runs, the C++ runtime through pydpg.Policy: on a
    chaotic task a last-bit difference in an action grows into a different trajectory, and torch's
    actor and the runtime agree to rounding, not bit for bit on every CPU (test_runtime.py checks
    that agreement within pydpg.deploy.rounding's bound). Here both sides are the same computation: the
    same runtime library and file, batch 1 and one thread in both, its own 64-byte aligned buffers,
    on float32 observations that are the same bits (the builder's float32 of the same float64 mjData
    values, as astype(float32) here), the same physics and the same reward code: the returns are
    equal exactly, and the observations differ by the builder's float32 rounding alone."""
    env = gym.make("HalfCheetah-v5")
    torch.manual_seed(3)
    agent = DDPGAgent.from_dims(17, 6)
    norm = RunningNormalizer(17)
    norm.update(np.random.default_rng(0).standard_normal((1000, 17)) * 0.3)
    path = tmp_path / "cheetah.pt"
    export_policy(agent, path, env=env, normalizer=norm, verbose=False)
    policy = Policy(path)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()  # env units = [-1, 1]
    python = evaluate(lambda obs: policy.act(obs.astype(np.float32)), env, 2, seed=5)
    cpp = run_policy(
        path, initial_states=start_states("HalfCheetah-v5", 5, 2), replay="HalfCheetah-v5", realtime=False, quiet=True
    )
    assert cpp["lengths"] == [1000, 1000] and cpp["max_obs_diff"] <= OBS_PARITY
    np.testing.assert_array_equal(cpp["returns"], python.returns)
    assert abs(python.returns[0] - python.returns[1]) > 1e-2  # the two episodes differ: a real check
    env.close()


def test_trained_policy_loop_return_matches_python():
    """The 30k-step trained InvertedPendulum policy (tests/data, see test_runtime.py): `pydpg run`
    loads it with default options and earns what the TorchScript module earns in Gymnasium."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(TRAINED_PENDULUM))
    env = gym.make("InvertedPendulum-v5")
    high = float(env.action_space.high[0])

    def act(obs):  # the module returns env units; evaluate() wants [-1, 1]
        with torch.no_grad():
            return module(torch.as_tensor(obs, dtype=torch.float32)[None])[0].double().numpy() / high

    python = evaluate(act, env, 3, seed=21)
    cpp = run_policy(
        TRAINED_PENDULUM,
        initial_states=start_states("InvertedPendulum-v5", 21, 3),
        replay=env,
        realtime=False,
        quiet=True,
    )
    assert python.lengths.tolist() == [1000] * 3 and cpp["lengths"] == [1000] * 3
    np.testing.assert_array_equal(cpp["returns"], python.returns)  # 1 per step, 1000 steps: exact sums
    assert cpp["backend"] == "mlp"
    env.close()


def test_loop_starts_from_qpos0_without_initial_states(tmp_path):
    """No reset code in the loop: without --init-states an episode starts from the model's qpos0 and
    zero velocity (the trace logs it)."""
    from pydpg.deploy.loop import read_trace

    env = gym.make("Hopper-v5")
    export_policy(DDPGAgent.from_dims(11, 3), tmp_path / "p.pt", env=env, verbose=False)
    run_policy(tmp_path / "p.pt", episodes=2, realtime=False, max_steps=3, quiet=True, trace=tmp_path / "t.csv")
    for ep in read_trace(tmp_path / "t.csv"):
        np.testing.assert_array_equal(ep["qpos"], env.unwrapped.model.qpos0)
        np.testing.assert_array_equal(ep["qvel"], 0.0)
    env.close()


def constant_actor(obs_dim: int, value: float) -> torch.nn.Module:
    """An actor that always outputs `value` in [-1, 1] (a controller that drives the robot over)."""
    layer = torch.nn.Linear(obs_dim, 1)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(float(np.arctanh(value)))
    return torch.nn.Sequential(layer, torch.nn.Tanh())


def test_termination_is_data_and_ends_episodes_where_the_env_does(tmp_path):
    """The pendulum pushed one way falls: the loop ends the episode when the preset's termination
    condition |qpos[1]| <= 0.2 fails, at the step the env terminates, and says which condition."""
    env = gym.make("InvertedPendulum-v5")
    export_policy(DDPGAgent(constant_actor(4, 0.1), [torch.nn.Linear(5, 1)]), tmp_path / "p.pt", env=env, verbose=False)
    cpp = run_policy(
        tmp_path / "p.pt",
        initial_states=start_states("InvertedPendulum-v5", 3, 3),
        replay=env,
        realtime=False,
        quiet=True,
    )
    assert all(3 < n < 200 for n in cpp["lengths"]) and cpp["terminated"] == [True] * 3
    assert cpp["terminated_by"] == ["qpos[1:2] >= -0.2, <= 0.2"] * 3
    assert [r["terminated_at"] for r in cpp["replay"]] == cpp["lengths"]
    assert all(r["termination_agrees"] for r in cpp["replay"])
    env.close()


@pytest.fixture(scope="module")
def pendulum_policy(tmp_path_factory):
    env = gym.make("InvertedPendulum-v5")
    path = tmp_path_factory.mktemp("pend") / "p.pt"
    export_policy(DDPGAgent(pendulum_actor(), [torch.nn.Linear(5, 1)]), path, env=env, verbose=False)
    env.close()
    return path


def test_realtime_run_reports_latency_and_deadlines(pendulum_policy):
    out = run_policy(pendulum_policy, hz=200.0, max_steps=40, realtime=True)
    assert out["realtime"] and out["steps"] == 40 and out["substeps"] == 1  # 200 Hz on a 0.02 s step... 1 substep
    assert 0 <= out["deadline_misses"] <= 40
    assert out["wall_s"] >= 39 / 200
    for key in ("p50", "p90", "p99", "p999", "max"):
        assert out["latency_us"][key] > 0
    text = out["stdout"]
    assert "deadline misses" in text and "p99.9" in text and "policy act()" in text


def test_cli_run(pendulum_policy, capfd):
    assert run_main([str(pendulum_policy), "--no-sleep", "--max-steps", "50", "--episodes", "2"]) == 0
    out = capfd.readouterr().out
    assert "episode 1: 50 steps" in out and "replayed through InvertedPendulum-v5" in out
    assert "episode 1: loop 50.000 over 50 steps; Python 50.000 over 50 steps" in out
    assert "mean return: loop 50.000, Python 50.000" in out
    # Without the env: from qpos0, no returns.
    assert run_main([str(pendulum_policy), "--no-sleep", "--max-steps", "5", "--no-replay"]) == 0
    out = capfd.readouterr().out
    assert "episode 0: 5 steps" in out and "return" not in out
    assert run_main([str(pendulum_policy), "--no-sleep", "--env", "NoSuchEnv-v0"]) == 2
    assert "cannot make the env 'NoSuchEnv-v0'" in capfd.readouterr().err


def test_cli_run_bad_input(tmp_path, pendulum_policy, capfd):
    assert run_main([str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capfd.readouterr().err
    assert run_main([str(pendulum_policy), "--episodes", "0"]) == 2
    assert run_main([str(pendulum_policy), "--hz", "-5"]) == 2
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04junk")
    assert run_main([str(tmp_path / "junk.pt"), "--no-sleep"]) == 1
    assert "truncated or corrupt" in capfd.readouterr().err
    # A model whose actuator count differs from the policy's.
    cheetah_xml = gym.make("HalfCheetah-v5").unwrapped.fullpath
    assert run_main([str(pendulum_policy), "--model", cheetah_xml, "--no-sleep"]) == 1
    assert "has 6 actuators, the policy has act_dim 1" in capfd.readouterr().err
    (tmp_path / "bad.xml").write_text("<mujoco><worldbody><geom")
    assert run_main([str(pendulum_policy), "--model", str(tmp_path / "bad.xml"), "--no-sleep"]) == 1
    assert "MuJoCo cannot load" in capfd.readouterr().err
    rc = subprocess.run([control_loop_path(), str(pendulum_policy), "--bogus"], capture_output=True, text=True)
    assert rc.returncode == 2 and "unknown option --bogus" in rc.stderr


def test_policy_without_task_description(tmp_path):
    export_policy(DDPGAgent.from_dims(4, 1), tmp_path / "p.pt", action_low=[-3], action_high=[3], verbose=False)
    with pytest.raises(ControlLoopError, match="no MuJoCo model"):
        run_policy(tmp_path / "p.pt", realtime=False)
    xml = gym.make("InvertedPendulum-v5").unwrapped.fullpath
    with pytest.raises(ControlLoopError, match="no task description"):
        run_policy(tmp_path / "p.pt", model=xml, realtime=False)


# ---------------------------------------------------------------------------------------- C++ users
def test_cmake_dir():
    d = Path(cmake_dir())
    assert (d / "pydpgConfig.cmake").is_file() and (d / "pydpgTargets.cmake").is_file()
    assert (d.parents[2] / "include" / "pydpg" / "policy_runtime.hpp").is_file()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pydpg.cli.cmake_dir import cmake_dir_main; sys.exit(cmake_dir_main())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(d)


@pytest.mark.skipif(not have_cmake(), reason="needs cmake and a C++ compiler")
def test_example_builds_against_installed_package_and_runs(tmp_path, pendulum_policy):
    cmake_build(ROOT / "examples" / "cpp_control_loop", tmp_path / "build")
    exe = tmp_path / "build" / "policy_loop"
    out = subprocess.run(
        [str(exe), str(pendulum_policy), "--hz", "1000", "--robots", "4", "--seconds", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "200 periods at 1000 Hz, 4 robots" in out.stdout and "act() latency us" in out.stdout
    bad = subprocess.run([str(exe), str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "cannot open policy file" in bad.stderr


ALL_TASKS = MUJOCO_TASKS  # every Gymnasium MuJoCo v5 task


@pytest.mark.parametrize("env_id", ALL_TASKS)
def test_loop_runs_every_task_and_replays_in_python(tmp_path, env_id):
    """`pydpg run` drives every Gymnasium MuJoCo v5 task from its exported observation spec; its trace,
    replayed through the Gymnasium env from the logged initial states with the logged actions, shows
    the loop's observations equal the env's to the builder's float32 rounding (OBS_PARITY) over >= 200
    steps, and that the loop ended each episode at the step the env terminated (or neither did)."""
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(0)
    path = tmp_path / "p.pt"
    export_policy(DDPGAgent.from_dims(obs_dim, act_dim), path, env=env, verbose=False)
    # Random policies end some tasks within ~6 steps: enough episodes for >= 200 steps in all.
    cpp = run_policy(
        path, initial_states=start_states(env_id, 7, 60), replay=env, realtime=False, quiet=True, max_steps=40
    )
    replay = cpp["replay"]
    assert [r["steps"] for r in replay] == cpp["lengths"] and sum(cpp["lengths"]) >= 200
    assert cpp["max_obs_diff"] <= OBS_PARITY, (env_id, replay)
    assert all(r["termination_agrees"] for r in replay), (env_id, replay, cpp["terminated_by"])
    env.close()


def with_metadata(path: Path, meta: dict, out: Path) -> None:
    """A copy of the policy file `path` carrying `meta` (as an older pydpg wrote it) instead."""
    import io
    import warnings
    import zipfile

    with zipfile.ZipFile(path) as z:
        xml = next(z.read(n) for n in z.namelist() if n.endswith("extra/model.xml")).decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files={"pydpg_policy.json": json.dumps(meta), "model.xml": xml})
    out.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    "env_id, health",
    [
        (
            "Hopper-v5",
            {
                "finite_obs": False,
                "terminate_when_unhealthy": True,
                "conditions": [
                    {"field": "state", "start": 2, "stop": 12, "min": -100.0, "max": 100.0, "strict": True},
                    {"field": "qpos", "start": 1, "stop": 2, "min": 0.7, "max": None, "strict": True},
                    {"field": "qpos", "start": 2, "stop": 3, "min": -0.2, "max": 0.2, "strict": True},
                ],
            },
        ),
        (
            "InvertedPendulum-v5",
            {
                "finite_obs": True,
                "terminate_when_unhealthy": True,
                "conditions": [{"field": "qpos", "start": 1, "stop": 2, "min": -0.2, "max": 0.2, "strict": False}],
            },
        ),
    ],
)
def test_health_of_older_files_ends_episodes_where_the_env_does(tmp_path, env_id, health):
    """pydpg 0.2 files state termination as task.health (fields qpos/qvel/state, a finite-observation
    flag), with reward and reset-noise blocks the loop no longer reads: the loop rewrites the
    conditions to termination terms and ends episodes at the env's step."""
    from pydpg.deploy.policy_file import read_metadata

    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(1)
    export_policy(DDPGAgent.from_dims(obs_dim, act_dim), tmp_path / "new.pt", env=env, verbose=False)
    meta = read_metadata(tmp_path / "new.pt")
    meta["observation"].pop("termination")
    meta["task"].update(health=health, reward={"healthy_reward": 1.0}, reset_noise={"qpos": {"scale": 0.01}})
    with_metadata(tmp_path / "new.pt", meta, tmp_path / "old.pt")
    cpp = run_policy(
        tmp_path / "old.pt",
        initial_states=start_states(env_id, 5, 8),
        replay=env,
        realtime=False,
        quiet=True,
        max_steps=60,
    )
    assert any(cpp["terminated"]), cpp["lengths"]
    assert all(r["termination_agrees"] for r in cpp["replay"]), (cpp["replay"], cpp["terminated_by"])
    env.close()


def test_policy_files_of_pydpg_0_1_keep_running(tmp_path):
    """0.1 files carry the observation as task.observation slices (start/stop, clip, transform; empty
    slices allowed). The loop rewrites them to a spec and its observations equal the env's; a slice
    of 'state', which the spec states otherwise, is refused with a clear error."""
    from pydpg.deploy.loop import ControlLoopError, replay_trace
    from pydpg.deploy.policy_file import read_metadata

    env = gym.make("InvertedDoublePendulum-v5")
    path = tmp_path / "p.pt"
    torch.manual_seed(2)
    export_policy(DDPGAgent.from_dims(9, 1), path, env=env, verbose=False)
    meta = read_metadata(path)
    meta.pop("observation")
    meta["task"]["observation"] = [
        {"field": "qpos", "start": 0, "stop": 1},
        {"field": "qvel", "start": 2, "stop": 2},
        {"field": "qpos", "start": 1, "stop": 3, "transform": "sin"},
        {"field": "qpos", "start": 1, "stop": 3, "transform": "cos"},
        {"field": "qvel", "clip": [-10.0, 10.0]},
        {"field": "qfrc_constraint", "start": 0, "stop": 1, "clip": [-10.0, 10.0], "transform": "none"},
    ]
    old = tmp_path / "old.pt"
    with_metadata(path, meta, old)
    run_policy(
        old,
        initial_states=start_states("InvertedDoublePendulum-v5", 4, 10),
        realtime=False,
        quiet=True,
        max_steps=30,
        trace=tmp_path / "t.csv",
    )
    replay = replay_trace(tmp_path / "t.csv", env)
    assert sum(r["steps"] for r in replay) == 300 and max(r["max_obs_diff"] for r in replay) <= OBS_PARITY
    meta["task"]["observation"][0]["field"] = "state"
    with_metadata(path, meta, tmp_path / "state.pt")
    with pytest.raises(ControlLoopError, match="reads 'state'"):
        run_policy(tmp_path / "state.pt", realtime=False, quiet=True, max_steps=3)
    env.close()


def test_bad_traces_and_envs_are_refused(tmp_path, pendulum_policy):
    from pydpg.deploy.loop import read_trace, replay_trace

    trace = tmp_path / "t.csv"
    run_policy(pendulum_policy, realtime=False, quiet=True, max_steps=5, trace=trace)
    good = trace.read_text()
    lines = good.splitlines()
    assert lines[-1] == "end,0,5,-1"
    first_step = next(line for line in lines if line.startswith("step,"))
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "missing.csv")
    for name, text, match in [
        ("nohead.csv", "\n".join(good.splitlines()[1:]), "no header line"),
        ("head.csv", good.replace("nq 2", "nq two"), "malformed trace header"),
        ("short.csv", good.replace("init,0,", "init,0,1,", 1), "init line holds"),
        ("garbage.csv", good + "step,0,9,x,y\n", "not numbers"),
        ("cut.csv", "\n".join(lines[:-2] + [lines[-2].rsplit(",", 2)[0]]) + "\n", "step line holds"),
        ("end.csv", good + "end,0,5\n", "end line must hold two whole numbers"),
        ("kind.csv", good + "bogus,1\n", "unknown trace line kind"),
        ("version.csv", good.replace("trace 2:", "trace 3:"), "trace version 3"),
        # What a hostile or broken file did before: accepted, guessed, or an unnamed error.
        ("empty.csv", "", "no header line"),
        ("header.csv", lines[0] + "\n", "holds no episode"),
        ("noend.csv", "\n".join(lines[:-1]) + "\n", "has no end line"),
        ("negative.csv", good.replace("act_dim 1", "act_dim -1"), "act_dim -1 is not a size"),
        (
            "nan.csv",
            good.replace(first_step, ",".join(first_step.split(",")[:3] + ["nan"] + first_step.split(",")[4:])),
            "action holds a NaN",
        ),
        ("inf_end.csv", "\n".join(lines[:-1] + ["end,0,5,inf"]) + "\n", "end line must hold two whole numbers"),
        ("huge_end.csv", "\n".join(lines[:-1] + ["end,0,1e300,-1"]) + "\n", "end line must hold two whole numbers"),
        ("wrong_steps.csv", "\n".join(lines[:-1] + ["end,0,4,-1"]) + "\n", "says 4 steps, the episode logged 5"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            read_trace(tmp_path / name)
    # Traces of pydpg 0.2 (version 1) had a reward column and no end lines: still read.
    v1 = [lines[0].replace("trace 2:", "trace 1:")] + [
        ",".join(line.split(",")[:3] + ["nan"] + line.split(",")[3:]) if line.startswith("step") else line
        for line in lines[1:-1]
    ]
    (tmp_path / "v1.csv").write_text("\n".join(v1) + "\n")
    old, new = read_trace(tmp_path / "v1.csv"), read_trace(trace)
    np.testing.assert_array_equal(old[0]["action"], new[0]["action"])
    np.testing.assert_array_equal(old[0]["obs"], new[0]["obs"])
    assert old[0]["failed"] is None and new[0]["failed"] == -1
    with pytest.raises(ValueError, match="another robot"):
        replay_trace(trace, gym.make("Hopper-v5"))
    # A header that claims a 1-wide observation: compared exactly, never broadcast against the env's.
    one = tmp_path / "one.csv"
    one.write_text(
        "\n".join(
            [lines[0].replace("obs_dim 4", "obs_dim 1")]
            + [
                ",".join(line.split(",")[:4] + line.split(",")[4:5]) if line.startswith("step") else line
                for line in lines[1:]
            ]
        )
        + "\n"
    )
    with pytest.raises(ValueError, match="logs observations of 1 and actions of 1 values; this env observes 4"):
        replay_trace(one, gym.make("InvertedPendulum-v5"))
    with pytest.raises(TypeError, match="not a Gymnasium MuJoCo env"):
        replay_trace(trace, gym.make("CartPole-v1"))
    with pytest.raises(TypeError, match="not a MuJoCo env"):
        initial_states(gym.make("CartPole-v1"), 1)
