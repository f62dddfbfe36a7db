"""``pydpg journey``: the main job, train -> export -> the C++ loop, on its default task."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pydpg.cli.errors import guarded
from pydpg.common.envs import evaluate, initial_states, make_env
from pydpg.deploy.export import export_policy
from pydpg.deploy.loop import run_policy
from pydpg.files.model import make_policy
from pydpg.train.config import resolve
from pydpg.train.trainer import Trainer


def journey_main(argv: Optional[Sequence[str]] = None) -> int:
    """The main job: train briefly, export with the parity check, run the policy in the C++ control
    loop, print the return (next to Python's evaluation of the same policy) and the latency table."""
    p = argparse.ArgumentParser(prog="pydpg journey", description=journey_main.__doc__)
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument(
        "--steps",
        type=int,
        default=20_000,
        help="training step budget; training stops early once an evaluation reaches --target (default %(default)s)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=950.0,
        help="stop training at this noiseless eval return (default %(default)s, of 1000 on InvertedPendulum-v5)",
    )
    p.add_argument("--out", default="runs/journey", help="run directory (checkpoints, policy.pt)")
    p.add_argument("--episodes", type=int, default=3, help="evaluation episodes, Python and C++")
    p.add_argument(
        "--realtime-steps",
        type=int,
        default=250,
        help="control periods run at the env's own rate to measure deadline misses",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return guarded("journey", lambda: _journey(args))


def _journey(args: argparse.Namespace) -> int:

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"[1/4] training DDPG on {args.env} (task preset; at most {args.steps} steps, stopping at "
        f"eval return {args.target:g}) ...",
        flush=True,
    )
    cfg, train = resolve(
        args.env,
        train={
            "seed": args.seed,
            "total_steps": args.steps,
            "eval_every": 1000,
            "eval_episodes": 5,
            "target_return": args.target,
            "checkpoint_every": 0,
        },
    )
    trainer = Trainer(cfg, train, out_dir=out, tensorboard=False)
    summary = trainer.run()
    print(f"      trained {summary['steps']} steps; last eval return {summary['final_eval']['mean']:.1f}", flush=True)
    print(f"[2/4] exporting to {out / 'policy.pt'} (parity check) ...", flush=True)
    export_policy(trainer, out / "policy.pt")
    env = make_env(args.env, {})
    seed = args.seed + 1000
    python = evaluate(make_policy(trainer.agent, trainer.normalizer), env, args.episodes, seed=seed)
    states = initial_states(env, args.episodes, seed)  # where those evaluation episodes started
    env.close()
    trainer.close()
    print("[3/4] running the policy in the C++ control loop (MuJoCo C API, no Python) ...", flush=True)
    fast = run_policy(out / "policy.pt", initial_states=states, replay=args.env, realtime=False, quiet=True)
    live = run_policy(out / "policy.pt", initial_states=states[:1], realtime=True, max_steps=args.realtime_steps)
    print("[4/4] results\n")
    print(f"return, Python evaluation : {np.round(python.returns, 3).tolist()} (mean {python.returns.mean():.3f})")
    print(
        f"return, C++ control loop  : {np.round(fast['returns'], 3).tolist()} (mean {fast['mean_return']:.3f}); "
        f"max |difference| {np.max(np.abs(np.array(fast['returns']) - python.returns)):.2g}"
    )
    print(
        f"  (the loop's actions replayed through {args.env} from the same initial states; largest observation "
        f"difference {fast['max_obs_diff']:.2g})\n"
    )
    print(live["stdout"].split("\n\n", 1)[-1].rstrip())
    return 0
