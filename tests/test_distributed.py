"""Distributed collection on Ray (pydpg.train.distributed): N worker actors, one learner.

Everything here runs on a real local Ray with 2 CPUs (the `ray_local` fixture, one session for all
tests); subprocess tests start their own."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pydpg.train.config import (
    TrainConfig,
    resolve,  # noqa: E402
)
from pydpg.train.run_log import read_metrics
from pydpg.train.trainer import Trainer  # noqa: E402

SMALL_AGENT = {"hidden": [16, 16], "batch_size": 16, "learning_starts": 100}


def ray_trainer(tmp_path=None, *, env="InvertedPendulum-v5", steps=600, **train):
    config, tc = resolve(
        env,
        agent=SMALL_AGENT,
        train={
            "total_steps": steps,
            "eval_every": 300,
            "eval_episodes": 2,
            "checkpoint_every": 0,
            "workers": 2,
            "worker_timeout_s": 30.0,
            **train,
        },
    )
    return Trainer(config, tc, out_dir=tmp_path, tensorboard=False)


def test_workers_train_hold_the_replay_ratio_and_write_a_normal_run(ray_local, tmp_path):
    config, tc = resolve(
        "InvertedPendulum-v5",
        agent={**SMALL_AGENT, "gradient_steps": 2},
        train={"total_steps": 600, "eval_every": 300, "eval_episodes": 2, "checkpoint_every": 0, "workers": 2},
    )
    t = Trainer(config, tc, out_dir=tmp_path / "run", tensorboard=False)
    try:
        summary = t.run()
    finally:
        t.close()
    assert summary["steps"] >= 600 and len(t.buffer) == summary["steps"]
    # Two updates per stored transition after learning_starts, however fast the workers were.
    assert t.n_grad == 2 * (t.step - 100)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    # Exactly 2: integer counts whose quotient is 2, written as "2" and read back.
    assert len(rows) >= 2 and all(r["replay_ratio"] == 2.0 for r in rows[1:])
    assert summary["collector"]["kind"] == "ray" and summary["collector"]["workers"] == 2
    assert summary["collector"]["worker_restarts"] == 0 and summary["collector"]["broadcasts"] >= 2
    assert summary["final_eval"] is not None
    from pydpg.deploy.export import export_checkpoint

    result = export_checkpoint(tmp_path / "run", tmp_path / "p.pt", verbose=False)
    assert result.path.exists()


def test_normalizer_folds_in_every_workers_observations(ray_local):
    config, tc = resolve(
        "InvertedPendulum-v5",
        agent={**SMALL_AGENT, "obs_normalization": True},
        train={"total_steps": 300, "eval_every": 0, "checkpoint_every": 0, "workers": 2},
    )
    t = Trainer(config, tc, tensorboard=False)
    try:
        t.run()
        count = float(t.normalizer.count)
    finally:
        t.close()
    # Every stored transition's next observation plus each env's reset observations.
    assert count >= t.step


def test_an_evaluation_before_learning_starts_sees_the_learners_normalizer(ray_local, tmp_path):
    # No update has run, so the actor never changed; the statistics did. The eval worker must act
    # with the learner's current ones, the ones best_model.pt stores with that evaluation.
    config, tc = resolve(
        "Hopper-v5",
        agent={**SMALL_AGENT, "obs_normalization": True, "learning_starts": 10_000},
        train={"total_steps": 300, "eval_every": 150, "eval_episodes": 1, "checkpoint_every": 0, "workers": 2},
    )
    t = Trainer(config, tc, out_dir=tmp_path / "run", tensorboard=False)
    try:
        t.run()
        assert t.n_grad == 0
        from pydpg.common.envs import evaluate, make_env
        from pydpg.files.model import make_policy

        seed = tc.seed + tc.eval_seed_offset
        env = make_env("Hopper-v5")
        rows = read_metrics(tmp_path / "run" / "metrics.csv")
        assert len(rows) >= 2
        # The eval worker's computation, here: the same weights and statistics, the same seed, batch 1
        # on one torch thread as a worker acts (pydpg.train.distributed._cpu_agent), the same CPU and
        # libraries. metrics.csv holds the return as "%.6g": compare with that text's number.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            here = evaluate(make_policy(t.agent, t.normalizer), env, 1, seed)
        finally:
            torch.set_num_threads(threads)
        assert rows[-1]["eval_mean"] == float(f"{here.mean:.6g}")
        # ... and the identity statistics (what a stale broadcast would hold) act differently.
        stale = evaluate(make_policy(t.agent, None), env, 1, seed)
        assert abs(stale.mean - here.mean) > 1e-3 * abs(here.mean)
    finally:
        t.close()


def test_a_run_is_a_function_of_its_seed_not_of_the_workers_speeds(ray_local):
    """Chunks are taken in turn, so the learner's sequence (and each worker's weights) is fixed by
    the seed; the workers' timing differs from run to run (and is skewed on purpose here)."""
    runs = []
    for slow in (0, 1):
        t = ray_trainer(steps=400, eval_every=200)
        try:
            if slow is not None:  # one worker busy elsewhere for a while: it delivers late
                t.collector.workers[slow].__ray_call__.remote(lambda self: time.sleep(2.0))
            t.run()
            rows = [
                [r[k] for k in ("step", "eval_mean", "critic_loss", "q_mean", "train_return", "episodes")]
                for r in t.history
            ]
            runs.append(
                (np.array(rows), np.concatenate([p.detach().numpy().ravel() for p in t.agent.actor.parameters()]))
            )
        finally:
            t.close()
    # The same computations on this machine: equal, not close. (With worker_order="arrival" the
    # two runs store the chunks in other orders and differ.)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_a_killed_worker_is_restarted_and_nothing_stored_is_lost(ray_local):
    t = ray_trainer(steps=1000, eval_every=0)
    try:
        t.run(stop_at=300)
        stored = len(t.buffer)
        ray_local.kill(t.collector.workers[0], no_restart=False)
        # Back before the run goes on, so that it delivers in what is left of the run: the learner
        # sees the restart either as a failed request or as a chunk of the worker's new life.
        # 600 s: a CI run with the 2 cores oversubscribed took more than 120 s to restart it.
        deadline = time.monotonic() + 600
        while True:
            try:
                ray_local.get(t.collector.workers[0].ready.remote(), timeout=30)
                break
            except (
                ray_local.exceptions.ActorUnavailableError,
                ray_local.exceptions.RayActorError,
                ray_local.exceptions.GetTimeoutError,
            ):
                assert time.monotonic() < deadline, "the killed worker did not come back"
                time.sleep(0.5)
        summary = t.run()
    finally:
        t.close()
    assert summary["collector"]["worker_restarts"] >= 1
    assert summary["steps"] >= 1000 and len(t.buffer) >= stored


def test_an_evaluation_whose_worker_is_killed_runs_again_on_the_restarted_worker(ray_local):
    import threading

    t = ray_trainer(env="Pendulum-v1", steps=400, eval_every=0)
    try:
        t.run(stop_at=200)
        reference = t.evaluate(episodes=40, seed=11)  # 8000 noiseless steps: long enough to be killed in
        out = {}
        job = threading.Thread(target=lambda: out.setdefault("result", t.evaluate(episodes=40, seed=11)))
        job.start()
        time.sleep(0.5)
        assert job.is_alive(), "the evaluation ended before the kill: make it longer"
        ray_local.kill(t.collector.eval_worker, no_restart=False)
        job.join(timeout=180)
        assert not job.is_alive()
    finally:
        t.close()
    # The same weights object and seed: the retried evaluation is the reference one, on this machine.
    np.testing.assert_array_equal(out["result"].returns, reference.returns)


def test_every_worker_gone_stops_the_run_clearly(ray_local):
    t = ray_trainer(steps=5000, eval_every=0, worker_max_restarts=0)
    try:
        t.run(stop_at=200)
        for w in t.collector.workers:
            ray_local.kill(w, no_restart=True)
        with pytest.raises(RuntimeError, match="Ray workers are gone|no Ray worker delivered"):
            t.run()
    finally:
        t.close()


def test_an_env_the_workers_cannot_make_is_an_error_naming_it(ray_local):
    # Registered in this process only: the worker processes do not know it.
    if "DriverOnlyPendulum-v0" not in gym.registry:
        gym.register(
            "DriverOnlyPendulum-v0",
            entry_point="gymnasium.envs.mujoco.inverted_pendulum_v5:InvertedPendulumEnv",
            max_episode_steps=1000,
        )
    with pytest.raises(RuntimeError, match=r"worker \d cannot make env 'DriverOnlyPendulum-v0'"):
        ray_trainer(env="DriverOnlyPendulum-v0")


def test_bad_worker_settings():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            TrainConfig(workers=bad).validate()
    with pytest.raises(ValueError, match="broadcast_every"):
        TrainConfig(broadcast_every=0).validate()
    for bad in ("first", "", None, 1):
        with pytest.raises(ValueError, match=r'worker_order must be "fixed" or "arrival"'):
            TrainConfig(worker_order=bad).validate()
    with pytest.raises(ValueError, match="env id"):
        config, tc = resolve("InvertedPendulum-v5", train={"workers": 1})
        Trainer(config, tc, env=gym.make("InvertedPendulum-v5"))


def _pydpg(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pydpg", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_input(tmp_path):
    r = _pydpg("train", "InvertedPendulum-v5", "--workers", "0", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "--workers" in r.stderr
    t0 = time.monotonic()
    r = _pydpg(
        "train",
        "InvertedPendulum-v5",
        "--workers",
        "1",
        "--ray-address",
        "127.0.0.1:9",
        "--out",
        str(tmp_path / "b"),
        "--no-progress",
    )
    assert r.returncode != 0 and "no Ray cluster answers at 127.0.0.1:9" in r.stderr
    assert time.monotonic() - t0 < 60
    # Without the extra: a clear message naming it.
    code = (
        "import sys; sys.modules['ray'] = None; from pydpg.cli import main; "
        "sys.exit(main(['train', 'InvertedPendulum-v5', '--workers', '1', '--no-progress', '--out', sys.argv[1]]))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "pip install 'pydpg[ray]'" in r.stderr


def _tree(root: int) -> set[int]:
    """``root`` and its descendants (the Ray processes a driver starts are its children)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    """(hex address, port) of the TCP sockets the processes ``pids`` listen on (/proc/net/tcp*)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN, ours
                addr, port = f[1].split(":")
                out.add((addr, int(port, 16)))
    return out


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_a_local_ray_listens_on_loopback_only(tmp_path):
    """Ray has no authentication: a local run must open no port on another interface."""
    code = (
        "import json, sys, time; from pathlib import Path; from pydpg.train import ray_session; "
        "Path(sys.argv[1]).write_text('up') if ray_session.init(num_cpus=1) else None; time.sleep(20)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "up")])
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "up").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (tmp_path / "up").exists(), "Ray did not start"
        time.sleep(2)
        new = _listening(_tree(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert len(new) >= 3, "too few listening sockets seen: the check would prove nothing"
    assert all(addr in LOOPBACK for addr, _ in new), sorted(new)


def test_ctrl_c_stops_the_workers_and_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pydpg",
            "train",
            "InvertedPendulum-v5",
            "--workers",
            "1",
            "--steps",
            "100000",
            "--eval-every",
            "200",
            "--eval-episodes",
            "1",
            "--checkpoint-every",
            "0",
            "--no-progress",
            "--no-tensorboard",
            "--set",
            "hidden=[16,16]",
            "--set",
            "learning_starts=100",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The Ctrl-C must come during training: a CI run with the 2 cores oversubscribed had not
        # started the Ray worker after 120 s (a Ctrl-C while starting is test_cli's case).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (out / "metrics.csv").exists():
            time.sleep(0.5)
        while time.monotonic() < deadline and len((out / "metrics.csv").read_text().splitlines()) < 2:
            time.sleep(0.5)
        assert (out / "metrics.csv").exists() and len((out / "metrics.csv").read_text().splitlines()) >= 2, (
            "no evaluation within 600 s"
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    # The checkpoint resumes: learner, optimizers and buffer restored, workers start new episodes.
    t = Trainer.resume(out, total_steps=None, tensorboard=False)
    try:
        assert t.step >= 200 and len(t.buffer) == t.step and t.train_cfg.workers == 1
        stopped = t.step
        summary = t.run(total_steps=stopped + 300)
        assert summary["steps"] >= stopped + 300 and len(t.buffer) == t.step
        assert [r["step"] for r in read_metrics(out / "metrics.csv")] == sorted({r["step"] for r in t.history})
    finally:
        t.close()


def test_worker_noise_spread():
    from pydpg.train.distributed import worker_sigma_scale

    assert worker_sigma_scale(0, 1, 2.0) == 1.0
    assert [worker_sigma_scale(i, 4, 0.0) for i in range(4)] == [1.0] * 4
    # exp of the exact arguments -1, 0, 1, by the same libm call: the same bits.
    assert [worker_sigma_scale(i, 3, 1.0) for i in range(3)] == [math.exp(-1.0), 1.0, math.exp(1.0)]


def test_python_api_takes_workers(ray_local):
    import pydpg

    agent = pydpg.DDPG(
        "InvertedPendulum-v5", workers=1, hidden=[16, 16], learning_starts=100, batch_size=16, eval_every=0
    )
    try:
        agent.learn(300)
        assert agent.trainer.collector.kind == "ray" and agent.trainer.step >= 300
        action, _ = agent.predict(np.zeros(4, np.float32))
        assert action.shape == (1,)
    finally:
        agent.trainer.close()


def test_both_collectors_implement_the_collector_protocol():
    """The loop talks to a collector through pydpg.train.collect.Collector only, and a collector gets
    its inputs explicitly: the Ray collector's constructor takes no Trainer."""
    import inspect

    from pydpg.train.collect import Collector, LocalCollector
    from pydpg.train.distributed import RayCollector

    methods = [n for n, v in vars(Collector).items() if callable(v) and not n.startswith("_")]
    assert set(methods) == {"collect", "weights_changed", "state_dict", "load_state_dict", "stats", "close"}
    for cls in (LocalCollector, RayCollector):
        for name in methods:
            want = inspect.signature(getattr(Collector, name)).parameters
            got = inspect.signature(getattr(cls, name)).parameters
            takes_any = any(p.kind is p.VAR_KEYWORD for p in got.values())
            missing = [p for p in want if p not in got and not (takes_any and want[p].kind is want[p].KEYWORD_ONLY)]
            assert missing == [], f"{cls.__name__}.{name} lacks {missing}"
        assert isinstance(cls.kind, str)
    assert "trainer" not in inspect.signature(RayCollector.__init__).parameters


def test_workers_and_their_evaluation_run_the_runs_action_contract_and_randomization(ray_local, tmp_path):
    """A contract of 2 outputs on Hopper's 3 motors: a worker or evaluation env without it would
    refuse the 2-wide actions, so a run that trains, evaluates and exports went through it."""
    spec = {"version": 1, "actuators": [{"joint": "thigh_joint"}, {"joint": "leg_joint", "scale": 0.5}]}
    # ... and randomized: observation noise of std 100 shows in what the workers stored
    randomization = {
        "version": 1,
        "model": [{"field": "body_mass", "scale": [0.8, 1.2]}],
        "action": {"delay": [1, 1]},
        "observation": {"noise": 100.0},
    }
    t = ray_trainer(tmp_path / "run", env="Hopper-v5", steps=400, workers=1, action=spec, randomization=randomization)
    try:
        summary = t.run()
    finally:
        t.close()
    assert t.act_dim == 2 and summary["final_eval"] is not None and summary["collector"]["kind"] == "ray"
    assert float(t.buffer.sample(256).obs.std()) > 50  # Hopper's own observations are within +-10
    from pydpg.deploy.export import export_checkpoint
    from pydpg.deploy.policy_file import read_metadata

    export_checkpoint(tmp_path / "run", tmp_path / "p.pt", verbose=False)
    meta = read_metadata(tmp_path / "p.pt")
    assert meta["action"]["actuators"][1]["scale"] == 0.5 and meta["randomization"]["action"]["delay"] == [1, 1]


def test_a_current_directory_that_would_shadow_pydpg_in_the_workers_is_refused(tmp_path):
    # Ray puts the driver's directory first on its workers' path: a source tree there beside a
    # non-editable install made every trial fail with "cannot import name '_core'".
    import pydpg
    from pydpg.train import ray_session

    (tmp_path / "pydpg").mkdir()
    (tmp_path / "pydpg" / "__init__.py").write_text("")
    with pytest.raises(RuntimeError, match="another pydpg"):
        ray_session.check_no_shadow(str(tmp_path))
    ray_session.check_no_shadow(str(tmp_path / "pydpg"))  # no pydpg/ inside: nothing to shadow
    ray_session.check_no_shadow(str(Path(pydpg.__file__).parent.parent))  # the running tree itself
