"""The `pydpg` command line and the config files behind it: presets, layering, every user error."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from pydpg import presets
from pydpg.cli.main import main
from pydpg.common.envs import MUJOCO_TASKS
from pydpg.core.config import DDPGConfig
from pydpg.train.config import resolve

torch.set_num_threads(1)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
SMALL = [
    "--set",
    "hidden=[16,16]",
    "--set",
    "batch_size=16",
    "--set",
    "learning_starts=100",
    "--eval-every",
    "200",
    "--eval-episodes",
    "2",
    "--no-progress",
    "--no-tensorboard",
]


def pydpg(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pydpg", *args], capture_output=True, text=True, env=env or ENV, timeout=timeout
    )


def fails(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err
    return err


# ---------------------------------------------------------------------------------------- help
def test_help_does_not_import_the_heavy_stack():
    code = (
        "import sys, pydpg; before = set(sys.modules)\n"
        "from pydpg.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m.split('.')[0] in ('gymnasium', 'mujoco', 'matplotlib', 'torch')"
        " or m in ('pydpg.train.trainer', 'pydpg.core.agent')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_m_pydpg_dispatches_subcommands():
    r = pydpg("--help")
    assert r.returncode == 0 and "train" in r.stdout and "eval" in r.stdout and "presets" in r.stdout
    r = pydpg("train", "--help")
    assert r.returncode == 0
    for flag in ("--steps", "--seed", "--config", "--out", "--device", "--td3", "--preset", "--resume"):
        assert flag in r.stdout
    r = pydpg("eval", "--help")
    assert r.returncode == 0 and "--episodes" in r.stdout and "--render-video" in r.stdout
    assert main([]) == 2  # no subcommand: help, usage error


# ---------------------------------------------------------------------------------------- train errors
def test_train_refuses_bad_input(capsys, tmp_path):
    fails(capsys, ["train", "HalfCheeta-v5"], "unknown environment id 'HalfCheeta-v5'", "'HalfCheetah-v5'")
    fails(capsys, ["train", "CartPole-v1", "--out", str(tmp_path / "c")], "Discrete action space", "continuous Box")
    fails(capsys, ["train", "Hopper-v5", "--set", "tau=5"], "DDPGConfig.tau must be in (0, 1], got 5")
    fails(capsys, ["train", "Hopper-v5", "--set", "eval_every=-1"], "TrainConfig.eval_every must be an int >= 0")
    fails(capsys, ["train", "Hopper-v5", "--set", "tua=0.1"], "'tua' (did you mean 'tau'?)")
    fails(capsys, ["train", "Hopper-v5", "--preset", "td4"], "unknown preset 'td4'", "'td3'")
    fails(
        capsys,
        ["train", "Hopper-v5", "--device", "cuda:7"]
        if not torch.cuda.is_available()
        else ["train", "Hopper-v5", "--device", "tpu"],
        "device",
    )
    fails(capsys, ["train"], "needs ENV_ID")
    fails(capsys, ["train", "--resume", str(tmp_path / "nothing")], "no checkpoint at")
    fails(capsys, ["train", "--resume", str(tmp_path), "--seed", "0", "--td3"], "--td3, --seed cannot be changed")
    with pytest.raises(SystemExit):
        main(["train", "Hopper-v5", "--steps", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_train_refuses_bad_config_files(capsys, tmp_path):
    cases = {
        "bad_value.toml": ("[agent]\ntau = 5.0\n", ["bad_value.toml", "[agent]", "DDPGConfig.tau must be in (0, 1]"]),
        "bad_train.toml": ("[train]\nn_envs = 0\n", ["[train]", "TrainConfig.n_envs must be an int >= 1, got 0"]),
        "bad_table.toml": ("[agnet]\ntau = 0.1\n", ["unknown table or key 'agnet' (did you mean 'agent'?)"]),
        "bad_key.toml": ("[agent]\nhiden = [64, 64]\n", ["'hiden' (did you mean 'hidden'?)"]),
        "bad_type.toml": ("[agent]\nhidden = 64\n", ["DDPGConfig.hidden must be a sequence of positive ints"]),
        "bad_syntax.toml": ("[agent\ntau = \n", ["invalid TOML"]),
        "not_table.toml": ("agent = 3\n", ["'agent' must be a table"]),
    }
    for name, (content, fragments) in cases.items():
        (tmp_path / name).write_text(content)
        fails(capsys, ["train", "Hopper-v5", "--config", str(tmp_path / name)], *fragments)
    fails(capsys, ["train", "Hopper-v5", "--config", str(tmp_path / "missing.toml")], "does not exist")


# ---------------------------------------------------------------------------------------- train + eval
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "InvertedPendulum-v5", "--steps", "400", "--seed", "2", "--out", str(out), *SMALL]) == 0
    return out


def test_train_writes_a_run(trained):
    s = json.loads((trained / "summary.json").read_text())
    assert s["steps"] == 400 and s["seed"] == 2 and s["config"]["hidden"] == [16, 16]
    assert s["train"]["eval_every"] == 200 and s["env_id"] == "InvertedPendulum-v5"
    assert (trained / "metrics.csv").exists() and (trained / "learning_curve.png").exists()
    assert not (trained / "tb").exists()  # --no-tensorboard


def test_config_observation_table_travels_from_train_to_export(tmp_path, capsys):
    """A config file's [observation] table is stored with the run; `pydpg export` of its checkpoint
    checks it against the env and ships it (here the pendulum's observation, stated by joint name,
    with a safety stop)."""
    (tmp_path / "c.toml").write_text(
        "[observation]\nversion = 1\n"
        '[[observation.terms]]\nfield = "qpos"\nnames = ["slider", "hinge"]\n'
        '[[observation.terms]]\nfield = "qvel"\n'
        '[[observation.termination]]\nfield = "qpos"\nfinite = true\n'
        '[[observation.termination]]\nfield = "qvel"\nfinite = true\n'
        '[[observation.termination]]\nfield = "qpos"\nnames = "hinge"\nmin = -0.2\nmax = 0.2\nstrict = false\n'
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "InvertedPendulum-v5",
                "--steps",
                "300",
                "--config",
                str(tmp_path / "c.toml"),
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert main(["export", str(out), "-o", str(tmp_path / "p.pt")]) == 0
    from pydpg.deploy.policy_file import read_metadata

    spec = read_metadata(tmp_path / "p.pt")["observation"]
    assert spec["terms"][0] == {"field": "qpos", "names": ["slider", "hinge"]}
    assert spec["termination"][2]["names"] == "hinge"


def test_train_refuses_to_overwrite_a_run(capsys, trained):
    fails(capsys, ["train", "InvertedPendulum-v5", "--out", str(trained)], "already holds a run", "--resume")


def test_resume_a_finished_run_with_more_steps(capsys, tmp_path, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "--resume", str(run), "--steps", "600", "--no-progress", "--no-tensorboard"]) == 0
    assert "from step 400" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["steps"] == 600
    assert (
        main(["train", "--resume", str(run), "--steps", "700", "--threads", "1", "--no-progress", "--no-tensorboard"])
        == 0
    )
    assert "from step 600" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["train"]["threads"] == 1
    fails(capsys, ["train", "Hopper-v5", "--resume", str(run)], "is a run of 'InvertedPendulum-v5', not 'Hopper-v5'")


def test_ctrl_c_while_the_trainer_starts_exits_130_with_a_message_not_a_traceback(
    capsys, tmp_path, trained, monkeypatch
):
    """Starting can take minutes (Ray workers on a loaded machine: CI saw > 2 min); a Ctrl-C then is
    an interruption like one during training, not a crash."""
    from pydpg.train.trainer import Trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "__init__", interrupted)
    monkeypatch.setattr(Trainer, "resume", interrupted)
    assert main(["train", "InvertedPendulum-v5", "--out", str(tmp_path / "new"), "--no-progress"]) == 130
    assert "interrupted while starting, before training; run the same command again" in capsys.readouterr().err
    assert main(["train", "--resume", str(trained)]) == 130
    assert f"`pydpg train --resume {trained}` continues it" in capsys.readouterr().err


def test_eval_run_dir_checkpoint_and_model_file(capsys, trained, tmp_path):
    assert main(["eval", str(trained), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("InvertedPendulum-v5: return") and out.count("episode ") == 3
    ckpt = next((trained / "checkpoints").glob("step_*"))
    assert main(["eval", str(ckpt), "--episodes", "3"]) == 0
    assert capsys.readouterr().out == out  # same default seed (run seed + 100): same episodes
    assert main(["eval", str(ckpt / "model.pt"), "--episodes", "3", "--seed", "7"]) == 0
    capsys.readouterr()
    # The default seed is the training run's eval seed: the last eval row must match a CLI eval.
    import csv

    last = list(csv.DictReader(open(trained / "metrics.csv")))[-1]
    assert main(["eval", str(trained), "--episodes", "2"]) == 0
    assert f"return {float(last['eval_mean']):.2f}" in capsys.readouterr().out


def test_eval_refuses_bad_input(capsys, trained, tmp_path):
    fails(capsys, ["eval", str(tmp_path / "nope")], "no checkpoint at")
    (tmp_path / "empty").mkdir()
    fails(capsys, ["eval", str(tmp_path / "empty")], "no checkpoint found")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    fails(capsys, ["eval", str(tmp_path / "junk.pt")], "corrupt or not a pydpg file")
    model = torch.load(next((trained / "checkpoints").glob("step_*")) / "model.pt", weights_only=True)
    torch.save({**model, "format_version": 0}, tmp_path / "old.pt")
    fails(capsys, ["eval", str(tmp_path / "old.pt")], "format version 0")
    fails(capsys, ["eval", str(trained), "--env", "Hopper-v5"], "model expects (4,)")
    fails(capsys, ["eval", str(trained), "--env", "CartPole-v1"], "Discrete")
    fails(capsys, ["eval", str(trained), "--render-video", str(tmp_path / "v.avi")], ".mp4 or .gif")


def test_render_video_or_a_clear_message(trained, tmp_path):
    bad = pydpg(
        "eval",
        str(trained),
        "--episodes",
        "1",
        "--render-video",
        str(tmp_path / "x.gif"),
        env={**ENV, "MUJOCO_GL": "no-such-backend"},
    )
    assert bad.returncode == 2 and "offscreen rendering does not work here" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.gif").exists()
    env = {k: v for k, v in ENV.items() if k != "MUJOCO_GL"}
    r = pydpg("eval", str(trained), "--episodes", "1", "--render-video", str(tmp_path / "v.gif"), env=env)
    if r.returncode != 0:  # a machine without EGL: the message must say so
        assert r.returncode == 2 and "offscreen rendering does not work here" in r.stderr, r.stderr
        pytest.skip("offscreen rendering unavailable here: " + r.stderr.strip())
    assert (tmp_path / "v.gif").read_bytes()[:6] == b"GIF89a" and "video:" in r.stdout
    r = pydpg("eval", str(trained), "--episodes", "1", "--render-video", str(tmp_path / "v.mp4"), env=env)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        assert r.returncode == 2 and "imageio-ffmpeg" in r.stderr
    else:
        assert r.returncode == 0 and (tmp_path / "v.mp4").stat().st_size > 0, r.stderr


# ---------------------------------------------------------------------------------------- presets
def test_presets_ship_for_every_mujoco_task_and_are_valid():
    assert set(MUJOCO_TASKS) <= set(presets.available())
    files = {p.name for p in resources.files("pydpg.presets").iterdir()}
    assert {f"{t}.toml" for t in MUJOCO_TASKS} <= files  # inside the package: wheel.packages ships them
    for task in presets.available():
        cfg, train = resolve(task)
        assert train.env_id == task and cfg.learning_starts in (1000, 25_000), task
        # Every preset comments its sources.
        assert presets.text(task).lstrip().startswith("#")


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in MUJOCO_TASKS) and "td3" in out
    assert main(["presets", "hopper"]) == 0
    assert "[agent]" in capsys.readouterr().out
    assert main(["presets", "paper"]) == 0
    assert "hidden = [400, 300]  # preset" in capsys.readouterr().out  # TOML, as a config file states it
    fails(capsys, ["presets", "hoper"], "no shipped preset 'hoper'")


def test_config_layering(tmp_path):
    cfg, train = resolve("InvertedPendulum-v5")
    base = presets.parse("p", presets.text("InvertedPendulum-v5"))
    assert all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v) for k, v in base["agent"].items())
    # Algorithm preset over the task preset; the user's file over both; --td3; flags last.
    (tmp_path / "c.toml").write_text(
        "[agent]\ntau = 0.02\nbatch_size = 128\n[train]\nn_envs = 2\n[env]\nreset_noise_scale = 0.05\n"
    )
    cfg, train = resolve(
        "InvertedPendulum-v5",
        preset="paper",
        config_file=tmp_path / "c.toml",
        td3=True,
        agent={"batch_size": 32},
        train={"seed": 9},
        env_kwargs={"frame_skip": 2},
    )
    assert cfg.hidden == (400, 300) and cfg.exploration_noise == "ou"  # paper
    assert cfg.tau == 0.02 and cfg.batch_size == 32  # file, then override
    assert cfg.twin_critics and cfg.policy_delay == 2  # --td3
    assert cfg.learning_starts == 1000  # task preset, untouched by the others
    assert train.n_envs == 2 and train.seed == 9 and train.env_kwargs == {"reset_noise_scale": 0.05, "frame_skip": 2}
    # An env without a shipped preset gets the defaults; a task preset can be named explicitly.
    cfg, _ = resolve("HalfCheetah-v4")
    assert cfg == DDPGConfig(learning_starts=25_000)
    _, train = resolve("HalfCheetah-v4", preset="Hopper-v5")
    assert train.env_id == "HalfCheetah-v4" and train.eval_every == 5000


def test_custom_mjcf_from_the_command_line(capsys, tmp_path):
    from gymnasium.envs.mujoco import inverted_pendulum_v5

    src = Path(inverted_pendulum_v5.__file__).parent / "assets" / "inverted_pendulum.xml"
    (tmp_path / "pole.xml").write_text(src.read_text().replace('0 0 0.6"', '0 0 0.9"'))
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "InvertedPendulum-v5",
                "--env-kwarg",
                f"xml_file={tmp_path / 'pole.xml'}",
                "--steps",
                "200",
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["train"]["env_kwargs"] == {"xml_file": str(tmp_path / "pole.xml")}
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "1"]) == 0  # eval remakes the env with the same model file
    fails(
        capsys,
        [
            "train",
            "InvertedPendulum-v5",
            "--env-kwarg",
            "xml_file=./no_such_model.xml",
            "--out",
            str(tmp_path / "r2"),
            *SMALL,
        ],
        "no_such_model.xml",
    )
    fails(
        capsys,
        ["train", "InvertedPendulum-v5", "--env-kwarg", "no_such_kwarg=1", "--out", str(tmp_path / "r3"), *SMALL],
        "no_such_kwarg",
    )
