"""Training throughput: pydpg against Stable-Baselines3's DDPG, same settings, same process.

Both get the same work: HalfCheetah-v5, actor and critic 256-256, batch 256, Adam, one gradient
update per env step, Gaussian exploration noise, 1M-transition buffer, one env, CPU, the same
number of torch threads. ``--learning-starts`` random steps come first (not timed); then
``--measure`` env steps per library, each with its update, are timed in chunks of ``--chunk``
steps, the two libraries alternating chunk by chunk, so that load from other processes on a
shared machine hits both alike; the median chunk rate is reported (and the fastest chunk).

    python benchmarks/bench_training.py                    # ~1 minute on 2 cores
    python benchmarks/bench_training.py --measure 500 --skip-sb3

Writes benchmarks/results/training.json (and prints a markdown table with the ratio).
SB3 comes with the optional ``bench`` extra: pip install -e .[bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class PydpgRunner:
    def __init__(self, env_id: str, learning_starts: int, seed: int):
        from pydpg.config import DDPGConfig
        from pydpg.trainer import TrainConfig, Trainer

        cfg = DDPGConfig(hidden=(256, 256), batch_size=256, learning_starts=learning_starts, buffer_size=1_000_000)
        train = TrainConfig(env_id=env_id, total_steps=10**9, eval_every=0, checkpoint_every=0, seed=seed)
        self.trainer = Trainer(cfg, train)  # no out_dir and no evaluation: collection + updates only
        self.trainer.run(stop_at=learning_starts)

    def steps(self, n: int) -> None:
        before = self.trainer.n_grad
        self.trainer.run(stop_at=self.trainer.step + n)
        assert self.trainer.n_grad - before == n  # one update per env step


class SB3Runner:
    def __init__(self, env_id: str, learning_starts: int, seed: int):
        from peers import sb3_ddpg

        self.model = sb3_ddpg(env_id, learning_starts, seed)
        self.model.learn(learning_starts)

    def steps(self, n: int) -> None:
        before = self.model.num_timesteps
        self.model.learn(n, reset_num_timesteps=False)
        assert self.model.num_timesteps - before == n


def timed(runner, n: int) -> float:
    t0 = time.perf_counter()
    runner.steps(n)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--measure", type=int, default=3000, help="timed env steps per library (one update each)")
    p.add_argument("--chunk", type=int, default=250, help="steps per timed chunk; the libraries alternate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "training.json")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    have_sb3 = not args.skip_sb3
    if have_sb3:
        try:
            import stable_baselines3
        except ImportError:
            print("stable-baselines3 is not installed (pip install -e .[bench]); measuring pydpg only", file=sys.stderr)
            have_sb3 = False
    load_before = os.getloadavg()
    runners = {"pydpg": PydpgRunner(args.env, args.learning_starts, args.seed)}
    if have_sb3:
        runners["sb3"] = SB3Runner(args.env, args.learning_starts, args.seed)
    sps = {k: [] for k in runners}
    for i in range(args.measure // args.chunk):
        # Alternate short chunks: a burst of load from other processes hits both libraries alike,
        # and the medians below ignore the chunks it hit.
        for name, runner in runners.items():
            sps[name].append(timed(runner, args.chunk))
        print(f"chunk {i}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in sps.items()) + " steps/s",
              file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in sps.items()}
    ratio = med["pydpg"] / med["sb3"] if "sb3" in med else None
    paired = statistics.median(a / b for a, b in zip(sps["pydpg"], sps["sb3"])) if "sb3" in sps else None

    result = {
        "benchmark": "training throughput, env steps/s after learning starts (one update per step)",
        "env": args.env, "hidden": [256, 256], "batch_size": 256, "learning_starts": args.learning_starts,
        "measured_steps": args.measure, "chunk": args.chunk, "torch_threads": args.threads,
        "sps_per_chunk": sps, "median_sps": med, "max_sps": {k: max(v) for k, v in sps.items()},
        "ratio_pydpg_over_sb3": ratio, "median_paired_ratio": paired,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "sb3": stable_baselines3.__version__ if have_sb3 else None},
        "machine": {"cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "platform": platform.platform()},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)

    print(f"\nTraining throughput on {args.env}, {args.threads} CPU threads, 256-256 nets, batch 256, "
          f"1 update/step: {args.measure} steps per library after {args.learning_starts} random steps, "
          f"in alternating chunks of {args.chunk}\n")
    print("| library | env steps/s (median over chunks) | fastest chunk |")
    print("|---|---:|---:|")
    for k, v in sps.items():
        print(f"| {'pydpg' if k == 'pydpg' else 'SB3 DDPG'} | {med[k]:.1f} | {max(v):.1f} |")
    if ratio is not None:
        print(f"\npydpg / SB3 = {ratio:.2f}x (ratio of medians; median of per-chunk-pair ratios {paired:.2f}x)")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
