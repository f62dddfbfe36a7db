"""Learning benchmark: DDPG on HalfCheetah-v5, Hopper-v5 and Walker2d-v5, several seeds.

Runs take hours on a small CPU (~200 env steps/s with one update per step: ~25 min per 100k), so
this script is built to run unattended and to be interrupted: each run checkpoints every
``--checkpoint-every`` steps and ``run`` resumes unfinished runs exactly (pydpg's resume) and skips
finished ones. Outputs go to ``runs/learning/<env>/seed<k>/`` (gitignored).

    nohup python benchmarks/learning_runs.py run --env HalfCheetah-v5 --seed 0 > /tmp/hc0.log 2>&1 &
    python benchmarks/learning_runs.py run                 # the whole grid, one run after another
    python benchmarks/learning_runs.py status              # where every run is
    python benchmarks/learning_runs.py report              # curves + docs/benchmarks_training.md

``report`` plots one PNG per task (mean over seeds, min..max shaded) into docs/ and writes a
markdown section with the results table beside published anchors; runs still in progress are
reported with the steps they reached, never extrapolated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from pydpg.config import DDPGConfig

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


# What runs: pydpg's defaults; pydpg with CleanRL's one departure from OurDDPG (the actor and the
# targets step every second critic step: ddpg_continuous_action.py policy_frequency=2); pydpg with
# TD3's three switches (a control: TD3 fixes DDPG's overestimation, so it separates "DDPG is weak on
# this task" from "the training loop is wrong"); and SB3's DDPG with the same hyper-parameters
# (benchmarks/peers.py), evaluated by the same pydpg.envs.evaluate.
IMPLS = {
    "pydpg": {"label": "pydpg DDPG", "dir": "seed", "agent": {}},
    "pydpg-delay2": {"label": "pydpg DDPG, policy_delay 2 (CleanRL)", "dir": "delay2_seed",
                     "agent": {"policy_delay": 2}},
    "pydpg-td3": {"label": "pydpg TD3 (--td3)", "dir": "td3_seed", "agent": DDPGConfig.presets()["td3"]},
    "sb3": {"label": "SB3 DDPG (same settings)", "dir": "sb3_seed", "agent": None},
}


def run_dir(env_id: str, seed: int, impl: str = "pydpg") -> Path:
    return RUNS / env_id / f"{IMPLS[impl]['dir']}{seed}"


def run_one(env_id: str, seed: int, steps: int, checkpoint_every: int, threads: int, impl: str = "pydpg") -> None:
    import torch

    from pydpg import presets
    from pydpg.checkpoint import CheckpointError, resolve_checkpoint
    from pydpg.trainer import Trainer

    torch.set_num_threads(threads)
    out = run_dir(env_id, seed, impl)
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["steps"] >= steps:
        print(f"{env_id} seed {seed} ({impl}): done ({steps} steps), skipping", flush=True)
        return
    if IMPLS[impl]["agent"] is None:
        return run_sb3(env_id, seed, steps, out)
    try:
        resolve_checkpoint(out)
        trainer = Trainer.resume(out, total_steps=steps, verbose=True)
        print(f"{env_id} seed {seed}: resuming at step {trainer.step}", flush=True)
    except CheckpointError:
        cfg, train = presets.resolve(env_id, agent=IMPLS[impl]["agent"],
                                     train={"seed": seed, "total_steps": steps, "checkpoint_every": checkpoint_every})
        trainer = Trainer(cfg, train, out_dir=out, verbose=True)
    try:
        trainer.run()
    finally:
        trainer.close()


def run_sb3(env_id: str, seed: int, steps: int, out: Path) -> None:
    """SB3's DDPG on pydpg's evaluation protocol: same eval schedule, episodes, eval seed and
    ``evaluate`` function. SB3 cannot resume a run with its buffer here, so an interrupted
    run starts over."""
    import csv

    from peers import sb3_ddpg

    from pydpg import presets
    from pydpg.envs import evaluate, make_env, unscale_action

    cfg, train = presets.resolve(env_id, train={"seed": seed})
    model = sb3_ddpg(env_id, cfg.learning_starts, seed)
    eval_env = make_env(env_id)
    low, high = eval_env.action_space.low, eval_env.action_space.high

    def policy(obs):  # SB3 returns env units; evaluate() wants [-1, 1]
        return unscale_action(model.predict(obs, deterministic=True)[0], low, high)

    out.mkdir(parents=True, exist_ok=True)
    fields = ["step", "wall_time", "sps", "eval_mean", "eval_std"]
    t0, last_t, last_step = time.perf_counter(), time.perf_counter(), 0
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        while model.num_timesteps < steps:
            model.learn(min(train.eval_every, steps - model.num_timesteps), reset_num_timesteps=False)
            now = time.perf_counter()
            r = evaluate(policy, eval_env, train.eval_episodes, seed + train.eval_seed_offset)
            row = {"step": model.num_timesteps, "wall_time": round(now - t0, 3),
                   "sps": (model.num_timesteps - last_step) / (now - last_t), "eval_mean": r.mean, "eval_std": r.std}
            w.writerow(row)
            f.flush()
            print(f"{env_id} seed {seed} (sb3): step {row['step']:>8} | eval {r.mean:9.2f} | {row['sps']:.0f} sps",
                  flush=True)
            last_t, last_step = time.perf_counter(), model.num_timesteps
    import stable_baselines3

    (out / "summary.json").write_text(json.dumps({"steps": int(model.num_timesteps), "impl": "sb3",
                                                  "sb3": stable_baselines3.__version__}, indent=1))


def _seeds_on_disk(env_id: str, impl: str) -> list[int]:
    prefix = IMPLS[impl]["dir"]
    tails = [d.name[len(prefix):] for d in (RUNS / env_id).glob(f"{prefix}*")]
    return [int(t) for t in tails if t.isdigit()]


def _rows(out: Path) -> list[dict]:
    from pydpg.trainer import read_metrics

    path = out / "metrics.csv"
    return [r for r in read_metrics(path) if not math.isnan(r["eval_mean"])] if path.exists() else []


def cmd_status(args) -> int:
    for env_id in args.envs:
        for seed in args.seeds:
            rows = _rows(run_dir(env_id, seed, args.impl))
            if not rows:
                print(f"{env_id:16} seed {seed}: not started")
                continue
            last = rows[-1]
            done = (run_dir(env_id, seed, args.impl) / "summary.json").exists() and last["step"] >= args.steps
            print(f"{env_id:16} seed {seed}: step {int(last['step']):>8}, eval {last['eval_mean']:9.1f}, "
                  f"{last['sps']:.0f} sps{' (finished)' if done else ''}")
    return 0


def cmd_report(args) -> int:
    import numpy as np

    from pydpg.plotting import plot_seed_curves

    lines = ["## Learning curves (DDPG, pydpg defaults = TD3 paper's OurDDPG)", "",
             "Noiseless evaluation every 5,000 steps (10 episodes, eval env seeded seed + 100). "
             "*final* is the last evaluation (mean over seeds, +/- std over seeds); *last 100k* averages "
             "every evaluation of the last 100k steps of a run, then over seeds (one evaluation of these "
             "tasks swings by hundreds, so this is the steadier number); *best* is the best evaluation of any seed. Anchors are published 1M-step results; our runs are shorter "
             "(see *steps*), so compare curves, not just numbers.", "",
             "Rows other than *pydpg DDPG* are controls run on fewer seeds (see `IMPLS` in this script).", "",
             "| task | agent | seeds | steps (min over seeds) | final eval | last 100k | best eval | "
             "wall time per seed | TD3 paper OurDDPG @1M | CleanRL DDPG v4 @1M |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    images = []
    for env_id in args.envs:
        anchors = ANCHORS.get(env_id, {})
        anchor_cells = (f"{anchors.get('TD3 paper OurDDPG (1M)', '-')} | "
                        f"{anchors.get('CleanRL DDPG v4 (1M)', '-')} |")
        curves = {}
        for impl, spec in IMPLS.items():
            grid = list(args.seeds) if impl == "pydpg" else []
            seeds = sorted(set(grid) | set(_seeds_on_disk(env_id, impl)))
            runs = {seed: _rows(run_dir(env_id, seed, impl)) for seed in seeds}
            runs = {s: r for s, r in runs.items() if r}
            if not runs:
                if grid:
                    lines.append(f"| {env_id} | {spec['label']} | 0 of {len(seeds)} | not run | - | - | - | - | "
                                 f"{anchor_cells}")
                    anchor_cells = " | |"
                continue
            finals = [r[-1]["eval_mean"] for r in runs.values()]
            best = max(max(x["eval_mean"] for x in r) for r in runs.values())
            tails = [np.mean([x["eval_mean"] for x in r if x["step"] > r[-1]["step"] - 100_000]) for r in runs.values()]
            steps = min(int(r[-1]["step"]) for r in runs.values())
            finished = all((run_dir(env_id, s, impl) / "summary.json").exists() and int(r[-1]["step"]) >= args.steps
                           for s, r in runs.items())
            status = "" if finished else f" of {args.steps:,} (in progress)"
            walls = [r[-1]["wall_time"] / 60 for r in runs.values()]
            lines.append(f"| {env_id} | {spec['label']} | {len(runs)} of {len(seeds)} | {steps:,}{status} | "
                         f"{np.mean(finals):.0f} +/- {np.std(finals):.0f} | {np.mean(tails):.0f} +/- {np.std(tails):.0f} | "
                         f"{best:.0f} | "
                         f"{', '.join(f'{w:.0f} min' for w in walls)} | {anchor_cells}")
            anchor_cells = " | |"
            curves[spec["label"]] = [(np.array([x["step"] for x in r]), np.array([x["eval_mean"] for x in r]))
                                     for r in runs.values()]
        png = DOCS / f"learning_{env_id.split('-')[0].lower()}.png"
        if curves and plot_seed_curves(curves, png, title=env_id, anchors=anchors):
            images.append(f"![{env_id}]({png.name})")
    lines += ["", *images, ""]
    bench = ROOT / "benchmarks" / "results" / "training.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        ratio = b.get("ratio_pydpg_over_sb3")
        lines = ["## Training throughput (benchmarks/bench_training.py)", "",
                 f"{b['env']}, 256-256 nets, batch {b['batch_size']}, one update per env step, "
                 f"{b['torch_threads']} CPU threads, {b['measured_steps']} steps per library timed after "
                 f"{b['learning_starts']} random steps, in alternating chunks of {b['chunk']} steps "
                 f"({b['time']}, torch {b['versions']['torch']}, SB3 {b['versions']['sb3']}; "
                 f"load average {b['machine']['loadavg_before'][0]:.1f} before the run).", "",
                 "| library | env steps/s (median chunk) | fastest chunk |", "|---|---:|---:|",
                 f"| pydpg | {b['median_sps']['pydpg']:.1f} | {b['max_sps']['pydpg']:.1f} |",
                 *([f"| SB3 DDPG | {b['median_sps']['sb3']:.1f} | {b['max_sps']['sb3']:.1f} |"]
                   if "sb3" in b["median_sps"] else []),
                 *([f"| **pydpg / SB3** | **{ratio:.2f}x** | {b['max_sps']['pydpg'] / b['max_sps']['sb3']:.2f}x |"]
                   if ratio else []), "", *lines]
    out = DOCS / "benchmarks_training.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}" + "".join(f"\n         {DOCS / i.split('(')[1][:-1]}" for i in images))
    return 0


def cmd_run(args) -> int:
    for env_id in args.envs:
        for seed in args.seeds:
            t = time.time()
            run_one(env_id, seed, args.steps, args.checkpoint_every, args.threads, args.impl)
            print(f"{env_id} seed {seed}: {time.time() - t:.0f} s", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "status", "report"))
    p.add_argument("--env", action="append", dest="envs", help=f"task(s) (default {', '.join(TASKS)})")
    p.add_argument("--seed", action="append", type=int, dest="seeds", help=f"seed(s) (default {SEEDS})")
    p.add_argument("--impl", choices=tuple(IMPLS), default="pydpg", help="what `run` trains (default pydpg)")
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--checkpoint-every", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    args = p.parse_args(argv)
    args.envs = args.envs or list(TASKS)
    args.seeds = args.seeds or list(SEEDS)
    return {"run": cmd_run, "status": cmd_status, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
