"""Wall-clock time to a score: pydpg's CrossQ against SBX's, from the first step to the first
noiseless evaluation whose mean reaches ``--target``.

Both get the same task and seed, a 256-256 actor and a ``--critic``-wide critic, one update per env
step, ``--learning-starts`` uniform-random steps first (pydpg's task preset: 25k, the TD3 paper's;
SBX's own default is 100, which would start its clock with less exploration), and the same
evaluation: 10 episodes of the deterministic policy every 5k steps on a separate env (pydpg's
``Trainer`` evaluation; SBX through SB3's ``EvalCallback`` with ``deterministic=True``). Evaluation
time counts on both sides. Each contender is its own process pinned to its own core with one thread,
so run both at once on a 2-core machine:

    taskset -c 0 python benchmarks/time_to_score.py pydpg --seed 0 --out benchmarks/results/time_to_score_pydpg.json &
    taskset -c 1 python benchmarks/time_to_score.py sbx --seed 0 --out benchmarks/results/time_to_score_sbx.json

(seed 1 wrote time_to_score_pydpg_s1.json and time_to_score_sbx_s1.json).

With ``--target inf`` nothing stops a run early: it is a learning curve on the same evaluation, which
is how the SBX peer rows of docs/benchmarks.md's CrossQ table were run (same-machine SBX at 300k):

    taskset -c 1 python benchmarks/time_to_score.py sbx --env Walker2d-v5 --target inf --max-minutes 75 \
        --out benchmarks/results/peer_sbx_crossq_walker2d.json

Writes the evaluations (step, wall seconds, mean) and the time to the target, or that it was not
reached within ``--max-steps`` / ``--max-minutes``. SBX comes with the bench extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_pydpg(args, evals: list, t0: float) -> None:
    from pydpg.core.config import DDPGConfig
    from pydpg.train.config import TrainConfig
    from pydpg.train.trainer import Trainer

    cfg = DDPGConfig.preset("crossq", critic_hidden=(args.critic, args.critic), learning_starts=args.learning_starts)
    tc = TrainConfig(
        env_id=args.env,
        total_steps=args.max_steps,
        eval_every=5_000,
        eval_episodes=10,
        checkpoint_every=0,
        seed=args.seed,
        threads=1,
        target_return=args.target,
    )
    trainer = Trainer(cfg, tc)  # no out_dir: nothing written
    deadline = t0 + 60 * args.max_minutes

    def record(row) -> None:
        evals.append({"step": int(row["step"]), "wall_s": time.perf_counter() - t0, "mean": float(row["eval_mean"])})
        print(evals[-1], file=sys.stderr, flush=True)

    while trainer.step < args.max_steps and time.perf_counter() < deadline and not trainer.reached_target:
        trainer.run(stop_at=min(trainer.step + 5_000, args.max_steps), on_eval=record)


def run_sbx(args, evals: list, t0: float) -> None:
    import gymnasium as gym
    from peers import sbx_crossq
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

    model = sbx_crossq(args.env, args.critic, args.learning_starts, args.seed)
    deadline = t0 + 60 * args.max_minutes

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            ev = self.parent
            evals.append({"step": self.num_timesteps, "wall_s": time.perf_counter() - t0, "mean": ev.last_mean_reward})
            print(evals[-1], file=sys.stderr, flush=True)
            return ev.last_mean_reward < args.target

    class Deadline(BaseCallback):
        def _on_step(self) -> bool:
            return time.perf_counter() < deadline

    eval_cb = EvalCallback(
        gym.make(args.env),
        n_eval_episodes=10,
        eval_freq=5_000,
        deterministic=True,
        callback_after_eval=Record(),
        verbose=0,
    )
    model.learn(args.max_steps, callback=[eval_cb, Deadline()])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("who", choices=["pydpg", "sbx"])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--target", type=float, default=3000.0)
    p.add_argument("--critic", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learning-starts", type=int, default=25_000)
    p.add_argument("--max-steps", type=int, default=300_000)
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    # inf is the curve mode; NaN would silently never be reached, and a bad budget would not stop.
    if args.target != args.target:
        p.error("--target must be a number or inf, not NaN")
    if not (0 < args.max_minutes < float("inf")) or args.max_steps <= 0:
        p.error("--max-minutes must be finite and positive, --max-steps positive")

    from peers import xla_threads

    xla_threads(1)
    import torch

    torch.set_num_threads(1)
    evals: list = []
    t0 = time.perf_counter()
    (run_pydpg if args.who == "pydpg" else run_sbx)(args, evals, t0)
    hit = next((e for e in evals if e["mean"] >= args.target), None)
    result = {
        "benchmark": f"wall time to a noiseless evaluation >= {args.target}",
        "who": args.who,
        "env": args.env,
        "seed": args.seed,
        "critic": [args.critic, args.critic],
        "learning_starts": args.learning_starts,
        "evaluations": evals,
        "reached": hit is not None,
        "minutes_to_target": hit["wall_s"] / 60 if hit else None,
        "steps_to_target": hit["step"] if hit else None,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = args.out or RESULTS / f"time_to_score_{args.who}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{args.who}: "
        + (
            f"{result['minutes_to_target']:.1f} min, {hit['step']} steps to {args.target}"
            if hit
            else f"not reached ({evals[-1] if evals else 'no evaluation'})"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
