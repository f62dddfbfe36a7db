"""Deploy every trained policy there is, as a user would, and check it against Python.

For each run directory (default: every run under runs/learning/, written by learning_runs.py,
plus any directories given on the command line):
1. export the final checkpoint with ``pydpg export`` (its own parity check against the actor) into a
   temporary directory;
2. load it with ``pydpg.Policy`` and the default options (the runtime once refused trained policies
   at this step) and compare it with the TorchScript module on the observations the policy really
   meets (those of its own evaluation episodes), at batch 1 and in one batch;
3. run it in the C++ control loop (``pydpg run``: MuJoCo C API, no Python) from the initial states
   of a Python evaluation of the trained actor (``pydpg eval``'s arithmetic) and compare the returns.

    python benchmarks/trained_policies.py                       # runs/learning/<env>/<setting>/seed<k>
    python benchmarks/trained_policies.py runs/my_run --episodes 3

Prints a markdown table and writes benchmarks/results/trained_policies.json. On chaotic tasks
(HalfCheetah, Walker2d) the C++ loop matches Python's return only when the runtime's actions equal
torch's bit for bit, which holds where both call the same MKL kernels (same CPU, batch 1); the
column "actions equal" says whether they did on the evaluated observations.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "trained_policies.json"


def check_run(run: Path, episodes: int, scratch: Path) -> dict:
    from pydpg.common.envs import evaluate, initial_states, make_env
    from pydpg.deploy.export import export_checkpoint
    from pydpg.deploy.loop import run_policy
    from pydpg.deploy.runtime import Policy
    from pydpg.files.checkpoint import load_model_any
    from pydpg.files.model import agent_from_model, make_policy

    model, ckpt = load_model_any(run)
    meta = model["run"]
    env_id = meta["env_id"]
    policy_path = scratch / f"{run.parent.name}-{run.name}.pt"  # never over a user's own export
    exported = export_checkpoint(run, policy_path, verbose=False)
    agent, normalizer = agent_from_model(model, device="cpu")
    env = make_env(env_id, meta.get("env_kwargs") or {})
    seed = int(meta.get("seed", 0)) + 1000

    seen: list[np.ndarray] = []
    actor = make_policy(agent, normalizer)

    def recording(obs):
        seen.append(np.asarray(obs, dtype=np.float32))
        return actor(obs)

    python = evaluate(recording, env, episodes, seed=seed)
    states = initial_states(env, episodes, seed)
    env.close()
    obs = np.stack(seen)

    t = time.perf_counter()
    policy = Policy(policy_path)  # the default options: what `pydpg run` and a C++ user get
    load_s = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(policy_path))
    with torch.no_grad():
        want = np.concatenate([module(torch.from_numpy(o[None])).numpy() for o in obs])
    single = np.stack([policy.act(o) for o in obs])
    batched = Policy(policy_path, max_batch=len(obs)).act(obs)
    cpp = run_policy(policy_path, initial_states=states, replay=env_id, realtime=False, quiet=True)
    return {
        "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
        "env_id": env_id,
        "steps": ckpt.step if ckpt is not None else None,
        "export_max_diff": exported.max_abs_diff,
        "backend": policy.backend,
        "load_s": load_s,
        "observations": len(obs),
        "max_diff_single": float(np.abs(single - want).max()),
        "max_diff_batched": float(np.abs(batched - want).max()),
        "actions_equal": bool(np.array_equal(single, want)),
        "python_returns": python.returns.tolist(),
        "python_lengths": python.lengths.tolist(),
        "cpp_returns": cpp["returns"],
        "cpp_lengths": cpp["lengths"],
        "max_return_diff": float(np.max(np.abs(np.asarray(cpp["returns"]) - python.returns))),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| run | env | steps | backend | max \\|Policy − TorchScript\\| (batch 1 / batched) | actions equal | "
        "Python returns | C++ loop returns | max \\|Δ return\\| |",
        "|---|---|---:|---|---|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['env_id']} | {r['steps']} | {r['backend']} | {r['max_diff_single']:.2g} / "
            f"{r['max_diff_batched']:.2g} | {'yes' if r['actions_equal'] else 'no'} | "
            f"{', '.join(f'{x:.1f}' for x in r['python_returns'])} | {', '.join(f'{x:.1f}' for x in r['cpp_returns'])} "
            f"| {r['max_return_diff']:.2g} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories (default: every pydpg run under runs/learning/)")
    p.add_argument("--episodes", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    learning = ROOT / "runs" / "learning"
    # <env>/<setting>/seed<k> since learning_runs.py runs sweeps; <env>/seed<k> (and the like) before.
    runs = args.runs or sorted(
        d for d in [*learning.glob("*/*/seed*"), *learning.glob("*/*")] if (d / "checkpoints").is_dir()
    )
    if not runs:
        print("no trained runs found (train some with benchmarks/learning_runs.py, or name run directories)")
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="pydpg-trained-") as scratch:
        for run in runs:
            print(f"checking {run} ...", file=sys.stderr, flush=True)
            rows.append(check_run(run.resolve(), args.episodes, Path(scratch)))
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
