"""`pydpg sweep`: specs, aggregation, real sweeps on a local Ray (the shared ``ray_local``), resume
after a killed driver, the SB3 peer trial, and the message without Ray."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pydpg.cli.main import main
from pydpg.core.config import DDPGConfig
from pydpg.experiments.sweep_spec import load_spec
from pydpg.experiments.sweep_summary import summarize
from pydpg.train.config import resolve
from pydpg.train.run_log import METRICS_COLUMNS, read_metrics

torch.set_num_threads(1)
TASK = "InvertedPendulum-v5"
# tests/test_cli.py's SMALL settings: runs of a few hundred steps that learn something.
SMALL_AGENT = {"hidden": [16, 16], "batch_size": 16, "learning_starts": 100}
SMALL_TRAIN = {"eval_every": 100, "eval_episodes": 2, "checkpoint_every": 200}

SPEC_TOML = f"""
name = "tiny"
tasks = ["{TASK}"]
seeds = [0, 1]
total_steps = 400

[agent]
hidden = [16, 16]
batch_size = 16
learning_starts = 100

[train]
eval_every = 100
eval_episodes = 2
checkpoint_every = 200

[settings.base]
[settings.fast_tau]
label = "tau 0.02"
agent = {{ tau = 0.02 }}
"""


def evals(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if not np.isnan(r["eval_mean"])]
    return np.array([r["step"] for r in rows]), np.array([r["eval_mean"] for r in rows])


def write_metrics(path: Path, steps, means) -> None:
    path.mkdir(parents=True)
    rows = [
        {"step": s, "wall_time": s / 250, "sps": 250, "eval_mean": m, "eval_std": 0, "episodes": 1}
        for s, m in zip(steps, means)
    ]
    lines = [",".join(METRICS_COLUMNS)] + [",".join(str(r.get(c, "")) for c in METRICS_COLUMNS) for r in rows]
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------- specs
def test_spec_refuses_unknown_keys_naming_them(tmp_path, capsys):
    base = {"tasks": [TASK], "seeds": [0]}
    cases = [
        ({**base, "setings": {}}, "unknown key 'setings' (did you mean 'settings'?)"),
        ({**base, "settings": {"a": {"agnet": {}}}}, "[settings.a]: unknown key 'agnet' (did you mean 'agent'?)"),
        (
            {**base, "settings": {"a": {"agent": {"tua": 0.1}}}},
            "[settings.a]: [agent] unknown DDPGConfig key(s): 'tua' (did you mean 'tau'?)",
        ),
        (
            {**base, "train": {"eval_evry": 10}},
            "[train] unknown TrainConfig key(s): 'eval_evry' (did you mean 'eval_every'?)",
        ),
        ({**base, "settings": {"a": {"train": {"seed": 3}}}}, "'seed' is set by the sweep (its seeds)"),
        ({**base, "train": {"threads": 2}}, "'threads' is set by the sweep (its one CPU per trial)"),
        (
            {**base, "settings": {"a": {"impl": "sb4"}}},
            "impl must be one of 'pydpg', 'sb3', got 'sb4' (did you mean 'sb3'?)",
        ),
        ({**base, "settings": {"a": {"preset": "td4"}}}, "setting 'a' on InvertedPendulum-v5: unknown preset 'td4'"),
        (
            {**base, "settings": {"a": {"agent": {"tau": 5}}}},
            "[settings.a]: [agent] DDPGConfig.tau must be in (0, 1], got 5",
        ),
        (
            {**base, "settings": {"a": {"impl": "sb3", "agent": {"prioritized": True}}}},
            "Stable-Baselines3 cannot run prioritized = True",
        ),
        ({"tasks": [TASK], "seeds": [0, 0]}, "seeds repeats 0"),
        ({"tasks": [], "seeds": [0]}, "'tasks' must be a non-empty list"),
        (
            {**base, "settings": {"a": {"tasks": ["Hopper-v5"]}}},
            "[settings.a]: tasks 'Hopper-v5' are not among the sweep's tasks (InvertedPendulum-v5)",
        ),
        ({**base, "settings": {"a": {"tasks": []}}}, "[settings.a]: tasks must be a non-empty list"),
        ({**base, "settings": {"a": {"tasks": TASK}}}, "[settings.a]: tasks must be a non-empty list"),
        ({**base, "settings": {"a": {"tasks": [TASK, TASK]}}}, "list of distinct environment ids"),
    ]
    for spec, fragment in cases:
        with pytest.raises(ValueError) as e:
            load_spec(spec)
        assert fragment in str(e.value), (fragment, str(e.value))
    example = load_spec(Path(__file__).parent.parent / "examples" / "sweeps" / "pendulum.toml").trials()
    assert len(example) == 6 and {t.agent["twin_critics"] for t in example if t.setting == "td3"} == {True}
    # Every shipped spec loads (the study specs' commands are documented, so a broken one misleads).
    for path in sorted((Path(__file__).parent.parent / "examples" / "sweeps").glob("*.toml")):
        assert load_spec(path).trials(), path.name
    crossq = load_spec(Path(__file__).parent.parent / "examples" / "sweeps" / "confirm_crossq.toml").trials()
    assert len(crossq) == 6 and {tuple(t.agent["critic_hidden"]) for t in crossq} == {(256, 256)}
    # A setting limited to some of the sweep's tasks has trials on those only, and is resolved
    # (checked) on those only.
    limited = load_spec(
        {
            "tasks": [TASK, "Hopper-v5"],
            "seeds": [0, 1],
            "settings": {"all": {}, "some": {"tasks": ["Hopper-v5"], "preset": "td3"}},
        }
    ).trials()
    assert [(t.task, t.setting, t.seed) for t in limited] == [
        (TASK, "all", 0),
        ("Hopper-v5", "all", 0),
        ("Hopper-v5", "some", 0),
        (TASK, "all", 1),
        ("Hopper-v5", "all", 1),
        ("Hopper-v5", "some", 1),
    ]
    # A TOML file through the CLI: one line, exit 2, the file and the key named.
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC_TOML.replace("[settings.fast_tau]", "[settings.fast_tau]\nimpl_ = 'sb3'"))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "[settings.fast_tau]: unknown key 'impl_' (did you mean 'impl'?)" in err
    assert not (tmp_path / "o").exists()


def test_cli_help_and_flag_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Ray has no authentication" in help_text and "must be on a trusted network" in help_text
    assert "127.0.0.1 only and starts no dashboard" in help_text
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_TOML)
    assert main(["sweep", str(spec), "--ray-address", "127.0.0.1:1", "--num-cpus", "2"]) == 2
    assert "--num-cpus sizes a local Ray" in capsys.readouterr().err
    assert main(["sweep", "--summarize", str(tmp_path), "--resume"]) == 2
    assert "--resume cannot be given with it" in capsys.readouterr().err
    assert main(["sweep"]) == 2 and "sweep needs SPEC.toml" in capsys.readouterr().err


def test_without_ray_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_TOML)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o")]) == 2
    assert "pydpg sweep needs Ray, an optional extra of pydpg: pip install 'pydpg[ray]'" in capsys.readouterr().err
    from pydpg.experiments.sweep import run_sweep

    with pytest.raises(ImportError, match=r"pip install 'pydpg\[ray\]'"):
        run_sweep(str(spec), tmp_path / "o")
    # Aggregating what is on disk needs no Ray.
    write_metrics(tmp_path / "s" / TASK / "base" / "seed0", [100, 200], [1.0, 3.0])
    assert main(["sweep", "--summarize", str(tmp_path / "s")]) == 0
    assert "| InvertedPendulum-v5 | base | 1 (1 running) | 200 | 3.0 ± 0.0 |" in capsys.readouterr().out


def test_summary_statistics_and_tail_rule(tmp_path):
    # 200k-step runs average their last 100k steps; 5k-step runs their last 10% (500 steps).
    steps = np.arange(1, 41) * 5_000
    a, b = np.linspace(0, 390, 40), np.linspace(100, 490, 40) ** 1.1
    write_metrics(tmp_path / "Hopper-v5" / "long" / "seed0", steps, a)
    write_metrics(tmp_path / "Hopper-v5" / "long" / "seed3", steps, b)
    short_steps = np.arange(1, 11) * 500
    write_metrics(tmp_path / "Hopper-v5" / "short" / "seed0", short_steps, np.arange(10.0))
    s = summarize(tmp_path)
    long, short = s.rows
    tail = lambda y: y[steps > 200_000 - 100_000].mean()  # noqa: E731
    # The evaluations pass through metrics.csv as repr() text, unchanged; the summary takes the same
    # numpy means and stds of the same numbers in the same (seed) order: equal, exactly.
    assert long["seeds"] == [0, 3] and long["tail"]["window"] == 100_000 and long["tail"]["rule"] == "last 100k"
    assert long["final"]["mean"] == np.mean([a[-1], b[-1]])
    assert long["final"]["std"] == np.std([a[-1], b[-1]])
    assert long["tail"]["mean"] == np.mean([tail(a), tail(b)])
    assert long["tail"]["std"] == np.std([tail(a), tail(b)])
    assert long["best"]["mean"] == np.mean([a.max(), b.max()])
    assert short["tail"] == {"mean": 9.0, "std": 0.0, "window": 500, "rule": "last 10%"}  # only step 5000 > 4500
    assert long["env_steps_per_s"] == 250 and long["wall_time_s"] == 800  # 200000 / (200000 / 250): exact
    assert "| 250 |" in s.markdown.splitlines()[-1] and "env steps/s |" in s.markdown
    assert "tail mean (window per row)" in s.markdown and "(last 10%: 500)" in s.markdown
    assert (tmp_path / "sweep_summary.md").read_text() == s.markdown
    assert json.loads((tmp_path / "sweep_summary.json").read_text())["rows"][0]["n_seeds"] == 2
    assert s.pngs == [tmp_path / "curves_Hopper-v5.png"] and s.pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_record_carries_seeds_across_directories(tmp_path, capsys):
    # Seed 0 was run (and its directory deleted) elsewhere; its curve survives in sweep_runs.json,
    # and a later directory with seed 1 summarizes over both as if they had run side by side.
    steps = np.arange(1, 41) * 5_000
    a, b = np.linspace(0, 390, 40), np.linspace(100, 490, 40)
    first, second, both = tmp_path / "first", tmp_path / "second", tmp_path / "both"
    write_metrics(first / "Hopper-v5" / "td7" / "seed0", steps, a)
    write_metrics(first / "Hopper-v5" / "td3" / "seed0", steps, b)
    summarize(first)
    record = first / "sweep_runs.json"
    assert [(r["setting"], r["seed"], len(r["steps"])) for r in json.loads(record.read_text())["runs"]] == [
        ("td3", 0, 40),
        ("td7", 0, 40),
    ]
    write_metrics(second / "Hopper-v5" / "td7" / "seed1", steps, b)
    write_metrics(second / "Hopper-v5" / "td3" / "seed0", steps, a)  # on disk: wins over the record's seed 0
    write_metrics(both / "Hopper-v5" / "td7" / "seed0", steps, a)
    write_metrics(both / "Hopper-v5" / "td7" / "seed1", steps, b)
    write_metrics(both / "Hopper-v5" / "td3" / "seed0", steps, a)
    assert main(["sweep", "--summarize", str(second), "--add-runs", str(record)]) == 0
    merged = capsys.readouterr().out
    assert "Hopper-v5 | td7 | 2 (2 running)" in merged
    assert merged == summarize(both).markdown
    # The merged record holds every run, so it can be carried on again.
    runs = json.loads((second / "sweep_runs.json").read_text())["runs"]
    assert [(r["setting"], r["seed"]) for r in runs] == [("td3", 0), ("td7", 0), ("td7", 1)]
    assert runs[0]["evals"] == list(a)  # through JSON as repr() text: unchanged


def test_until_compares_runs_of_different_lengths_at_equal_steps(tmp_path, capsys):
    """A 150k-step run beside a 300k one from a record: --until 150000 cuts the long one's curve, so
    final, tail and best are taken over the same steps; the record written keeps whole curves."""
    long_steps, short_steps = np.arange(1, 61) * 5_000, np.arange(1, 31) * 5_000
    long_evals, short_evals = np.linspace(0, 590, 60), np.linspace(1000, 1290, 30)
    write_metrics(tmp_path / "first" / "Ant-v5" / "td3" / "seed0", long_steps, long_evals)
    summarize(tmp_path / "first")
    write_metrics(tmp_path / "now" / "Ant-v5" / "crossq" / "seed0", short_steps, short_evals)
    record = tmp_path / "first" / "sweep_runs.json"
    assert main(["sweep", "--summarize", str(tmp_path / "now"), "--add-runs", str(record), "--until", "150000"]) == 0
    out = capsys.readouterr().out

    def strict(constant):  # NaN / Infinity tokens are not JSON
        raise AssertionError(f"sweep_summary.json holds {constant}")

    text = (tmp_path / "now" / "sweep_summary.json").read_text()
    rows = {r["setting"]: r for r in json.loads(text, parse_constant=strict)["rows"]}
    td3 = rows["td3"]
    # Numbers through CSV and JSON as repr() text, and the same numpy mean of the same values: exact.
    assert td3["steps"] == 150_000 and td3["final"]["mean"] == long_evals[29]
    assert td3["best"]["mean"] == long_evals[29]
    assert td3["tail"]["mean"] == long_evals[10:30].mean()  # evaluations after 50k, up to 150k
    assert rows["crossq"]["final"]["mean"] == 1290  # linspace's endpoint, exactly
    assert math.isfinite(rows["crossq"]["wall_time_s"])  # not cut: its own wall time
    assert td3["wall_time_s"] is None and td3["env_steps_per_s"] is None  # cut: no wall time to report
    assert "| Ant-v5 | td3 | 1 | 150,000 |" in out and "| — | — |" in out
    runs = json.loads((tmp_path / "now" / "sweep_runs.json").read_text())["runs"]
    assert max(len(r["steps"]) for r in runs) == 60  # the record keeps the whole 300k curve
    for bad in ("0", "-5"):
        assert main(["sweep", "--summarize", str(tmp_path / "now"), "--until", bad]) == 2
        assert "until must be a step count >= 1" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "spec.toml"), "--until", "5"]) == 2
    assert "--until STEP goes with --summarize DIR" in capsys.readouterr().err


def test_window_fixes_the_tail_for_every_row(tmp_path, capsys):
    """--window 35000 with --until 120000: every run's tail is the mean of its evaluations after
    85k (90k..120k), whatever the run's length, in place of the 100k rule that at 120k would reach
    back to 20k."""
    steps = np.arange(1, 61) * 5_000
    a, b = np.linspace(0, 590, 60), np.linspace(1000, 1590, 60)
    write_metrics(tmp_path / "Hopper-v5" / "td3" / "seed0", steps, a)
    write_metrics(tmp_path / "Hopper-v5" / "crossq" / "seed0", steps[:30], b[:30])
    assert main(["sweep", "--summarize", str(tmp_path), "--until", "120000", "--window", "35000"]) == 0
    out = capsys.readouterr().out
    rows = {r["setting"]: r for r in json.loads((tmp_path / "sweep_summary.json").read_text())["rows"]}
    after = (steps > 85_000) & (steps <= 120_000)
    # The same values through repr() text, the same numpy mean: exact.
    assert rows["td3"]["tail"] == {"mean": a[after].mean(), "std": 0.0, "window": 35_000, "rule": "last 35k"}
    assert rows["crossq"]["tail"]["mean"] == b[:30][after[:30]].mean()  # its own last step is 150k: cut
    assert "| last 35k steps |" in out and "after its last 35,000 steps" in out
    assert summarize(tmp_path, write=False, window=1_500).rows[0]["tail"]["rule"] == "last 1,500"
    for bad in ("0", "-5"):
        assert main(["sweep", "--summarize", str(tmp_path), "--window", bad]) == 2
        assert "window must be a step count >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="window must be a step count"):
        summarize(tmp_path, window=2.5)
    assert main(["sweep", str(tmp_path / "spec.toml"), "--window", "5", "--until", "9"]) == 2
    assert "--until STEP, --window STEPS go with --summarize DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: "{not json", "cannot read the runs record"),
        (lambda r: json.dumps({"runs": []}), "is not a runs record"),
        (lambda r: json.dumps({**r, "version": 2}), "of version 2; this pydpg reads version 1"),
        (lambda r: json.dumps({**r, "runs": {}}), '"runs" must be a list'),
        (lambda r: json.dumps({**r, "runs": [7]}), "run 0: must be an object"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "task": ""}]}), "run 0: 'task' must be a non-empty"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "seed": -1}]}), "'seed' must be an integer >= 0"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "seed": True}]}), "'seed' must be an integer >= 0"),
        (
            lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "finished": "yes"}]}),
            "'finished' must be true or false",
        ),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "wall_time_s": -1}]}), "'wall_time_s' must be a finite"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "evals": [1.0]}]}), "lists of the same length"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "steps": [], "evals": []}]}), "non-empty lists"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "steps": [200, 100]}]}), "'steps' must be increasing"),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "steps": [100, 2.5]}]}), "'steps' must be increasing"),
        (
            lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "evals": [1.0, float("nan")]}]}),
            "'evals' must be finite",
        ),
        (lambda r: json.dumps({**r, "runs": [{**r["runs"][0], "evals": [1.0, "2"]}]}), "'evals' must be finite"),
        (lambda r: json.dumps({**r, "runs": r["runs"] * 2}), "run 1: Hopper-v5 / base seed 0 is recorded twice"),
        (lambda r: json.dumps(r)[: len(json.dumps(r)) // 2], "cannot read the runs record"),
    ],
)
def test_bad_runs_records_are_refused_by_name(tmp_path, capsys, damage, message):
    write_metrics(tmp_path / "good" / "Hopper-v5" / "base" / "seed0", [100, 200], [1.0, 3.0])
    summarize(tmp_path / "good")
    bad = tmp_path / "bad.json"
    bad.write_text(damage(json.loads((tmp_path / "good" / "sweep_runs.json").read_text())))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as e:
        summarize(tmp_path / "good", add_runs=[bad])
    assert str(bad) in str(e.value)
    assert main(["sweep", "--summarize", str(tmp_path / "good"), "--add-runs", str(bad)]) == 2
    assert message in capsys.readouterr().err


def test_add_runs_goes_with_summarize(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_TOML)
    assert main(["sweep", str(spec), "--add-runs", str(tmp_path / "r.json")]) == 2
    assert "--add-runs FILE goes with --summarize DIR" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    assert main(["sweep", "--summarize", str(tmp_path / "s"), "--add-runs", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the runs record" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- on Ray
def test_sweep_on_local_ray(ray_local, tmp_path, capsys):
    spec, out = tmp_path / "spec.toml", tmp_path / "out"
    spec.write_text(SPEC_TOML)
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out  # the table only: Tune's own output goes to stderr
    assert printed.startswith("Eval return, mean ± std over seeds")

    rows = {r["setting"]: r for r in json.loads((out / "sweep_summary.json").read_text())["rows"]}
    assert set(rows) == {"base", "fast_tau"}
    preset_tau = resolve(TASK)[0].tau
    for setting, tau in (("base", preset_tau), ("fast_tau", 0.02)):
        finals, tails, bests = [], [], []
        for seed in (0, 1):
            run = out / TASK / setting / f"seed{seed}"
            summary = json.loads((run / "summary.json").read_text())  # a normal, finished run directory
            assert summary["steps"] == 400 and summary["seed"] == seed and summary["config"]["tau"] == tau
            assert summary["config"]["hidden"] == [16, 16] and summary["train"]["eval_every"] == 100
            assert (run / "learning_curve.png").is_file() and any((run / "checkpoints").iterdir())
            assert any((run / "tb").glob("events.out.tfevents.*"))  # TensorBoard, as a plain run writes
            steps, means = evals(run)
            assert list(steps) == [100, 200, 300, 400]
            finals.append(means[-1])
            tails.append(means[steps > 400 - 40].mean())  # last 10% of a 400-step run
            bests.append(means.max())
        r = rows[setting]
        assert r["n_seeds"] == 2 and r["finished"] == 2 and r["steps"] == 400 and r["tail"]["window"] == 40
        # The same metrics.csv values read the same way, the same numpy mean and std of two numbers
        # (whose order does not change them): exact.
        for key, values in (("final", finals), ("tail", tails), ("best", bests)):
            assert r[key]["mean"] == np.mean(values) and r[key]["std"] == np.std(values)
        label = "tau 0.02" if setting == "fast_tau" else "base"
        assert f"| {TASK} | {label} | 2 | 400 | {np.mean(finals):.1f} ± {np.std(finals):.1f} |" in printed
    assert "last 10% (40 steps)" in printed
    assert (out / f"curves_{TASK}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Summarizing again gives the same table; running it again needs --resume; a resume must be
    # of the same trials; a setting name cannot be reused for other values in the same directory.
    assert main(["sweep", "--summarize", str(out)]) == 0 and capsys.readouterr().out == printed
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    assert "already holds this sweep (tiny); continue it with resume=True (--resume)" in capsys.readouterr().err
    spec.write_text(SPEC_TOML.replace("total_steps = 400", "total_steps = 500"))
    assert main(["sweep", str(spec), "--out", str(out), "--resume"]) == 2
    assert "holds a sweep named 'tiny' with other trials" in capsys.readouterr().err
    spec.write_text(SPEC_TOML.replace('name = "tiny"', "").replace("tau = 0.02", "tau = 0.03"))
    assert main(["sweep", str(spec), "--out", str(out), "--resume"]) == 2
    assert "setting 'fast_tau' of InvertedPendulum-v5" in capsys.readouterr().err


def test_killed_sweep_resumes_unfinished_trials(ray_local, tmp_path):
    """The driver is killed (SIGKILL) once one trial has finished and another has checkpointed with most
    of its steps still to go; a resume continues the unfinished trials from their checkpoints and leaves
    the finished alone. Which trials finish first depends on when Ray's workers start (on a loaded
    machine one worker may run several trials before the second starts), so the test asserts on the
    state the kill left, whatever it is, not on a fixed order."""
    from pydpg.experiments.sweep import run_sweep

    out = tmp_path / "out"
    spec = {
        "tasks": [TASK],
        "seeds": [0, 1],
        "agent": SMALL_AGENT,
        "train": {**SMALL_TRAIN, "checkpoint_every": 100},
        "settings": {"short": {"train": {"total_steps": 300}}, "long": {"train": {"total_steps": 1200}}},
    }
    address = ray_local.get_runtime_context().gcs_address
    # The session listens on the loopback only; a second driver joins it in the same local-only mode
    # (the variable ray_session.init sets before it starts a local Ray; os.environ holds it now).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, sys; from pydpg.experiments.sweep import run_sweep; "
            "run_sweep(json.loads(sys.argv[1]), sys.argv[2], address=sys.argv[3], verbose=0)",
            json.dumps(spec),
            str(out),
            address,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def driver_output() -> str:
        driver.kill()
        return driver.communicate()[0][-3000:]

    def progress():
        runs = {f"{d.parent.name}/{d.name}": d for d in out.glob(f"{TASK}/*/seed*")}
        done = {k: d for k, d in runs.items() if (d / "summary.json").exists()}
        partial = {
            k: max(int(c.name.split("_")[1]) for c in cs)
            for k, d in runs.items()
            if k not in done and (cs := list(d.glob("checkpoints/step_*")))
        }
        return done, partial

    # Generous, and free when the state comes early: with two other CPU-bound processes on this
    # 2-core machine, Ray's workers took over 240 s to start the trials and write a first checkpoint.
    deadline = time.monotonic() + 600
    while True:
        done, partial = progress()
        # At most step 700 of 1200: Ray ends a dead driver's trials only after a delay, and the trial
        # must still be unfinished when it does.
        if done and any(k.startswith("long") and step <= 700 for k, step in partial.items()):
            break
        if driver.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the driver ended or took too long before the state to kill it in:\n{driver_output()}")
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # Ray ends the dead driver's trials; wait until their CPUs are free so that nothing still writes.
    freed_by = time.monotonic() + 120
    while ray_local.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < freed_by, "Ray did not free the killed driver's CPUs within 120 s"
        time.sleep(0.1)
    done, partial = progress()  # as the kill left them
    assert done and partial, (sorted(done), partial)
    before = {k: ((d / "metrics.csv").read_bytes(), (d / "summary.json").stat().st_mtime_ns) for k, d in done.items()}

    result = run_sweep(spec, out, resume=True, verbose=0)
    last = {r.config["trial"].replace(f"{TASK}-", "").replace("-seed", "/seed"): r.metrics for r in result.results}
    for k, (metrics_csv, mtime) in before.items():  # finished before the kill: not trained again
        d = out / TASK / k
        assert (d / "metrics.csv").read_bytes() == metrics_csv and (d / "summary.json").stat().st_mtime_ns == mtime
    for k, step in partial.items():  # interrupted: continued from its checkpoint, not restarted
        assert step > 0 and last[k]["resumed_from"] >= step, (k, step, last[k])
    for setting, total in (("short", 300), ("long", 1200)):
        for seed in (0, 1):
            run = out / TASK / setting / f"seed{seed}"
            assert json.loads((run / "summary.json").read_text())["steps"] == total
            assert list(evals(run)[0]) == list(range(100, total + 1, 100))  # every eval once, none lost
    assert {r["setting"]: r["finished"] for r in result.summary.rows} == {"short": 2, "long": 2}


# ---------------------------------------------------------------------------------------- SB3 peer
def test_sb3_peer_has_the_same_hyper_parameters_and_metrics(tmp_path):
    pytest.importorskip("stable_baselines3")
    from pydpg.experiments.sb3_peer import run_sb3, sb3_model, unsupported

    cfg = DDPGConfig(
        hidden=(32, 32),
        actor_lr=1e-3,
        critic_lr=1e-3,
        batch_size=64,
        tau=0.01,
        gamma=0.98,
        buffer_size=5000,
        learning_starts=100,
        exploration_sigma=0.2,
        train_freq=2,
        gradient_steps=3,
    )
    m = sb3_model(TASK, cfg, seed=0)
    assert type(m).__name__ == "DDPG"
    assert (m.learning_rate, m.batch_size, m.tau, m.gamma, m.buffer_size, m.learning_starts) == (
        1e-3,
        64,
        0.01,
        0.98,
        5000,
        100,
    )
    assert (m.train_freq.frequency, m.gradient_steps, m.policy_delay) == (2, 3, 1)
    assert m.policy.net_arch == [32, 32] and np.all(m.action_noise._sigma == 0.2)  # the config's value, copied
    td3 = sb3_model(TASK, DDPGConfig.preset("td3"), seed=0)
    assert type(td3).__name__ == "TD3" and td3.policy_delay == 2 and td3.target_policy_noise == 0.2
    assert td3.policy.critic.n_critics == 2
    assert unsupported(DDPGConfig(critic_lr=1e-3, n_step=3)) == [
        "n_step = 3",
        "actor_lr = 0.0003 with critic_lr = 0.001 (SB3 has one learning rate)",
    ]
    spec = load_spec(
        {
            "tasks": [TASK],
            "seeds": [0],
            "total_steps": 300,
            "agent": SMALL_AGENT,
            "train": SMALL_TRAIN,
            "settings": {"sb3": {"impl": "sb3"}},
        }
    )
    trial = spec.trials()[0]
    out = tmp_path / TASK / "sb3" / "seed0"
    summary = run_sb3(trial.agent, trial.train, out)
    assert summary["steps"] == 300 and summary["impl"] == "sb3"
    assert (out / "metrics.csv").read_text().splitlines()[0] == ",".join(METRICS_COLUMNS)
    assert list(evals(out)[0]) == [100, 200, 300]
    assert summarize(tmp_path).rows[0]["finished"] == 1


def test_setting_records_of_an_older_pydpg_still_match(tmp_path):
    """A sweep started before a config field existed (its setting.json lacks it) resumes: the missing
    field counts as its default. A value that really differs is still refused by name."""
    from pydpg.experiments.sweep import _write_setting_files

    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    spec = load_spec(tmp_path / "spec.toml")
    trials = spec.trials()
    _write_setting_files(trials, spec, tmp_path)
    path = next(tmp_path.glob("*/*/setting.json"))
    rec = json.loads(path.read_text())
    del rec["agent"]["update_backend"]  # what a setting.json written before the field existed holds
    path.write_text(json.dumps(rec))
    _write_setting_files(trials, spec, tmp_path)  # accepted
    rec["agent"]["tau"] = 0.5
    path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="was run with other agent values"):
        _write_setting_files(trials, spec, tmp_path)


def test_a_run_checkpointed_at_another_interval_is_still_the_trial(tmp_path):
    """A trial started by hand (`pydpg train --checkpoint-every`) into the sweep's directory is
    continued by the sweep: checkpoint bookkeeping and the step count are not settings. Anything that
    changes what is learned is refused by name."""
    from pydpg.experiments.sweep import _check_same_run

    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    trial = load_spec(tmp_path / "spec.toml").trials()[0].to_dict()
    agent, train = dict(trial["agent"]), dict(trial["train"])
    _check_same_run(
        agent, {**train, "checkpoint_every": 7, "keep_checkpoints": 3, "total_steps": 10**9}, trial, tmp_path
    )
    with pytest.raises(ValueError, match=r"train.eval_every = 7, but this trial has"):
        _check_same_run(agent, {**train, "eval_every": 7}, trial, tmp_path)
    with pytest.raises(ValueError, match=r"agent.tau = 0.5, but this trial has"):
        _check_same_run({**agent, "tau": 0.5}, train, trial, tmp_path)


def test_a_sweep_setting_trains_randomized_and_under_an_action_contract(ray_local, tmp_path, capsys):
    """A setting's [train] may state randomization and an action contract: its trials train under
    both (the run records them) and export with them."""
    spec, out = tmp_path / "spec.toml", tmp_path / "out"
    spec.write_text(
        f"""
name = "robot"
tasks = ["{TASK}"]
seeds = [0]
total_steps = 200

[agent]
hidden = [16, 16]
batch_size = 16
learning_starts = 100

[train]
eval_every = 100
eval_episodes = 1

[settings.robot.train.randomization]
version = 1
model = [{{ field = "body_mass", scale = [0.8, 1.2] }}]
action = {{ delay = [0, 1] }}

[settings.robot.train.action]
version = 1
actuators = [{{ joint = "slider", scale = 2.0, offset = 0.0 }}]
"""
    )
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    run = out / TASK / "robot" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 200
    assert summary["train"]["randomization"]["action"]["delay"] == [0, 1]
    assert summary["train"]["action"]["actuators"][0]["scale"] == 2.0
    from pydpg.deploy.export import export_checkpoint
    from pydpg.deploy.policy_file import read_metadata

    export_checkpoint(run, tmp_path / "p.pt", verbose=False)
    meta = read_metadata(tmp_path / "p.pt")
    assert (
        meta["randomization"]["model"][0]["field"] == "body_mass"
        and meta["action"]["actuators"][0]["joint"] == "slider"
    )


def test_a_trial_that_died_before_reporting_is_named_by_its_directory():
    # Tune hands back no config for a trial whose worker failed before its first report (it could
    # not import pydpg, say); the sweep named it `None["trial"]` and ended in a TypeError.
    from types import SimpleNamespace

    from pydpg.experiments.sweep import _outcomes

    grid = [
        SimpleNamespace(
            config=None, path="/out/_tune/x/Hopper-v5-td3-seed2", error=ImportError("line\nno _core"), metrics=None
        ),
        SimpleNamespace(
            config={"trial": "Ant-v5-td3-seed0"}, path="/elsewhere", error=None, metrics={"finished": True}
        ),
        SimpleNamespace(config=None, path="/out/_tune/x/Ant-v5-td3-seed1", error=None, metrics=None),
    ]
    failed, unfinished = _outcomes(grid)
    assert failed == [("Hopper-v5-td3-seed2", "no _core")]
    assert unfinished == ["Ant-v5-td3-seed1"]
