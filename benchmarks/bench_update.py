"""One DDPG/TD3 gradient update, side by side: pydpg, Stable-Baselines3, and a jitted JAX update.

Shapes are HalfCheetah's with pydpg's defaults: batch 256, obs 17, act 6, 256-256 ReLU MLPs for
actor and critic(s), Adam 3e-4, Polyak tau 0.005, gamma 0.99. Every contender updates on the same
fixed batch (random data of the right shapes, seed 0), so only the update's own cost is timed: no
replay sampling, no environment.

Contenders:

* ``pydpg DDPG`` / ``pydpg TD3``: ``pydpg.core.agent.DDPGAgent.update`` with the C++ update
  (``update_backend="cpp"``, the default's choice here) (TD3: twin critics, actor and targets every
  2nd critic step, target smoothing noise 0.2 clipped at 0.5).
* ``pydpg DDPG autograd`` / ``pydpg TD3 autograd``: the same with ``update_backend="torch"``.
* ``pydpg TD7`` (``--td7``): ``--preset td7``'s update (TD3 + SALE's encoder step and embeddings,
  LAP's Huber loss, hard targets every 250, value clipping; autograd, which the C++ update does not
  cover). Its ratio is to the JAX TD3 peer: the cost of TD7's additions over TD3.
* ``pydpg CrossQ, W-W critic`` (``--crossq``): ``--preset crossq``'s update (TD3 + batch
  renormalization, no targets, the joint critic pass over 2B rows) with a W-W critic, on the C++
  update and (``, autograd``) on autograd. Ratio to ``SBX CrossQ, W-W critic``: sbx-rl's CrossQ
  (JAX, every step jitted; a stochastic SAC actor with its temperature step where pydpg's is TD3's
  deterministic one; both policy delay 3, batch 256, actor 256-256) running its own train() on the
  same fixed batch.
* ``SB3 DDPG``: Stable-Baselines3's ``DDPG.train(gradient_steps=1)`` with its replay sampling
  replaced by the fixed batch.
* ``JAX DDPG`` / ``JAX TD3``: the peer, written here in the structure of CleanRL's
  ``ddpg_continuous_action_jax.py`` / ``td3_continuous_action_jax.py`` (Flax MLPs, optax Adam,
  the critic step, actor step and Polyak averaging of both targets in jitted functions; TD3
  jits a critic-only step for the calls that skip the actor). It is XLA compiling the whole
  update, optimizer included, into one program: the fastest CPU peer we know of.

The contenders run interleaved: each round times ``--updates`` updates of each, in a rotating
order, so load from other processes hits all alike; each cell is the median over rounds with the
min-max range, and the ratio is to the JAX peer of the same algorithm (per-round ratios' median in
brackets). Absolute milliseconds depend on the machine; compare ratios.

Threads: ``--threads N`` sets torch's intra-op threads, XLA's CPU thread pools
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=... intra_op_parallelism_threads=N``, set before jax is
imported) and pins the process to N CPUs, so that no contender can use more cores than another.

    pip install -e .[bench]                          # SB3, jax[cpu], flax, optax
    python benchmarks/bench_update.py                # 1 thread, ~2 minutes
    python benchmarks/bench_update.py --threads 2
    python benchmarks/bench_update.py --td7          # adds --preset td7's update
    python benchmarks/bench_update.py --crossq       # adds --preset crossq's update (C++, autograd) and
                                                     # SBX's CrossQ, 256 and 1024 critics (--crossq 512: others)
    python benchmarks/bench_update.py --profile 200  # torch.profiler of pydpg's update: ops, matmul vs rest
    python benchmarks/bench_update.py --compile default   # adds pydpg with torch.compile'd losses
    git worktree add ../pydpg-old <rev>; python benchmarks/bench_update.py --baseline ../pydpg-old
                                                     # adds that revision's agent, same run (with
                                                     # --crossq, its 256-256 CrossQ update too)

Writes benchmarks/results/update.json (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from peers import xla_threads

RESULTS = Path(__file__).resolve().parent / "results"
B, OBS, ACT, HIDDEN = 256, 17, 6, (256, 256)
LR, TAU, GAMMA = 3e-4, 0.005, 0.99
TD3 = dict(twin_critics=True, policy_delay=2, target_policy_noise=0.2, target_noise_clip=0.5)


def fixed_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """One batch of transitions of HalfCheetah's shapes: some terminations, actions in the box."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return dict(
        obs=rng.standard_normal((B, OBS), dtype=f32),
        action=rng.uniform(-1, 1, (B, ACT)).astype(f32),
        reward=rng.standard_normal((B, 1), dtype=f32),
        next_obs=rng.standard_normal((B, OBS), dtype=f32),
        done=(rng.random((B, 1)) < 0.05).astype(f32),
        discount=np.full((B, 1), GAMMA, f32),
    )


# ---------------------------------------------------------------------------------------- pydpg
def load_pydpg(src: Path | None):
    """``pydpg.core.agent`` and friends from this install, or (``src``) from another checkout's pure-Python
    agent files, imported as a separate package so both can run in one process."""
    if src is None:
        from pydpg.core import agent, batch, config

        return agent, batch, config
    name = "pydpg_baseline"
    spec = importlib.util.spec_from_file_location(
        name, src / "pydpg" / "__init__.py", submodule_search_locations=[str(src / "pydpg")]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    # A source checkout has no compiled module: the baseline's Python runs on this install's C++ core.
    sys.modules[f"{name}._core"] = importlib.import_module("pydpg._core")
    spec.loader.exec_module(pkg)
    return tuple(importlib.import_module(f"{name}.{m}") for m in ("agent", "batch", "config"))


class Pydpg:
    def __init__(
        self,
        data,
        td3: bool,
        src: Path | None = None,
        compile_mode: str | None = None,
        backend: str | None = None,
        preset: str | None = None,
        agent_overrides: dict | None = None,
    ):
        import torch

        agent, batch, config = load_pydpg(src)
        # backend: DDPGConfig.update_backend ("cpp": the C++ update, "torch": autograd); None leaves the
        # default (and works with a baseline checkout older than the field). torch.compile wraps the
        # autograd path's losses, so it needs "torch".
        backend = "torch" if compile_mode is not None else backend
        extra = {"update_backend": backend} if backend else {}
        switches = config.DDPGConfig.presets()[preset] if preset else TD3 if td3 else {}
        conf = config.DDPGConfig(
            **{
                **dict(hidden=HIDDEN, batch_size=B, actor_lr=LR, critic_lr=LR, tau=TAU, gamma=GAMMA),
                **switches,
                **(agent_overrides or {}),
                **extra,
            }
        )
        # DDPGAgent; a baseline checkout from before the rename calls it DDPG
        self.agent = getattr(agent, "DDPGAgent", None) or agent.DDPG
        self.agent = self.agent.from_dims(OBS, ACT, conf)
        if compile_mode is not None:
            # torch.compile done the recommended way: the loss functions (forward graphs and, via
            # AOTAutograd, their backward graphs), not the optimizer. The instance attributes shadow
            # the methods that ``update`` calls. The actor loss breaks its graph at ``frozen``.
            opts = {} if compile_mode == "default" else {"mode": compile_mode}
            self.agent.critic_loss = torch.compile(self.agent.critic_loss, fullgraph=True, dynamic=False, **opts)
            self.agent.actor_loss = torch.compile(self.agent.actor_loss, dynamic=False, **opts)
        self.batch = batch.Batch(
            *(torch.from_numpy(data[k]) for k in ("obs", "action", "reward", "next_obs", "done", "discount"))
        )

    def step(self) -> None:
        self.agent.update(self.batch)


# ------------------------------------------------------------------------------------------ SB3
class SB3:
    def __init__(self, data):
        import gymnasium as gym
        import torch
        from stable_baselines3.common.logger import configure
        from stable_baselines3.common.type_aliases import ReplayBufferSamples

        from pydpg.core.config import DDPGConfig
        from pydpg.experiments.sb3_peer import sb3_model

        class Shapes(gym.Env):  # SB3 builds its networks from the spaces; nothing is ever stepped
            observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
            action_space = gym.spaces.Box(-1, 1, (ACT,), np.float32)

        cfg = DDPGConfig(
            hidden=HIDDEN,
            batch_size=B,
            actor_lr=LR,
            critic_lr=LR,
            tau=TAU,
            gamma=GAMMA,
            learning_starts=0,
            buffer_size=B,
        )
        self.model = sb3_model(Shapes(), cfg, seed=0)
        self.model.set_logger(configure(None, []))
        t = {k: torch.from_numpy(v) for k, v in data.items()}
        samples = ReplayBufferSamples(t["obs"], t["action"], t["next_obs"], t["done"], t["reward"])
        self.model.replay_buffer.sample = lambda batch_size, env=None: samples

    def step(self) -> None:
        self.model.train(gradient_steps=1, batch_size=B)


class SbxCrossQ:
    """SBX's CrossQ (``peers.sbx_crossq``) running its own ``train(gradient_steps=1)`` on the fixed
    batch (its replay sampling replaced, as for SB3): the jitted critic step, and every third call its
    jitted actor and temperature step, plus the NumPy conversion its train() does per call."""

    def __init__(self, data, critic_width: int):
        import gymnasium as gym
        import torch
        from peers import sbx_crossq
        from stable_baselines3.common.logger import configure
        from stable_baselines3.common.type_aliases import ReplayBufferSamples

        class Shapes(gym.Env):  # the peer builds its networks from the spaces; nothing is ever stepped
            observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
            action_space = gym.spaces.Box(-1, 1, (ACT,), np.float32)

        self.model = sbx_crossq(Shapes(), critic_width, learning_starts=0, seed=0)
        self.model.set_logger(configure(None, []))
        t = {k: torch.from_numpy(v) for k, v in data.items()}
        samples = ReplayBufferSamples(t["obs"], t["action"], t["next_obs"], t["done"], t["reward"])
        self.model.replay_buffer.sample = lambda batch_size, env=None: samples
        for _ in range(2 * self.model.policy_delay):  # compile every policy-delay offset outside the timing
            self.step()

    def step(self) -> None:
        self.model.train(gradient_steps=1, batch_size=B)  # returns after .item() on its losses


# ------------------------------------------------------------------------------------------ JAX
class Jax:
    """The JAX peer (``peers.JaxDDPG``, CleanRL's structure) updating on the fixed batch."""

    def __init__(self, data, td3: bool, seed: int = 0):
        import jax.numpy as jnp
        from peers import JaxDDPG

        self.peer = JaxDDPG(OBS, ACT, td3=td3, seed=seed, hidden=HIDDEN)
        self.data = {k: jnp.asarray(v) for k, v in data.items()}
        for _ in range(2 * self.peer.delay):  # compile both programs outside the timing
            self.step()

    def step(self) -> None:
        # Wait for the result, as pydpg's update does when it returns its losses as floats.
        import jax

        jax.block_until_ready(self.peer.update(self.data))


# ------------------------------------------------------------------------------------- timing
def ms_per_call(f, n: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e3


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def profile(contenders: dict, n: int) -> dict[str, dict]:
    """torch.profiler over ``n`` updates of each torch contender: aten ops per update, time in
    matrix products (addmm/mm/bmm/...) against everything else (self CPU time), the top ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    matmul = {
        "aten::addmm",
        "aten::mm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::matmul",
        "aten::linear",
        "aten::_addmm_activation",
        "aten::mkldnn_linear",
    }
    out = {}
    for name, c in contenders.items():
        if name.startswith("JAX"):
            continue
        for _ in range(10):
            c.step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(n):
                c.step()
            wall = (time.perf_counter() - t0) / n * 1e3
        events = prof.key_averages()
        aten = [e for e in events if e.key.startswith("aten::")]
        self_ms = {e.key: e.self_cpu_time_total / 1e3 / n for e in events}
        total = sum(self_ms.values())
        mm = sum(v for k, v in self_ms.items() if k in matmul)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
        out[name] = {
            "updates": n,
            "ms_per_update_under_profiler": wall,
            "aten_ops_per_update": sum(e.count for e in aten) / n,
            "self_cpu_ms_per_update": total,
            "matmul_ms": mm,
            "other_ms": total - mm,
            "top_ops": [
                {"op": e.key, "calls_per_update": e.count / n, "self_ms_per_update": e.self_cpu_time_total / 1e3 / n}
                for e in top
            ],
        }
        r = out[name]
        print(
            f"\n### {name}: {r['aten_ops_per_update']:.0f} aten ops/update, {wall:.2f} ms/update under the "
            f"profiler; self CPU {total:.2f} ms = matmul {mm:.2f} ms ({100 * mm / total:.0f} %) + other "
            f"{total - mm:.2f} ms\n"
        )
        print("| op | calls/update | self ms/update |\n|---|---:|---:|")
        for t in r["top_ops"]:
            print(f"| {t['op']} | {t['calls_per_update']:.1f} | {t['self_ms_per_update']:.3f} |")
    return out


def matmul_floor(rounds: int, n: int = 30) -> dict[str, dict[str, float]]:
    """The matrix products of one DDPG update alone, no autograd, in torch and in jitted JAX.

    Two ways: "hot" times each product on its own, repeatedly (its operands stay in cache, as a
    layer's weights and activations do within an update), and sums the medians; "back to back" runs
    the 28 products on 56 distinct matrices in one go (~14 MB: mostly cache misses, more than an
    update pays). Forward layers multiply by a transposed weight view, as ``F.linear`` does (MKL is
    ~2.5x slower on the same narrow product with a contiguous right operand)."""
    import jax
    import jax.numpy as jnp
    import torch

    h = HIDDEN[0]

    # (m, k, n, forward): forward layers are x[m,k] @ W[n,k].T; the others plain products.
    def layers(i, o):
        return [(B, i, h, True), (B, h, h, True), (B, h, o, True)]

    def grads(i, o):  # input and weight gradients, last to first layer
        return [(B, o, h, False), (o, B, h, False), (B, h, h, False), (h, B, h, False), (h, B, i, False)]

    shapes = (
        layers(OBS, ACT)
        + layers(OBS + ACT, 1)  # critic target
        + layers(OBS + ACT, 1)
        + grads(OBS + ACT, 1)  # critic step
        + layers(OBS, ACT)
        + layers(OBS + ACT, 1)  # actor loss
        + [(B, 1, h, False), (B, h, h, False), (B, h, OBS + ACT, False)]
        + grads(OBS, ACT)
    )  # dQ/da, actor
    g = torch.Generator().manual_seed(0)

    def operands(m, k, nn, forward):
        a = torch.randn(m, k, generator=g)
        return (a, torch.randn(nn, k, generator=g).t()) if forward else (a, torch.randn(k, nn, generator=g))

    ts = [operands(*sh) for sh in shapes]
    js = [(jnp.asarray(a.numpy()), jnp.asarray(b.contiguous().numpy())) for a, b in ts]
    one = jax.jit(lambda a, b: a @ b)
    products = jax.jit(lambda xs: [a @ b for a, b in xs])

    def timed(f, reps):
        return ms_per_call(f, reps, warmup=3)

    ms = {"torch.mm, hot": [], "jax, hot": [], "torch.mm, back to back": [], "jax (one jit), back to back": []}
    for _ in range(rounds):
        ms["torch.mm, hot"].append(sum(timed(lambda: torch.mm(a, b), n) for a, b in ts))
        ms["jax, hot"].append(sum(timed(lambda: one(a, b).block_until_ready(), n) for a, b in js))
        ms["torch.mm, back to back"].append(timed(lambda: [torch.mm(a, b) for a, b in ts], n))
        ms["jax (one jit), back to back"].append(timed(lambda: jax.block_until_ready(products(js)), n))
    out = {k: summarize(v) for k, v in ms.items()}
    flops = sum(2 * m * k * nn for m, k, nn, _ in shapes) / 1e6
    print(
        f"\n{len(shapes)} matrix products of one DDPG update ({flops:.0f} MFLOP): "
        + ", ".join(f"{k} {v['median']:.2f} ms ({v['min']:.2f}-{v['max']:.2f})" for k, v in out.items())
    )
    return out


def main(argv=None) -> int:
    global B, HIDDEN  # the shapes every contender reads (--batch, --hidden)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--updates", type=int, default=40, help="updates per contender per round (even: TD3's delay)")
    p.add_argument("--warmup", type=int, default=20, help="untimed updates per contender first")
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--td7", action="store_true", help="also --preset td7's update (autograd)")
    p.add_argument(
        "--crossq",
        nargs="*",
        type=int,
        metavar="WIDTH",
        help="also --preset crossq's update (C++ and autograd) and SBX's jitted CrossQ update, each with a "
        "WIDTH-WIDTH critic (default widths: 256 1024)",
    )
    p.add_argument("--skip-jax", action="store_true")
    p.add_argument(
        "--compile",
        metavar="MODE",
        help="also pydpg with its losses torch.compile'd in MODE "
        "(default, max-autotune-no-cudagraphs, ...); compile time is reported",
    )
    p.add_argument("--cpp-wrapper", action="store_true", help="with --compile: inductor's C++ wrapper")
    p.add_argument("--baseline", type=Path, help="checkout of another pydpg revision: its agent runs too")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N updates instead of timing")
    p.add_argument(
        "--hidden",
        type=lambda v: tuple(int(w) for w in v.split(",")),
        default=HIDDEN,
        help="hidden widths, e.g. 64,64 (default 256,256; the matmul floor assumes 2 equal layers)",
    )
    p.add_argument("--batch", type=int, default=B)
    p.add_argument("--out", type=Path, default=RESULTS / "update.json")
    args = p.parse_args(argv)
    B, HIDDEN = args.batch, args.hidden
    args.crossq = [] if args.crossq is None else (args.crossq or [256, 1024])

    if hasattr(os, "sched_setaffinity") and args.threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    xla_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = fixed_batch()
    load_before = os.getloadavg()

    c: dict[str, object] = {}
    t0 = time.perf_counter()
    if args.baseline:
        c["pydpg DDPG (baseline)"] = Pydpg(data, td3=False, src=args.baseline)
        c["pydpg TD3 (baseline)"] = Pydpg(data, td3=True, src=args.baseline)
        if args.crossq:  # the narrow critic only: a wide one would dominate the run
            c["pydpg CrossQ, 256-256 critic (baseline)"] = Pydpg(
                data, td3=True, src=args.baseline, preset="crossq", agent_overrides={"critic_hidden": HIDDEN}
            )
    c["pydpg DDPG"] = Pydpg(data, td3=False, backend="cpp")
    c["pydpg TD3"] = Pydpg(data, td3=True, backend="cpp")
    c["pydpg DDPG autograd"] = Pydpg(data, td3=False, backend="torch")
    c["pydpg TD3 autograd"] = Pydpg(data, td3=True, backend="torch")
    if args.td7:
        c["pydpg TD7"] = Pydpg(data, td3=True, preset="td7")
    for w in args.crossq:
        critic = {"critic_hidden": (w, w)}
        c[f"pydpg CrossQ, {w}-{w} critic"] = Pydpg(
            data, td3=True, preset="crossq", agent_overrides=critic, backend="cpp"
        )
        c[f"pydpg CrossQ, {w}-{w} critic, autograd"] = Pydpg(
            data, td3=True, preset="crossq", agent_overrides=critic, backend="torch"
        )
        if not args.skip_jax:
            try:
                c[f"SBX CrossQ, {w}-{w} critic"] = SbxCrossQ(data, w)
            except ImportError as e:
                print(f"SBX skipped ({e}); pip install -e .[bench]", file=sys.stderr)
    compile_s = {}
    if args.compile and args.cpp_wrapper:
        import torch._inductor.config

        torch._inductor.config.cpp_wrapper = True
    if args.compile:
        for name, td3 in (("pydpg DDPG compiled", False), ("pydpg TD3 compiled", True)):
            t = time.perf_counter()
            c[name] = Pydpg(data, td3=td3, compile_mode=args.compile)
            for _ in range(4):  # first calls compile (critic-only and full steps)
                c[name].step()
            compile_s[name] = time.perf_counter() - t
            print(f"{name}: compiled in {compile_s[name]:.1f} s", file=sys.stderr)
    if not args.skip_sb3:
        try:
            c["SB3 DDPG"] = SB3(data)
        except ImportError as e:
            print(f"SB3 skipped ({e}); pip install -e .[bench]", file=sys.stderr)
    if not args.skip_jax:
        try:
            t = time.perf_counter()
            c["JAX DDPG"] = Jax(data, td3=False)
            c["JAX TD3"] = Jax(data, td3=True)
            compile_s["JAX (both)"] = time.perf_counter() - t
        except ImportError as e:
            print(f"JAX peer skipped ({e}); pip install -e .[bench]", file=sys.stderr)

    if args.profile:
        result = {
            "benchmark": "torch.profiler of one update",
            "threads": args.threads,
            "profile": profile(c, args.profile),
        }
        out = args.out.with_name(args.out.stem + "_profile.json")
    else:
        for x in c.values():
            for _ in range(args.warmup):
                x.step()
        names = list(c)
        ms = {k: [] for k in names}
        for r in range(args.rounds):
            # Rotate the order each round so no contender always runs right after the same one.
            for k in names[r % len(names) :] + names[: r % len(names)]:
                ms[k].append(ms_per_call(c[k].step, args.updates))
            print(
                f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ms.items()) + " ms",
                file=sys.stderr,
                flush=True,
            )

        def peer(k):
            if "CrossQ" in k:  # SBX's CrossQ with the same critic width
                sbx = "SBX CrossQ, " + k.split(", ")[1]
                return sbx if sbx in ms else None
            return ("JAX TD3" if "TD3" in k or "TD7" in k else "JAX DDPG") if "JAX DDPG" in ms else None

        rows = {}
        for k in names:
            row = summarize(ms[k])
            if peer(k) and peer(k) != k:
                row["peer"] = peer(k)
                row["ratio_to_jax"] = row["median"] / statistics.median(ms[peer(k)])
                row["paired_ratio_median"] = statistics.median(a / b for a, b in zip(ms[k], ms[peer(k)]))
            rows[k] = row
        floor = matmul_floor(args.rounds) if "JAX DDPG" in c else None
        result = {
            "matmul_floor_ms": floor,
            "benchmark": "ms per DDPG/TD3 update (critic step, actor step, Polyak), same fixed batch",
            "shapes": {"batch": B, "obs": OBS, "act": ACT, "hidden": list(HIDDEN)},
            "threads": args.threads,
            "xla_flags": os.environ["XLA_FLAGS"],
            "rounds": args.rounds,
            "updates_per_round": args.updates,
            "ms_per_update": rows,
            "samples_ms": ms,
            "compile_s": compile_s,
        }
        print(
            f"\nms per update, {args.threads} thread(s), batch {B}, obs {OBS}, act {ACT}, "
            f"{'-'.join(map(str, HIDDEN))} MLPs; "
            f"median over {args.rounds} rounds of {args.updates} updates (min-max); ratio = median / JAX "
            "peer's median (median of per-round ratios): JAX DDPG or TD3, and for CrossQ SBX's CrossQ "
            "with the same critic\n"
        )
        print("| contender | ms/update | min-max | ratio to JAX |\n|---|---:|---:|---:|")
        for k, r in rows.items():
            ratio = f"{r['ratio_to_jax']:.2f} ({r['paired_ratio_median']:.2f})" if "ratio_to_jax" in r else "—"
            print(f"| {k} | {r['median']:.2f} | {r['min']:.2f}–{r['max']:.2f} | {ratio} |")

    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    result.update(
        versions={
            "python": platform.python_version(),
            **{d: version(d) for d in ("torch", "jax", "jaxlib", "flax", "optax", "stable-baselines3", "pydpg")},
        },
        machine={
            "cpu_count": os.cpu_count(),
            "affinity": sorted(os.sched_getaffinity(0)),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "platform": platform.platform(),
        },
        setup_s=time.perf_counter() - t0,
        time=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    out = out if args.profile else args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
