"""A sweep on Ray Tune against the same trials one after another, in the same run on the same machine.

    python benchmarks/bench_sweep.py                 # examples/sweeps/pendulum.toml: 3 seeds x 2 settings
    python benchmarks/bench_sweep.py --num-cpus 2 --spec my_sweep.toml

Every trial of the spec runs one after another in this process (``pydpg.experiments.sweep.run_trial``, one
torch thread, as each trial has), and the same spec runs as a sweep (``run_sweep``, one CPU per
trial, local Ray), and, as a control without Ray, in as many plain processes as the sweep has CPUs;
``--rounds`` rounds of the three, each round in the reverse order of the one before. Prints the sweep's
table, the wall times (the sweep's is Tuner.fit's; starting Ray is timed once, apart) and the ratio
of their means, checks that every phase produced the same evaluations (CPU runs are deterministic
per seed), and saves benchmarks/results/sweep.json. Outputs stay under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "sweeps" / "pendulum.toml"
# "processes" is a control: the same trials on as many plain processes as the sweep has CPUs, no
# Ray; it shows what running trials side by side gives on this machine, apart from Tune's overhead.
KINDS = ("sequential", "processes", "sweep")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / f"bench_sweep_{time.strftime('%Y%m%d_%H%M%S')}")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the sweep's local Ray")
    p.add_argument("--spec", type=Path, default=SPEC, help="the sweep spec (default examples/sweeps/pendulum.toml)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both, in alternating order (default 2)")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty")

    import numpy as np
    import torch

    from pydpg.experiments.sweep import load_spec, run_sweep, run_trial
    from pydpg.train import ray_session
    from pydpg.train.run_log import read_metrics

    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    trials = spec.trials()
    ray_start = None
    phases = []  # (kind, directory, seconds, load average before, after)
    # Each round runs the kinds in the reverse order of the one before: on a shared machine load
    # changes by the minute, and the alternation spreads it over all of them.
    for r in range(args.rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            where, load = args.out / f"{kind}{r}", os.getloadavg()
            if kind == "sequential":
                t0 = time.perf_counter()
                for trial in trials:
                    run_trial(trial, where)
                seconds = time.perf_counter() - t0
            elif kind == "processes":
                t0 = time.perf_counter()
                with ProcessPoolExecutor(
                    args.num_cpus, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
                ) as pool:
                    list(pool.map(run_trial, trials, [where] * len(trials)))
                seconds = time.perf_counter() - t0
            else:
                if ray_start is None:  # Ray starts once per process: timed apart from the sweeps
                    t0 = time.perf_counter()
                    ray_session.init(num_cpus=args.num_cpus)
                    ray_start = time.perf_counter() - t0
                result = run_sweep(spec, where, num_cpus=args.num_cpus, verbose=0)
                seconds, table = result.wall_time_s, result.summary.markdown
            phases.append((kind, where, seconds, load[0], os.getloadavg()[0]))
            print(f"round {r}: {kind} {seconds:.1f} s (load average {load[0]:.1f} before)", file=sys.stderr)

    def evals(root: Path, trial) -> list[float]:
        return [
            r["eval_mean"] for r in read_metrics(root / trial.rel_dir / "metrics.csv") if not np.isnan(r["eval_mean"])
        ]

    same = all(evals(phases[0][1], t) == evals(where, t) for _, where, *_ in phases[1:] for t in trials)
    mean = {k: float(np.mean([s for kind, _, s, *_ in phases if kind == k])) for k in KINDS}
    report = {
        "spec": args.spec.resolve().relative_to(ROOT).as_posix()
        if args.spec.resolve().is_relative_to(ROOT)
        else str(args.spec),
        "trials": len(trials),
        "num_cpus": args.num_cpus,
        "phases": [
            {"kind": k, "seconds": round(s, 1), "loadavg_before": lb, "loadavg_after": la} for k, _, s, lb, la in phases
        ],
        "mean_s": {k: round(v, 1) for k, v in mean.items()},
        "ray_start_s": round(ray_start, 1),
        "speedup": round(mean["sequential"] / mean["sweep"], 2),
        "speedup_processes": round(mean["sequential"] / mean["processes"], 2),
        "same_evaluations": same,
        "table": table,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python benchmarks/bench_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(table)

    def times(k: str) -> str:
        return ", ".join(f"{s:.0f}" for kind, _, s, *_ in phases if kind == k) + " s"

    print(
        f"{len(trials)} trials, {args.rounds} rounds: one after another {times('sequential')}; as a sweep on "
        f"{args.num_cpus} CPUs {times('sweep')} (Tuner.fit; starting Ray took {ray_start:.0f} s once); in "
        f"{args.num_cpus} plain processes {times('processes')}. On the means the sweep takes "
        f"{1 / report['speedup']:.2f}x and the processes {1 / report['speedup_processes']:.2f}x the sequential "
        f"time; same evaluations everywhere: {same}"
    )
    out = ROOT / "benchmarks" / "results" / "sweep.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
