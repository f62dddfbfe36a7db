"""A real Ray cluster, as a user joins one: `ray start --head` on loopback (Ray >= 2.60 turns token
authentication on by default), `pydpg train --workers --ray-address`. Checks what only a separate
cluster shows: an address that is no Ray head, or a head that wants a token this shell lacks, is
refused within seconds by name; and one kill -9 of a collector is one restart, after which the
restarted collector delivers chunks again.

The head is started once for the module, on free loopback ports, and stopped after it. Ray's
processes bind all interfaces in cluster mode even with --node-ip-address 127.0.0.1 (Ray's doing;
docs/distributed.md), so the head is started with a token: nothing joins it without one."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # the test extra installs it; a missing Ray is reported by test_distributed

from pydpg.train import ray_session  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """(address, environment) of a token-mode Ray head on loopback; its token in a temp HOME."""
    ray_bin = Path(sys.executable).parent / "ray"
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": str(tmp_path_factory.mktemp("raytmp"))}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", ray_session._LOCAL_ONLY_ENV):
        env.pop(key, None)
    # This process's own local Ray (the test session shares one): stopping the head must leave it be.
    ray_session.init(num_cpus=1)
    # Ray >= 2.60: a token in ~/.ray/auth_token turns `ray start --head` to token mode (a local
    # ray.init() makes one on its own); whoever joins then needs it and RAY_AUTH_MODE=token.
    subprocess.run(
        [str(ray_bin), "get-auth-token", "--generate"], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    # --block keeps `ray start` in the foreground as the parent of the head's processes, in a
    # session of its own: teardown stops that group only. `ray stop` would stop every Ray of this
    # user on the machine: a user's own cluster, and the test session's local Ray, whose driver
    # (pytest) then exits with status 1 without a word.
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            env["RAY_TMPDIR"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in head.stdout:
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not started.wait(300) or head.poll() is not None:
            pytest.fail(f"ray start --head failed: {''.join(lines)[-2000:]}")
        assert (home / ".ray" / "auth_token").is_file()  # token mode, as Ray 2.60 defaults to
        yield f"127.0.0.1:{port}", {**env, "RAY_AUTH_MODE": "token"}  # how docs/distributed.md says to join
    finally:
        stop_group(head)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    # `ray stop --force` here once killed it, and its driver, pytest, exited with status 1 mid-suite.
    assert ray.get(ray.remote(lambda: 1).remote(), timeout=60) == 1


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (`ray start --block` then stops what it started), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its children may still be stopping
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def pydpg(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pydpg", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_a_head_that_wants_a_token_is_refused_by_name_within_seconds(head, tmp_path):
    address, env = head
    without = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    t0 = time.monotonic()
    r = pydpg(
        "train",
        "InvertedPendulum-v5",
        "--workers",
        "1",
        "--ray-address",
        address,
        "--steps",
        "100",
        "--out",
        str(tmp_path / "a"),
        "--no-progress",
        env=without,
    )
    assert r.returncode != 0 and "requires token authentication" in r.stderr and "RAY_AUTH_MODE=token" in r.stderr
    assert time.monotonic() - t0 < 60  # Ray itself gave up after ~30 s of InvalidAuthToken


def test_an_address_that_is_not_a_ray_head_is_refused_within_seconds(tmp_path):
    """An HTTP server where the GCS should be: ray.init retried forever, deaf to Ctrl-C."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        r = pydpg(
            "train",
            "InvertedPendulum-v5",
            "--workers",
            "1",
            "--ray-address",
            f"127.0.0.1:{server.server_address[1]}",
            "--steps",
            "100",
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
            env=os.environ.copy(),
            timeout=120,
        )
        assert r.returncode != 0 and "answers, but not as a Ray head's GCS" in r.stderr, r.stderr[-2000:]
        assert time.monotonic() - t0 < 60
        t0 = time.monotonic()  # the same server as a Ray Client address: Ray Client retried for 37 s
        r = pydpg(
            "train",
            "InvertedPendulum-v5",
            "--workers",
            "1",
            "--ray-address",
            f"ray://127.0.0.1:{server.server_address[1]}",
            "--steps",
            "100",
            "--out",
            str(tmp_path / "b2"),
            "--no-progress",
            env=os.environ.copy(),
            timeout=120,
        )
        assert r.returncode != 0 and "not as a Ray Client server" in r.stderr, r.stderr[-2000:]
        assert time.monotonic() - t0 < 60
    finally:
        server.shutdown()


def test_ray_address_without_workers_and_too_many_workers_are_refused(head, tmp_path):
    address, env = head
    r = pydpg(
        "train",
        "InvertedPendulum-v5",
        "--ray-address",
        address,
        "--steps",
        "100",
        "--out",
        str(tmp_path / "c"),
        "--no-progress",
        env=env,
    )
    assert r.returncode == 2 and "workers is 0" in r.stderr
    r = pydpg(
        "train",
        "InvertedPendulum-v5",
        "--workers",
        "1000000000",
        "--steps",
        "100",
        "--out",
        str(tmp_path / "d"),
        "--no-progress",
        env=env,
    )
    assert r.returncode == 2 and "TrainConfig.workers must be at most 4096" in r.stderr
    r = pydpg(
        "train",
        "InvertedPendulum-v5",
        "--workers",
        "3",
        "--ray-address",
        address,
        "--steps",
        "100",
        "--out",
        str(tmp_path / "e"),
        "--no-progress",
        env=env,
    )
    assert r.returncode != 0 and "--workers 3 exceeds the Ray cluster's 2 CPUs" in r.stderr, r.stderr[-2000:]


def test_one_kill_is_one_restart_and_the_restarted_collector_delivers(head, tmp_path):
    """kill -9 of a collector's process while the run goes on: the learner counts exactly one restart
    (each "temporarily unavailable" answer during the restart was once counted as a death, and after
    three the restarted actor sat unused), and that collector delivers chunks again."""
    address, env = head
    script = textwrap.dedent(f"""
        import json, os, signal, time
        from pydpg.train.config import resolve
        from pydpg.train.trainer import Trainer
        config, tc = resolve("InvertedPendulum-v5", agent={{"hidden": (16, 16), "learning_starts": 100,
                                     "batch_size": 16}}, train={{"total_steps": 4000, "eval_every": 0,
                                     "checkpoint_every": 0, "workers": 2, "ray_address": {address!r},
                                     "worker_timeout_s": 240.0}})
        t = Trainer(config, tc, out_dir={str(tmp_path / "run")!r}, tensorboard=False)
        t.run(stop_at=600)
        before = t.collector.stats()["chunks_by_worker"][0]
        pid = t.collector.ray.get(t.collector.workers[0].pid.remote())
        os.kill(pid, signal.SIGKILL)
        summary = t.run()
        stats = t.collector.stats()
        t.close()
        print(json.dumps({{"restarts": summary["collector"]["worker_restarts"], "before": before,
                           "after": stats["chunks_by_worker"][0], "steps": summary["steps"]}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["restarts"] == 1, out
    assert out["after"] > out["before"], out  # the restarted collector delivers chunks again
    assert out["steps"] >= 4000
