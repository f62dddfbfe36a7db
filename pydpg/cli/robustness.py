"""``pydpg robustness POLICY``: the exported policy's return across model errors, delay and noise
(pydpg.deploy.robustness), as a table, a PNG of curves and JSON."""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional, Sequence

from pydpg.cli.errors import CLIError, guarded


def robustness_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="pydpg robustness",
        description="Evaluate an exported policy (the C++ runtime, in its Gymnasium env, through its action "
        "contract) at the nominal model and at each value of each --vary, one quantity at a time.",
    )
    p.add_argument("policy", help="policy file written by `pydpg export`")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH[:N]",
        help="a quantity and its values (repeatable): a model field scale (body_mass, geom_friction, "
        "dof_damping, actuator_gear, ...), delay (control steps), obs_noise or action_noise (std); "
        "LOW:HIGH:N evenly spaced, or V1,V2,...",
    )
    p.add_argument("--env", help="Gymnasium env id (default: the policy's; 'module:EnvId' for your own)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per point (default 5)")
    p.add_argument("--seed", type=int, help="first reset's seed (default: the policy's eval_seed)")
    p.add_argument("--jobs", type=int, help="parallel processes (default: the CPUs)")
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="evaluate the points as Ray tasks on the cluster whose head is at ADDR (HOST:PORT or 'auto'), one "
        "CPU each, instead of local processes; every node needs pydpg and the policy file at the same path. "
        "Needs the optional extra: pip install 'pydpg[ray]'",
    )
    p.add_argument(
        "--keep", type=float, default=0.8, help="the fraction of the nominal return that counts as surviving"
    )
    p.add_argument(
        "--grid", action="store_true", help="with two --vary: also every pair of their values at once (a heatmap)"
    )
    p.add_argument("--png", help="write the curves (and the heatmap) here")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    return guarded("robustness", lambda: _robustness(args))


def ray_map(address: Optional[str]) -> Callable:
    """A ``map_points`` that runs each point as a Ray task (one CPU) on the cluster at ``address``
    (None: the Ray session this process has, or a local one)."""
    from pydpg.train.ray_session import init  # import time: see pydpg.cli.main's docstring

    ray = init(address=address)

    def run(fn: Callable[[dict], dict], jobs: list) -> list:
        remote = ray.remote(num_cpus=1)(fn)
        return ray.get([remote.remote(j) for j in jobs])

    return run


def _robustness(args: argparse.Namespace) -> int:
    from pydpg.deploy.robustness import (  # import time: see pydpg.cli.main's docstring
        parse_vary,
        plot_report,
        report_table,
        robustness_report,
        write_json,
    )

    if not os.path.isfile(args.policy):
        raise CLIError(f"policy file {args.policy!r} does not exist")
    if not args.vary:
        raise CLIError("give at least one --vary NAME=LOW:HIGH[:N] (e.g. --vary body_mass=0.7:1.3:7)")
    if args.episodes < 1 or (args.jobs is not None and args.jobs < 1):
        raise CLIError("--episodes and --jobs must be >= 1")
    if args.grid and len(args.vary) != 2:
        raise CLIError(f"--grid varies two quantities at once: give exactly two --vary, not {len(args.vary)}")
    if not 0 < args.keep <= 1:
        raise CLIError(f"--keep must be in (0, 1], got {args.keep}")
    try:
        varies = [parse_vary(v) for v in args.vary]
    except ValueError as e:
        raise CLIError(str(e)) from None
    names = [v.name for v in varies]
    if len(set(names)) != len(names):
        raise CLIError(f"a quantity is varied twice: {names}")
    report = robustness_report(
        args.policy,
        varies,
        env_id=args.env,
        episodes=args.episodes,
        seed=args.seed,
        jobs=args.jobs,
        keep=args.keep,
        grid=args.grid,
        map_points=None if args.ray_address is None else ray_map(args.ray_address),
    )
    print(report_table(report))
    if args.png:
        plot_report(report, args.png)
        print(f"curves: {args.png}")
    if args.json:
        write_json(report, args.json)
    return 0
