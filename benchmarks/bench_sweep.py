"""A sweep on Ray Tune against the same trials one after another, in the same run on the same machine.

    python benchmarks/bench_sweep.py                 # examples/sweeps/pendulum.toml: 3 seeds x 2 settings
    python benchmarks/bench_sweep.py --num-cpus 2 --spec my_sweep.toml

First every trial of the spec runs one after another in this process (``pydpg.sweep.run_trial``, one
torch thread, as each trial has), then the same spec runs as a sweep (``run_sweep``, one CPU per
trial, local Ray). Prints the sweep's table, both wall times (the sweep's with and without starting
Ray) and their ratio, checks that both produced the same evaluations (CPU runs are deterministic
per seed), and saves benchmarks/results/sweep.json. Outputs stay under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "sweeps" / "pendulum.toml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / f"bench_sweep_{time.strftime('%Y%m%d_%H%M%S')}")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the sweep's local Ray")
    p.add_argument("--spec", type=Path, default=SPEC, help="the sweep spec (default examples/sweeps/pendulum.toml)")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty")

    import numpy as np
    import torch

    from pydpg.sweep import load_spec, run_sweep, run_trial
    from pydpg.trainer import read_metrics

    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    trials = spec.trials()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for i, trial in enumerate(trials):
        t = time.perf_counter()
        run_trial(trial, args.out / "sequential")
        print(f"sequential {i + 1}/{len(trials)}: {trial.name} {time.perf_counter() - t:.1f} s", file=sys.stderr)
    sequential = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = run_sweep(spec, args.out / "sweep", num_cpus=args.num_cpus, verbose=0)
    sweep_total = time.perf_counter() - t0
    load_after = os.getloadavg()

    def evals(root: Path, trial) -> list[float]:
        return [r["eval_mean"] for r in read_metrics(root / trial.rel_dir / "metrics.csv")
                if not np.isnan(r["eval_mean"])]

    same = all(evals(args.out / "sequential", t) == evals(args.out / "sweep", t) for t in trials)
    report = {
        "spec": args.spec.resolve().relative_to(ROOT).as_posix() if args.spec.resolve().is_relative_to(ROOT)
        else str(args.spec), "trials": len(trials), "num_cpus": args.num_cpus,
        "sequential_s": round(sequential, 1), "sweep_fit_s": round(result.wall_time_s, 1),
        "sweep_total_s": round(sweep_total, 1), "speedup_fit": round(sequential / result.wall_time_s, 2),
        "speedup_total": round(sequential / sweep_total, 2), "same_evaluations": same,
        "table": result.summary.markdown, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                      "loadavg_before": load_before, "loadavg_after": load_after},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python benchmarks/bench_sweep.py "
                                                              + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(result.summary.markdown)
    print(f"{len(trials)} trials one after another: {sequential:.0f} s; as a sweep on {args.num_cpus} CPUs: "
          f"{result.wall_time_s:.0f} s in Tune ({sweep_total:.0f} s with starting Ray): "
          f"{report['speedup_fit']:.2f}x ({report['speedup_total']:.2f}x); same evaluations: {same}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    out = ROOT / "benchmarks" / "results" / "sweep.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
