"""The observation spec and its one evaluator (csrc/deploy/observation.cpp, through the binding).

Parity: for each of the 11 Gymnasium MuJoCo v5 tasks, the spec shipped with its preset rebuilds the
env's observation from mjData to float32 rounding over 250 steps of random actions, across episode
ends: the builder applies the env's own float64 operations to the same mjData and rounds once to
float32, so the difference relative to max(1, |obs|) is at most 2^-24, plus 2^-48 for sin/cos taken
from two libraries (``float_bounds.OBS_PARITY``), derived, on every CPU. Bad specs and bad calls
raise ValueError/TypeError naming what is wrong."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from float_bounds import OBS_PARITY, obs_rounding

from pydpg.common.envs import MUJOCO_TASKS
from pydpg.contract.observation import (
    ObservationBuilder,
    ObservationError,
    ObservationMismatch,
    Termination,
    as_spec,
    task_spec,
    verify,
)

TASKS = MUJOCO_TASKS  # every Gymnasium MuJoCo v5 task


@pytest.mark.parametrize("env_id", TASKS)
def test_shipped_spec_reproduces_the_env(env_id):
    env = gym.make(env_id)
    spec = task_spec(env_id)
    assert spec is not None and spec["version"] == 1
    assert verify(spec, env, steps=250, seed=3) <= OBS_PARITY
    env.close()


def test_a_wrong_spec_is_refused_naming_the_term():
    env = gym.make("Hopper-v5")
    spec = task_spec("Hopper-v5")
    shifted = {**spec, "terms": [{"field": "qpos", "start": 0, "stop": 5}, spec["terms"][1]]}
    with pytest.raises(ObservationMismatch, match=r"observation index 0 \(term 'qpos\[0:5\]', entry 0\)"):
        verify(shifted, env, steps=20)
    with pytest.raises(ObservationMismatch, match=r"builds 12 values, the env observes 11"):
        verify({**spec, "terms": [{"field": "qpos"}, spec["terms"][1]]}, env, steps=5)
    env.close()
    # sin and cos swapped: the first wrong entry is named by its term.
    env = gym.make("InvertedDoublePendulum-v5")
    t = task_spec("InvertedDoublePendulum-v5")["terms"]
    with pytest.raises(ObservationMismatch, match=r"observation index 1 \(term 'cos\(qpos\[1:3\]\)', entry 0\)"):
        verify([t[0], t[2], t[1], *t[3:]], env, steps=5)
    env.close()


@pytest.fixture(scope="module")
def reacher():
    env = gym.make("Reacher-v5")
    env.reset(seed=0)
    yield env.unwrapped
    env.close()


def test_names_operations_and_inputs(reacher):
    m, d = reacher.model, reacher.data
    b = ObservationBuilder(
        [
            {"field": "qpos", "names": ["joint1", "joint0"]},
            {"field": "xpos", "names": "fingertip", "minus": {"field": "xpos", "names": "target"}},
            {"field": "qvel", "names": "joint0", "scale": 2.0, "offset": 1.0, "clip": [-3.0, 3.0]},
            {"field": "qpos", "names": "joint0", "fn": "cos"},
            {"input": "goal", "size": 2},
            {"field": "ctrl"},
        ],
        m,
    )
    assert b.size == 2 + 3 + 1 + 1 + 2 + 2 and b.input_names == ["goal"]
    with pytest.raises(ValueError, match="input 'goal' was not set before build"):
        b.build(d)
    b.set_input("goal", [0.5, -0.25])
    j0, j1 = m.joint("joint0"), m.joint("joint1")
    want = np.concatenate(
        [
            [d.qpos[j1.qposadr[0]], d.qpos[j0.qposadr[0]]],
            d.body("fingertip").xpos - d.body("target").xpos,
            [np.clip(2 * d.qvel[j0.dofadr[0]] + 1, -3, 3)],
            [np.cos(d.qpos[j0.qposadr[0]])],
            [0.5, -0.25],
            d.ctrl,
        ]
    )
    # The builder does these float64 operations as numpy does (2 v is exact, so 2 v + 1 rounds once
    # with or without FMA), then rounds to float32; cos is libm's, numpy's its own.
    got = b.build(d)
    assert np.all(np.abs(got - want) <= obs_rounding(want)), got - want
    assert [t[0] for t in b.terms][:2] == ["qpos(joint1,joint0)", "xpos(fingertip) - xpos(target)"]
    assert b.term_at(4) == ("xpos(fingertip) - xpos(target)", 2) and b.term_at(5) == ("clip(qvel(joint0))", 0)
    with pytest.raises(IndexError):
        b.term_at(b.size)


def test_sensors_by_name():
    xml = """<mujoco><worldbody><body name="b"><joint name="h" type="hinge"/><geom size=".1" mass="1"/>
             <site name="imu"/></body></worldbody>
             <sensor><gyro name="gyro" site="imu"/><jointpos name="hpos" joint="h"/></sensor></mujoco>"""
    m = mujoco.MjModel.from_xml_string(xml)
    d = mujoco.MjData(m)
    d.qpos[0], d.qvel[0] = 0.3, -1.5
    mujoco.mj_forward(m, d)
    b = ObservationBuilder(
        [{"field": "sensordata", "names": ["hpos", "gyro"]}, {"field": "site_xpos", "names": "imu"}], m
    )
    # Values copied from mjData, rounded once to float32: the same bits as numpy's float32 of them.
    np.testing.assert_array_equal(
        b.build(d),
        np.concatenate([[d.sensor("hpos").data[0]], d.sensor("gyro").data, d.site("imu").xpos]).astype(np.float32),
    )


@pytest.mark.parametrize(
    "spec, match",
    [
        ([{"field": "qpos", "names": "elbow"}], "no joint named 'elbow'"),
        ([{"field": "xpos", "names": "hand"}], "no body named 'hand'"),
        ([{"field": "sensordata", "names": "gyro"}], "no sensor named 'gyro'"),
        ([{"field": "qpos", "start": 2, "stop": 9}], r"slice \[2:9\] of qpos is out of range: it has 4 entries"),
        ([{"field": "qpos", "start": 3, "stop": 3}], "out of range"),
        ([{"field": "qpos", "start": -1}], "out of range"),
        ([{"field": "qpose"}], "unknown field 'qpose'"),
        ([{"field": "qpos", "fn": "tan"}], "unknown fn 'tan'"),
        ([{"field": "qpos", "clamp": [0, 1]}], "unknown key 'clamp'"),
        ([{"field": "qpos", "clip": [1, -1]}], "clip must be"),
        ([{"field": "qpos", "minus": {"field": "qvel", "stop": 1}}], "minus"),
        ([{"input": "goal", "size": 0}], "size"),
        ([{"input": "goal", "size": 2}, {"input": "goal", "size": 2}], "declared twice"),
        ([], "non-empty"),
        ({"version": 2, "terms": [{"field": "qpos"}]}, "version 2; this pydpg reads version 1 .upgrade pydpg."),
        ({"version": 1, "terms": [{"field": "qpos"}], "extra": 1}, "unknown key 'extra'"),
    ],
)
def test_bad_specs(reacher, spec, match):
    with pytest.raises(ObservationError, match=match):
        ObservationBuilder(spec, reacher.model)
    assert issubclass(ObservationError, ValueError)


def test_bad_calls(reacher):
    b = ObservationBuilder([{"field": "qpos"}, {"input": "goal", "size": 2}], reacher.model)
    with pytest.raises(ValueError, match="no input named 'gaol'"):
        b.set_input("gaol", [0, 0])
    with pytest.raises(ValueError, match="has 2 entries, got 3"):
        b.set_input("goal", [0, 0, 0])
    with pytest.raises(ValueError, match="not finite"):
        b.set_input("goal", [0, np.nan])
    with pytest.raises(TypeError, match="mujoco.MjModel"):
        ObservationBuilder([{"field": "qpos"}], "model")
    with pytest.raises(TypeError, match="mujoco.MjData"):
        b.build(reacher.model)
    with pytest.raises(TypeError, match="JSON-able"):
        as_spec([{"field": object()}])
    with pytest.raises(TypeError):
        as_spec("qpos")
    with pytest.raises(TypeError, match="not a MuJoCo env"):
        verify([{"field": "qpos"}], gym.make("CartPole-v1"))


# ---------------------------------------------------------------------------------------- termination
TERMINATING = {
    "Hopper-v5": 4,
    "Walker2d-v5": 2,
    "Ant-v5": 3,
    "Humanoid-v5": 1,
    "InvertedPendulum-v5": 3,
    "InvertedDoublePendulum-v5": 1,
}


@pytest.mark.parametrize("env_id", TASKS)
def test_shipped_termination_is_the_envs(env_id):
    """The six tasks that terminate ship their conditions as data; the other five ship none. verify()
    (above, 250 steps) already checks every step's `terminated` against them; here states are put on,
    just inside and just outside each bound, and the check must agree with the env's is_healthy."""
    spec = task_spec(env_id)
    assert len(spec.get("termination", [])) == TERMINATING.get(env_id, 0)
    if env_id not in TERMINATING:
        return
    env = gym.make(env_id)
    u = env.unwrapped
    check = Termination(spec, u.model)
    env.reset(seed=0)
    assert check.first_failure(u.data) == -1
    if not hasattr(u, "is_healthy"):
        env.close()
        return  # InvertedPendulum's and InvertedDoublePendulum's checks live in step(): verify() covers them
    for c in spec["termination"]:
        if c.get("finite"):
            continue
        for bound in (c.get("min"), c.get("max")):
            for nudge in (-1e-9, 0.0, 1e-9):
                if bound is None:
                    continue
                env.reset(seed=0)
                getattr(u.data, c["field"])[c.get("start", 0)] = bound + nudge
                assert (check.first_failure(u.data) < 0) == bool(u.is_healthy), (env_id, c, nudge)
    env.close()


def test_termination_labels_nan_and_verify_mismatch():
    env = gym.make("Hopper-v5")
    u = env.unwrapped
    spec = task_spec("Hopper-v5")
    check = Termination(spec, u.model)
    assert check.labels == [
        "qpos[1:2] > 0.7",
        "qpos[2:3] > -0.2, < 0.2",
        "qpos[2:6] > -100, < 100",
        "qvel > -100, < 100",
    ]
    env.reset(seed=0)
    u.data.qvel[3] = np.nan  # NaN fails every bound, as in Gymnasium's comparisons
    assert check.first_failure(u.data) == 3
    walker = gym.make("Walker2d-v5").unwrapped
    with pytest.raises(ValueError, match="another model than the one this Termination is bound to"):
        check.first_failure(walker.data)
    with pytest.raises(TypeError, match="mujoco.MjData"):
        check.first_failure(u.model)
    # A condition the env does not have: refused, naming it.
    tighter = {**spec, "termination": [{"field": "qpos", "start": 1, "stop": 2, "min": 1.3}]}
    with pytest.raises(ObservationMismatch, match=r"condition 0 'qpos\[1:2\] > 1.3' fails but the env did not"):
        verify(tighter, env, steps=50)
    # A condition missing: the env terminates while the spec holds.
    with pytest.raises(ObservationMismatch, match="the env terminated but every termination condition holds"):
        verify({**spec, "termination": spec["termination"][2:]}, env, steps=300)
    env.close()


@pytest.mark.parametrize(
    "conditions, match",
    [
        ([{"input": "goal", "size": 1, "max": 1}], "reads an external input"),
        ([{"field": "qpos"}], "states no bound"),
        ([{"field": "qpos", "min": 1, "max": 0}], "min <= max"),
        ([{"field": "qpos", "min": "low"}], "min must be a number"),
        ([{"field": "qpos", "max": 1, "strict": "yes"}], "strict must be true or false"),
        ([{"field": "qpos", "max": 1, "below": 2}], "unknown key 'below'"),
        ([{"field": "xpos", "names": "hand", "max": 1}], "termination condition 0: the model has no body named 'hand'"),
        ([{"field": "qpos", "start": 7, "max": 1}], r"termination condition 0: slice \[7:4\]"),
        ({"field": "qpos", "max": 1}, "must be a list"),
    ],
)
def test_bad_termination_conditions(reacher, conditions, match):
    with pytest.raises(ObservationError, match=match):
        Termination({"version": 1, "terms": [{"field": "qpos"}], "termination": conditions}, reacher.model)


def test_infinite_bounds_are_written_as_null():
    spec = as_spec(
        {
            "version": 1,
            "terms": [{"field": "qpos", "clip": [-np.inf, 1.0]}],
            "termination": [{"field": "qpos", "min": 0.5, "max": float("inf")}],
        }
    )
    assert spec["terms"][0]["clip"] == [None, 1.0] and spec["termination"][0]["max"] is None
    # NaN, and infinities that are no bound, are refused by name (tests/test_hostile_specs.py has them all).
    with pytest.raises(ValueError, match=r"terms\[0\]\.scale is NaN"):
        as_spec([{"field": "qpos", "scale": float("nan")}])


def test_build_does_not_allocate_and_cpp_users_link_it(alloc_check):
    """The installed pydpg::mujoco target builds a C++ program (tests/cpp/alloc_check), and build()
    on Humanoid-v5's 348-wide observation, and its termination check, make no heap allocation
    anywhere in the process."""
    from policy_helpers import run_alloc_check

    env = gym.make("Humanoid-v5")
    result = run_alloc_check(alloc_check, "observation", env.unwrapped.fullpath, task_spec("Humanoid-v5"), 2000)
    env.close()
    assert result["size"] == 348 and result["allocations"] == 0, result
    # The termination check (Humanoid's z condition) allocates nothing either; z = 1.4 at qpos0 holds.
    assert result["conditions"] == 1 and result["check_allocations"] == 0 and result["failed"] == -1, result


def test_data_of_another_model_and_corrupt_model_addresses_are_refused():
    xml = """<mujoco><worldbody><body><joint name="h"/><geom size=".1" mass="1"/><site name="s"/></body></worldbody>
             <sensor><jointpos name="p" joint="h"/><framepos name="f" objtype="site" objname="s"/></sensor></mujoco>"""
    m = mujoco.MjModel.from_xml_string(xml)
    fewer = mujoco.MjModel.from_xml_string(xml.replace('<framepos name="f" objtype="site" objname="s"/>', ""))
    b = ObservationBuilder([{"field": "sensordata", "names": "f"}], m)
    with pytest.raises(ValueError, match="another model"):
        b.build(mujoco.MjData(fewer))  # same joints and bodies, fewer sensor values: would read past them
    m.sensor_adr[1] = 1 << 28  # a model whose addresses lie outside its own arrays
    with pytest.raises(ObservationError, match=r"past its 4 entries"):
        ObservationBuilder([{"field": "sensordata", "names": "f"}], m)


def test_external_inputs_are_verified_around_and_prev_action_follows_the_actions():
    """verify fills prev_action with the previous action (zeros after reset), as the loop does; a
    spec whose env does not carry the previous action there is caught."""
    env = gym.make("InvertedPendulum-v5")
    spec = [{"field": "qpos"}, {"field": "qvel"}, {"input": "prev_action", "size": 1}]
    with pytest.raises(ObservationMismatch, match="builds 5 values, the env observes 4"):
        verify(spec, env, steps=5)
    # Other inputs are the caller's: filled from the env's own observation, the terms around checked.
    assert verify([{"field": "qpos"}, {"input": "command", "size": 2}], env, steps=20) <= OBS_PARITY
    with pytest.raises(ObservationMismatch, match=r"term 'qpos', entry 0"):
        verify([{"input": "command", "size": 2}, {"field": "qpos"}], env, steps=20)
    env.close()
