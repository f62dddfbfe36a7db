"""Observation history (a term's "history": k; pydpg.contract.history, the rings in
csrc/deploy/observation.cpp): the order and the reset rule against a reference, its refusals, a run
training through it and resuming exactly, export's check, and the C++ loop replaying what training
saw, allocation-free."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from float_bounds import OBS_PARITY
from policy_helpers import assert_same_run, exported_after, run_alloc_check, small_hopper_run

from pydpg.common.envs import find_wrapper, initial_states
from pydpg.contract.history import ObservationHistory, has_history, without_history
from pydpg.contract.observation import ObservationBuilder, ObservationError, ObservationMismatch, task_spec
from pydpg.contract.wrappers import contract_wrapper
from pydpg.core.config import DDPGConfig
from pydpg.deploy.loop import _env_for, run_policy
from pydpg.deploy.policy_file import read_metadata
from pydpg.train.config import resolve
from pydpg.train.trainer import Trainer

K = 3


def hopper_history(k: int = K) -> dict:
    """Hopper-v5's preset spec with its velocities read over the last k control steps."""
    spec = task_spec("Hopper-v5")
    terms = [dict(t, history=k) if t["field"] == "qvel" else t for t in spec["terms"]]
    return {**spec, "terms": terms}


@pytest.fixture(scope="module")
def hopper():
    env = gym.make("Hopper-v5")
    yield env
    env.close()


def reference(bases: list[np.ndarray], widths: list[int], histories: list[int]) -> np.ndarray:
    """The observation a spec with these histories writes after ``bases`` (one base per step since
    the reset): per term its last k values, oldest first, the first value standing in for steps
    before the reset."""
    out, start = [], 0
    for width, k in zip(widths, histories):
        for back in range(k - 1, -1, -1):
            out.append(bases[max(0, len(bases) - 1 - back)][start : start + width])
        start += width
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------- semantics
def test_a_term_writes_its_last_k_values_oldest_first_and_a_reset_refills_them(hopper):
    """Against the rule written out in numpy, over two episodes of random actions: every value is
    the base builder's own float32 value (the same double, rounded once), so equality is exact."""
    u = hopper.unwrapped
    spec = hopper_history()
    full, base = ObservationBuilder(spec, u.model), ObservationBuilder(without_history(spec), u.model)
    assert full.size == 5 + K * 6 and full.base_size == base.size == 11 and full.has_history
    assert [(t["label"], t["offset"], t["size"], t["history"], t["base_offset"]) for t in full.term_details] == [
        ("qpos[1:6]", 0, 5, 1, 0),
        (f"history(clip(qvel), {K})", 5, K * 6, K, 5),
    ]
    rng = np.random.default_rng(0)
    for episode in range(2):
        hopper.reset(seed=episode)
        full.reset()
        bases = []
        for t in range(8):
            bases.append(base.build(u.data))
            np.testing.assert_array_equal(full.build(u.data), reference(bases, [5, 6], [1, K]), err_msg=f"step {t}")
            hopper.step(rng.uniform(-1, 1, 3))


def test_an_input_keeps_its_history_and_build_from_current_is_build(hopper):
    """An external input with a history remembers what was set at each build; build_from_current
    (a training env's path: the env's own observation as the base) writes what build writes."""
    u = hopper.unwrapped
    spec = {
        "version": 1,
        "terms": [{"field": "qpos", "start": 1, "history": 2}, {"input": "command", "size": 2, "history": 3}],
    }
    b, twin = ObservationBuilder(spec, u.model), ObservationBuilder(spec, u.model)
    base = ObservationBuilder(without_history(spec), u.model)
    assert [t["input"] for t in b.term_details] == [None, "command"]
    hopper.reset(seed=3)
    bases = []
    for t in range(6):
        command = np.array([t, -t], dtype=np.float32)
        b.set_input("command", command)
        base.set_input("command", command)
        bases.append(base.build(u.data))
        got = b.build(u.data)
        np.testing.assert_array_equal(got, reference(bases, [5, 2], [2, 3]))
        np.testing.assert_array_equal(twin.build_from_current(bases[-1].astype(np.float64)), got)
        hopper.step(np.zeros(3))
    assert got[-6:].tolist() == [3, -3, 4, -4, 5, -5]


def test_the_rings_state_round_trips_and_bad_states_are_refused(hopper):
    u = hopper.unwrapped
    a, b = ObservationBuilder(hopper_history(), u.model), ObservationBuilder(hopper_history(), u.model)
    hopper.reset(seed=1)
    for _ in range(4):
        a.build(u.data)
        hopper.step(np.ones(3))
    b.load_history_state(a.history_state())
    np.testing.assert_array_equal(a.build(u.data), b.build(u.data))
    state = a.history_state()
    with pytest.raises(ObservationError, match="history state: 1 rings of 3 values, this spec keeps 1 of 18"):
        b.load_history_state({**state, "values": state["values"][:3]})
    with pytest.raises(ObservationError, match="ring head 3 is outside its 3 slots"):
        b.load_history_state({**state, "heads": [3]})
    with pytest.raises(ValueError, match="takes the base's 11 values, got shape"):
        b.build_from_current(np.zeros(12))


@pytest.mark.parametrize(
    "history, match",
    [
        (0, r"history must be a whole number of control steps in \[1, 1024\], got 0"),
        (-2, r"in \[1, 1024\], got -2"),
        (1025, r"in \[1, 1024\], got 1025"),
        (1.5, "history"),
        (True, "history"),
        ("3", "history"),
    ],
)
def test_bad_histories_are_refused_by_name(hopper, history, match):
    spec = {"version": 1, "terms": [{"field": "qpos"}, {"field": "qvel", "history": history}]}
    with pytest.raises(ObservationError, match="observation term 1") as info:
        ObservationBuilder(spec, hopper.unwrapped.model)
    assert info.match(match)


def test_a_termination_condition_reads_the_current_step_only(hopper):
    from pydpg.contract.observation import Termination

    spec = {"version": 1, "terms": [{"field": "qpos"}], "termination": [{"field": "qpos", "min": -9, "history": 2}]}
    with pytest.raises(ObservationError, match="termination condition 0: has a history"):
        Termination(spec, hopper.unwrapped.model)


def test_the_wrapper_refuses_a_base_that_is_not_the_envs_observation():
    env = gym.make("Hopper-v5")
    spec = {"version": 1, "terms": [{"field": "qvel", "history": 2}]}  # Hopper observes 11 values, not 6
    with pytest.raises(ValueError, match="its terms without history\\) has 6 values, the env observes 11"):
        ObservationHistory(env, spec)
    env.close()


def test_verification_says_how_to_observe_a_history_spec(hopper):
    from pydpg.contract.observation import verify

    with pytest.raises(ObservationMismatch, match="without history its terms build 11.*ObservationHistory"):
        verify(hopper_history(), hopper, steps=5)


def test_the_wrappers_order_puts_the_noise_inside_the_history():
    """Randomization's observation noise acts on the env's observation, and the history remembers
    the noisy values (a robot's past readings keep their noise): the newest block is this step's
    noisy base, and at the next step it has moved one block back, unchanged."""
    spec = hopper_history()
    noise = {"version": 1, "observation": {"noise": 0.1}}
    assert contract_wrapper(None, task_spec("Hopper-v5"), None) is None  # no history: the env's own
    env = contract_wrapper(None, spec, noise)(gym.make("Hopper-v5"))
    assert isinstance(env, ObservationHistory) and env.observation_space.shape == (5 + K * 6,)
    obs, _ = env.reset(seed=0)
    clean = ObservationBuilder(without_history(spec), env.unwrapped.model).build(env.unwrapped.data)
    assert np.abs(obs[-6:] - clean[5:]).max() > 0.01  # noisy
    newest = obs[-6:]
    obs, *_ = env.step(np.zeros(3))
    np.testing.assert_array_equal(obs[-12:-6], newest)
    env.close()


# ---------------------------------------------------------------------------------------- a run
def history_run(out, **train):
    return small_hopper_run(out, observation=hopper_history(), **train)


def test_training_observes_through_the_history_and_resumes_exactly(tmp_path):
    """The run's envs (training and evaluation) observe the spec's 23 values, and the rings are
    checkpointed with the env's state: a resumed run is the uninterrupted one."""
    ref = history_run(tmp_path / "ref")
    assert ref.agent.actor.net[0].in_features == 23
    assert find_wrapper(ref.vec.envs[0], ObservationHistory) is not None
    assert find_wrapper(ref.eval_env, ObservationHistory) is not None
    ref.run()
    cut = history_run(tmp_path / "cut")
    cut.run(stop_at=600)
    resumed = Trainer.resume(tmp_path / "cut", tensorboard=False)
    resumed.run()
    assert_same_run(ref, resumed)


def test_a_config_files_history_reaches_the_run_and_a_wrong_base_is_refused_at_its_start(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[observation]\nversion = 1\n[[observation.terms]]\nfield = "qpos"\nstart = 1\n'
        '[[observation.terms]]\nfield = "qvel"\nclip = [-10.0, 10.0]\nhistory = 4\n'
    )
    _, train = resolve(env_id="Hopper-v5", config_file=path)
    assert has_history(train.observation) and train.observation["terms"][1]["history"] == 4
    path.write_text(  # qpos[2:]: a base that is not Hopper's observation
        '[observation]\nversion = 1\n[[observation.terms]]\nfield = "qpos"\nstart = 2\n'
        '[[observation.terms]]\nfield = "qvel"\nclip = [-10.0, 10.0]\nhistory = 4\n'
    )
    _, train = resolve(env_id="Hopper-v5", config_file=path)
    with pytest.raises(ValueError, match=r"observation spec \(\[observation\]\) does not fit Hopper-v5.*10 values"):
        Trainer(DDPGConfig(), train, tensorboard=False)


@pytest.fixture(scope="module")
def history_policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("history_run")
    return exported_after(history_run(out), 600, out / "policy.pt")


def test_export_ships_and_verifies_the_history(history_policy):
    path, _ = history_policy
    meta = read_metadata(path)
    assert meta["observation"]["terms"][1]["history"] == K and meta["obs_dim"] == 23
    assert meta["verification"]["steps"] > 0 and meta["verification"]["max_observation_difference"] <= 1e-5


def test_the_loop_observes_the_history_as_training_did(history_policy):
    """The C++ loop resets the rings at each episode and builds once per step: replaying its actions
    through the env and the history wrapper from the same states, the env observes what the loop's
    policy saw, history included, to one float32 rounding (OBS_PARITY)."""
    path, _ = history_policy
    meta = read_metadata(path)
    env = _env_for("Hopper-v5", meta.get("action"), meta["observation"])
    assert find_wrapper(env, ObservationHistory) is not None
    states = initial_states(env, 3, 100)
    result = run_policy(path, initial_states=states, replay=env, episodes=3, realtime=False)
    env.close()
    assert result["max_obs_diff"] <= OBS_PARITY
    assert all(r["termination_agrees"] for r in result["replay"])


def test_build_with_history_does_not_allocate(alloc_check):
    """Humanoid's 348 values with its qpos and qvel terms over 5 steps: no heap allocation per build
    or per reset, in a C++ program linking the installed library."""
    env = gym.make("Humanoid-v5")
    spec = task_spec("Humanoid-v5")
    spec["terms"] = [dict(t, history=5) if t["field"] in ("qpos", "qvel") else t for t in spec["terms"]]
    result = run_alloc_check(alloc_check, "observation", env.unwrapped.fullpath, spec, 2000)
    width = ObservationBuilder(spec, env.unwrapped.model).size
    env.close()
    assert result["size"] == width > 348 and result["allocations"] == 0, result


def test_mujoco_is_the_one_bound(hopper):
    """Data of another model is refused before any ring is touched."""
    other = mujoco.MjData(gym.make("InvertedPendulum-v5").unwrapped.model)
    with pytest.raises(ValueError, match="another model"):
        ObservationBuilder(hopper_history(), hopper.unwrapped.model).build(other)


def test_the_robustness_report_observes_through_the_history(history_policy):
    """`pydpg robustness` evaluates the file in its env with the file's contracts: a history policy
    gets its 23 values there (nominal and perturbed), and its nominal return is `pydpg eval`'s."""
    from pydpg.common.envs import evaluate
    from pydpg.deploy.robustness import parse_vary, robustness_report
    from pydpg.deploy.runtime import Policy

    path, _ = history_policy
    report = robustness_report(path, [parse_vary("body_mass=0.8,1.2")], episodes=2, jobs=1)
    env = _env_for("Hopper-v5", None, read_metadata(path)["observation"])
    nominal = evaluate(Policy(path).act, env, 2, seed=read_metadata(path)["eval_seed"])
    env.close()
    assert report["nominal"]["mean"] == float(np.mean(nominal.returns))
    assert len(report["rows"]) == 2
