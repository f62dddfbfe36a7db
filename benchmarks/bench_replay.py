"""Replay buffer, side by side: pydpg vs Stable-Baselines3's ReplayBuffer vs cpprb, same process.

Capacity 1M, obs 17, act 6 (HalfCheetah's sizes). Each peer does the same work; the runs are
interleaved round by round and each cell is the median over rounds, so the machine's noise hits all
peers alike. Ratios (peer time / pydpg time) are the numbers to compare; absolute microseconds
depend on the machine.

    pip install -e .[bench]        # peers: stable-baselines3, cpprb (optional; absent ones are skipped)
    python benchmarks/bench_replay.py [--rounds 7] [--json benchmarks/results/replay.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

import pydpg

CAPACITY, OBS, ACT, BATCH, EXTEND = 1_000_000, 17, 6, 256, 1000


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1e3


def random_transitions(rng, n):
    obs = rng.standard_normal((n, OBS), dtype=np.float32)
    return dict(
        obs=obs,
        action=rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        reward=rng.standard_normal(n, dtype=np.float32),
        next_obs=obs + 0.01,
        terminated=rng.random(n) < 0.001,
        truncated=np.zeros(n, bool),
    )


# Each peer: a filled 1M buffer and closures for the four operations (None where it has none).


def make_pydpg(data, prioritized):
    buf = pydpg.ReplayBuffer(CAPACITY, OBS, ACT, prioritized=prioritized, seed=0)
    args = [data[k] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")]
    for i in range(0, CAPACITY, 100_000):
        buf.extend(*[a[i : i + 100_000] for a in args])
    one = [data["obs"][0], data["action"][0], float(data["reward"][0]), data["next_obs"][0], False, False]
    chunk = [a[:EXTEND] for a in args]
    ops = dict(
        add=lambda: buf.add(*one),
        extend=lambda: buf.extend(*chunk),
        sample=lambda: buf.sample(BATCH),
    )
    if prioritized:
        prio = np.random.default_rng(1).random(BATCH)

        def per():
            b = buf.sample(BATCH, beta=0.4)
            buf.update_priorities(b.indices, prio)

        ops = dict(per=per)
    return ops


def make_sb3(data):
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    act_space = spaces.Box(-1, 1, (ACT,), np.float32)
    buf = ReplayBuffer(CAPACITY, obs_space, act_space, device="cpu", n_envs=1)
    # Filled by assignment: SB3's add would take minutes for 1M rows and fill the same arrays.
    buf.observations[:, 0] = data["obs"]
    buf.next_observations[:, 0] = data["next_obs"]
    buf.actions[:, 0] = data["action"]
    buf.rewards[:, 0] = data["reward"]
    buf.dones[:, 0] = data["terminated"]
    buf.full, buf.pos = True, 0
    o, a = data["obs"][:1], data["action"][:1]
    r, d = data["reward"][:1], np.zeros(1, bool)
    infos = [{}]
    # SB3's way to store N transitions at once is a buffer with n_envs=N.
    wide = ReplayBuffer(CAPACITY // EXTEND, obs_space, act_space, device="cpu", n_envs=EXTEND)
    O, A, R, D = data["obs"][:EXTEND], data["action"][:EXTEND], data["reward"][:EXTEND], data["terminated"][:EXTEND]
    infos_wide = [{}] * EXTEND
    return dict(
        add=lambda: buf.add(o, o, a, r, d, infos),
        extend=lambda: wide.add(O, O, A, R, D, infos_wide),
        sample=lambda: buf.sample(BATCH),
    )


def cpprb_env_dict():
    return {"obs": {"shape": OBS}, "act": {"shape": ACT}, "rew": {}, "next_obs": {"shape": OBS}, "done": {}}


def cpprb_to_torch(batch: dict) -> dict:
    # "Returned as torch tensors": cpprb hands out NumPy, so the conversion is part of its cost.
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def make_cpprb(data, prioritized):
    import cpprb

    cls = cpprb.PrioritizedReplayBuffer if prioritized else cpprb.ReplayBuffer
    buf = cls(CAPACITY, cpprb_env_dict())
    for i in range(0, CAPACITY, 100_000):
        s = slice(i, i + 100_000)
        buf.add(
            obs=data["obs"][s],
            act=data["action"][s],
            rew=data["reward"][s],
            next_obs=data["next_obs"][s],
            done=data["terminated"][s],
        )
    o, a, n = data["obs"][0], data["action"][0], data["next_obs"][0]
    r = float(data["reward"][0])
    O, A, R, N, D = (data[k][:EXTEND] for k in ("obs", "action", "reward", "next_obs", "terminated"))
    if prioritized:
        prio = np.random.default_rng(1).random(BATCH)

        def per():
            b = buf.sample(BATCH, beta=0.4)
            cpprb_to_torch(b)
            buf.update_priorities(b["indexes"], prio)

        return dict(per=per)
    return dict(
        add=lambda: buf.add(obs=o, act=a, rew=r, next_obs=n, done=0.0),
        extend=lambda: buf.add(obs=O, act=A, rew=R, next_obs=N, done=D),
        sample=lambda: cpprb_to_torch(buf.sample(BATCH)),
    )


CALLS = dict(add=20_000, extend=300, sample=3_000, per=2_000)
LABELS = dict(
    add="add 1 transition (µs)",
    extend=f"extend {EXTEND} (µs)",
    sample=f"sample({BATCH}) → torch (µs)",
    per=f"PER sample({BATCH}) + update_priorities (µs)",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default="benchmarks/results/replay.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = random_transitions(np.random.default_rng(0), CAPACITY)
    peers = {"pydpg": {**make_pydpg(data, False), **make_pydpg(data, True)}}
    for name, factory in (
        ("SB3", lambda: make_sb3(data)),
        ("cpprb", lambda: {**make_cpprb(data, False), **make_cpprb(data, True)}),
    ):
        try:
            peers[name] = factory()
        except ImportError as e:
            print(f"[skip] {name}: {e} (pip install -e .[bench])")

    samples = {p: {op: [] for op in ops} for p, ops in peers.items()}
    for _ in range(args.rounds):
        for op in CALLS:
            for p, ops in peers.items():
                if op in ops:
                    ops[op]()  # warm
                    samples[p][op].append(per_call_us(ops[op], CALLS[op]))
    result = {p: {op: statistics.median(v) for op, v in ops.items()} for p, ops in samples.items()}

    names = list(peers)
    header = ["operation"] + [f"{p}" for p in names] + [f"{p}/pydpg" for p in names[1:]]
    rows = []
    for op in CALLS:
        mine = result["pydpg"].get(op)
        cells = [LABELS[op]]
        cells += [f"{result[p][op]:.2f}" if op in result[p] else "—" for p in names]
        cells += [f"{result[p][op] / mine:.1f}×" if op in result[p] else "—" for p in names[1:]]
        rows.append(cells)
    print(
        f"\nReplay buffer, capacity {CAPACITY:,}, obs {OBS}, act {ACT}; median of {args.rounds} "
        f"interleaved rounds; ratio = peer time / pydpg time (higher: pydpg faster)\n"
    )
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))

    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    meta = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        rounds=args.rounds,
    )
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(meta=meta, median_us=result), f, indent=2)
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
