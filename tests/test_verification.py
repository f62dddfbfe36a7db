"""What a user's own robot ran into (issue: spec → train → export → C++ loop from the docs alone):
termination conditions the export's verification never exercised, a verification the file did not
record, messages with numpy reprs, unknown names without the model's names, and the docs' own
claims (the config reference, `pydpg presets NAME`, the examples' README)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pydpg.contract.observation import (
    ObservationBuilder,
    ObservationError,
    ObservationMismatch,
    load_init_states,
    task_spec,
    verify_report,
)
from pydpg.core.agent import DDPGAgent
from pydpg.deploy.export import export_policy
from pydpg.deploy.policy_file import read_metadata

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_robot"
sys.path.insert(0, str(EXAMPLE))
import arm_env  # noqa: E402  (registers ArmReach-v0)


def hopper_spec(angle_max: float = 0.2) -> dict:
    spec = task_spec("Hopper-v5")
    spec["termination"][1] = {**spec["termination"][1], "max": angle_max}
    return spec


# ------------------------------------------------------------------------------ termination coverage
def test_report_says_which_conditions_verification_exercised():
    env = gym.make("Hopper-v5")
    report = verify_report(task_spec("Hopper-v5"), env, steps=300)
    by_label = {c.label: c for c in report.conditions}
    angle = by_label["qpos[2:3] > -0.2, < 0.2"]
    assert angle.exercised and angle.failed_steps > 0 and angle.held_steps > 0
    assert angle.closest is not None and angle.closest < 0.05  # the rollout came right up to its bound
    z = by_label["qpos[1:2] > 0.7"]
    assert not z.exercised and z.failed_steps == 0 and z.lowest > 0.7  # a falling hopper tips, it does not sink
    assert [c.label for c in report.unexercised] == [c.label for c in report.conditions if not c.exercised]
    warnings = report.warnings()
    assert any("'qpos[1:2] > 0.7' never failed" in w for w in warnings)
    assert "--verify-perturb" in warnings[-1]  # what to do, once
    meta = report.as_metadata()
    assert meta["steps"] == 300 and meta["episodes"] == report.episodes > 1
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta  # strict JSON: it goes into the file
    env.close()


def test_a_loosened_bound_is_flagged_not_passed_silently(tmp_path):
    """The user's case: a bound random actions never reach, mistakenly loosened (Hopper's |qvel| < 100
    made 1e4). The rollout cannot tell the two apart, so the report names the condition as never
    exercised instead of passing it silently; start states past the true bound then catch the
    mistake (the env terminates, the loosened spec does not)."""
    spec = task_spec("Hopper-v5")
    spec["termination"][3] = {**spec["termination"][3], "min": -1e4, "max": 1e4}
    env = gym.make("Hopper-v5")
    report = verify_report(spec, env, steps=200)
    assert [c.label for c in report.unexercised if c.label.startswith("qvel")] == ["qvel > -10000, < 10000"]
    assert any("'qvel > -10000, < 10000' never failed" in w for w in report.warnings())
    u = env.unwrapped
    qvel = np.zeros((1, u.model.nv))
    qvel[0, 0] = 500.0  # sliding forward far past the env's own bound of 100
    states = {"qpos": u.init_qpos[None], "qvel": qvel}
    with pytest.raises(ObservationMismatch, match="the env terminated but every termination condition holds"):
        verify_report(spec, env, steps=20, init_states=states)
    exercised = verify_report(task_spec("Hopper-v5"), env, steps=20, init_states=states)
    assert next(c for c in exercised.conditions if c.label.startswith("qvel")).failed_steps > 0
    env.close()


def test_export_records_and_prints_the_verification(tmp_path, capsys):
    torch.manual_seed(0)
    env = gym.make("Hopper-v5")
    export_policy(DDPGAgent.from_dims(11, 3), tmp_path / "p.pt", env=env)
    out, err = capsys.readouterr()
    assert "observation spec verified over 200 env steps" in out and "termination conditions seen to fail" in out
    assert "warning: termination condition 'qpos[1:2] > 0.7' never failed in verification" in err
    meta = read_metadata(tmp_path / "p.pt")
    v = meta["verification"]
    assert v["steps"] == 200 and v["max_observation_difference"] < 1e-5
    assert [c["label"] for c in v["termination"]] == [
        c for c in ["qpos[1:2] > 0.7", "qpos[2:3] > -0.2, < 0.2", "qpos[2:6] > -100, < 100", "qvel > -100, < 100"]
    ]
    assert all(set(c) == {"label", "failed_steps", "held_steps", "range", "closest_to_bound"} for c in v["termination"])
    env.close()


def test_perturbed_and_given_start_states_reach_a_bound(tmp_path):
    """States that reach a condition: perturbed resets, or an init-states file (the user's own)."""
    env = gym.make("Hopper-v5")
    u = env.unwrapped
    plain = verify_report(task_spec("Hopper-v5"), env, steps=100)
    z_plain = next(c for c in plain.conditions if c.label == "qpos[1:2] > 0.7")
    assert not z_plain.exercised
    # Start sunk: z = 0.6, below its bound (a state random actions from the reset never reach).
    qpos = np.tile(u.init_qpos, (4, 1))
    qpos[:, 1] = 0.6
    qvel = np.zeros((4, u.model.nv))
    qvel[:, 1] = -5.0
    np.savez(tmp_path / "crouched.npz", qpos=qpos, qvel=qvel)
    given = verify_report(task_spec("Hopper-v5"), env, steps=100, init_states=tmp_path / "crouched.npz")
    z = next(c for c in given.conditions if c.label == "qpos[1:2] > 0.7")
    assert z.exercised and "init_states" in given.starts
    perturbed = verify_report(task_spec("Hopper-v5"), env, steps=100, perturb=0.3, seed=1)
    assert "perturbed by 0.3" in perturbed.starts and perturbed.episodes > plain.episodes
    env.close()


@pytest.mark.parametrize(
    "states, match",
    [
        ({"qpos": np.zeros((2, 6))}, "exactly the arrays 'qpos' and 'qvel'"),
        ({"qpos": np.zeros((2, 5)), "qvel": np.zeros((2, 6))}, r"'qpos' has shape \(2, 5\), expected \(N, 6\)"),
        ({"qpos": np.zeros((2, 6)), "qvel": np.zeros((3, 6))}, "2 qpos rows and 3 qvel rows"),
        ({"qpos": np.full((1, 6), np.nan), "qvel": np.zeros((1, 6))}, "'qpos' holds a NaN or infinite value"),
        ({"qpos": np.zeros((1, 6)), "qvel": np.full((1, 6), np.inf)}, "'qvel' holds a NaN or infinite value"),
        ({"qpos": np.zeros((0, 6)), "qvel": np.zeros((0, 6))}, r"expected \(N, 6\)"),
        ("missing.npz", "does not exist"),
    ],
)
def test_bad_init_states_are_refused_by_name(tmp_path, states, match):
    model = gym.make("Hopper-v5").unwrapped.model
    if isinstance(states, str):
        states = tmp_path / states
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_init_states(states, model)


def test_corrupt_init_states_file_is_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    model = gym.make("Hopper-v5").unwrapped.model
    with pytest.raises(ValueError, match="is not an .npz of arrays qpos and qvel"):
        load_init_states(tmp_path / "junk.npz", model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be a whole number >= 1"),
        ({"steps": 2.5}, "steps must be a whole number >= 1"),
        ({"perturb": float("nan")}, "perturb must be a finite number >= 0"),
        ({"perturb": -0.1}, "perturb must be a finite number >= 0"),
        ({"perturb": float("inf")}, "perturb must be a finite number >= 0"),
    ],
)
def test_bad_verification_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        verify_report(task_spec("Hopper-v5"), gym.make("Hopper-v5"), **kwargs)


def test_cli_export_takes_the_verification_flags(tmp_path):
    from pydpg.cli.export import export_main
    from pydpg.train.config import resolve
    from pydpg.train.trainer import Trainer

    cfg, train = resolve("InvertedPendulum-v5", train={"total_steps": 300, "eval_every": 0, "checkpoint_every": 0})
    cfg.learning_starts = 100
    trainer = Trainer(cfg, train, out_dir=tmp_path / "run", tensorboard=False)
    trainer.run()
    trainer.close()
    rc = export_main(
        [str(tmp_path / "run"), "-o", str(tmp_path / "p.pt"), "--verify-steps", "50", "--verify-perturb", "0.05"]
    )
    assert rc == 0
    v = read_metadata(tmp_path / "p.pt")["verification"]
    assert v["steps"] == 50 and "perturbed by 0.05" in v["starts"]
    assert export_main([str(tmp_path / "run"), "-o", str(tmp_path / "q.pt"), "--verify-perturb", "nan"]) == 2


# ------------------------------------------------------------------------------ messages
def test_the_env_terminating_while_all_conditions_hold_shows_their_values():
    spec = task_spec("Hopper-v5")
    with pytest.raises(ObservationMismatch) as e:
        verify_report({**spec, "termination": spec["termination"][2:]}, gym.make("Hopper-v5"), steps=300)
    text = str(e.value)
    assert "every termination condition holds (qpos[2:6] > -100, < 100 = [" in text
    assert "np.float64" not in text


def test_mismatch_messages_print_plain_numbers():
    shifted = dict(arm_env.OBSERVATION_SPEC)
    shifted["terms"] = [*shifted["terms"][:4], {"field": "sensordata", "names": "accel"}, shifted["terms"][5]]
    with pytest.raises(ObservationMismatch) as e:
        verify_report(shifted, gym.make("ArmReach-v0"), steps=5)
    assert "np.float" not in str(e.value) and "the spec gives " in str(e.value)


@pytest.mark.parametrize(
    "term, kind, first",
    [
        ({"field": "sensordata", "names": "shoulder_po"}, "sensors", "shoulder_pos"),
        ({"field": "sensordata", "names": "GYRO"}, "sensors", "gyro"),
        ({"field": "site_xpos", "names": "fingertp"}, "sites", "fingertip"),
        ({"field": "qpos", "names": "elbw"}, "joints", "elbow"),
    ],
)
def test_an_unknown_name_lists_the_models_names_closest_first(term, kind, first):
    model = gym.make("ArmReach-v0").unwrapped.model
    with pytest.raises(ObservationError) as e:
        ObservationBuilder([term], model)
    text = str(e.value)
    assert f"the model's {kind}, closest first: {first}" in text, text


# ------------------------------------------------------------------------------ docs
def test_config_reference_is_the_code():
    from pydpg.cli.config_reference import reference_markdown

    assert (ROOT / "docs" / "config.md").read_text() == reference_markdown(), (
        "docs/config.md is stale: regenerate it with `pydpg presets --reference > docs/config.md`"
    )
    cli = subprocess.run(
        [sys.executable, "-m", "pydpg", "presets", "--reference"], capture_output=True, text=True, check=True
    ).stdout
    assert cli == reference_markdown()  # the command the page names


def test_every_config_key_is_documented():
    import dataclasses

    from pydpg.cli.config_reference import _field_comments
    from pydpg.core.config import DDPGConfig
    from pydpg.train.config import TrainConfig

    for cls, skip in ((DDPGConfig, ()), (TrainConfig, ("env_id", "env_kwargs"))):
        comments = _field_comments(cls)
        empty = [f.name for f in dataclasses.fields(cls) if f.name not in skip and not comments.get(f.name)]
        assert not empty, f"{cls.__name__} fields without a description: {empty}"


def test_presets_print_every_agent_key():
    import dataclasses

    from pydpg.core.config import DDPGConfig

    for name in DDPGConfig.presets():
        out = subprocess.run(
            [sys.executable, "-m", "pydpg", "presets", name], capture_output=True, text=True, check=True
        ).stdout
        for f in dataclasses.fields(DDPGConfig):
            assert f"{f.name} = " in out or f"# {f.name} unset" in out, (name, f.name)
    td3 = subprocess.run([sys.executable, "-m", "pydpg", "presets", "td3"], capture_output=True, text=True).stdout
    assert "twin_critics = true  # preset" in td3 and "batch_size = 256\n" in td3


def test_the_examples_readme_exists_and_names_real_files():
    readme = (EXAMPLE / "README.md").read_text()
    for name in ("arm.xml", "arm_env.py", "train_and_deploy.py", "robot_loop.cpp", "CMakeLists.txt"):
        assert f"`{name}`" in readme and (EXAMPLE / name).exists()
    for path in ROOT.glob("examples/**/*.py"):
        if "README.md" in path.read_text():
            assert (path.parent / "README.md").exists(), f"{path} refers to a README that does not exist"


def test_policy_records_the_eval_seed(tmp_path):
    torch.manual_seed(0)
    env = gym.make("InvertedPendulum-v5")
    export_policy(DDPGAgent.from_dims(4, 1), tmp_path / "p.pt", env=env, eval_seed=107, verbose=False)
    assert read_metadata(tmp_path / "p.pt")["eval_seed"] == 107
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(ValueError, match="eval_seed must be a whole number >= 0"):
            export_policy(DDPGAgent.from_dims(4, 1), tmp_path / "q.pt", env=env, eval_seed=bad, verbose=False)
    env.close()
    assert not math.isnan(0.0)


def test_the_custom_robot_readme_commands_run(tmp_path):
    """examples/custom_robot/README.md's command-line journey, as written there (shorter training):
    train the module-registered env, export with a JSON spec, run the C++ loop beside Python."""
    import os

    env = {**os.environ, "PYTHONPATH": str(EXAMPLE)}

    def pydpg(*args):
        return subprocess.run(
            [sys.executable, "-m", "pydpg", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    train = pydpg(
        "train",
        "arm_env:ArmReach-v0",
        "--steps",
        "600",
        "--out",
        "runs/arm",
        "--set",
        "learning_starts=200",
        "--set",
        "hidden=[64,64]",
    )
    assert train.returncode == 0, train.stderr
    (tmp_path / "spec.json").write_text(json.dumps(arm_env.OBSERVATION_SPEC))
    export = pydpg("export", "runs/arm", "-o", "arm_policy.pt", "--observation-spec", "spec.json")
    assert export.returncode == 0, export.stderr
    assert "observation spec verified over 200 env steps" in export.stdout
    assert read_metadata(tmp_path / "arm_policy.pt")["eval_seed"] == 100  # the run's seed 0 + 100
    run = pydpg("run", "arm_policy.pt", "--env", "arm_env:ArmReach-v0", "--episodes", "2", "--no-sleep")
    assert run.returncode == 0, run.stderr
    assert "returns from the same initial states (seed 100)" in run.stdout
    lines = [line for line in run.stdout.splitlines() if line.startswith("episode ") and ": loop " in line]
    assert len(lines) == 2
    for line in lines:  # the loop and Python act on the same file from the same state
        loop, python = (float(line.split(word)[1].split()[0]) for word in (": loop ", "; Python "))
        assert loop == python, line
    # Without PYTHONPATH the module cannot be imported: the message says what to do.
    bad = subprocess.run(
        [sys.executable, "-m", "pydpg", "run", "arm_policy.pt", "--env", "arm_env:ArmReach-v0", "--no-sleep"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert bad.returncode == 2 and "add that directory to PYTHONPATH" in bad.stderr
