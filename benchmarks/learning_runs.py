"""Learning benchmark: DDPG on HalfCheetah-v5, Hopper-v5 and Walker2d-v5, several seeds, as a sweep.

Runs take hours on a small CPU (~200 env steps/s with one update per step: ~25 min per 100k), so
this script is built to run unattended and to be interrupted. ``run`` is ``pydpg.experiments.sweep.run_sweep``
over the grid (one Ray Tune trial per task x setting x seed, one CPU each, as many at once as Ray
has CPUs): every pydpg trial checkpoints every ``--checkpoint-every`` steps, and running ``run``
again resumes unfinished trials exactly (pydpg's resume) and skips finished ones. Outputs go to
``runs/learning/<env>/<setting>/seed<k>/`` (gitignored); the settings are ``SETTINGS`` below.

    nohup python benchmarks/learning_runs.py run --env HalfCheetah-v5 --seed 0 > /tmp/hc0.log 2>&1 &
    python benchmarks/learning_runs.py run                 # the whole grid of pydpg DDPG
    python benchmarks/learning_runs.py run --impl sb3 --env Hopper-v5 --seed 0 --seed 1 --seed 2
    python benchmarks/learning_runs.py status              # where every run is
    python benchmarks/learning_runs.py report              # curves + docs/benchmarks_training.md
    python benchmarks/learning_runs.py migrate             # runs of the old layout, see below

``report`` plots one PNG per task (mean over seeds, +/- std shaded) into docs/ and writes a
markdown section with the results table (``pydpg.experiments.sweep_summary``) beside published anchors; runs
still in progress are reported with the steps they reached, never extrapolated.

Before the move onto sweeps, runs lived in ``runs/learning/<env>/{seed,delay2_seed,td3_seed,
sb3_seed}<k>/``; ``migrate`` moves such directories to their setting's place (a pydpg run directory
may move: its checkpoints hold no paths), and ``status``/``report`` say when there are any left.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "learning"
DOCS = ROOT / "docs"
TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
SEEDS = (0, 1)
# Published final returns at 1M steps (gym v1/v4 tasks; v5 changes little for these three):
# TD3 paper (Fujimoto et al. 2018) Table 1, "Our DDPG"; CleanRL's DDPG benchmark on the v4 tasks
# (docs.cleanrl.dev, ddpg_continuous_action.py).
ANCHORS = {
    "HalfCheetah-v5": {"TD3 paper OurDDPG (1M)": 8577, "CleanRL DDPG v4 (1M)": 10374},
    "Hopper-v5": {"TD3 paper OurDDPG (1M)": 1860, "CleanRL DDPG v4 (1M)": 1577},
    "Walker2d-v5": {"TD3 paper OurDDPG (1M)": 3098, "CleanRL DDPG v4 (1M)": 1240},
}


# The sweep settings (pydpg.experiments.sweep_spec). pydpg's defaults; pydpg with CleanRL's one departure from
# OurDDPG (the actor and the targets step every second critic step: ddpg_continuous_action.py
# policy_frequency=2); pydpg with TD3's three switches (a control: TD3 fixes DDPG's overestimation,
# so it separates "DDPG is weak on this task" from "the training loop is wrong"); and SB3's DDPG with
# the same hyper-parameters (pydpg.experiments.sb3_peer), evaluated by the same pydpg.common.envs.evaluate, as trials
# of their own.
SETTINGS = {
    "pydpg": {"label": "pydpg DDPG"},
    "pydpg-delay2": {"label": "pydpg DDPG, policy_delay 2 (CleanRL)", "agent": {"policy_delay": 2}},
    "pydpg-td3": {"label": "pydpg TD3 (--td3)", "preset": "td3"},
    "sb3": {"label": "SB3 DDPG (same settings)", "impl": "sb3"},
}
# Where each setting's runs were before this script ran on sweeps: runs/learning/<env>/<prefix><seed>.
OLD_PREFIX = {"pydpg": "seed", "pydpg-delay2": "delay2_seed", "pydpg-td3": "td3_seed", "sb3": "sb3_seed"}


def sweep_spec(envs, seeds, impls, steps: int, checkpoint_every: int) -> dict:
    return {
        "tasks": list(envs),
        "seeds": list(seeds),
        "total_steps": steps,
        "train": {"checkpoint_every": checkpoint_every},
        "settings": {i: SETTINGS[i] for i in impls},
    }


def run_dir(runs: Path, env_id: str, seed: int, impl: str = "pydpg") -> Path:
    from pydpg.experiments.sweep_spec import task_dir

    return runs / task_dir(env_id) / impl / f"seed{seed}"


def old_layout(runs: Path) -> list[tuple[Path, Path]]:
    """(old directory, new directory) of every run still in the layout before sweeps."""
    moves = []
    for env_dir in sorted(p for p in runs.glob("*") if p.is_dir()):
        for impl, prefix in OLD_PREFIX.items():
            for d in env_dir.glob(f"{prefix}*"):
                tail = d.name[len(prefix) :]
                if d.is_dir() and tail.isdigit():
                    moves.append((d, env_dir / impl / f"seed{int(tail)}"))
    return moves


def _warn_old_layout(runs: Path) -> None:
    moves = old_layout(runs)
    if moves:
        print(
            f"note: {len(moves)} run(s) in the layout before sweeps (e.g. {moves[0][0]}) are "
            "not read; `python benchmarks/learning_runs.py migrate` moves them",
            file=sys.stderr,
        )


def cmd_migrate(args) -> int:
    moves = old_layout(args.runs)
    for src, dst in moves:
        if dst.exists():
            print(f"kept {src}: {dst} exists already")
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        print(f"moved {src} -> {dst}")
    if not moves:
        print("nothing to move")
    return 0


def cmd_run(args) -> int:
    from pydpg.experiments.sweep import SweepError, run_sweep

    # resume=True always: this grid is meant to be stopped and started again, and a finished run
    # is never trained twice (a longer --steps extends it from its last checkpoint).
    try:
        result = run_sweep(
            sweep_spec(args.envs, args.seeds, args.impls, args.steps, args.checkpoint_every),
            args.runs,
            num_cpus=args.num_cpus,
            resume=True,
        )
    except SweepError as e:
        print(e.result.summary.markdown)
        print(e, file=sys.stderr)
        return 1
    print(result.summary.markdown)
    print(f"{len(result.trials)} trials in {result.wall_time_s:.0f} s")
    return 0


def cmd_status(args) -> int:
    from pydpg.experiments.sweep_summary import read_run

    _warn_old_layout(args.runs)
    for env_id in args.envs:
        for impl in args.impls:
            for seed in args.seeds:
                run = read_run(run_dir(args.runs, env_id, seed, impl), seed)
                where = f"{env_id:16} {impl:13} seed {seed}"
                if run is None:
                    print(f"{where}: not started")
                    continue
                print(
                    f"{where}: step {int(run.steps[-1]):>8}, eval {run.evals[-1]:9.1f}, "
                    f"{run.wall_time_s / 60:.0f} min{' (finished)' if run.finished else ''}"
                )
    return 0


def cmd_report(args) -> int:
    from pydpg.experiments.sweep_summary import collect, format_pm, group_stats, plot_task, tail_cell, tail_header

    _warn_old_layout(args.runs)
    groups = [g for g in collect(args.runs) if g.task in args.envs] if args.runs.is_dir() else []
    for g in groups:  # runs moved by `migrate` have no setting.json (with its label) until `run` writes it
        g.label = SETTINGS.get(g.setting, {}).get("label", g.label)
    order = {name: i for i, name in enumerate(SETTINGS)}
    groups.sort(key=lambda g: (args.envs.index(g.task), order.get(g.setting, len(order)), g.setting))
    rows = [group_stats(g) for g in groups]
    tail = tail_header(rows) if rows else "last 100k steps"
    lines = [
        "## Learning curves (DDPG, pydpg defaults = TD3 paper's OurDDPG)",
        "",
        "Noiseless evaluation every 5,000 steps (10 episodes, eval env seeded seed + 100). Each value is "
        "the mean over seeds +/- the std over seeds: *final* of each run's last evaluation; "
        f"*{tail}* of each run's mean evaluation over its last 100k steps (one evaluation of these tasks "
        "swings by hundreds, so this is the steadier number); *best* of each run's best evaluation. "
        "Anchors are published 1M-step results; our runs are shorter (see *steps*), so compare curves, "
        "not just numbers.",
        "",
        "Rows other than *pydpg DDPG* are controls run on fewer seeds (see `SETTINGS` in benchmarks/learning_runs.py).",
        "",
        f"| task | agent | seeds | steps (min over seeds) | final eval | {tail} | best eval | "
        "wall time per seed | TD3 paper OurDDPG @1M | CleanRL DDPG v4 @1M |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    images = []
    for env_id in args.envs:
        anchors = ANCHORS.get(env_id, {})
        anchor_cells = f"{anchors.get('TD3 paper OurDDPG (1M)', '-')} | {anchors.get('CleanRL DDPG v4 (1M)', '-')} |"
        task_rows = [r for r in rows if r["task"] == env_id]
        if not task_rows:
            lines.append(f"| {env_id} | pydpg DDPG | 0 | not run | - | - | - | - | {anchor_cells}")
            continue
        for r in task_rows:
            status = "" if r["finished"] == r["n_seeds"] else f" ({r['n_seeds'] - r['finished']} in progress)"
            lines.append(
                f"| {env_id} | {r['label']} | {r['n_seeds']} | {r['steps']:,}{status} | {format_pm(r['final'])} | "
                f"{tail_cell(r, tail)} | {format_pm(r['best'])} | {r['wall_time_s'] / 60:.0f} min | {anchor_cells}"
            )
            anchor_cells = " | |"
        png = args.docs / f"learning_{env_id.split('-')[0].lower()}.png"
        if plot_task([g for g in groups if g.task == env_id], png, title=env_id, anchors=anchors):
            images.append(f"![{env_id}]({png.name})")
    lines += ["", *images, ""]
    bench = ROOT / "benchmarks" / "results" / "training.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        ratio = b.get("ratio_pydpg_over_sb3")
        lines = [
            "## Training throughput (benchmarks/bench_training.py)",
            "",
            f"{b['env']}, 256-256 nets, batch {b['batch_size']}, one update per env step, "
            f"{b['torch_threads']} CPU threads, {b['measured_steps']} steps per library timed after "
            f"{b['learning_starts']} random steps, in alternating chunks of {b['chunk']} steps "
            f"({b['time']}, torch {b['versions']['torch']}, SB3 {b['versions']['sb3']}; "
            f"load average {b['machine']['loadavg_before'][0]:.1f} before the run).",
            "",
            "| library | env steps/s (median chunk) | fastest chunk |",
            "|---|---:|---:|",
            f"| pydpg | {b['median_sps']['pydpg']:.1f} | {b['max_sps']['pydpg']:.1f} |",
            *(
                [f"| SB3 DDPG | {b['median_sps']['sb3']:.1f} | {b['max_sps']['sb3']:.1f} |"]
                if "sb3" in b["median_sps"]
                else []
            ),
            *(
                [f"| **pydpg / SB3** | **{ratio:.2f}x** | {b['max_sps']['pydpg'] / b['max_sps']['sb3']:.2f}x |"]
                if ratio
                else []
            ),
            "",
            *lines,
        ]
    out = args.docs / "benchmarks_training.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}" + "".join(f"\n         {args.docs / i.split('(')[1][:-1]}" for i in images))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "status", "report", "migrate"))
    p.add_argument("--env", action="append", dest="envs", help=f"task(s) (default {', '.join(TASKS)})")
    p.add_argument("--seed", action="append", type=int, dest="seeds", help=f"seed(s) (default {SEEDS})")
    p.add_argument(
        "--impl",
        action="append",
        choices=tuple(SETTINGS),
        dest="impls",
        help="setting(s) that `run` trains and `status` lists (default pydpg)",
    )
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--checkpoint-every", type=int, default=10_000)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray: trials at once (default: all)")
    p.add_argument("--runs", type=Path, default=RUNS, help="where the runs are (default runs/learning)")
    p.add_argument("--docs", type=Path, default=DOCS, help="where `report` writes (default docs/)")
    args = p.parse_args(argv)
    args.envs = args.envs or list(TASKS)
    args.seeds = args.seeds or list(SEEDS)
    args.impls = args.impls or ["pydpg"]
    return {"run": cmd_run, "status": cmd_status, "report": cmd_report, "migrate": cmd_migrate}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
