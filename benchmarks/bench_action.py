"""The action contract's cost, side by side with what it sits beside.

C++ map            ns per apply() (every physics step: the PD law, clips) and per command() (every
                   control step: clip, rate limit, NaN check) and heap allocations, measured in a C++
                   program linked against the installed pydpg::mujoco (tests/cpp/alloc_check), beside
                   one mj_step of the same model; every actuator under PD with a torque limit
env step           Gymnasium env steps/s with random actions: the plain env against the same env
                   through ActionContract (ctrlrange entries; PD entries), alternating, median of 5
training           `Trainer` env steps/s in the learning phase (TD3 256-256, 1 thread), plain against
                   ActionContract with PD, alternating, median of 3

python benchmarks/bench_action.py [--json benchmarks/results/action.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("Hopper-v5", "Ant-v5", "Humanoid-v5")


def pd_spec(model, scale=0.3, kp=40.0, kd=2.0, limit=0.4) -> dict:
    joints = [model.joint(int(model.actuator_trnid[u, 0])).name for u in range(model.nu)]
    pd = {"kp": kp, "kd": kd, "torque_limit": limit}
    return {"version": 1, "actuators": [{"joint": j, "scale": scale, "pd": pd} for j in joints], "max_delta": 0.5}


def direct_spec(model) -> dict:
    return {
        "version": 1,
        "actuators": [{"joint": model.joint(int(model.actuator_trnid[u, 0])).name} for u in range(model.nu)],
    }


def env_steps_per_s(make, steps: int) -> float:
    """Env steps/s with random actions (seeded) on a fresh ``make()``; bench_randomization uses it too."""
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, env.action_space.shape[0]))
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def training_steps_per_s(env_id: str, steps: int, **train) -> float:
    """`Trainer` env steps/s in the learning phase (TD3, 1 thread) with these TrainConfig fields;
    bench_randomization uses it too."""
    import torch

    from pydpg.core.config import DDPGConfig
    from pydpg.train.config import TrainConfig
    from pydpg.train.trainer import Trainer

    torch.set_num_threads(1)
    cfg = DDPGConfig.from_dict({**DDPGConfig.presets()["td3"], "learning_starts": 500})
    t = Trainer(cfg, TrainConfig(env_id=env_id, total_steps=500, eval_every=0, checkpoint_every=0, **train))
    t.run()  # warm-up: the learning phase starts after this
    t0 = time.perf_counter()
    t.run(500 + steps)
    rate = steps / (time.perf_counter() - t0)
    t.close()
    return rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200_000, help="C++ control steps per task (5 applies each)")
    p.add_argument("--env-steps", type=int, default=4000)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "action.json"))
    args = p.parse_args(argv)
    for name in ("calls", "env_steps", "train_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")

    from pydpg.contract.action import ActionContract
    from pydpg.deploy.loop import build_cmake_project

    tmp = Path(tempfile.mkdtemp(prefix="pydpg-bench-action-"))
    driver = build_cmake_project(ROOT / "tests" / "cpp" / "alloc_check", tmp / "build") / "alloc_check"
    result = {"cpp": {}, "env": {}, "training": {}}
    print(
        f"{'C++ map (PD on every actuator)':34} {'actuators':>9} {'apply ns':>9} {'command ns':>11} "
        f"{'mj_step ns':>11} {'allocs':>7}"
    )
    for env_id in TASKS:
        env = gym.make(env_id)
        model, xml = env.unwrapped.model, env.unwrapped.fullpath
        (tmp / "spec.json").write_text(json.dumps(pd_spec(model)))
        runs = [
            json.loads(
                subprocess.run(
                    [str(driver), "--action", xml, str(tmp / "spec.json"), str(args.calls), "5"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for _ in range(3)
        ]
        best = min(runs, key=lambda r: r["ns_per_apply"])
        result["cpp"][env_id] = best
        print(
            f"{env_id:34} {best['size']:9d} {best['ns_per_apply']:9.1f} {best['ns_per_command']:11.1f} "
            f"{best['ns_per_mj_step']:11.1f} {max(r['allocations'] for r in runs):7d}"
        )

        plain = lambda: gym.make(env_id)  # noqa: E731
        direct = lambda: ActionContract(gym.make(env_id), direct_spec(model))  # noqa: E731
        pd = lambda: ActionContract(gym.make(env_id), pd_spec(model))  # noqa: E731
        rates = {"plain": [], "ctrlrange": [], "pd": []}
        for _ in range(5):  # alternating, so that load changes hit all three alike
            for name, make in (("plain", plain), ("ctrlrange", direct), ("pd", pd)):
                rates[name].append(env_steps_per_s(make, args.env_steps))
        result["env"][env_id] = {k: statistics.median(v) for k, v in rates.items()}
        env.close()
    print(f"\n{'env steps/s (random actions)':34} {'plain':>9} {'ctrlrange':>11} {'PD':>9} {'PD/plain':>9}")
    for env_id, r in result["env"].items():
        print(f"{env_id:34} {r['plain']:9.0f} {r['ctrlrange']:11.0f} {r['pd']:9.0f} {r['pd'] / r['plain']:9.2f}")

    model = gym.make("Hopper-v5").unwrapped.model
    rates = {"plain": [], "pd": []}
    for _ in range(3):
        rates["plain"].append(training_steps_per_s("Hopper-v5", args.train_steps))
        rates["pd"].append(training_steps_per_s("Hopper-v5", args.train_steps, action=pd_spec(model)))
    result["training"]["Hopper-v5"] = {k: statistics.median(v) for k, v in rates.items()}
    r = result["training"]["Hopper-v5"]
    print(f"\n{'training env steps/s (TD3, 1 thread)':34} {'plain':>9} {'PD':>9} {'PD/plain':>9}")
    print(f"{'Hopper-v5':34} {r['plain']:9.1f} {r['pd']:9.1f} {r['pd'] / r['plain']:9.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
