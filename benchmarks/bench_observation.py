"""Observation building, side by side: pydpg's C++ ObservationBuilder (csrc/deploy/observation.cpp) against
Gymnasium's own Python ``_get_obs()`` for the same task, state and observation, in one run.

    C++ build()             ns per call and heap allocations per call, measured inside a C++ program
                            linked against the installed pydpg::mujoco (tests/cpp/alloc_check)
    C++ termination check   the same for TerminationCheck::first_failure, where the task has conditions
    Python binding          pydpg.contract.observation.ObservationBuilder.build(data) (binding overhead included)
    Gymnasium _get_obs()    the env's own numpy assembly of the observation (the peer)

for four Gymnasium tasks (Humanoid also with its qpos and qvel terms over 5 steps of history) and the
custom robot of examples/custom_robot (ArmReach-v0, sensors), and
the whole control-loop step (act + physics + build + termination check) of `pydpg run`,
free-running, for an untrained 256-256 policy on HalfCheetah-v5 and Humanoid-v5 (p50/p99 over at
least 1000 steps; the untrained Humanoid falls within ~20 steps, so it runs many episodes from the
env's own initial states).

    python benchmarks/bench_observation.py [--calls 200000] [--json benchmarks/results/observation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym

ROOT = Path(__file__).resolve().parents[1]
# (row, env id, history): the history row reads Humanoid's qpos and qvel terms over the last 5 control
# steps (pydpg.contract.history); Gymnasium has no such observation, so that row has no peer.
ROWS = (
    ("HalfCheetah-v5", "HalfCheetah-v5", 1),
    ("Ant-v5", "Ant-v5", 1),
    ("Humanoid-v5", "Humanoid-v5", 1),
    ("Humanoid-v5, qpos and qvel x 5 steps", "Humanoid-v5", 5),
    ("Reacher-v5", "Reacher-v5", 1),
    ("ArmReach-v0", "ArmReach-v0", 1),
)


def per_call_us(fn, calls: int) -> float:
    for _ in range(1000):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200_000, help="C++ build() calls per task")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "observation.json"))
    args = p.parse_args(argv)

    from pydpg.contract.observation import ObservationBuilder, task_spec
    from pydpg.deploy.loop import build_cmake_project

    sys.path.insert(0, str(ROOT / "examples" / "custom_robot"))
    import arm_env  # registers ArmReach-v0

    def spec_of(env_id: str, history: int) -> dict:
        spec = arm_env.OBSERVATION_SPEC if env_id == "ArmReach-v0" else task_spec(env_id)
        if history > 1:
            spec = {
                **spec,
                "terms": [dict(t, history=history) if t.get("field") in ("qpos", "qvel") else t for t in spec["terms"]],
            }
        return spec

    tmp = Path(tempfile.mkdtemp(prefix="pydpg-bench-obs-"))
    driver = build_cmake_project(ROOT / "tests" / "cpp" / "alloc_check", tmp / "build") / "alloc_check"
    rows = {}
    for row, env_id, history in ROWS:
        env = gym.make(env_id)
        env.reset(seed=0)
        env.step(env.action_space.sample())
        u = env.unwrapped
        spec = spec_of(env_id, history)
        (tmp / "spec.json").write_text(json.dumps(spec))
        out = subprocess.run(
            [str(driver), "--observation", u.fullpath, str(tmp / "spec.json"), str(args.calls)],
            check=True,
            capture_output=True,
            text=True,
        )
        cpp = json.loads(out.stdout)
        builder = ObservationBuilder(spec, u.model)
        py_calls = max(2000, args.calls // 20)
        rows[row] = {
            "size": cpp["size"],
            "cpp_us": cpp["ns_per_build"] / 1e3,
            "cpp_allocations_per_call": cpp["allocations"] / cpp["calls"],
            "conditions": cpp["conditions"],
            "check_us": cpp["ns_per_check"] / 1e3,
            "check_allocations_per_call": cpp["check_allocations"] / cpp["calls"],
            "binding_us": per_call_us(lambda: builder.build(u.data), py_calls),
            "gymnasium_us": per_call_us(u._get_obs, py_calls) if history == 1 else None,
        }
        env.close()
        print(f"  {row}: {rows[row]['cpp_us']:.3f} us", file=sys.stderr)
    import torch

    from pydpg.common.envs import initial_states
    from pydpg.core.agent import DDPGAgent
    from pydpg.deploy.export import export_policy
    from pydpg.deploy.loop import run_policy

    loop = {}
    for env_id in ("HalfCheetah-v5", "Humanoid-v5"):
        env = gym.make(env_id)
        torch.manual_seed(0)
        agent = DDPGAgent.from_dims(env.observation_space.shape[0], env.action_space.shape[0])
        export_policy(agent, tmp / "p.pt", env=env, verbose=False)
        episodes = 1 if not task_spec(env_id).get("termination") else 100
        states = initial_states(env, episodes, seed=0)
        env.close()
        out = run_policy(tmp / "p.pt", initial_states=states, realtime=False, quiet=True, max_steps=1000)
        loop[env_id] = {"steps": out["steps"], "episodes": episodes, "act": out["latency_us"], "step": out["step_us"]}
    shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        "| task | obs size | C++ build() µs | allocations / call | Python binding µs | Gymnasium _get_obs() µs |"
        " Gymnasium / C++ | termination conditions | C++ check µs | allocations / check |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for env_id, r in rows.items():
        check = (
            f"{r['conditions']} | {r['check_us']:.3f} | {r['check_allocations_per_call']:g}"
            if r["conditions"]
            else "0 | – | –"
        )
        peer = "– | –"
        if r["gymnasium_us"] is not None:
            peer = f"{r['gymnasium_us']:.2f} | {r['gymnasium_us'] / r['cpp_us']:.0f}x"
        lines.append(
            f"| {env_id} | {r['size']} | {r['cpp_us']:.3f} | {r['cpp_allocations_per_call']:g} | "
            f"{r['binding_us']:.2f} | {peer} | {check} |"
        )
    lines += [
        "",
        "| control loop, free-running | episodes | steps | act() p50 µs | act() p99 µs |"
        " step (act + physics + build + check) p50 µs | step p99 µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for env_id, r in loop.items():
        lines.append(
            f"| {env_id} | {r['episodes']} | {r['steps']} | {r['act']['p50']:.2f} | {r['act']['p99']:.2f} | "
            f"{r['step']['p50']:.2f} | {r['step']['p99']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp_json = Path(args.json).with_suffix(".json.tmp")
    tmp_json.write_text(
        json.dumps({"cpu": cpu, "calls": args.calls, "rows": rows, "loop": loop, "table": table}, indent=1)
    )
    os.replace(tmp_json, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
