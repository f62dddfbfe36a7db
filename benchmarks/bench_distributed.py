"""Distributed collection on Ray (pydpg.train.distributed), measured in one run:

1. collection throughput with 1, 2, 4, 8 workers on an env whose step costs an artificial 2 ms
   (benchmarks/slow_env.py: a simulator heavier than the learner). The learner makes no updates
   (learning_starts beyond the run), so this is what the workers deliver through the chunk path.
   Target: >= 0.8 x N x the one-worker throughput (the step is a sleep, so 2 cores are not the limit).
2. the learner's update rate on HalfCheetah-v5 with 2 workers against the single-process trainer,
   both at one update per stored transition (train_freq = gradient_steps = 1), 256-256 networks.
3. Ray's overheads: start-up (a fresh process's ray_session.init), one weight broadcast (ray.put of
   a 256-256 actor's NumPy arrays), and a worker's chunk round trip.
4. with --learning: what the learner learns. HalfCheetah-v5 trained for real (task preset, 1 update per
   step) with 2 Ray workers and in a single process, for each seed; a seed's two runs go side by side
   (1 torch thread each) so both see the same machine load. The table is the eval return at the last
   step and the updates/s over the whole run. A run that exists is resumed, a finished one reused.

    python benchmarks/bench_distributed.py [--workers 1 2 4 8] [--steps 4000] [--json ...]
    python benchmarks/bench_distributed.py --learning [--learning-steps 100000] [--seeds 0 1]

Run it from the repository root: Ray workers import ``benchmarks.slow_env`` from there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW = "benchmarks.slow_env:SlowPendulum-v0"


def trainer(env: str, steps: int, workers: int, learning_starts: int, hidden=(256, 256), order: str = "fixed"):
    from pydpg.train.config import resolve
    from pydpg.train.trainer import Trainer

    config, train = resolve(
        env.split(":")[-1] if ":" not in env else None,
        agent={"hidden": list(hidden), "learning_starts": learning_starts},
        train={
            "total_steps": steps,
            "eval_every": 0,
            "checkpoint_every": 0,
            "workers": workers,
            "env_id": env,
            "worker_order": order,
        },
    )
    return Trainer(config, train, tensorboard=False)


def timed_run(t) -> tuple[float, dict]:
    t0 = time.perf_counter()
    summary = t.run()
    return time.perf_counter() - t0, summary


def collection(workers_list, steps_per_worker: int) -> list[dict]:
    """Both chunk orders (pydpg.train.distributed): "fixed" takes the workers' chunks in turn (the default,
    reproducible), "arrival" whichever comes first (Ape-X)."""
    rows = []
    for n in workers_list:
        row = {"workers": n}
        for order in ("fixed", "arrival"):
            t = trainer(SLOW, steps_per_worker * n, n, learning_starts=10**9, hidden=(16, 16), order=order)
            try:
                t.run(stop_at=200 * n)  # workers up, envs made, first chunks through: not part of the rate
                s0, t0 = t.step, time.perf_counter()
                t.run()
                row[order] = (t.step - s0) / (time.perf_counter() - t0)
            finally:
                t.close()
            print(f"  collection, {n} worker(s), {order} order: {row[order]:.0f} steps/s", file=sys.stderr)
        rows.append(row)
    return rows


def learner(steps: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    rows = []
    for workers in (0, 2):
        t = trainer("HalfCheetah-v5", steps, workers, learning_starts=1000)
        try:
            t.run(stop_at=1500)
            g0, t0 = t.n_grad, time.perf_counter()
            t.run()
            rows.append(
                {
                    "workers": workers,
                    "updates_per_s": (t.n_grad - g0) / (time.perf_counter() - t0),
                    "updates": t.n_grad - g0,
                    "replay_ratio": t.n_grad / max(1, t.step - 1000),
                }
            )
        finally:
            t.close()
        print(f"  HalfCheetah learner, workers={workers}: {rows[-1]['updates_per_s']:.0f} updates/s", file=sys.stderr)
    return rows


def overheads() -> dict:
    import numpy as np
    import torch

    from pydpg.core.networks import Actor
    from pydpg.train import ray_session

    code = (
        "import time; t = time.perf_counter(); from pydpg.train import ray_session; ray_session.init(num_cpus=2); "
        "print(time.perf_counter() - t)"
    )
    startup = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.split()[-1]
    )
    ray = ray_session.init()
    actor = Actor(17, 6, (256, 256))
    weights = {k: v.detach().numpy() for k, v in actor.state_dict().items()}
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        ref = ray.put({"actor": weights, "norm": None, "version": 0})
    put_ms = (time.perf_counter() - t0) / n * 1e3
    del ref

    @ray.remote
    def echo(chunk):
        return chunk.shape

    chunk = np.zeros((50, 17 * 2 + 6 + 3), np.float32)
    ray.get(echo.remote(chunk))
    t0 = time.perf_counter()
    for _ in range(n):
        ray.get(echo.remote(chunk))
    rtt_ms = (time.perf_counter() - t0) / n * 1e3
    return {
        "startup_s": startup,
        "broadcast_put_ms": put_ms,
        "actor_bytes": int(sum(v.nbytes for v in weights.values())),
        "task_round_trip_ms": rtt_ms,
        "torch_threads": torch.get_num_threads(),
    }


def learning(steps: int, seeds, runs_dir: Path, workers: int = 2) -> list[dict]:
    from pydpg.train.run_log import read_metrics

    def out(seed, w):
        return runs_dir / ("single" if w == 0 else f"workers{w}") / f"seed{seed}"

    def command(seed, w):
        d = out(seed, w)
        if (d / "summary.json").exists() and json.loads((d / "summary.json").read_text())["steps"] >= steps:
            return None
        cmd = [
            sys.executable,
            "-m",
            "pydpg",
            "train",
            "HalfCheetah-v5",
            "--steps",
            str(steps),
            "--seed",
            str(seed),
            "--threads",
            "1",
            "--no-progress",
            "--no-tensorboard",
        ]
        cmd += ["--resume", str(d)] if (d / "checkpoints" / "latest").exists() else ["--out", str(d)]
        return cmd + (["--workers", str(workers)] if w else [])

    rows = []
    for seed in seeds:
        procs = [subprocess.Popen(c, cwd=ROOT) for c in (command(seed, w) for w in (0, workers)) if c]
        if any(p.wait() for p in procs):
            raise RuntimeError(f"a HalfCheetah run of seed {seed} failed")
        for w in (0, workers):
            summary = json.loads((out(seed, w) / "summary.json").read_text())
            evals = [r for r in read_metrics(out(seed, w) / "metrics.csv") if r["eval_mean"] == r["eval_mean"]]
            rows.append(
                {
                    "workers": w,
                    "seed": seed,
                    "eval_return": summary["final_eval"]["mean"],
                    "eval_step": summary["final_eval"]["step"],
                    "best_eval": summary["best_eval"]["mean"],
                    "updates_per_s": summary["gradient_steps"] / summary["wall_time_s"],
                    "last3_eval_mean": sum(r["eval_mean"] for r in evals[-3:]) / len(evals[-3:]),
                }
            )
    return rows


def learning_table(rows) -> str:
    import numpy as np

    lines = [
        "| HalfCheetah-v5 | seed | eval return at the end | mean of the last 3 evals | best eval | "
        "updates/s over the run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = "single process" if r["workers"] == 0 else f"{r['workers']} Ray workers"
        lines.append(
            f"| {name} | {r['seed']} | {r['eval_return']:.0f} | {r['last3_eval_mean']:.0f} | "
            f"{r['best_eval']:.0f} | {r['updates_per_s']:.0f} |"
        )
    for w in sorted({r["workers"] for r in rows}):
        ev = np.array([r["eval_return"] for r in rows if r["workers"] == w])
        name = "single process" if w == 0 else f"{w} Ray workers"
        lines.append(f"| {name}, mean ± std over seeds | | {ev.mean():.0f} ± {ev.std():.0f} | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, default=1500, help="collected steps per worker, after the first chunks")
    p.add_argument("--learner-steps", type=int, default=4000, help="HalfCheetah steps per learner run")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    p.add_argument("--learning", action="store_true", help="only part 4: train HalfCheetah-v5 for real")
    p.add_argument("--learning-steps", type=int, default=100_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "distributed_learning"))
    args = p.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    if args.learning:
        rows = learning(args.learning_steps, args.seeds, Path(args.runs_dir))
        table = learning_table(rows)
        print(table)
        path = Path(args.json).with_name("distributed_learning.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"runs": rows, "table": table}, indent=1))
        return 0
    from pydpg.train import ray_session

    ray_session.init(num_cpus=max(2, max(args.workers) + 1))
    coll = collection(args.workers, args.steps)
    learn = learner(args.learner_steps)
    over = overheads()
    one = {o: coll[0][o] / coll[0]["workers"] for o in ("fixed", "arrival")}
    lines = [
        "| workers | fixed order: steps/s | vs N x one worker | arrival order: steps/s | vs N x one worker |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in coll:
        lines.append(
            f"| {r['workers']} | "
            + " | ".join(f"{r[o]:.0f} | {r[o] / (one[o] * r['workers']):.2f}" for o in ("fixed", "arrival"))
            + " |"
        )
    lines += ["", "| HalfCheetah-v5, 1 update per step | learner updates/s | replay ratio |", "|---|---:|---:|"]
    for r in learn:
        name = "single process" if r["workers"] == 0 else f"{r['workers']} Ray workers"
        lines.append(f"| {name} | {r['updates_per_s']:.0f} | {r['replay_ratio']:.3f} |")
    base = learn[0]["updates_per_s"]
    lines.append(f"| ratio (workers / single) | {learn[1]['updates_per_s'] / base:.2f} | |")
    lines += [
        "",
        "| Ray overhead | value |",
        "|---|---:|",
        f"| start-up of a local Ray (fresh process) | {over['startup_s']:.1f} s |",
        f"| one weight broadcast (ray.put, 256-256 actor, {over['actor_bytes'] / 1e3:.0f} kB) | "
        f"{over['broadcast_put_ms']:.2f} ms |",
        f"| task round trip with a 50-step chunk | {over['task_round_trip_ms']:.2f} ms |",
    ]
    table = "\n".join(lines)
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"collection": coll, "learner": learn, "overheads": over, "table": table}, indent=1)
    )
    ray_session.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
