"""Training speed under OpenMP wait settings, on a quiet core pair and beside a busy core.

torch's CPU threads are libgomp's (Linux). Unless told otherwise, a thread that reaches a parallel
region's barrier first spins for 300,000 rounds (GOMP_SPINCOUNT's default) before it sleeps;
``OMP_WAIT_POLICY=PASSIVE`` makes it sleep at once, ``ACTIVE`` makes it spin (almost) for ever.
``import pydpg`` sets PASSIVE unless the user set the variable. This measures what each setting
costs when the cores are free and what it saves when another process holds one of them: the env
steps/s of ``Trainer`` (Hopper-v5 with pydpg's defaults unless ``--env`` / ``--preset`` /
``--critic-hidden`` say otherwise, one update per step) in the learning phase, for 1 and 2 torch
threads.

Every cell is a fresh process (libgomp reads its settings once, when torch loads it) that imports
torch before pydpg, so that only the cell's own environment decides, pinned to the same 2 CPUs;
"busy" adds a pure-Python busy loop pinned to the first of them, the stand-in for a second
training run, a sweep trial or a control loop. The cells run in rotating order, ``--repeats``
times, and each is the median. A cell that has not finished in ``--timeout`` seconds counts as
``--steps / --timeout`` (an upper bound, marked ≤).

    python benchmarks/bench_omp_wait.py                 # ~10 minutes on 2 cores
    python benchmarks/bench_omp_wait.py --settings default,PASSIVE --preset crossq --critic-hidden 256,256

Writes benchmarks/results/omp_wait.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from pydpg.cli.main import _positive_int  # the CLI's own check: a clear message naming the flag

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("default", "PASSIVE", "GOMP_SPINCOUNT=10000", "ACTIVE")

# The child pins itself before torch starts any thread, fills the buffer with random steps (not
# timed), then times the learning phase.
_CHILD = """
import json, os, sys, time
cpus, threads, learning_starts, steps = [int(c) for c in sys.argv[1].split(",")], *map(int, sys.argv[2:5])
env_id, agent = sys.argv[5], json.loads(sys.argv[6])
os.sched_setaffinity(0, cpus)
import torch  # first: pydpg leaves OpenMP's settings alone, the cell's environment decides
from pydpg.core.config import DDPGConfig
from pydpg.train.config import TrainConfig
from pydpg.train.trainer import Trainer
trainer = Trainer(DDPGConfig(**{**agent, "learning_starts": learning_starts}),
                  TrainConfig(env_id=env_id, total_steps=10**9, eval_every=0, checkpoint_every=0, seed=0,
                              threads=threads))
trainer.run(stop_at=learning_starts)
t = time.perf_counter()
trainer.run(stop_at=learning_starts + steps)
print(steps / (time.perf_counter() - t))
"""


def _environment(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    if setting in ("PASSIVE", "ACTIVE"):
        env["OMP_WAIT_POLICY"] = setting
    elif setting.startswith("GOMP_SPINCOUNT=") and setting.split("=", 1)[1].isdigit():
        env["GOMP_SPINCOUNT"] = setting.split("=", 1)[1]
    elif setting != "default":
        raise SystemExit(f"--settings: {setting!r} is not one of default, PASSIVE, ACTIVE, GOMP_SPINCOUNT=N")
    return env


def _cell(setting: str, busy: bool, threads: int, cpus: list[int], args) -> tuple[float, bool]:
    """(env steps/s, finished); an unfinished cell's rate is an upper bound."""
    loop = None
    if busy:
        busy_code = f"import os; os.sched_setaffinity(0, [{cpus[0]}])\nwhile True: pass"
        loop = subprocess.Popen([sys.executable, "-c", busy_code])
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                ",".join(map(str, cpus)),
                str(threads),
                str(args.learning_starts),
                str(args.steps),
                args.env,
                json.dumps(args.agent),
            ],
            capture_output=True,
            text=True,
            env=_environment(setting),
            timeout=args.timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return float(out.stdout.split()[-1]), True
    except subprocess.TimeoutExpired:
        return args.steps / args.timeout, False
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()


def _name(cell: tuple) -> str:
    setting, busy, threads = cell
    return f"{setting}, {'busy core' if busy else 'quiet'}, {threads} thread(s)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="comma-separated: default, PASSIVE, ACTIVE or GOMP_SPINCOUNT=N (default %(default)s)",
    )
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--preset", help="an algorithm preset (pydpg.core.config.DDPGConfig.presets()), e.g. crossq")
    p.add_argument("--critic-hidden", help="critic widths, e.g. 256,256 (crossq's default is 2048,2048)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="timed env steps (each with one update)")
    p.add_argument("--learning-starts", type=_positive_int, default=1000)
    p.add_argument("--repeats", type=_positive_int, default=3)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a cell may take")
    p.add_argument("--out", type=Path, default=RESULTS / "omp_wait.json")
    args = p.parse_args()
    if not args.timeout > 0:
        p.error(f"--timeout must be > 0, got {args.timeout}")
    from pydpg.core.config import DDPGConfig

    presets = DDPGConfig.presets()
    if args.preset is not None and args.preset not in presets:
        sys.exit(f"--preset: {args.preset!r} is not one of {', '.join(sorted(presets))}")
    args.agent = dict(presets[args.preset]) if args.preset else {}
    if args.critic_hidden:
        widths = args.critic_hidden.split(",")
        if not all(w.isdigit() and int(w) > 0 for w in widths):
            sys.exit(f"--critic-hidden: {args.critic_hidden!r} is not comma-separated positive widths, e.g. 256,256")
        args.agent["critic_hidden"] = [int(w) for w in widths]
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs Linux CPU affinity and at least 2 CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    settings = args.settings.split(",")
    for setting in settings:
        _environment(setting)  # a misspelt setting stops here, not after minutes of measuring
    cells = list(itertools.product(settings, (False, True), (1, 2)))
    runs: dict[tuple, list[float]] = {c: [] for c in cells}
    unfinished: set[tuple] = set()
    for r in range(args.repeats):
        for c in cells[r % len(cells) :] + cells[: r % len(cells)]:
            rate, finished = _cell(*c, cpus, args)
            runs[c].append(rate)
            if not finished:
                unfinished.add(c)
            print(f"  {_name(c)}: {'' if finished else 'at most '}{rate:.1f} env steps/s", file=sys.stderr, flush=True)
    table = {c: statistics.median(v) for c, v in runs.items()}
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    what = ", ".join(
        filter(None, [args.preset or "pydpg defaults", args.critic_hidden and f"critic {args.critic_hidden}"])
    )
    print(
        f"\n{args.env}, {what}, env steps/s in the learning phase (median of {args.repeats}; "
        f"{args.steps} steps, {args.timeout:g} s limit), CPUs {cpus}, load average {load} at the end\n"
    )
    print("| setting | quiet, 1 thread | quiet, 2 threads | busy core, 1 thread | busy core, 2 threads |")
    print("|---|---:|---:|---:|---:|")
    for s in settings:
        row = [(s, busy, th) for busy in (False, True) for th in (1, 2)]
        print(f"| {s} | " + " | ".join(("≤ " if c in unfinished else "") + f"{table[c]:.0f}" for c in row) + " |")
    if unfinished:
        print("\n≤: at least one repeat had not finished in the limit")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "cpus": cpus,
                "load_average_after": float(load),
                "env": args.env,
                "preset": args.preset,
                "agent": args.agent,
                "steps": args.steps,
                "learning_starts": args.learning_starts,
                "timeout_s": args.timeout,
                "runs": {_name(c): v for c, v in runs.items()},
                "median_env_steps_per_s": {_name(c): v for c, v in table.items()},
                "unfinished_in_limit": sorted(map(_name, unfinished)),
                "versions": {"python": platform.python_version(), "torch": version("torch")},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
