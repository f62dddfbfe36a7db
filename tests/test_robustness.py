"""`pydpg robustness` (pydpg.deploy.robustness): the quantities it varies and their refusals, the
nominal point reproduced exactly by every neutral perturbation, parallel equal to serial, and the CLI."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from policy_helpers import pendulum_actor

from pydpg.cli import main
from pydpg.core.agent import DDPGAgent
from pydpg.deploy.export import export_policy
from pydpg.deploy.robustness import Vary, parse_vary, perturbation, report_table, robustness_report


@pytest.fixture(scope="module")
def pendulum_policy(tmp_path_factory):
    """The linear balancing controller (it holds the pendulum for 1000 steps), exported."""
    env = gym.make("InvertedPendulum-v5")
    path = tmp_path_factory.mktemp("robust") / "pendulum.pt"
    export_policy(DDPGAgent(pendulum_actor(), [torch.nn.Linear(5, 1)]), path, env=env, eval_seed=3, verbose=False)
    env.close()
    return path


def test_vary_forms():
    assert parse_vary("body_mass=0.5:1.5:3") == Vary("body_mass", (0.5, 1.0, 1.5))
    assert parse_vary("delay=0:2") == Vary("delay", (0.0, 1.0, 2.0))  # every whole step
    assert parse_vary("obs_noise=0:0.1") == Vary("obs_noise", tuple(np.linspace(0, 0.1, 5)))
    assert parse_vary("geom_friction=0.5,1,2") == Vary("geom_friction", (0.5, 1.0, 2.0))
    assert perturbation("delay", 2.0) == {"version": 1, "action": {"delay": [2, 2]}}
    assert perturbation("body_mass", 1.2) == {"version": 1, "model": [{"field": "body_mass", "scale": [1.2, 1.2]}]}


@pytest.mark.parametrize(
    "text, message",
    [
        ("body_mas=1:2", "did you mean 'body_mass'"),
        ("body_mass", "expected NAME=LOW:HIGH"),
        ("body_mass=1:2:3:4", "expected LOW:HIGH"),
        ("body_mass=2:1", "low 2.0 > high 1.0"),
        ("body_mass=nan:1", "not finite"),
        ("body_mass=a:1", "'a' is not a number"),
        ("body_mass=0.5:1:2.5", "whole number"),
        ("body_mass=-1:1", "must be >= 0"),
        ("delay=0.5,1", "whole number of control steps"),
        ("delay=0:99", "in 0..20"),
        ("obs_noise=-0.1,0", "must be >= 0"),
    ],
)
def test_vary_refusals(text, message):
    with pytest.raises(ValueError, match=message):
        parse_vary(text)


def test_neutral_points_reproduce_the_nominal_returns_exactly(pendulum_policy):
    """A mass times 1, a delay of 0 and noise of std 0 are the nominal env: the same episodes, the
    same returns, exactly (the same computation); a real perturbation changes them."""
    report = robustness_report(
        pendulum_policy,
        [parse_vary("body_mass=1,0.02"), parse_vary("delay=0:1"), parse_vary("obs_noise=0,0.5")],
        episodes=2,
        jobs=1,
    )
    nominal = report["nominal"]["returns"]
    assert report["seed"] == 3 and len(nominal) == 2  # the file's eval_seed, by default
    by = {(r["quantity"], r["value"]): r for r in report["rows"]}
    for neutral in (("body_mass", 1.0), ("delay", 0.0), ("obs_noise", 0.0)):
        assert by[neutral]["returns"] == nominal and by[neutral]["fraction"] == 1.0, neutral
    changed = [by[k]["returns"] != nominal for k in (("body_mass", 0.02), ("delay", 1.0), ("obs_noise", 0.5))]
    assert any(changed)
    text = report_table(report)
    assert f"nominal: {np.mean(nominal):.1f}" in text and "under delay" in text


def test_parallel_points_equal_serial_ones(pendulum_policy):
    varies = [parse_vary("body_mass=0.5,2")]
    serial = robustness_report(pendulum_policy, varies, episodes=1, jobs=1)
    parallel = robustness_report(pendulum_policy, varies, episodes=1, jobs=2)
    assert serial["rows"] == parallel["rows"] and serial["nominal"] == parallel["nominal"]


def test_ray_tasks_equal_local_processes(pendulum_policy, ray_local):
    """--ray-address: each point a Ray task (here the test session's local Ray), the same returns."""
    from pydpg.cli.robustness import ray_map

    varies = [parse_vary("body_mass=0.8,1.2")]
    local = robustness_report(pendulum_policy, varies, episodes=2, jobs=1)
    remote = robustness_report(pendulum_policy, varies, episodes=2, map_points=ray_map(None))
    assert remote["nominal"] == local["nominal"] and remote["rows"] == local["rows"]


def test_cli_writes_table_png_and_json(pendulum_policy, tmp_path, capsys):
    png, out = tmp_path / "r.png", tmp_path / "r.json"
    rc = main(
        [
            "robustness",
            str(pendulum_policy),
            "--vary",
            "body_mass=0.5,1",
            "--episodes",
            "1",
            "--jobs",
            "1",
            "--png",
            str(png),
            "--json",
            str(out),
        ]
    )
    assert rc == 0 and png.stat().st_size > 1000
    assert json.loads(out.read_text())["rows"][0]["quantity"] == "body_mass"
    assert "keeps >= 80 %" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give at least one --vary"),
        (["--vary", "mass=1:2"], "unknown quantity 'mass'"),
        (["--vary", "delay=0:1", "--vary", "delay=1:2"], "varied twice"),
        (["--vary", "delay=0:1", "--episodes", "0"], ">= 1"),
        (["--vary", "delay=0:1", "--keep", "1.5"], "--keep must be in"),
    ],
)
def test_cli_refusals(pendulum_policy, capsys, args, message):
    assert main(["robustness", str(pendulum_policy), *args]) == 2
    assert message in capsys.readouterr().err
    assert main(["robustness", "missing.pt", "--vary", "delay=0:1"]) == 2


def test_a_grid_varies_two_at_once(pendulum_policy, tmp_path, capsys):
    assert perturbation("body_mass", 0.5, ("delay", 1.0)) == {
        "version": 1,
        "model": [{"field": "body_mass", "scale": [0.5, 0.5]}],
        "action": {"delay": [1, 1]},
    }
    report = robustness_report(
        pendulum_policy, [parse_vary("body_mass=1,0.02"), parse_vary("delay=0:1")], episodes=1, jobs=1, grid=True
    )
    g = report["grid"]
    assert (g["x"], g["y"], g["xs"], g["ys"]) == ("body_mass", "delay", [1.0, 0.02], [0.0, 1.0])
    assert g["mean"][0][0] == report["nominal"]["mean"] and g["fraction"][0][0] == 1.0  # the neutral corner
    by = {(r["quantity"], r["value"]): r["mean"] for r in report["rows"]}
    assert g["mean"][1][0] == by[("body_mass", 0.02)] and g["mean"][0][1] == by[("delay", 1.0)]  # the edges
    assert "both at once" in report_table(report)
    png = tmp_path / "g.png"
    args = ["robustness", str(pendulum_policy), "--vary", "body_mass=1,0.5", "--vary", "delay=0:1", "--grid"]
    assert main([*args, "--episodes", "1", "--jobs", "1", "--png", str(png)]) == 0 and png.stat().st_size > 1000
    assert main(["robustness", str(pendulum_policy), "--vary", "delay=0:1", "--grid"]) == 2
    assert "exactly two --vary" in capsys.readouterr().err
    with pytest.raises(ValueError, match="grid varies two"):
        robustness_report(pendulum_policy, [parse_vary("delay=0:1")], grid=True)
