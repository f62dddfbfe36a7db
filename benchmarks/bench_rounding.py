"""How tight the rounding bound is (pydpg.deploy.rounding, docs/theory.md §8), and what it costs.

For each actor: the float32 forward error bound on export's 1024 check observations (median and
max), the largest difference actually seen between float32 evaluations that sum in other orders
(torch batched against torch one row at a time, the runtime's MKL and portable kernels, a split-K
evaluation), the ratio of that difference to its allowance (twice the bound), the float64 bound
the "same function" checks use, and the time of one bound, one export and one Policy load.

    python benchmarks/bench_rounding.py            # prints a table, writes benchmarks/results/rounding.json

Run from the repository root (it reads the trained actors in tests/data).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.networks import Actor
from pydpg.deploy.export import _check_observations, export_policy
from pydpg.deploy.policy_file import load_torchscript, read_metadata
from pydpg.deploy.rounding import FLOAT64, rounding_bound
from pydpg.deploy.runtime import Policy

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def pendulum_30k() -> DDPGAgent:
    module = load_torchscript(DATA / "inverted_pendulum_30k.pt")
    actor = Actor(4, 1, hidden=(64, 64))
    actor.load_state_dict({k[len("actor.") :]: v for k, v in module.state_dict().items() if k.startswith("actor.")})
    return DDPGAgent(actor, [torch.nn.Linear(5, 1)])


def hopper_1m() -> DDPGAgent:
    agent = DDPGAgent.from_dims(11, 3, DDPGConfig(**{**DDPGConfig.presets()["crossq"], "critic_hidden": (256, 256)}))
    agent.actor.load_state_dict(torch.load(DATA / "hopper_crossq_1m_actor.pt", weights_only=True))
    agent.actor.eval()
    return agent


def fresh(obs_dim: int, act_dim: int, preset=None, scale: float = 1.0) -> DDPGAgent:
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(obs_dim, act_dim, DDPGConfig.preset(preset) if preset else None)
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.mul_(scale)
    return agent


def split_k(module, obs: np.ndarray) -> np.ndarray:
    """The file's actor with every Linear summed in two halves of its inputs (a split-K kernel)."""
    sd = {k: v for k, v in module.state_dict().items()}
    meta = read_metadata_cache["meta"]
    plan = meta["network"]
    if plan["kind"] != "mlp" or any(s.get("input_norm") for s in plan["layers"]):
        return None
    h = torch.from_numpy(obs)
    if module.normalize:
        h = (h - sd["obs_mean"]) / sd["obs_std"]
        if module.obs_clip > 0:
            h = torch.clamp(h, -module.obs_clip, module.obs_clip)
    act = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda x: x}[plan["hidden_activation"]]
    for i, s in enumerate(plan["layers"]):
        w, b = sd[s["weight"]], sd[s["bias"]]
        k = w.shape[1] // 2
        h = (h[:, :k] @ w[:, :k].T + h[:, k:] @ w[:, k:].T) + b
        h = act(h) if i + 1 < len(plan["layers"]) else torch.tanh(h)
    low, high = sd["action_low"].double(), sd["action_high"].double()
    return torch.clamp(
        (low + (h.double() + 1) * 0.5 * (high - low)).float(), sd["action_low"], sd["action_high"]
    ).numpy()


read_metadata_cache: dict = {}


def measure(name: str, agent: DDPGAgent, obs_dim: int, act_dim: int, norm=None) -> dict:
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "p.pt"
    t = time.perf_counter()
    res = export_policy(
        agent, path, action_low=[-1.0] * act_dim, action_high=[1.0] * act_dim, normalizer=norm, verbose=False
    )
    export_s = time.perf_counter() - t
    read_metadata_cache["meta"] = read_metadata(path)
    obs = _check_observations(obs_dim, res.metadata["normalization"], 1024)
    t = time.perf_counter()
    _, bound = rounding_bound(path, obs)
    bound_s = time.perf_counter() - t
    _, bound64 = rounding_bound(path, obs, unit_roundoff=FLOAT64)
    module = load_torchscript(path)
    with torch.no_grad():
        batched = module(torch.from_numpy(obs)).numpy()
        rows = np.concatenate([module(torch.from_numpy(o[None])).numpy() for o in obs])
    others = {"torch rows": rows}
    for kernels in ("auto", "portable"):
        others[f"runtime {kernels}"] = Policy(path, max_batch=1024, mlp_kernels=kernels).act(obs)
    sk = split_k(module, obs)
    if sk is not None:
        others["split-K"] = sk
    t = time.perf_counter()
    for _ in range(5):
        Policy(path)
    load_s = (time.perf_counter() - t) / 5
    diffs = {k: float(np.abs(v.astype(np.float64) - batched).max()) for k, v in others.items()}
    ratio = max(float((np.abs(v.astype(np.float64) - batched) / (2 * bound)).max()) for v in others.values())
    return {
        "actor": name,
        "bound_median": float(np.median(bound)),
        "bound_max": float(bound.max()),
        "bound64_median": float(np.median(bound64)),
        "max_seen_diff": max(diffs.values()),
        "diffs": diffs,
        "worst_ratio": ratio,
        "bound_s": bound_s,
        "export_s": export_s,
        "load_s": load_s,
    }


def main() -> int:
    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    norm17 = {"mean": rng.normal(0, 5, 17), "var": np.exp(rng.uniform(-3, 3, 17)), "eps": 1e-8, "clip": 10.0}
    rows = [
        measure("InvertedPendulum 30k (tests/data)", pendulum_30k(), 4, 1),
        measure("Hopper CrossQ 1M (tests/data)", hopper_1m(), 11, 3),
        measure("fresh 17-256-256-6, normalized", fresh(17, 6), 17, 6, norm17),
        measure("17-256-256-6 x30 (trained magnitude)", fresh(17, 6, scale=30.0), 17, 6, norm17),
        measure("TD7 SaleActor, fresh", fresh(17, 6, "td7"), 17, 6),
    ]
    print(
        "| actor | float32 bound: median / max | largest difference seen between orders | worst |diff| / (2 bound) "
        "| float64 bound: median | one bound (1024 obs) | export | Policy load |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['actor']} | {r['bound_median']:.2g} / {r['bound_max']:.2g} | {r['max_seen_diff']:.2g} | "
            f"{r['worst_ratio']:.2g} | {r['bound64_median']:.2g} | {r['bound_s'] * 1e3:.0f} ms | "
            f"{r['export_s']:.2f} s | {r['load_s'] * 1e3:.0f} ms |"
        )
    out = ROOT / "benchmarks" / "results" / "rounding.json"
    out.write_text(
        json.dumps(
            {"command": "python benchmarks/bench_rounding.py", "torch": torch.__version__, "rows": rows}, indent=1
        )
    )
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
