"""Domain randomization's cost (pydpg.contract.randomization), side by side with the plain env.

reset          ms per env reset, plain against randomized (every body's mass and inertia, every
               geom's friction, every dof's damping and armature, every actuator's gear, each
               drawn per object), median of 5 alternating rounds of 200 resets
env step       env steps/s with random actions, plain against randomized (the model fields above,
               observation and action noise, a 0-2 step action delay, pushes on the root body)
training       `Trainer` env steps/s in the learning phase (TD3 256-256, 1 thread), plain against
               randomized, alternating, median of 3
C++ unit       pydpg::DomainRandomization alone, in a C++ program linking the installed library
               (tests/cpp/alloc_check --randomization): ns per reset() and per step() + observe(),
               and heap allocations, with the full spec above

python benchmarks/bench_randomization.py [--json benchmarks/results/randomization.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import gymnasium as gym
from bench_action import env_steps_per_s, training_steps_per_s  # a sibling script (benchmarks/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("Hopper-v5", "Humanoid-v5")
MODEL = [
    {"field": f, "scale": [0.8, 1.2]}
    for f in ("body_mass", "body_inertia", "geom_friction", "dof_damping", "dof_armature", "actuator_gear")
]


def full_spec(env_id: str) -> dict:
    root = gym.make(env_id).unwrapped.model.body(1).name
    return {
        "version": 1,
        "model": MODEL,
        "observation": {"noise": 0.01},
        "action": {"noise": 0.05, "delay": [0, 2]},
        "push": [{"body": root, "interval": [50, 100], "force": [0, 50]}],
    }


def reset_ms(make, n: int) -> float:
    env = make()
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(n):
        env.reset()
    ms = (time.perf_counter() - t0) / n * 1e3
    env.close()
    return ms


def cpp_unit(calls: int = 200_000, episode: int = 1000) -> dict:
    """The C++ unit's own cost per task (see the module docstring)."""
    import subprocess
    import tempfile

    from pydpg.deploy.loop import build_cmake_project

    out = {}
    with tempfile.TemporaryDirectory(prefix="pydpg-bench-rand-") as tmp:
        driver = build_cmake_project(ROOT / "tests" / "cpp" / "alloc_check", Path(tmp) / "build") / "alloc_check"
        for env_id in TASKS:
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps(full_spec(env_id)))
            xml = gym.make(env_id).unwrapped.fullpath
            run = subprocess.run(
                [str(driver), "--randomization", xml, str(spec), str(calls), str(episode)],
                check=True,
                capture_output=True,
                text=True,
            )
            out[env_id] = json.loads(run.stdout)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resets", type=int, default=200)
    p.add_argument("--env-steps", type=int, default=4000)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "randomization.json"))
    args = p.parse_args(argv)
    for name in ("resets", "env_steps", "train_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")

    from pydpg.contract.randomization import DomainRandomization

    result = {"reset_ms": {}, "env_steps_per_s": {}, "training": {}}
    print(f"{'':14} {'reset ms plain':>15} {'randomized':>11} {'steps/s plain':>14} {'randomized':>11} {'ratio':>6}")
    for env_id in TASKS:
        spec = full_spec(env_id)
        plain = lambda: gym.make(env_id)  # noqa: E731
        model_only = lambda: DomainRandomization(gym.make(env_id), {"version": 1, "model": MODEL})  # noqa: E731
        full = lambda: DomainRandomization(gym.make(env_id), spec)  # noqa: E731
        r = {"plain": [], "randomized": []}
        s = {"plain": [], "randomized": []}
        for _ in range(5):
            r["plain"].append(reset_ms(plain, args.resets))
            r["randomized"].append(reset_ms(model_only, args.resets))
            s["plain"].append(env_steps_per_s(plain, args.env_steps))
            s["randomized"].append(env_steps_per_s(full, args.env_steps))
        result["reset_ms"][env_id] = {k: statistics.median(v) for k, v in r.items()}
        result["env_steps_per_s"][env_id] = {k: statistics.median(v) for k, v in s.items()}
        rm, sm = result["reset_ms"][env_id], result["env_steps_per_s"][env_id]
        print(
            f"{env_id:14} {rm['plain']:15.3f} {rm['randomized']:11.3f} {sm['plain']:14.0f} {sm['randomized']:11.0f} "
            f"{sm['randomized'] / sm['plain']:6.2f}"
        )
    rates = {"plain": [], "randomized": []}
    for _ in range(3):
        rates["plain"].append(training_steps_per_s("Hopper-v5", args.train_steps))
        rates["randomized"].append(
            training_steps_per_s("Hopper-v5", args.train_steps, randomization=full_spec("Hopper-v5"))
        )
    t = result["training"]["Hopper-v5"] = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"\ntraining env steps/s, Hopper-v5, TD3 256-256, 1 thread: plain {t['plain']:.1f}, randomized "
        f"{t['randomized']:.1f} ({t['randomized'] / t['plain']:.2f})"
    )
    result["cpp"] = cpp_unit()
    for env_id, c in result["cpp"].items():
        print(
            f"C++ unit, {env_id}: reset {c['ns_per_reset'] / 1e3:.1f} us, step + observe "
            f"{c['ns_per_step_and_observe']:.0f} ns, {c['allocations']} allocations in {c['calls']} steps"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
