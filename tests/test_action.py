"""The action contract (pydpg.contract.action, csrc/deploy/action.cpp): the map's arithmetic, its
refusals, training through it (and resuming exactly), export's check of the loop's side, and the C++
loop running it, allocation-free."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from float_bounds import OBS_PARITY
from policy_helpers import assert_same_run, exported_after, run_alloc_check, small_hopper_run

from pydpg import _core
from pydpg.contract.action import (
    ActionContract,
    ActionError,
    ActionMap,
    ActionMismatch,
    as_action_spec,
    find_contract,
    verify_action,
)
from pydpg.core.config import DDPGConfig
from pydpg.deploy.export import export_policy
from pydpg.deploy.loop import _env_for, run_policy
from pydpg.deploy.policy_file import read_metadata
from pydpg.train.config import TrainConfig, resolve
from pydpg.train.trainer import Trainer

HOPPER_JOINTS = ("thigh_joint", "leg_joint", "foot_joint")


def hopper_pd(max_delta=0.5, safe="hold", torque_limit=1.0):
    """Position targets around Hopper's default pose, a PD law driving its motors (gear 200, ctrl
    limited to [-1, 1])."""
    return {
        "version": 1,
        "actuators": [
            {"joint": j, "scale": 0.4, "pd": {"kp": 30.0, "kd": 1.0, "torque_limit": torque_limit}}
            for j in HOPPER_JOINTS
        ],
        "max_delta": max_delta,
        "safe_action": safe,
    }


def direct(**top):
    return {"version": 1, "actuators": [{"joint": j} for j in HOPPER_JOINTS], **top}


@pytest.fixture(scope="module")
def hopper():
    env = gym.make("Hopper-v5")
    yield env.unwrapped.model
    env.close()


# ---------------------------------------------------------------------------------------- arithmetic
def test_the_default_entries_are_gymnasiums_own_mapping():
    """Entries without scale/offset map [-1, 1] onto ctrlrange: the wrapped env steps exactly as the
    plain one (the same ctrl, the same physics, the same rewards)."""
    plain, wrapped = gym.make("Hopper-v5"), ActionContract(gym.make("Hopper-v5"), direct())
    o1, _ = plain.reset(seed=3)
    o2, _ = wrapped.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = rng.uniform(-1, 1, 3)
        o1, r1, t1, _, _ = plain.step(a)
        o2, r2, t2, _, _ = wrapped.step(a)
        assert np.array_equal(o1, o2) and r1 == r2 and t1 == t2
        if t1:
            o1, _ = plain.reset(seed=4)
            o2, _ = wrapped.reset(seed=4)
    assert wrapped.action_space == gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def test_affine_map_clip_rate_limit_and_counters(hopper):
    spec = {
        "version": 1,
        "actuators": [{"joint": "thigh_joint", "scale": 0.5, "offset": 0.25}, {"joint": "foot_joint"}],
        "max_delta": 0.3,
    }
    m = ActionMap(spec, hopper)
    data = mujoco.MjData(hopper)
    assert m.size == 2 and list(m.actuators) == [0, 2]
    m.command([0.2, 0.1])
    m.apply(data)
    # command = offset + scale * a; the second entry is ctrlrange's ([-1, 1]: offset 0, scale 1)
    assert list(data.ctrl) == [0.25 + 0.5 * 0.2, 0.0, 0.1]
    m.command([5.0, -0.1])  # clipped to 1, then moved at most 0.3 from 0.2
    assert list(m.last_action) == [0.2 + 0.3, -0.1]
    c = m.counters
    assert (c["commands"], c["action_clips"], c["rate_limits"], c["safe_actions"]) == (2, 1, 1, 0)
    m.reset()  # an episode starts from a = 0
    m.command([0.3, 0.0])
    assert list(m.last_action) == [0.3, 0.0]


def test_ctrl_is_clipped_to_ctrlrange_where_the_model_limits_it(hopper):
    m = ActionMap({"version": 1, "actuators": [{"joint": "leg_joint", "scale": 3.0, "offset": 0.0}]}, hopper)
    data = mujoco.MjData(hopper)
    m.command([0.9])
    m.apply(data)
    assert data.ctrl[1] == 1.0 and m.counters["ctrl_clips"] == 1


@pytest.mark.parametrize(
    "safe, expected",
    [("default", [0.0, 0.0, 0.0]), ("hold", [0.5, -0.5, 0.25]), ("zero", None)],
)
def test_a_non_finite_action_sends_the_safe_action(hopper, safe, expected):
    m = ActionMap(direct(safe_action=safe), hopper)
    data = mujoco.MjData(hopper)
    assert m.command([0.5, -0.5, 0.25]) is True
    for bad in ([np.nan, 0.0, 0.0], [0.0, np.inf, 0.0], [0.0, 0.0, -np.inf]):
        assert m.command(bad) is False
        m.apply(data)
        if expected is None:  # "zero": ctrl 0, whatever the map's offsets
            assert list(data.ctrl) == [0.0, 0.0, 0.0]
        else:
            assert list(m.last_action) == expected and list(data.ctrl) == expected
    m.command_safe()  # what a stale input or a stop sends
    assert m.counters["safe_actions"] == 4 and m.counters["commands"] == 5


def test_the_pd_law_runs_at_every_apply(hopper):
    """ctrl = clip(kp (target - q) - kd qdot, +-torque_limit) with target = qpos0 + scale a; each
    operation is one correctly rounded IEEE double operation in C++ (built without FMA contraction)
    and in numpy, so the two agree exactly."""
    spec = hopper_pd(max_delta=None, torque_limit=0.6)
    del spec["max_delta"]
    m = ActionMap(spec, hopper)
    data = mujoco.MjData(hopper)
    rng = np.random.default_rng(1)
    data.qpos[:] = hopper.qpos0 + rng.normal(0, 0.2, hopper.nq)
    data.qvel[:] = rng.normal(0, 1.0, hopper.nv)
    a = np.array([0.3, -0.7, 1.0])
    m.command(a)
    for _ in range(4):
        m.apply(data)
        ids = [hopper.joint(j).id for j in HOPPER_JOINTS]
        q = np.array([data.qpos[hopper.jnt_qposadr[i]] for i in ids])
        v = np.array([data.qvel[hopper.jnt_dofadr[i]] for i in ids])
        target = np.array([hopper.qpos0[hopper.jnt_qposadr[i]] for i in ids]) + 0.4 * a
        want = np.clip(30.0 * (target - q) - 1.0 * v, -0.6, 0.6)
        assert np.array_equal(data.ctrl, want)
        mujoco.mj_step(hopper, data)
    assert list(m.commands) == list(target)


# ---------------------------------------------------------------------------------------- refusals
BAD_SPECS = {
    "no version": ({"actuators": [{"joint": "thigh_joint"}]}, "no 'version'"),
    "newer version": ({"version": 2, "actuators": [{"joint": "thigh_joint"}]}, "version 2.*upgrade pydpg"),
    "unknown top key": (direct(gain=1), "unknown key 'gain'"),
    "unknown entry key": ({"version": 1, "actuators": [{"joint": "thigh_joint", "kp": 1}]}, "unknown key 'kp'"),
    "empty": ({"version": 1, "actuators": []}, "non-empty list"),
    "too many": ({"version": 1, "actuators": [{"joint": "thigh_joint"}] * 4}, "4 entries, but the model has 3"),
    "unknown joint": ({"version": 1, "actuators": [{"joint": "thig_joint"}]}, "closest first: thigh_joint"),
    "unknown actuator": ({"version": 1, "actuators": [{"actuator": "hip"}]}, "no actuator named 'hip'"),
    "both names": ({"version": 1, "actuators": [{"joint": "thigh_joint", "actuator": "x"}]}, "one of the two"),
    "undriven joint": ({"version": 1, "actuators": [{"joint": "rootz"}]}, "no actuator drives joint 'rootz'"),
    "twice": ({"version": 1, "actuators": [{"joint": "leg_joint"}, {"joint": "leg_joint"}]}, "listed twice"),
    "NaN scale": ({"version": 1, "actuators": [{"joint": "leg_joint", "scale": math.nan}]}, "NaN"),
    "inf offset": ({"version": 1, "actuators": [{"joint": "leg_joint", "offset": -math.inf}]}, "finite"),
    "zero scale": ({"version": 1, "actuators": [{"joint": "leg_joint", "scale": 0}]}, "scale must not be 0"),
    "NUL name": ({"version": 1, "actuators": [{"joint": "leg_joint\u0000x"}]}, "NUL character"),
    "name not a string": ({"version": 1, "actuators": [{"joint": ["leg_joint"]}]}, "joint must be a string"),
    "scale not a number": ({"version": 1, "actuators": [{"joint": "leg_joint", "scale": True}]}, "must be a number"),
    "PD without scale": ({"version": 1, "actuators": [{"joint": "leg_joint", "pd": {"kp": 1}}]}, "needs 'scale'"),
    "PD kp 0": ({"version": 1, "actuators": [{"joint": "leg_joint", "scale": 1, "pd": {"kp": 0}}]}, "kp must be"),
    "PD kd < 0": (
        {"version": 1, "actuators": [{"joint": "leg_joint", "scale": 1, "pd": {"kp": 1, "kd": -1}}]},
        "kd must be >= 0",
    ),
    "PD inf kp": (
        {"version": 1, "actuators": [{"joint": "leg_joint", "scale": 1, "pd": {"kp": math.inf}}]},
        "finite",
    ),
    "PD torque 0": (
        {"version": 1, "actuators": [{"joint": "leg_joint", "scale": 1, "pd": {"kp": 1, "torque_limit": 0}}]},
        "torque_limit must be > 0",
    ),
    "PD unknown key": (
        {"version": 1, "actuators": [{"joint": "leg_joint", "scale": 1, "pd": {"kp": 1, "ki": 1}}]},
        "unknown key 'ki'",
    ),
    "PD free joint": (
        {"version": 1, "actuators": [{"joint": "leg_joint", "scale": 1, "pd": {"joint": "nope", "kp": 1}}]},
        "no joint named 'nope'",
    ),
    "max_delta 0": (direct(max_delta=0), "max_delta must be > 0"),
    "max_delta NaN": (direct(max_delta=math.nan), "NaN"),
    "safe unknown": (direct(safe_action="stop"), "known are default, hold, zero"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_are_refused_by_name_in_python_and_cpp(hopper, case):
    spec, message = BAD_SPECS[case]
    with pytest.raises(ValueError, match=message):
        ActionMap(spec, hopper)
    # The C++ reader alone, given the JSON Python's json module writes (NaN and Infinity as words).
    with pytest.raises(ValueError, match=message.replace("finite", "finite|infinity")):
        _core.ActionMap(json.dumps(spec), hopper._address)


def test_an_actuator_without_ctrlrange_needs_scale_and_offset():
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body><joint name="j" type="hinge"/><geom size="0.1"/></body></worldbody>'
        '<actuator><motor name="m" joint="j"/></actuator></mujoco>'
    )
    with pytest.raises(ActionError, match="no ctrlrange"):
        ActionMap({"version": 1, "actuators": [{"actuator": "m"}]}, model)
    assert ActionMap({"version": 1, "actuators": [{"actuator": "m", "scale": 2, "offset": 0}]}, model).size == 1


def test_wrong_action_shapes_and_envs_are_refused(hopper):
    m = ActionMap(direct(), hopper)
    for bad in ([0.0, 0.0], np.zeros((1, 3)), []):
        with pytest.raises(ValueError, match="shape"):
            m.command(bad)
    with pytest.raises(ValueError, match="not JSON"):
        as_action_spec("{version: 1")
    with pytest.raises(TypeError, match="dict"):
        as_action_spec([1, 2])
    with pytest.raises(ValueError, match="needs a Gymnasium MuJoCo env"):
        ActionContract(gym.make("Pendulum-v1"), direct())
    with pytest.raises(TypeError, match="MjData"):
        m.apply(object())
    data = mujoco.MjData(hopper)
    for bad in (0, -1, 10**7):
        with pytest.raises(ValueError, match="physics_steps must be in"):
            m.step(data, bad)


# ---------------------------------------------------------------------------------------- training
def pd_configs(out, **train):
    return small_hopper_run(out, action=hopper_pd(), **train)


def test_training_runs_through_the_contract_and_resumes_exactly(tmp_path):
    """Every env of the run is wrapped, and the map's memory (max_delta and "hold" act on the last
    action) is checkpointed with the env's state: a resumed run is the uninterrupted one."""
    ref = pd_configs(tmp_path / "ref")
    assert find_contract(ref.vec.envs[0]) is not None and find_contract(ref.eval_env) is not None
    ref.run()
    cut = pd_configs(tmp_path / "cut")
    cut.run(stop_at=600)
    resumed = Trainer.resume(tmp_path / "cut", tensorboard=False)
    assert resumed.step == 400 and resumed.train_cfg.action == as_action_spec(hopper_pd())
    resumed.run()
    assert_same_run(ref, resumed)


def test_a_config_files_action_table_reaches_the_run(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        "[action]\nversion = 1\nmax_delta = 0.2\n"
        '[[action.actuators]]\njoint = "thigh_joint"\n[[action.actuators]]\njoint = "leg_joint"\n'
        '[[action.actuators]]\njoint = "foot_joint"\nscale = 0.5\noffset = 0.0\n'
    )
    _, train = resolve(env_id="Hopper-v5", config_file=path)
    assert train.action["max_delta"] == 0.2 and len(train.action["actuators"]) == 3
    path.write_text('[action]\nversion = 1\n[[action.actuators]]\njoint = "thig_joint"\n')
    _, train = resolve(env_id="Hopper-v5", config_file=path)
    with pytest.raises(ActionError, match="closest first: thigh_joint"):  # at the run's start, not at export
        Trainer(DDPGConfig(), train, tensorboard=False)


# ---------------------------------------------------------------------------------------- deployment
@pytest.fixture(scope="module")
def pd_policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("pd_run")
    return exported_after(pd_configs(out), 600, out / "policy.pt")


def test_export_ships_and_verifies_the_contract(pd_policy):
    path, result = pd_policy
    meta = read_metadata(path)
    assert meta["action"] == as_action_spec(hopper_pd())
    assert meta["action_low"] == [-1.0, -1.0, -1.0] and meta["action_high"] == [1.0, 1.0, 1.0]
    seen = meta["action_verification"]
    assert seen["steps"] == 200 and seen["counters"]["safe_actions"] == 1 and seen["counters"]["action_clips"] > 0


def test_the_loop_runs_the_contract_as_training_did(pd_policy):
    """The C++ loop drives ctrl with the same map at every physics step: replaying the loop's actions
    through the env's contract from the same states, the env observes what the loop's policy saw, to
    one float32 rounding (OBS_PARITY, as tests/test_control_loop.py argues). A map that differed
    anywhere (a target, a gain, a clip, the rate limit's memory) would move the states apart."""
    from pydpg.common.envs import initial_states

    path, _ = pd_policy
    env = _env_for("Hopper-v5", read_metadata(path)["action"])
    states = initial_states(env, 2, 100)
    result = run_policy(path, initial_states=states, replay=env, episodes=2, realtime=False)
    env.close()
    assert result["max_obs_diff"] <= OBS_PARITY
    assert all(r["termination_agrees"] for r in result["replay"])
    assert result["action"]["commands"] == sum(result["lengths"]) and result["action"]["ctrl_clips"] > 0


def test_verification_catches_a_loop_model_that_differs(tmp_path):
    """verify_action against a model whose thigh motor has another gear: the loop would drive the
    robot differently, and export says where."""
    env = ActionContract(gym.make("Hopper-v5"), hopper_pd())
    xml = Path(env.unwrapped.fullpath).read_text()
    assert verify_action(env, xml, steps=50)["steps"] == 50
    with pytest.raises(ActionMismatch, match="step 0: the loop's action map gives"):
        verify_action(env, xml.replace('gear="200.0" joint="thigh_joint"', 'gear="150.0" joint="thigh_joint"'), 50)
    env.close()


def test_command_and_apply_do_not_allocate(alloc_check):
    """Humanoid-v5's 17 motors under PD, from a C++ program linking the installed pydpg::mujoco."""
    env = gym.make("Humanoid-v5")
    m = env.unwrapped.model
    joints = [m.joint(int(m.actuator_trnid[u, 0])).name for u in range(m.nu)]
    spec = {
        "version": 1,
        "actuators": [{"joint": j, "scale": 0.3, "pd": {"kp": 40, "kd": 2, "torque_limit": 0.4}} for j in joints],
        "max_delta": 0.5,
    }
    result = run_alloc_check(alloc_check, "action", env.unwrapped.fullpath, spec, 20000, 5)
    env.close()
    assert result["size"] == 17 and result["allocations"] == 0, result
    assert result["safe_actions"] == 200 and result["action_clips"] > 0 and result["ctrl_clips"] > 0, result


def test_export_refuses_an_action_spec_the_run_was_not_trained_under(tmp_path, pd_policy):
    from pydpg.deploy.export import export_checkpoint

    run = pd_policy[0].parent
    other = hopper_pd(max_delta=0.25)
    with pytest.raises(ValueError, match="not the one the run was trained under"):
        export_checkpoint(run, tmp_path / "p.pt", action_spec=other)
    plain = Trainer(DDPGConfig(learning_starts=10), TrainConfig(env_id="Hopper-v5", total_steps=20), tensorboard=False)
    with pytest.raises(ValueError, match="it had none"):
        export_policy(plain, tmp_path / "q.pt", action_spec=hopper_pd())
    plain.close()
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "q.pt").exists()


def test_pydpg_export_reads_the_action_table_of_a_toml_file(tmp_path, pd_policy):
    from pydpg.cli import main

    path = tmp_path / "run.toml"
    path.write_text("[action]\nversion = 1\n[[action.actuators]]\njoint = 'thigh_joint'\n")
    assert main(["export", str(pd_policy[0].parent), "-o", str(tmp_path / "p.pt"), "--action-spec", str(path)]) == 2
    assert main(["export", str(pd_policy[0].parent), "-o", str(tmp_path / "p.pt")]) == 0
    assert read_metadata(tmp_path / "p.pt")["action"] == as_action_spec(hopper_pd())


def test_the_documented_keys_are_the_readers_keys(hopper):
    """docs/config.md's [action] table (pydpg.contract.action.KEYS) names exactly the keys the C++
    reader knows, at each level (its "unknown key" message lists them)."""
    import re

    from pydpg.contract.action import KEYS

    def known(spec) -> set:
        with pytest.raises(ActionError) as e:
            _core.ActionMap(json.dumps(spec), hopper._address)
        return set(re.search(r"known: ([^)]*)\)", str(e.value)).group(1).split(", "))

    entry = {"joint": "leg_joint", "scale": 1.0}
    levels = {
        "": known(direct(zz=1)),
        "actuators[]": known({"version": 1, "actuators": [{**entry, "zz": 1}]}),
        "actuators[].pd": known({"version": 1, "actuators": [{**entry, "pd": {"kp": 1, "zz": 1}}]}),
    }
    for where, keys in levels.items():
        assert {k for k, w, _, _ in KEYS if w == where} == keys, where


def test_pydpg_eval_and_a_sweeps_check_use_the_runs_contract(tmp_path, capsys):
    """2 outputs on Hopper's 3 motors: only an env wrapped by the run's contract takes them."""
    from pydpg.cli import main
    from pydpg.experiments.sweep import _check_envs
    from pydpg.experiments.sweep_spec import Trial

    spec = {"version": 1, "actuators": [{"joint": "thigh_joint"}, {"joint": "foot_joint"}]}
    cfg = DDPGConfig(hidden=(16, 16), batch_size=16, learning_starts=50)
    t = Trainer(
        cfg, TrainConfig(env_id="Hopper-v5", total_steps=100, eval_every=0, action=spec), out_dir=tmp_path / "run"
    )
    t.run()
    t.close()
    assert main(["eval", str(tmp_path / "run"), "--episodes", "1"]) == 0
    assert "Hopper-v5: return" in capsys.readouterr().out
    bad = {"version": 1, "actuators": [{"joint": "thigh"}]}
    trial = Trial(
        task="Hopper-v5", setting="s", seed=0, impl="pydpg", agent={}, train={"env_kwargs": {}, "action": bad}
    )
    with pytest.raises(ValueError, match="setting 's' on Hopper-v5: .*no joint named 'thigh'"):
        _check_envs([trial])


# ---------------------------------------------------------------------------------------- watchdog
def test_the_watchdog_sends_a_stale_inputs_loop_to_the_safe_action(hopper):
    """<pydpg/watchdog.hpp> through its binding: an input older than its deadline is stale, each
    stale step is counted, and the loop pattern of the header sends the safe action then."""
    w = _core.Watchdog()
    cmd, goal = w.add("command", 50_000_000), w.add("goal", 200_000_000)
    w.reset(0)
    m = ActionMap(direct(safe_action="default"), hopper)
    sent = []
    for t_ms in range(0, 400, 10):  # a 100 Hz loop; the command arrives every 10 ms until 100 ms
        now = t_ms * 1_000_000
        if t_ms < 100:
            w.refresh(cmd, now)
        if t_ms % 150 == 0:
            w.refresh(goal, now)
        if w.stale(now) >= 0:
            m.command_safe()
            sent.append("safe")
        else:
            m.command([0.5, 0.5, 0.5])
            sent.append("act")
    # the command was last refreshed at 90 ms: fresh through 140 ms (50 ms), stale from 150 ms on
    assert sent.index("safe") == 15 and set(sent[15:]) == {"safe"} and set(sent[:15]) == {"act"}
    assert w.stale_steps == 25 and w.inputs[cmd]["stale_steps"] == 25 and w.inputs[goal]["stale_steps"] == 0
    assert m.counters["safe_actions"] == 25 and list(m.last_action) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="must be > 0"):
        w.add("late", 0)
    with pytest.raises(ValueError, match="watched already"):
        w.add("command", 1)
    with pytest.raises(IndexError, match="no input 7"):
        w.refresh(7, 0)
