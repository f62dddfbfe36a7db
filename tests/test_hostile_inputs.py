"""Hostile and careless inputs that used to hang, overflow or fail without naming what was wrong
(policy files from elsewhere, huge specs and sweeps, extreme loop flags, a full disk). Each must end
within seconds with an error that names the input. A hang is detected by running the case in a
subprocess with a generous timeout: the point is that it ends, not how fast."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import gymnasium as gym
import pytest
import torch

from pydpg import _core
from pydpg.contract.observation import ObservationError
from pydpg.core.agent import DDPGAgent
from pydpg.deploy.export import export_policy
from pydpg.deploy.loop import ControlLoopError, control_loop_path, run_policy
from pydpg.deploy.policy_file import load_torchscript, read_metadata
from pydpg.deploy.runtime import Policy, PolicyFormatError

HANG = 120  # seconds: far beyond what any of these takes, far below "hangs"


@pytest.fixture(scope="module")
def hopper_policy(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hopper") / "p.pt"
    env = gym.make("Hopper-v5")
    export_policy(DDPGAgent.from_dims(11, 3), path, env=env, verbose=False)
    env.close()
    return path


def with_metadata(src, dst, payload: bytes):
    """A copy of the policy at ``src`` whose metadata document is ``payload``, byte for byte."""
    buf = io.BytesIO()
    torch.jit.save(load_torchscript(src), buf, _extra_files={"pydpg_policy.json": payload, "model.xml": load_xml(src)})
    dst.write_bytes(buf.getvalue())
    return dst


def load_xml(path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/extra/model.xml")))


def run_python(code: str, timeout: float = HANG) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------------------ bytes that are not UTF-8
@pytest.mark.parametrize(
    "payload",
    [
        b'{"format": "pydpg-policy\xff", "format_version": 1}',
        b"\xff\xfe{",
        b'{"format": "pydpg-policy", "format_version": 1, "env_id": "x\xc3"}',
    ],
)
def test_non_utf8_metadata_is_a_format_error_not_a_unicode_error(tmp_path, hopper_policy, payload):
    bad = with_metadata(hopper_policy, tmp_path / "bad.pt", payload)
    with pytest.raises(PolicyFormatError, match=r"invalid pydpg metadata") as e:
        Policy(bad)
    assert "\\xff" in str(e.value) or "\\xc3" in str(e.value) or "\\xfe" in str(e.value)  # shown, escaped


def test_non_utf8_spec_is_an_observation_error(hopper_policy):
    model = gym.make("Hopper-v5").unwrapped.model
    with pytest.raises(ObservationError, match="malformed JSON"):
        _core.ObservationBuilder(b'{"version": 1, "terms": [{"field": "q\xffpos"}]}', model._address)


# ------------------------------------------------------------------------------ huge documents
def test_metadata_of_a_million_empty_objects_loads_or_refuses_within_seconds(tmp_path, hopper_policy):
    """4 MB of metadata with a million empty objects: nlohmann's callback parser took > 150 s (its
    time grows with the square of an array); the depth check is now a scan of the text."""
    meta = read_metadata(hopper_policy)
    meta["junk"] = [{}] * 1_000_000
    big = with_metadata(hopper_policy, tmp_path / "big.pt", json.dumps(meta).encode())
    run = run_python(f"""
        from pydpg.deploy.runtime import Policy
        Policy({str(big)!r})
        print("loaded")""")
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-2000:]


def test_a_spec_of_a_million_terms_is_refused_by_name():
    model = gym.make("Hopper-v5").unwrapped.model
    text = json.dumps({"version": 1, "terms": [{"field": "qpos", "start": 0, "stop": 1}] * 1_000_000})
    with pytest.raises(ObservationError, match=r"'terms' has 1000000 entries; pydpg reads at most 65536"):
        _core.ObservationBuilder(text, model._address)
    text = json.dumps(
        {"version": 1, "terms": [{"field": "qpos"}], "termination": [{"field": "qpos", "min": -1e9}] * 100_000}
    )
    with pytest.raises(ObservationError, match=r"'termination' has 100000 entries"):
        _core.TerminationCheck(text, model._address)


def test_a_spec_of_60000_terms_binds_in_linear_time():
    """Below the limit, in a subprocess with a timeout: the parse and the binding are linear."""
    run = run_python("""
        import json, gymnasium as gym
        from pydpg import _core
        m = gym.make("Hopper-v5").unwrapped.model
        t = json.dumps({"version": 1, "terms": [{"field": "qpos", "start": 0, "stop": 1}] * 60000})
        print(_core.ObservationBuilder(t, m._address).size)""")
    assert run.returncode == 0 and run.stdout.strip() == "60000", run.stderr[-2000:]


def test_deeply_nested_and_oversized_json_are_refused(hopper_policy, tmp_path):
    model = gym.make("Hopper-v5").unwrapped.model
    deep = '{"version": 1, "terms": [' + "[" * 100 + "]" * 100 + "]}"
    with pytest.raises(ObservationError, match="nested deeper than 64 levels"):
        _core.ObservationBuilder(deep, model._address)
    huge = '{"version": 1, "pad": "' + "x" * (65 << 20) + '"}'
    with pytest.raises(ObservationError, match=r"pydpg reads at most 64 MiB"):
        _core.ObservationBuilder(huge, model._address)


# ------------------------------------------------------------------------------ the loop's numbers
@pytest.mark.parametrize("limit", [2**62, 10**15, 0, -5])
def test_an_absurd_episode_limit_in_the_metadata_is_refused_by_name(tmp_path, hopper_policy, limit):
    meta = read_metadata(hopper_policy)
    meta["task"]["max_episode_steps"] = limit
    bad = with_metadata(hopper_policy, tmp_path / "bad.pt", json.dumps(meta).encode())
    with pytest.raises(PolicyFormatError, match=r"task\.max_episode_steps must be in \[1, 1e9\]"):
        Policy(bad)
    with pytest.raises(ControlLoopError, match=r"task\.max_episode_steps"):
        run_policy(bad, realtime=False, max_steps=3)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("frame_skip", 10**9, r"task\.frame_skip must be in \[1, 1000000\]"),
        ("timestep", -0.01, r"task\.timestep must be a finite number of seconds"),
        ("timestep", float("nan"), r"task\.timestep is NaN"),
    ],
)
def test_bad_task_timing_is_refused_by_name(tmp_path, hopper_policy, field, value, match):
    meta = read_metadata(hopper_policy)
    meta["task"][field] = value
    bad = with_metadata(hopper_policy, tmp_path / "bad.pt", json.dumps(meta).encode())
    with pytest.raises(PolicyFormatError, match=match):
        Policy(bad)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--max-steps", "1000000000000"], r"--max-steps expects an integer in \[1, 1000000000\]"),
        (["--episodes", "10000000"], r"--episodes expects an integer in \[1, 1000000\]"),
        (["--hz", "1e-9"], r"--hz: a control rate of 1e-09 Hz .* physics steps per action \(at most 1000000\)"),
        (["--threads", "100000"], r"--threads expects an integer in \[1, 1024\]"),
    ],
)
def test_extreme_loop_flags_are_refused_by_name(hopper_policy, args, match):
    run = subprocess.run(
        [control_loop_path(), str(hopper_policy), "--no-sleep", *args], capture_output=True, text=True, timeout=HANG
    )
    assert run.returncode == 2
    assert __import__("re").search(match, run.stderr), run.stderr


@pytest.mark.parametrize("flag", ["--trace", "--json"])
def test_a_full_disk_fails_the_loop(hopper_policy, flag):
    """--trace / --json to a device that is always full: exit 1 naming the file, never 0."""
    run = subprocess.run(
        [control_loop_path(), str(hopper_policy), "--no-sleep", "--max-steps", "2000", "--quiet", flag, "/dev/full"],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert run.returncode == 1 and f"cannot write the {flag} file '/dev/full'" in run.stderr, run.stderr


def test_a_long_run_keeps_a_bounded_window_of_step_times(hopper_policy, tmp_path):
    """A billion-step run needs no 8 GB of step samples: the loop keeps the most recent 2^20; a short
    run's statistics count exactly its steps."""
    out = run_policy(hopper_policy, realtime=False, episodes=3, max_steps=40)
    assert out["step_us"]["count"] == sum(out["lengths"])


# ------------------------------------------------------------------------------ sweeps
def test_a_sweep_of_100000_seeds_is_resolved_within_seconds():
    """The duplicate check was quadratic (249 s of CPU before Ray started) and every trial was
    resolved from its preset again; now both are linear, in a subprocess with a timeout."""
    run = run_python("""
        from pydpg.experiments.sweep_spec import parse_spec
        spec = parse_spec({"tasks": ["InvertedPendulum-v5"], "seeds": list(range(100000)), "total_steps": 1000})
        trials = spec.trials()
        assert [t.seed for t in trials[:3]] == [0, 1, 2] and trials[-1].train["seed"] == 99999
        print(len(trials))""")
    assert run.returncode == 0 and run.stdout.strip() == "100000", run.stderr[-2000:]
    from pydpg.experiments.sweep_spec import parse_spec

    with pytest.raises(ValueError, match=r"seeds repeats 7$"):
        parse_spec({"tasks": ["InvertedPendulum-v5"], "seeds": [7, 1, 7], "total_steps": 1000})


# ------------------------------------------------------------------------------ a run's observation spec
@pytest.mark.parametrize(
    "spec, match",
    [
        ({"version": 1, "terms": [{"field": "qpos", "bogus": 1}]}, "unknown key 'bogus'"),
        ({"version": 1, "terms": [{"field": "qpos", "names": "no_such_joint"}]}, "no joint named 'no_such_joint'"),
        (
            {"version": 1, "terms": [{"field": "qpos", "stop": 10**12}]},
            r"slice \[0:1000000000000\] of qpos is out of range",
        ),
        ({"version": 7, "terms": [{"field": "qpos"}]}, "observation spec version 7"),
        ({"version": 1, "terms": []}, "'terms' must be a non-empty list"),
        ("walker", "does not fit Hopper-v5"),  # another robot's spec
    ],
)
def test_a_runs_observation_spec_is_checked_before_training(tmp_path, spec, match):
    """`pydpg train --config` with an [observation] table the env cannot satisfy: refused when the
    run starts, not at export hours later (and a sweep's [train] observation before Ray starts)."""
    from pydpg.contract.observation import task_spec
    from pydpg.core.config import DDPGConfig
    from pydpg.experiments.sweep import _check_envs
    from pydpg.experiments.sweep_spec import parse_spec
    from pydpg.train.config import TrainConfig
    from pydpg.train.trainer import Trainer

    if spec == "walker":
        spec = task_spec("Walker2d-v5")
    train = TrainConfig(env_id="Hopper-v5", total_steps=10, eval_every=0, checkpoint_every=0, observation=spec)
    with pytest.raises(ValueError, match=match):
        Trainer(DDPGConfig(learning_starts=5), train, out_dir=tmp_path / "run", tensorboard=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    sweep = parse_spec({"tasks": ["Hopper-v5"], "seeds": [0], "total_steps": 10, "train": {"observation": spec}})
    with pytest.raises(ValueError, match=match):
        _check_envs(sweep.trials())


# ------------------------------------------------------------------------------ ids, files and paths
@pytest.mark.parametrize(
    "env_id, match",
    [
        ("mymod_that_does_not_exist:Typo-v0", r"cannot import the module 'mymod_that_does_not_exist'.*PYTHONPATH"),
        ("os:NoSuch-v0", r"the module 'os' registers no environment 'NoSuch-v0'"),
        ("os:bad id", r"the module 'os' registers no environment 'bad id'"),
        (":Hopper-v5", r"must be 'module:Name-vN'"),
        ("Hoper-v5", r"unknown environment id 'Hoper-v5'; did you mean 'Hopper-v5'"),
    ],
)
def test_module_qualified_env_ids_that_do_not_resolve_are_named(env_id, match, tmp_path):
    from pydpg.common.envs import make_env

    with pytest.raises(ValueError, match=match):
        make_env(env_id)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pydpg",
            "train",
            env_id,
            "--steps",
            "10",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and __import__("re").search(match, r.stderr), r.stderr


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, bytes(range(256)) * 20, "pickle"])
def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(tmp_path, content):
    """Random bytes, or a pickle of arbitrary objects, given to `pydpg eval` / `export`: the message
    says what the file is not, and never advises weights_only=False for a file from elsewhere."""
    path = tmp_path / "model.pt"
    if content == "pickle":

        class Evil:
            def __reduce__(self):
                return (print, ("unpickled!",))

        torch.save({"x": Evil()}, path)
    else:
        path.write_bytes(content)
    for cmd in (["eval", str(path)], ["export", str(path), "-o", str(tmp_path / "p.pt")]):
        r = subprocess.run([sys.executable, "-m", "pydpg", *cmd], capture_output=True, text=True, timeout=HANG)
        assert r.returncode == 2, r.stderr
        assert "is corrupt or not a pydpg file" in r.stderr or "is not a pydpg file" in r.stderr, r.stderr
        assert "weights_only" not in r.stderr and "unpickled!" not in r.stdout + r.stderr


def test_every_path_a_sweep_writes_stays_under_out(tmp_path):
    """Task ids and setting names become directories: a task named '..' once wrote OUT/../default/."""
    from pydpg.experiments.sweep import _check_paths
    from pydpg.experiments.sweep_spec import Trial, task_dir

    assert task_dir("..") == "__" and task_dir(".") == "_" and task_dir("../x") == ".._x"
    inside = Trial("Hopper-v5", "default", 0, "pydpg", {}, {})
    _check_paths([inside, Trial("..", "default", 0, "pydpg", {}, {})], tmp_path)
    escaping = Trial("Hopper-v5", "../../elsewhere", 0, "pydpg", {}, {})  # a name parse_spec refuses anyway
    with pytest.raises(ValueError, match="outside OUT"):
        _check_paths([escaping], tmp_path)
