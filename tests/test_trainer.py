"""The training run: what gets stored (termination, truncation, autoreset), exact resume, seeding,
outputs, checkpoint files and their failure modes, and the pydpg.DDPG API."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import toy_env
from float_bounds import U64, gamma
from policy_helpers import unit_box_policy

from pydpg.api import DDPG
from pydpg.common.envs import scale_action
from pydpg.core.config import DDPGConfig
from pydpg.core.replay import ReplayBuffer
from pydpg.deploy.rounding import rounding_bound
from pydpg.files import checkpoint as ckpt_io
from pydpg.train.config import TrainConfig
from pydpg.train.run_log import METRICS_COLUMNS, read_metrics
from pydpg.train.trainer import Trainer

torch.set_num_threads(1)
GAMMA = 0.99
TIME_COLUMNS = ("wall_time", "sps")


def toy_trainer(n_envs=3, steps=90, **agent):
    cfg = DDPGConfig(
        hidden=(8, 8), buffer_size=1000, batch_size=16, learning_starts=agent.pop("learning_starts", 10**6), **agent
    )
    return Trainer(cfg, TrainConfig(env_id=toy_env.ID, n_envs=n_envs, total_steps=steps, eval_every=0, seed=3))


def all_transitions(buffer, draws=20_000):
    """Every stored transition (sampling with replacement until all were seen), as numpy rows."""
    b = buffer.sample(draws)
    rows = torch.cat([b.obs, b.action, b.reward, b.next_obs, b.done, b.discount], 1).numpy()
    return np.unique(rows, axis=0)


# ---------------------------------------------------------------------------------------- what is stored
@pytest.mark.parametrize("n_envs", [1, 3])
def test_stored_transitions_respect_termination_truncation_and_autoreset(n_envs):
    tr = toy_trainer(n_envs)
    tr.run()
    rows = all_transitions(tr.buffer)
    # One row per real env step: the autoreset steps were neither stored nor counted.
    assert len(rows) == len(tr.buffer) == tr.step >= 90
    obs, act, rew, nxt, done, disc = rows[:, 0:3], rows[:, 3:5], rows[:, 5], rows[:, 6:9], rows[:, 9], rows[:, 10]
    # No transition crosses an episode boundary (an autoreset row would jump to a new episode tag, t=0).
    np.testing.assert_array_equal(nxt[:, 2], obs[:, 2])
    np.testing.assert_array_equal(nxt[:, 0], obs[:, 0] + 1)
    # Actions are stored in the agent's [-1, 1] units; the env saw them scaled to its Box [-2, 4].
    assert np.all(np.abs(act) <= 1)
    env_a0 = scale_action(act, np.array([-2.0, -2.0]), np.array([4.0, 4.0]))[:, 0]
    # The trainer scales with the Box in float64, as here; the env adds t in float64; the buffer
    # stores that sum rounded to float32: the same operations, so the same bits.
    np.testing.assert_array_equal(rew, (nxt[:, 0].astype(np.float64) + env_a0).astype(np.float32))
    terminated = nxt[:, 0] == obs[:, 1]
    truncated = (nxt[:, 0] == toy_env.MAX_STEPS) & ~terminated
    assert terminated.any() and truncated.any()
    np.testing.assert_array_equal(done, terminated.astype(np.float32))  # termination: no bootstrap
    assert np.all(done[truncated] == 0)  # time-limit truncation: bootstraps from next_obs
    np.testing.assert_array_equal(disc, np.float32(GAMMA))  # gamma stored as float32, unchanged
    # Every complete episode contributed exactly its own steps.
    for tag in np.unique(obs[:, 2]):
        ep = rows[obs[:, 2] == tag]
        ts = np.sort(ep[:, 0])
        np.testing.assert_array_equal(ts, np.arange(len(ts)))


def test_episode_bookkeeping_counts_only_real_steps():
    tr = toy_trainer(n_envs=2, steps=60)
    tr.run()
    assert tr.episodes >= 10
    assert np.all(tr.collector.stepper.ep_length <= toy_env.MAX_STEPS)


# ---------------------------------------------------------------------------------------- seeding / resume
def pendulum_configs(seed=0, **agent):
    cfg = DDPGConfig(hidden=(32, 32), batch_size=32, buffer_size=20_000, learning_starts=300, **agent)
    tc = TrainConfig(
        env_id="InvertedPendulum-v5", total_steps=1500, eval_every=500, eval_episodes=2, checkpoint_every=400, seed=seed
    )
    return cfg, tc


def curve(history):
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in history]


def same_rows(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x)
        for x, y in zip(curve(a), curve(b))
    )


def params(trainer):
    return [p.detach().clone() for p in [*trainer.agent.actor.parameters(), *trainer.agent.critics.parameters()]]


def test_same_seed_same_eval_returns_on_cpu():
    runs = []
    for seed in (0, 0, 1):
        tr = Trainer(*pendulum_configs(seed), tensorboard=False)
        tr.run()
        runs.append(tr)
    assert same_rows(runs[0].history, runs[1].history)
    assert all(torch.equal(a, b) for a, b in zip(params(runs[0]), params(runs[1])))
    assert [r["eval_mean"] for r in runs[0].history] != [r["eval_mean"] for r in runs[2].history]


def _resume_matches(tmp_path, make):
    ref = make(tmp_path / "ref")
    ref.run()
    cut = make(tmp_path / "cut")
    cut.run(stop_at=700)  # "killed" at step 700: checkpoints at 400 only
    assert cut.step == 700 and ckpt_io.resolve_checkpoint(tmp_path / "cut").name == "step_0000000400"
    resumed = Trainer.resume(tmp_path / "cut", tensorboard=False)
    assert resumed.step == 400
    resumed.run()
    assert same_rows(ref.history, resumed.history)
    assert all(torch.equal(a, b) for a, b in zip(params(ref), params(resumed)))
    assert len(ref.buffer) == len(resumed.buffer)
    assert torch.equal(ref.buffer.sample(64).obs, resumed.buffer.sample(64).obs)  # buffer RNG continues too
    # The files agree as well: metrics.csv lost the rows written after the checkpoint, then regained them.
    strip = lambda p: [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(open(p))]  # noqa
    assert strip(tmp_path / "ref" / "metrics.csv") == strip(tmp_path / "cut" / "metrics.csv")
    return ref, resumed


def test_resume_is_exact_on_mujoco_with_obs_normalization(tmp_path):
    cfg, tc = pendulum_configs(obs_normalization=True)
    ref, resumed = _resume_matches(
        tmp_path, lambda out: Trainer(cfg, TrainConfig(**tc.to_dict()), out_dir=out, tensorboard=False)
    )
    assert torch.equal(ref.normalizer.mean, resumed.normalizer.mean)


@pytest.mark.parametrize("variant", ["cpp-update", "layernorm-autograd", "td7", "crossq"])
def test_resume_is_exact_with_vector_envs_per_nstep_td3_and_ou_noise(tmp_path, variant):
    """Every RNG stream at once: PER sampling, target-smoothing noise, OU state, n-step pending returns;
    on the C++ update, on autograd with LayerNorm critics (whose gains and biases are parameters
    and optimizer state too), with TD7's switches (encoder and its optimizer, the value range,
    LAP's reset maximum priority, hard targets between checkpoints; autograd) and with CrossQ's on
    the C++ update (the running statistics and step counts of every batch renormalization layer,
    past its warmup)."""
    extra = (
        dict(critic_layer_norm=True)
        if variant == "layernorm-autograd"
        else {**DDPGConfig.presets()["td7"], "sale_dim": 8, "hard_target_interval": 70, "policy_checkpoints": False}
        if variant == "td7"
        # policy checkpoints take one env: test_td7.py resumes those
        else {**DDPGConfig.presets()["crossq"], "critic_hidden": (16, 16), "batch_renorm_warmup": 300}
        if variant == "crossq"
        else {}
    )
    autograd = variant in ("layernorm-autograd", "td7")  # the C++ update runs the other two
    cfg = DDPGConfig.preset(
        "td3",
        **{
            **dict(
                hidden=(16, 16),
                batch_size=16,
                buffer_size=5000,
                learning_starts=100,
                prioritized=True,
                n_step=2,
                exploration_noise="ou",
            ),
            **extra,
        },
    )
    tc = TrainConfig(
        env_id=toy_env.ID, n_envs=2, total_steps=1000, eval_every=250, eval_episodes=2, checkpoint_every=400, seed=5
    )
    ref, resumed = _resume_matches(
        tmp_path, lambda out: Trainer(cfg, TrainConfig(**tc.to_dict()), out_dir=out, tensorboard=False)
    )
    assert (resumed.agent.mlp_updater() is None) == autograd


def test_resume_of_uncapturable_env_warns_and_restarts_episodes(tmp_path):
    cfg = DDPGConfig(hidden=(8, 8), buffer_size=1000, batch_size=8, learning_starts=50)
    tc = TrainConfig(env_id="PydpgToyNoState-v0", n_envs=2, total_steps=200, eval_every=0, checkpoint_every=100)
    Trainer(cfg, tc, out_dir=tmp_path, tensorboard=False).run(stop_at=150)
    with pytest.warns(UserWarning, match="cannot be captured"):
        t = Trainer.resume(tmp_path, tensorboard=False)
    assert t.step == 100 and not t.collector.stepper.autoreset.any() and np.all(t.collector.stepper.obs[:, 0] == 0)
    t.run()
    assert t.step >= 200


def test_restarted_episodes_close_their_nstep_returns(tmp_path):
    """An episode cut by the restart must not have its open n-step returns completed by the next
    episode's rewards: every stored transition starts and ends in one episode (obs[2] is the
    toy env's episode tag)."""
    cfg = DDPGConfig(
        hidden=(8, 8), buffer_size=1000, batch_size=8, learning_starts=10**6, n_step=3, obs_normalization=True
    )
    tc = TrainConfig(env_id="PydpgToyNoState-v0", n_envs=2, total_steps=80, eval_every=0, checkpoint_every=31, seed=0)
    Trainer(cfg, tc, out_dir=tmp_path, tensorboard=False).run(stop_at=40)
    with pytest.warns(UserWarning, match="cannot be captured"):
        t = Trainer.resume(tmp_path, tensorboard=False)
    ckpt = ckpt_io.load_checkpoint(tmp_path)
    assert ReplayBuffer.load(ckpt.buffer_path).pending > 0 and t.buffer.pending == 0  # open returns closed
    saved = ckpt.model["normalizer"]["count"]
    # The two new first observations: float64 sums of small integers onto the saved count (one or two
    # roundings), within gamma_2 of the exact sum.
    assert abs(float(t.normalizer.count) - (float(saved) + 2)) <= gamma(2, U64) * (float(saved) + 2)
    t.run()
    b = t.buffer.sample(20_000)
    rows = np.unique(torch.cat([b.obs, b.next_obs], 1).numpy(), axis=0)
    assert len(rows) == len(t.buffer)
    np.testing.assert_array_equal(rows[:, 2], rows[:, 5])


def test_kill_9_loses_only_steps_since_last_checkpoint(tmp_path):
    args = [
        "train",
        "InvertedPendulum-v5",
        "--steps",
        "3000",
        "--checkpoint-every",
        "500",
        "--eval-every",
        "500",
        "--eval-episodes",
        "2",
        "--set",
        "hidden=[32,32]",
        "--set",
        "batch_size=32",
        "--set",
        "learning_starts=300",
        "--threads",
        "1",
        "--no-progress",
        "--no-tensorboard",
    ]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pydpg", *args, "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pointer = run / "checkpoints" / "latest"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if pointer.exists() and int(pointer.read_text().strip()[5:]) >= 1000:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        time.sleep(0.3)  # into the steps after the checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = ckpt_io.resolve_checkpoint(run)
    last = int(killed_at.name[5:])
    assert last >= 1000 and not (run / "summary.json").exists()
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pydpg",
            "train",
            "--resume",
            str(run),
            "--threads",
            "1",
            "--no-progress",
            "--no-tensorboard",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {last} " in resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3000
    steps = [r["step"] for r in read_metrics(run / "metrics.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 3000
    # The same run uninterrupted, in this process (same code path, same single thread): same curve.
    from pydpg.cli.main import main

    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    ref = read_metrics(tmp_path / "ref" / "metrics.csv")
    got = read_metrics(run / "metrics.csv")
    assert [r["eval_mean"] for r in ref] == [r["eval_mean"] for r in got]


# ---------------------------------------------------------------------------------------- outputs
def test_run_outputs(tmp_path):
    cfg, tc = pendulum_configs()
    tc.total_steps = 1100
    tc.checkpoint_every = 500
    summary = Trainer(cfg, tc, out_dir=tmp_path).run()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == METRICS_COLUMNS
    assert [int(r["step"]) for r in rows] == [500, 1000, 1100]  # the last row is the final evaluation
    assert all(float(r["sps"]) > 0 for r in rows) and rows[-1]["critic_loss"] != ""
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["steps"] == summary["steps"] == 1100
    assert set(on_disk) >= {"final_eval", "best_eval", "wall_time_s", "config", "train", "env_id", "seed"}
    assert on_disk["final_eval"]["step"] == 1100 and on_disk["config"]["hidden"] == [32, 32]
    assert on_disk["best_eval"]["mean"] == max(float(r["eval_mean"]) for r in rows)
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_0000001100"]  # keep_checkpoints=1
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000001100"


def test_best_model_is_the_policy_of_the_best_evaluation(tmp_path):
    # Seed 4's best evaluation here is at 1250 of 1500 (19.5; 7.0 at the end), so the file is not
    # the final policy; on arithmetic where the best is the last, the checks below still hold.
    cfg, tc = pendulum_configs(seed=4)
    tc.total_steps, tc.eval_every, tc.checkpoint_every = 1500, 250, 0
    summary = Trainer(cfg, tc, out_dir=tmp_path, tensorboard=False).run()
    best = summary["best_eval"]
    means = [r["eval_mean"] for r in read_metrics(tmp_path / "metrics.csv")]
    assert best["model"] == "best_model.pt" and best["mean"] == max(means)
    model = ckpt_io.read_model(tmp_path / "best_model.pt")
    assert model["evaluation"] == {"step": best["step"], "mean": best["mean"], "std": best["std"]}
    # Evaluated again on the same seeds, the saved policy scores what it scored in training: the same
    # weights, the same float32 forward (batch 1 per step, fresh torch inputs, the test's 1 thread in
    # both) in this process and the same env steps, so the same returns, exactly.
    assert (
        DDPG.load(tmp_path / "best_model.pt").evaluate(tc.eval_episodes, env="InvertedPendulum-v5").mean == best["mean"]
    )
    from pydpg.deploy.export import load_for_export

    info = load_for_export(tmp_path / "best_model.pt")
    assert (info["training_steps"], info["eval_return"]) == (best["step"], best["mean"])

    # A resume keeps the file that matches the restored best evaluation, and moves aside one that
    # does not (here one claiming a later step, as a run killed between an evaluation and its
    # checkpoint leaves behind): the summary never names a file that is not its best evaluation.
    t = Trainer.resume(tmp_path, tensorboard=False)
    assert t.summary()["best_eval"]["model"] == "best_model.pt"
    t.close()
    ckpt_io.write_model(tmp_path / "best_model.pt", {**model, "evaluation": {"step": 99_999, "mean": 1e9, "std": 0}})
    with pytest.warns(UserWarning, match="moved to best_model.step99999-before-resume.pt"):
        t = Trainer.resume(tmp_path, tensorboard=False)
    assert not (tmp_path / "best_model.pt").exists() and (tmp_path / "best_model.step99999-before-resume.pt").is_file()
    assert t.summary()["best_eval"]["model"] is None
    t.close()
    (tmp_path / "best_model.pt").write_bytes(b"not a model")  # corrupt: moved aside too, not an error
    with pytest.warns(UserWarning, match="moved to best_model.stepunknown-before-resume.pt"):
        Trainer.resume(tmp_path, tensorboard=False).close()

    tc.save_best = False
    off = tmp_path / "off"
    assert Trainer(cfg, tc, out_dir=off, tensorboard=False).run()["best_eval"]["model"] is None
    assert not (off / "best_model.pt").exists()
    tc.save_best = True
    assert Trainer(cfg, tc).run()["best_eval"]["model"] is None  # no run directory, nothing written


def test_evaluation_lines_before_learning_starts_say_so(capsys):
    cfg, tc = pendulum_configs()
    cfg.learning_starts, tc.total_steps, tc.checkpoint_every = 600, 1000, 0
    Trainer(cfg, tc, verbose=True).run()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step")]
    assert len(lines) == 2
    assert "no updates yet (random actions until step 600)" in lines[0] and "nan" not in lines[0]
    assert "critic " in lines[1] and "nan" not in lines[1]


def test_resume_keeps_the_runs_thread_count_unless_told_otherwise(tmp_path):
    """The count the run was started with holds while it trains, after a resume too; the caller's
    count comes back when run() returns."""
    cfg, tc = pendulum_configs()
    tc.total_steps, tc.eval_every, tc.checkpoint_every, tc.threads = 400, 100, 0, 1
    seen = []

    def run(t, steps):
        t.run(total_steps=steps, on_eval=lambda row: seen.append(torch.get_num_threads()))
        t.close()

    try:
        torch.set_num_threads(2)  # the caller's count (a new process starts with torch's default)
        run(Trainer(cfg, tc, out_dir=tmp_path, tensorboard=False), 400)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        t = Trainer.resume(tmp_path, tensorboard=False)
        assert t.train_cfg.threads == 1 and torch.get_num_threads() == 2  # loading sets nothing
        seen.clear()
        run(t, 500)
        assert seen == [1] and torch.get_num_threads() == 2
        torch.set_num_threads(1)
        seen.clear()
        run(Trainer.resume(tmp_path, threads=2, tensorboard=False), 600)
        assert seen == [2] and torch.get_num_threads() == 1
        t = Trainer.resume(tmp_path, tensorboard=False)  # the override is stored with the run
        assert t.train_cfg.threads == 2
        t.close()
    finally:
        torch.set_num_threads(1)


def test_target_return_stops_early():
    cfg, tc = pendulum_configs()
    tc.target_return = 0.0
    s = Trainer(cfg, tc).run()
    assert s["reached_target"] and s["steps"] == 500


# ---------------------------------------------------------------------------------------- checkpoint failures
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    cfg = DDPGConfig(hidden=(8, 8), buffer_size=1000, batch_size=8, learning_starts=20)
    Trainer(
        cfg,
        TrainConfig(
            env_id=toy_env.ID, total_steps=60, eval_every=30, eval_episodes=1, checkpoint_every=30, keep_checkpoints=2
        ),
        out_dir=out,
        tensorboard=False,
    ).run()
    return out


def copy_run(saved_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(saved_run, dst)
    return dst, ckpt_io.resolve_checkpoint(dst)


def test_checkpoint_resolution(saved_run, tmp_path):
    run, ck = copy_run(saved_run, tmp_path)
    assert ck.name == "step_0000000060"
    assert ckpt_io.resolve_checkpoint(run / "checkpoints") == ck == ckpt_io.resolve_checkpoint(ck)
    # A kill between the pointer update and the directory's rename: the pointer names a directory
    # not yet there, and the newest complete one is used.
    (run / "checkpoints" / "latest").write_text("step_0000000090\n")
    assert ckpt_io.resolve_checkpoint(run) == ck
    (run / "checkpoints" / "latest").unlink()  # no pointer at all: the same
    assert ckpt_io.resolve_checkpoint(run) == ck
    # A kill midway through writing: the temporary directory is ignored and later cleaned up.
    partial = run / "checkpoints" / ".tmp-step_0000000090-123"
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half")
    t = Trainer.resume(run, tensorboard=False)
    assert t.step == 60 and not partial.exists()


def test_kill_while_a_checkpoint_is_replaced_keeps_it(saved_run, tmp_path):
    """Re-saving a step moves the old copy aside, renames the new one in, then deletes the old one.
    A kill between the two renames leaves only ``.old-step_N-pid`` (complete) and ``.tmp-step_N-pid``:
    readers still find the checkpoint, and resuming puts it back under its own name."""
    run, ck = copy_run(saved_run, tmp_path)
    aside = ck.parent / f".old-{ck.name}-4242"
    ck.rename(aside)
    (ck.parent / f".tmp-{ck.name}-4242").mkdir()
    assert ckpt_io.resolve_checkpoint(run) == aside
    assert ckpt_io.load_checkpoint(run).step == 60
    t = Trainer.resume(run, tensorboard=False)
    assert t.step == 60 and ck.is_dir() and not any(p.name.startswith(".") for p in ck.parent.iterdir())


def test_a_save_killed_at_any_rename_leaves_the_newest_complete_checkpoint_findable(saved_run, tmp_path, monkeypatch):
    """A save is a sequence of renames (each file into place, the pointer, the directory). Killed
    before any one of them, a resume must find the newest checkpoint whose directory is in place:
    the new one once its directory is renamed in, the previous one before. (A sweep once resumed a
    killed trial from the checkpoint before the newest, losing steps, because the pointer used to
    move after the directory.)"""
    real_replace = os.replace

    class Killed(Exception):
        pass

    for kill_at in range(100):
        run, ck = copy_run(saved_run, tmp_path / str(kill_at))
        old = ckpt_io.load_checkpoint(run)
        buffer = ReplayBuffer.load(old.buffer_path)
        calls = []

        def replace(src, dst):
            if len(calls) == kill_at:
                raise Killed(f"killed before renaming {src} to {dst}")
            calls.append(dst)
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            ckpt_io.save_checkpoint(run / "checkpoints", 90, old.model, old.trainer, buffer, keep=2)
        except Killed:
            finished = False
        else:
            finished = True
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        new_in_place = (run / "checkpoints" / "step_0000000090").is_dir()
        found = ckpt_io.load_checkpoint(run)
        assert found.step == (90 if new_in_place else 60), (kill_at, calls)
        Trainer.resume(run, tensorboard=False).close()  # loads it, and clears what the kill left
        assert ckpt_io.resolve_checkpoint(run) == found.path
        assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())
        if finished:
            assert kill_at > 2 and new_in_place  # every rename before the last was a kill point
            break
    else:
        pytest.fail("the save never finished")


def test_resaving_a_step_replaces_it_and_leaves_nothing_aside(saved_run, tmp_path):
    run, ck = copy_run(saved_run, tmp_path)
    t = Trainer.resume(run, tensorboard=False)
    before = (ck / "trainer.pt").stat().st_mtime_ns
    t.save_checkpoint()  # the same step again (what the final save after a periodic one does)
    assert (ck / "trainer.pt").stat().st_mtime_ns != before
    assert ck.is_dir() and not any(p.name.startswith(".") for p in ck.parent.iterdir())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run, ck: shutil.rmtree(run), "no checkpoint at"),
        (lambda run, ck: [shutil.rmtree(p) for p in (run / "checkpoints").glob("step_*")], "no checkpoint found"),
        (lambda run, ck: (ck / "meta.json").write_text("{not json"), "meta.json is corrupt"),
        (
            lambda run, ck: (ck / "meta.json").write_text(
                json.dumps({**json.loads((ck / "meta.json").read_text()), "format_version": 99})
            ),
            "format version 99",
        ),
        (lambda run, ck: (ck / "meta.json").write_text('{"format": "something-else"}'), "not a pydpg checkpoint"),
        (lambda run, ck: (ck / "buffer.bin").unlink(), r"missing \['buffer.bin'\]"),
        (lambda run, ck: (ck / "model.pt").write_bytes((ck / "model.pt").read_bytes()[:100]), "corrupt"),
        (lambda run, ck: (ck / "trainer.pt").write_bytes(b"garbage"), "corrupt"),
    ],
)
def test_bad_checkpoints_are_refused_with_a_reason(saved_run, tmp_path, damage, message):
    run, ck = copy_run(saved_run, tmp_path)
    damage(run, ck)
    with pytest.raises(ckpt_io.CheckpointError, match=message):
        Trainer.resume(run)
    with pytest.raises(ValueError, match=message):  # CheckpointError is a ValueError
        ckpt_io.load_checkpoint(run)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ck: (ck / "buffer.bin").write_bytes((ck / "buffer.bin").read_bytes()[:-9]), "buffer.*truncated"),
        (lambda ck: ReplayBuffer(1000, 5, 1).save(ck / "buffer.bin"), r"does not belong to this run: obs_shape \(5,\)"),
    ],
)
def test_resume_refuses_a_damaged_or_foreign_replay_buffer(saved_run, tmp_path, damage, message):
    run, ck = copy_run(saved_run, tmp_path)
    damage(ck)
    with pytest.raises(ckpt_io.CheckpointError, match=message):
        Trainer.resume(run)


def test_model_file_format_checks(saved_run, tmp_path):
    _, ck = copy_run(saved_run, tmp_path)
    model = ckpt_io.read_model(ck / "model.pt")
    # Loadable without unpickling code: tensors and plain values only.
    torch.load(ck / "model.pt", weights_only=True)
    torch.load(ck / "trainer.pt", weights_only=True)
    bad = tmp_path / "v2.pt"
    torch.save({**model, "format_version": 2}, bad)
    with pytest.raises(ckpt_io.CheckpointError, match="format version 2"):
        ckpt_io.read_model(bad)
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ckpt_io.CheckpointError, match="not a pydpg model file"):
        ckpt_io.read_model(bad)
    with pytest.raises(ckpt_io.CheckpointError, match="no file"):
        ckpt_io.read_model(tmp_path / "missing.pt")


def test_keep_checkpoints(saved_run):
    assert sorted(p.name for p in (saved_run / "checkpoints").glob("step_*")) == ["step_0000000030", "step_0000000060"]


# ---------------------------------------------------------------------------------------- config errors
def test_bad_train_config_values_name_the_field():
    with pytest.raises(ValueError, match=r"TrainConfig.eval_every must be an int >= 0, got -5"):
        TrainConfig(eval_every=-5).validate()
    with pytest.raises(ValueError, match=r"TrainConfig.total_steps must be an int >= 1, got 1000000.0"):
        TrainConfig(total_steps=1e6).validate()
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"TrainConfig.threads must be None or an int >= 1"):
            TrainConfig(threads=bad).validate()
    with pytest.raises(ValueError, match=r"'n_env' \(did you mean 'n_envs'\?\)"):
        TrainConfig.from_dict({"n_env": 2})
    with pytest.raises(ValueError, match="no environment"):
        Trainer(DDPGConfig(), TrainConfig())


# ---------------------------------------------------------------------------------------- Python API
def small_api(**kw):
    settings = dict(
        seed=0, hidden=(32, 32), batch_size=32, buffer_size=10_000, learning_starts=200, eval_every=300, eval_episodes=2
    )
    return DDPG("InvertedPendulum-v5", **{**settings, **kw})


def test_api_learn_predict_save_load(tmp_path):
    agent = small_api()
    assert agent.learn(600) is agent and agent.num_timesteps == 600
    agent.learn(300)  # learn continues: 300 more steps
    assert agent.num_timesteps == 900 and [r["step"] for r in agent.trainer.history] == [300, 600, 900]
    obs = np.random.default_rng(0).normal(size=(5, 4))
    action, state = agent.predict(obs)
    assert state is None and action.shape == (5, 1) and np.all(np.abs(action) <= 3.0)  # the env's Box
    single, _ = agent.predict(obs[0])
    # Batch 1 against batch 5: other BLAS kernels, so equal up to the actor's float32 rounding
    # (pydpg.deploy.rounding, twice the bound), times the Box's half-width 3, plus the float64 scaling's
    # rounding on each side (3 operations on numbers below 6).
    _, bound = rounding_bound(unit_box_policy(agent.agent, tmp_path / "p.pt", 4, 1), obs[:1].astype(np.float32))
    assert single.shape == (1,) and np.all(np.abs(single - action[0]) <= 3 * 2 * bound[0] + 2 * gamma(3, U64) * 6)
    noisy, _ = agent.predict(obs, deterministic=False)
    assert not np.allclose(noisy, action) and np.all(np.abs(noisy) <= 3.0)
    agent.save(tmp_path / "model.pt")
    loaded = DDPG.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.predict(obs)[0], action)
    assert loaded.config == agent.config
    # The model file says which env it is for; evaluation needs nothing else.
    assert loaded.evaluate(2).mean == agent.evaluate(2).mean
    with pytest.raises(ValueError, match="observation must have shape"):
        agent.predict(np.zeros(3))


def test_api_with_env_instance_and_preset_and_overrides():
    import gymnasium as gym

    env = gym.make("InvertedPendulum-v5")
    agent = DDPG(env, config="td3", hidden=(16, 16), learning_starts=50, eval_every=0, buffer_size=1000)
    assert agent.config.twin_critics and agent.config.hidden == (16, 16)
    assert agent.trainer.vec.envs[0] is env and agent.train_config.env_id == "InvertedPendulum-v5"
    agent.learn(100)
    with pytest.raises(ValueError, match=r"'hiden' \(did you mean 'hidden'\?\)"):
        DDPG("InvertedPendulum-v5", hiden=(4, 4))
    with pytest.raises(ValueError, match=r"DDPGConfig.tau must be in \(0, 1\], got 2"):
        DDPG("InvertedPendulum-v5", tau=2)
    with pytest.raises(ValueError, match="'HalfCheetah-v5'"):
        DDPG("HalfCheeta-v5")
    with pytest.raises(ValueError, match="Discrete"):
        DDPG("CartPole-v1")
    with pytest.raises(ValueError, match="unknown preset 'td4'"):
        DDPG("InvertedPendulum-v5", config="td4")
    with pytest.raises(ValueError, match="does not exist"):
        DDPG("InvertedPendulum-v5", config="missing.toml")
    with pytest.raises(TypeError, match="config must be"):
        DDPG("InvertedPendulum-v5", config=3)
    with pytest.raises(TypeError, match="env must be"):
        DDPG(42)
    with pytest.raises(ValueError, match="total_timesteps must be an int >= 1"):
        agent.learn(0)
    with pytest.raises(ckpt_io.CheckpointError, match="no checkpoint at"):
        DDPG.load("no/such/run")


def test_api_load_run_dir_continues_the_run_exactly(tmp_path):
    ref = small_api(checkpoint_every=300, out_dir=tmp_path / "ref")
    ref.learn(900)
    cut = small_api(checkpoint_every=300, out_dir=tmp_path / "cut")
    cut.trainer.run(total_steps=900, stop_at=450)
    again = DDPG.load(tmp_path / "cut")
    assert again.num_timesteps == 300
    again.trainer.run()  # to the run's own total_steps (900)
    assert same_rows(ref.trainer.history, again.trainer.history)


def test_api_predict_only_when_env_unknown(tmp_path):
    agent = small_api()
    model = agent.trainer.model_dict()
    model["run"] = {**model["run"], "env_id": None}
    ckpt_io.write_model(tmp_path / "m.pt", model)
    loaded = DDPG.load(tmp_path / "m.pt")
    assert loaded.trainer is None
    np.testing.assert_array_equal(loaded.predict(np.ones(4))[0], agent.predict(np.ones(4))[0])
    with pytest.raises(ValueError, match="without an environment"):
        loaded.learn(10)
    with pytest.raises(ValueError, match="no environment to evaluate"):
        loaded.evaluate(1)
    assert loaded.evaluate(1, env="InvertedPendulum-v5").mean >= 0


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    import io

    from pydpg.train.run_log import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = Progress(1000, bar=True, lines=True, stream=tty)
    p.update(250, 180.4, None, force=True)
    p.update(500, 181.0, 912.5, force=True)
    p.write("step 500 | eval 912.50")
    p.close()
    out = tty.getvalue()
    assert "250/1000" in out and "180 sps | eval -" in out
    assert "500/1000" in out and "181 sps | eval 912.5" in out
    assert "step 500 | eval 912.50\n" in out
    log = io.StringIO()  # not a terminal (nohup, CI): no bar, only the evaluation lines
    p = Progress(1000, bar=True, lines=True, stream=log)
    p.update(250, 180.0, None, force=True)
    p.write("step 500")
    p.close()
    assert log.getvalue() == "step 500\n"
    quiet = io.StringIO()
    p = Progress(1000, bar=False, lines=False, stream=quiet)
    p.write("x")
    assert quiet.getvalue() == ""


def test_normalizer_is_saved_with_the_agent(tmp_path):
    agent = small_api(obs_normalization=True, eval_every=0)
    agent.learn(300)
    stats = agent.normalizer.to_dict()
    # Every observation the envs returned: the first reset, 300 real steps, one per autoreset step.
    resets = agent.trainer.episodes - int(agent.trainer.collector.stepper.autoreset.sum())
    # The normalizer's pseudo-count (initial_count, 1e-4) plus one per observation, summed in float64
    # over at most that many updates: within gamma_n of the exact sum.
    n = 1 + 300 + resets
    assert abs(float(stats["count"]) - (n + 1e-4)) <= gamma(n, U64) * (n + 1e-4)
    agent.save(tmp_path / "m.pt")
    model = torch.load(tmp_path / "m.pt", weights_only=True)
    assert torch.equal(model["normalizer"]["mean"], stats["mean"]) and model["normalizer"]["clip"] == 10.0
    loaded = DDPG.load(tmp_path / "m.pt")
    obs = np.random.default_rng(1).normal(size=(3, 4)) * 5
    np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
    # predict normalizes: the raw actor on raw observations gives other actions.
    raw = scale_action(agent.agent.act(obs.astype(np.float32)), agent.trainer.low, agent.trainer.high)
    assert not np.allclose(raw, agent.predict(obs)[0])


def test_run_calls_on_eval_with_each_row_and_refuses_a_non_callable():
    cfg, tc = pendulum_configs()
    tr = Trainer(cfg, tc, tensorboard=False)
    with pytest.raises(TypeError, match="on_eval must be a callable"):
        tr.run(on_eval="print")
    rows = []
    tr.run(on_eval=rows.append)
    assert rows and [r["step"] for r in rows] == [r["step"] for r in tr.history]
