"""Domain randomization (pydpg.contract.randomization): the draws, the nominal model put back
exactly, the delay, noise and pushes, the refusals, and a training run that randomizes, resumes
exactly and records what it was trained under."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from policy_helpers import assert_same_run, exported_after, small_hopper_run

from pydpg.contract.randomization import MAX_DELAY, DomainRandomization, as_randomization_spec
from pydpg.contract.wrappers import contract_wrapper
from pydpg.deploy.export import export_policy
from pydpg.deploy.policy_file import read_metadata
from pydpg.train.config import resolve
from pydpg.train.trainer import Trainer

MODEL = [
    {"field": "body_mass", "scale": [0.7, 1.3]},
    {"field": "geom_friction", "names": ["foot_geom"], "scale": [0.5, 1.5]},
    {"field": "dof_damping", "names": ["thigh_joint", "leg_joint"], "offset": [0.0, 0.5], "shared": True},
]


def hopper(spec):
    return DomainRandomization(gym.make("Hopper-v5"), {"version": 1, **spec})


@pytest.fixture(scope="module")
def nominal():
    env = gym.make("Hopper-v5")
    yield env.unwrapped.model
    env.close()


def test_model_fields_are_drawn_in_range_and_the_nominal_model_comes_back_exactly(nominal):
    env = hopper({"model": MODEL})
    m = env.unwrapped.model
    foot = m.geom("foot_geom").id
    thigh, leg = (m.jnt_dofadr[m.joint(j).id] for j in ("thigh_joint", "leg_joint"))
    masses = []
    for seed in range(20):
        env.reset(seed=seed)
        ratio = m.body_mass[1:] / nominal.body_mass[1:]
        assert np.all((0.7 <= ratio) & (ratio <= 1.3)) and len(set(np.round(ratio, 12))) == len(ratio)  # one each
        assert 0.5 <= m.geom_friction[foot, 0] / nominal.geom_friction[foot, 0] <= 1.5
        others = [g for g in range(m.ngeom) if g != foot]
        assert np.array_equal(m.geom_friction[others], nominal.geom_friction[others])  # only the named geom
        d = m.dof_damping - nominal.dof_damping
        assert d[thigh] == d[leg] and 0 <= d[thigh] <= 0.5  # shared: one draw for both
        masses.append(m.body_mass.copy())
        env.step(env.action_space.sample())
        env.restore_nominal()  # what every reset does first
        for f in ("body_mass", "geom_friction", "dof_damping"):
            assert np.array_equal(getattr(m, f), getattr(nominal, f)), f  # exactly: saved copies, no drift
    assert len({tuple(x) for x in masses}) == 20
    env.close()
    assert np.array_equal(m.body_mass, nominal.body_mass)


def test_objects_by_index_are_the_objects_by_name():
    by_name = hopper({"model": [{"field": "body_mass", "names": ["thigh", "leg"], "scale": [0.5, 2.0]}]})
    m = by_name.unwrapped.model
    ids = [m.body("thigh").id, m.body("leg").id]
    by_index = hopper({"model": [{"field": "body_mass", "indices": ids, "scale": [0.5, 2.0]}]})
    by_name.reset(seed=4)
    by_index.reset(seed=4)
    assert np.array_equal(m.body_mass, by_index.unwrapped.model.body_mass)
    with pytest.raises(ValueError, match="index 99 is past the model's 5 body objects"):
        hopper({"model": [{"field": "body_mass", "indices": [99], "scale": [1, 1]}]})
    with pytest.raises(ValueError, match="not both"):
        hopper({"model": [{"field": "body_mass", "indices": [1], "names": ["leg"], "scale": [1, 1]}]})
    with pytest.raises(ValueError, match="whole numbers >= 0"):
        hopper({"model": [{"field": "body_mass", "indices": [-1], "scale": [1, 1]}]})


def test_the_envs_own_seed_seeds_its_draws():
    a, b, c = (hopper({"model": MODEL, "observation": {"noise": 0.1}}) for _ in range(3))
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    oc, _ = c.reset(seed=8)
    assert np.array_equal(oa, ob) and not np.array_equal(oa, oc)
    for _ in range(3):  # later resets (no seed) continue the stream, alike
        a.reset()
        b.reset()
    assert np.array_equal(a.unwrapped.model.body_mass, b.unwrapped.model.body_mass)


def test_an_action_delay_applies_the_action_of_d_steps_ago():
    env = hopper({"action": {"delay": [2, 2]}})
    env.reset(seed=0)
    ctrl = env.unwrapped.data.ctrl
    sent = [np.full(3, 0.1 * (k + 1)) for k in range(6)]
    seen = []
    for a in sent:
        env.step(a)
        seen.append(ctrl.copy())
    assert np.array_equal(seen[0], np.zeros(3)) and np.array_equal(seen[1], np.zeros(3))  # the middle of [-1, 1]
    for k in range(2, 6):
        assert np.array_equal(seen[k], sent[k - 2])
    env.reset()  # a new episode starts its queue afresh
    env.step(np.ones(3))
    assert np.array_equal(ctrl, np.zeros(3))


def test_action_noise_stays_in_the_action_space_and_observation_noise_has_its_std():
    env = hopper({"action": {"noise": 0.5}, "observation": {"noise": 0.05}})
    env.reset(seed=1)
    below = 0
    for _ in range(300):
        env.step(np.ones(3))  # the bound itself: noise can only move it inward, never past it
        ctrl = env.unwrapped.data.ctrl
        assert np.all(np.abs(ctrl) <= 1.0)
        below += int(np.any(ctrl < 1.0))
    assert below > 200  # 3 dims, each below 1 half the time
    d = np.array([env.noisy(np.zeros(11)) for _ in range(2000)])  # the noise alone, 22,000 draws
    # 22,000 draws of N(0, 0.05): the sample std within 3 % of 0.05 (a 10-sigma margin), and the draws
    # are a fixed function of the seed (xoshiro256** and Box-Muller in csrc/deploy/randomization.cpp;
    # libm's log and cos may differ in a last bit between platforms, far below this margin).
    assert abs(d.std() - 0.05) < 0.0015 and abs(d.mean()) < 0.0015


def test_pushes_come_at_their_interval_with_their_force():
    env = hopper({"push": [{"body": "torso", "interval": [5, 5], "force": [20, 30], "duration": 2}]})
    env.reset(seed=0)
    torso = env.unwrapped.model.body("torso").id
    xfrc = env.unwrapped.data.xfrc_applied
    pushed = []
    for t in range(1, 16):
        env.step(np.zeros(3))
        f = xfrc[torso, :3].copy()
        pushed.append(t if np.any(f) else None)
        if np.any(f):
            assert 20 <= np.linalg.norm(f) <= 30 and f[2] == 0
    assert [t for t in pushed if t] == [5, 6, 10, 11, 15]


BAD = {
    "no version": ({"model": []}, "no 'version'"),
    "newer version": ({"version": 2}, "version 2"),
    "version true": ({"version": True}, "version true"),
    "unknown key": ({"version": 1, "models": []}, "unknown key 'models'.*did you mean 'model'"),
    "unknown field": ({"version": 1, "model": [{"field": "body_mas", "scale": [1, 2]}]}, "did you mean 'body_mass'"),
    "unknown name": (
        {"version": 1, "model": [{"field": "body_mass", "names": ["torsoo"], "scale": [1, 2]}]},
        "no body named 'torsoo'",
    ),
    "negative mass": ({"version": 1, "model": [{"field": "body_mass", "scale": [-0.5, 1]}]}, "below 0"),
    "friction below 0": (
        {"version": 1, "model": [{"field": "geom_friction", "offset": [-5, 0]}]},
        "makes a value negative",
    ),
    "scale and offset": (
        {"version": 1, "model": [{"field": "body_mass", "scale": [1, 1], "offset": [0, 0]}]},
        "one of",
    ),
    "low > high": ({"version": 1, "model": [{"field": "body_mass", "scale": [1.3, 0.7]}]}, "low 1.3 > high 0.7"),
    "NaN range": ({"version": 1, "model": [{"field": "body_mass", "scale": [math.nan, 1]}]}, r"scale\[0\] is NaN"),
    "inf noise": ({"version": 1, "observation": {"noise": math.inf}}, "finite"),
    "negative noise": ({"version": 1, "action": {"noise": -0.1}}, ">= 0"),
    "delay past the most": ({"version": 1, "action": {"delay": [0, MAX_DELAY + 1]}}, "past the most"),
    "fractional delay": ({"version": 1, "action": {"delay": [0, 1.5]}}, "whole numbers"),
    "push without interval": ({"version": 1, "push": [{"body": "torso", "force": [0, 1]}]}, "interval"),
    "push of no body": (
        {"version": 1, "push": [{"body": "tors", "interval": [1, 2], "force": [0, 1]}]},
        "no body named 'tors'",
    ),
    "noise per entry, wrong count": ({"version": 1, "observation": {"noise": [0.1, 0.2]}}, "lists 2 stds"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_specs_are_refused_by_name(case):
    spec, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        DomainRandomization(gym.make("Hopper-v5"), spec)


def test_it_needs_a_mujoco_env():
    with pytest.raises(ValueError, match="needs a Gymnasium MuJoCo env"):
        DomainRandomization(gym.make("Pendulum-v1"), {"version": 1})


def test_the_documented_keys_are_the_readers_keys():
    """KEYS (what docs/config.md lists) is the C++ reader's key list, and the reader refuses any
    other key at each level, listing the known ones."""
    from pydpg import _core
    from pydpg.contract.randomization import KEYS

    reader = set(_core.randomization_spec_keys())
    assert {(k, w) for k, w, _, _ in KEYS} == reader
    levels: dict[str, set] = {}
    for k, w in reader:
        levels.setdefault(w, set()).add(k)
    for where, keys in levels.items():
        spec = {"version": 1, "model": [{"field": "body_mass", "scale": [1, 1]}], "action": {}, "observation": {}}
        spec["push"] = [{"body": "torso", "interval": [1, 1], "force": [0, 0]}]
        target = {
            "": spec,
            "model[]": spec["model"][0],
            "observation": spec["observation"],
            "action": spec["action"],
            "push[]": spec["push"][0],
        }[where]
        target["zz"] = 1
        with pytest.raises(ValueError, match="known: " + ", ".join(sorted(keys))):
            as_randomization_spec(spec)


# ---------------------------------------------------------------------------------------- training
SPEC = {
    "version": 1,
    "model": MODEL,
    "observation": {"noise": 0.01},
    "action": {"noise": 0.05, "delay": [0, 2]},
    "push": [{"body": "torso", "interval": [30, 60], "force": [0, 40]}],
}


def trainer(out, **train):
    return small_hopper_run(out, n_envs=2, randomization=SPEC, **train)


def test_training_randomizes_resumes_exactly_and_records_it(tmp_path):
    """Both vector envs are randomized (each by its own seed), the evaluation env is not, a resumed
    run (the draws, the delay queues, the push schedules and the RNGs restored) is the uninterrupted
    one, and the exported file records what the policy was trained under."""
    ref = trainer(tmp_path / "ref")
    subs = ref.vec.envs
    assert all(isinstance(e, DomainRandomization) for e in subs) and not isinstance(ref.eval_env, DomainRandomization)
    ref.run()
    assert not np.array_equal(subs[0].unwrapped.model.body_mass, subs[1].unwrapped.model.body_mass)
    cut = trainer(tmp_path / "cut")
    cut.run(stop_at=600)
    resumed = Trainer.resume(tmp_path / "cut", tensorboard=False)
    assert 400 <= resumed.step < 600  # the checkpoint after 400 (2 envs store 1 or 2 transitions a step)
    resumed.run()
    assert_same_run(ref, resumed)
    for a, b in zip(ref.vec.envs, resumed.vec.envs, strict=True):
        assert np.array_equal(a.unwrapped.model.body_mass, b.unwrapped.model.body_mass)
    export_policy(resumed, tmp_path / "p.pt", verbose=False)
    assert read_metadata(tmp_path / "p.pt")["randomization"] == as_randomization_spec(SPEC)
    ref.close()
    resumed.close()


def test_a_config_files_randomization_table_reaches_the_run(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[randomization]\nversion = 1\n[[randomization.model]]\nfield = "body_mass"\nscale = [0.8, 1.2]\n'
        "[randomization.action]\ndelay = [0, 1]\n"
    )
    _, train = resolve(env_id="Hopper-v5", config_file=path)
    assert train.randomization["model"][0]["scale"] == [0.8, 1.2] and train.randomization["action"]["delay"] == [0, 1]
    path.write_text('[randomization]\nversion = 1\n[[randomization.model]]\nfield = "mass"\nscale = [1, 2]\n')
    with pytest.raises(ValueError, match="TrainConfig.randomization: .*unknown field 'mass'"):
        resolve(env_id="Hopper-v5", config_file=path)


def test_contract_wrapper_puts_the_action_contract_inside_the_randomization():
    from pydpg.contract.action import ActionContract, find_contract

    action = {"version": 1, "actuators": [{"joint": "thigh_joint"}, {"joint": "leg_joint"}]}
    env = contract_wrapper(action, None, {"version": 1, "action": {"delay": [1, 1]}})(gym.make("Hopper-v5"))
    assert isinstance(env, DomainRandomization) and isinstance(env.env, ActionContract)
    assert find_contract(env) is env.env and env.action_space.shape == (2,)
    env.reset(seed=0)
    env.step(np.array([1.0, -1.0]))  # delayed: the contract gets the middle, 0
    assert np.array_equal(env.unwrapped.data.ctrl, np.zeros(3))
    env.step(np.zeros(2))
    assert np.array_equal(env.unwrapped.data.ctrl, np.array([1.0, -1.0, 0.0]))
    assert contract_wrapper(None, None, None) is None


def test_the_deployment_guides_tables_bind(tmp_path):
    """docs/deployment.md's [randomization] example binds to Hopper-v5 and its [action] example to the
    custom robot's arm, read as run configs."""
    import sys
    from pathlib import Path

    from pydpg.contract.action import ActionMap
    from pydpg.train.config import resolve

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "deployment.md").read_text()
    for table, env_id in (("randomization", "Hopper-v5"), ("action", "ArmReach-v0")):
        block = text.split(f"```toml\n[{table}]", 1)[1].split("```", 1)[0]
        (tmp_path / f"{table}.toml").write_text(f"[{table}]" + block)
        _, train = resolve(env_id=env_id, config_file=tmp_path / f"{table}.toml")
        if table == "randomization":
            DomainRandomization(gym.make(env_id), train.randomization).close()
        else:
            sys.path.insert(0, str(root / "examples" / "custom_robot"))
            import arm_env  # noqa: F401  (registers ArmReach-v0)

            env = gym.make(env_id)
            assert ActionMap(train.action, env.unwrapped.model).size == 2
            env.close()


# ---------------------------------------------------------------------------------------- the C++ unit
def test_a_state_round_trips_and_a_corrupt_one_is_refused():
    """state()/load_state() put back the stream, the draws and the delayed actions: two envs, one
    restored from the other mid-episode, step on identically. A state of other sizes, an all-zero
    stream or a delay the spec cannot draw is refused by name."""
    spec = {"version": 1, "model": MODEL, "observation": {"noise": 0.05}, "action": {"noise": 0.1, "delay": [1, 2]}}
    a, b = DomainRandomization(gym.make("Hopper-v5"), spec), DomainRandomization(gym.make("Hopper-v5"), spec)
    a.reset(seed=3)
    b.reset(seed=4)
    for _ in range(5):
        a.step(np.full(3, 0.3))
    from pydpg.common.envs import get_env_state, set_env_state

    set_env_state(b, get_env_state(a))
    np.testing.assert_array_equal(a.drawn_values, b.drawn_values)
    for t in range(10):
        oa, *_ = a.step(np.full(3, 0.1 * t))
        ob, *_ = b.step(np.full(3, 0.1 * t))
        np.testing.assert_array_equal(oa, ob)
    s = a.wrapper_state()
    with pytest.raises(ValueError, match="does not fit this spec and model"):
        b.load_wrapper_state({**s, "values": s["values"][:-1]})
    with pytest.raises(ValueError, match="all-zero random state"):
        b.load_wrapper_state({**s, "rng": [0, 0, 0, 0]})
    with pytest.raises(ValueError, match="a delay of 3 control steps, the spec draws 1 to 2"):
        b.load_wrapper_state({**s, "queue": [0.0] * 9})
    with pytest.raises(ValueError, match="earlier Python randomization"):
        b.load_wrapper_state({k: v for k, v in s.items() if k != "seeded"})
    a.close()
    b.close()


def test_the_cpp_reader_alone_refuses_what_python_would():
    """The reader is C++ (one answer for a TOML table, a policy file and a C++ program): the same
    refusals reach a caller of the binding with a JSON text, NaN and Infinity words included."""
    from pydpg import _core

    for text, message in [
        ('{"version": 1, "model": [{"field": "body_mass", "scale": [NaN, 1]}]}', "is NaN"),
        ('{"version": 1, "observation": {"noise": Infinity}}', "must be finite"),
        ('{"version": 1, "action": {"delay": [0, 21]}}', "past the most, 20"),
        ('{"version": 1, "push": [{"body": "torso", "interval": [0, 2], "force": [0, 1]}]}', "low 0 is below 1"),
        ('{"version": 1, "modle": []}', "did you mean 'model'"),
        ('{"version": 1, "model": [{"field": "body_mass", "scale": [1, 2], "names": []}]}', "non-empty list"),
        ('{"version": 1', "not valid JSON"),
    ]:
        with pytest.raises(ValueError, match=message):
            _core.canonical_randomization_spec(text)


def test_reset_step_and_observe_do_not_allocate(alloc_check):
    """A C++ program linking the installed pydpg::mujoco runs Humanoid's randomization (every model
    field, noise, a delay and a push) with no heap allocation per reset, step or observe."""
    from policy_helpers import run_alloc_check

    env = gym.make("Humanoid-v5")
    spec = {
        "version": 1,
        "model": [{"field": f, "scale": [0.8, 1.2]} for f in FIELDS_FOR_ALL],
        "observation": {"noise": 0.01},
        "action": {"noise": 0.05, "delay": [1, 3]},
        "push": [{"body": "torso", "interval": [5, 20], "force": [10, 50], "duration": 2}],
    }
    result = run_alloc_check(alloc_check, "randomization", env.unwrapped.fullpath, spec, 20000, 1000)
    env.close()
    assert result["resets"] == 20 and result["allocations"] == 0 and 1 <= result["delay"] <= 3, result


FIELDS_FOR_ALL = ("body_mass", "body_inertia", "geom_friction", "dof_damping", "dof_armature", "actuator_gear")


# ---------------------------------------------------------------------------------------- the C++ loop
@pytest.fixture(scope="module")
def randomized_policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("randomized_run")
    return exported_after(trainer(out), 600, out / "p.pt")[0]


def test_the_loop_randomizes_as_training_does(randomized_policy, tmp_path):
    """pydpg_control_loop --randomization policy runs the unit the training wrapper runs: replayed
    through the env under the same spec, driven with the loop's seed, the env observes what the
    loop's policy saw (to one float32 rounding) and ends where the loop ended, through redrawn masses
    and frictions, action noise, delays of 0 to 2 steps, pushes and observation noise. The delays the
    loop drew are the wrapper's for that seed; replayed with another seed, it diverges."""
    from float_bounds import OBS_PARITY

    from pydpg.common.envs import initial_states
    from pydpg.deploy.loop import _env_for, replay_trace, run_policy

    meta = read_metadata(randomized_policy)
    env = _env_for("Hopper-v5", meta.get("action"), meta.get("observation"), SPEC)
    states = initial_states(env, 4, 100)
    trace = tmp_path / "trace.csv"
    result = run_policy(
        randomized_policy,
        replay=env,
        initial_states=states,
        realtime=False,
        randomization="policy",
        randomization_seed=5,
        trace=str(trace),
    )
    assert result["max_obs_diff"] <= OBS_PARITY
    assert all(r["termination_agrees"] for r in result["replay"])
    twin = DomainRandomization(gym.make("Hopper-v5"), SPEC)
    twin.seed_stream(5)
    twin.redraw()  # the first episode's draw (later ones follow the steps' draws)
    assert result["randomization"]["seed"] == 5 and result["randomization"]["delays"][0] == twin.delay
    assert len(result["randomization"]["delays"]) == 4
    other = replay_trace(trace, env, randomization_seed=6)
    assert max(e["max_obs_diff"] for e in other) > 1e-3
    env.close()
    twin.close()


def test_pydpg_run_randomizes_the_loop_the_replay_and_python_alike(randomized_policy, tmp_path, capsys):
    """`pydpg run --randomization policy` seeds the loop's draws with the evaluation seed, so the
    loop's actions replayed through the randomized env earn what the same file earns acting in Python
    in that env; a spec file works too; what cannot be run is refused by name."""
    import json

    from pydpg.cli.run import run_main

    out = tmp_path / "run.json"
    args = [str(randomized_policy), "--no-sleep", "--episodes", "2", "--randomization", "policy", "--json", str(out)]
    assert run_main(args) == 0
    result = json.loads(out.read_text())
    assert result["randomization"]["seed"] == result["seed"] and len(result["randomization"]["delays"]) == 2
    assert result["returns"] == result["python_returns"]  # the same computation: equal, not near
    spec = tmp_path / "mass.toml"
    spec.write_text('[randomization]\nversion = 1\n[[randomization.model]]\nfield = "body_mass"\nscale = [1.2, 1.2]\n')
    assert run_main([str(randomized_policy), "--no-sleep", "--randomization", str(spec), "--no-replay"]) == 0
    capsys.readouterr()
    assert run_main([str(randomized_policy), "--randomization-seed", "3"]) == 2
    assert "--randomization-seed needs --randomization" in capsys.readouterr().err
    spec.write_text('[randomization]\nversion = 1\n[[randomization.model]]\nfield = "body_mas"\nscale = [1, 1]\n')
    assert run_main([str(randomized_policy), "--randomization", str(spec)]) == 2
    assert "did you mean 'body_mass'" in capsys.readouterr().err
    plain = Path(__file__).parent / "data" / "inverted_pendulum_30k.pt"
    assert run_main([str(plain), "--randomization", "policy"]) == 2
    assert "was trained without randomization" in capsys.readouterr().err


def test_hostile_calls_are_refused_by_name(randomized_policy, tmp_path):
    """The binding and the loop's options: wrong sizes and shapes, bounds out of order, a missing
    file, a negative seed, a policy without a spec; each a clear error, none a crash."""
    import subprocess

    from pydpg import _core
    from pydpg.deploy.loop import control_loop_args

    model = gym.make("Hopper-v5").unwrapped.model
    spec = '{"version": 1}'
    one = np.ones(3)
    for args, message in [
        ((spec, model, 0, -one, one), "sizes must be >= 1"),
        ((spec, model, 11, one, one), "low < high"),
        ((spec, model, 11, -one, np.ones(2)), "two vectors of one size"),
        ((spec, model, 11, -one, np.array([1, np.inf, 1])), "finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            _core.DomainRandomization(*args)
    core = _core.DomainRandomization(spec, model, 11, -one, one)
    data = mujoco.MjData(model)
    with pytest.raises(ValueError, match="the action has shape"):
        core.step(np.zeros(4), data._address)
    with pytest.raises(ValueError, match="the observation has shape"):
        core.observe(np.zeros((2, 11)))
    with pytest.raises(ValueError, match="rng must be 4 words"):
        core.load_state([1], [], [], 0, [], [], [])
    base = control_loop_args(randomized_policy, realtime=False, quiet=True)
    for extra, message in [
        (["--randomization", str(tmp_path / "missing.json")], "cannot read --randomization file"),
        (["--randomization", "policy", "--randomization-seed", "-1"], "whole number >= 0"),
        (["--randomization", "policy", "--randomization-seed", "x"], "whole number >= 0"),
        (["--randomization", str(tmp_path)], "is not a regular file"),
    ]:
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and message in run.stderr, run.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "action": {"delay": [0, 99]}}')
    run = subprocess.run(base + ["--randomization", str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "past the most, 20" in run.stderr
