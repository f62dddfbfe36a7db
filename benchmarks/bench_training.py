"""Training throughput: pydpg against Stable-Baselines3's DDPG and a jitted JAX DDPG loop, same
settings, same process.

All get the same work: HalfCheetah-v5, actor and critic 256-256, batch 256, Adam, one gradient
update per env step, Gaussian exploration noise, 1M-transition buffer, one env, CPU, the same
number of threads (torch's and XLA's). The contenders:

* ``pydpg``: ``Trainer`` with the default ``update_backend`` (the C++ update here);
* ``pydpg autograd``: the same with ``update_backend="torch"``;
* ``SB3 DDPG``: ``peers.sb3_ddpg``;
* ``JAX DDPG``: CleanRL's ``ddpg_continuous_action_jax.py`` loop (``JaxRunner``) around
  ``peers.JaxDDPG``: jitted actor and update, a NumPy ring buffer, the update dispatched
  asynchronously so it can overlap the buffer work as it does in CleanRL.
 ``--learning-starts`` random steps come first (not timed); then
``--measure`` env steps per library, each with its update, are timed in chunks of ``--chunk``
steps, the two libraries alternating chunk by chunk, so that load from other processes on a
shared machine hits both alike; the median chunk rate is reported (and the fastest chunk).

    python benchmarks/bench_training.py                    # ~1 minute on 2 cores
    python benchmarks/bench_training.py --measure 500 --skip-sb3
    python benchmarks/bench_training.py --crossq 256       # CrossQ: pydpg against SBX and sb3-contrib

``--crossq W``: the contenders are ``--preset crossq`` with a W-W critic (its C++ update, and with
``update_backend="torch"``), SBX's CrossQ (``peers.sbx_crossq``, JAX) and sb3-contrib's
(``peers.sb3_contrib_crossq``, PyTorch), each with a 256-256 actor, a W-W critic, batch 256, policy
delay 3 and one update per env step, on Hopper-v5 unless ``--env`` says otherwise. The peers' actors
are SAC's (stochastic, with a temperature step); pydpg's is TD3's. Each runner takes a short untimed
chunk first, so that JAX compiles outside the timing.

Writes benchmarks/results/training.json (and prints a markdown table with the ratio).
SB3 comes with the optional ``bench`` extra: pip install -e .[bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class PydpgRunner:
    def __init__(
        self, env_id: str, learning_starts: int, seed: int, backend: str = "auto", crossq_width: int | None = None
    ):
        from pydpg.core.config import DDPGConfig
        from pydpg.train.config import TrainConfig
        from pydpg.train.trainer import Trainer

        common = dict(batch_size=256, learning_starts=learning_starts, buffer_size=1_000_000, update_backend=backend)
        if crossq_width:
            cfg = DDPGConfig.preset("crossq", critic_hidden=(crossq_width, crossq_width), **common)
        else:
            cfg = DDPGConfig(hidden=(256, 256), **common)
        train = TrainConfig(env_id=env_id, total_steps=10**9, eval_every=0, checkpoint_every=0, seed=seed)
        self.trainer = Trainer(cfg, train)  # no out_dir and no evaluation: collection + updates only
        self.trainer.run(stop_at=learning_starts)

    def steps(self, n: int) -> None:
        before = self.trainer.n_grad
        self.trainer.run(stop_at=self.trainer.step + n)
        assert self.trainer.n_grad - before == n  # one update per env step


class SB3Runner:
    def __init__(self, env_id: str, learning_starts: int, seed: int):
        from peers import sb3_ddpg

        self.model = sb3_ddpg(env_id, learning_starts, seed)
        self.model.learn(learning_starts)

    def steps(self, n: int) -> None:
        before = self.model.num_timesteps
        self.model.learn(n, reset_num_timesteps=False)
        assert self.model.num_timesteps - before == n


class CrossQPeerRunner:
    """An SB3-style CrossQ (``peers.sbx_crossq`` or ``peers.sb3_contrib_crossq``) learning on the env."""

    def __init__(self, make, env_id: str, critic_width: int, learning_starts: int, seed: int):
        self.model = make(env_id, critic_width, learning_starts, seed)
        self.model.learn(learning_starts)

    def steps(self, n: int) -> None:
        before = self.model.num_timesteps
        self.model.learn(n, reset_num_timesteps=False)
        assert self.model.num_timesteps - before == n


class JaxRunner:
    """CleanRL's JAX DDPG loop: act with the jitted actor plus N(0, 0.1) noise (uniform actions
    during warm-up), step the env, store in a ring buffer, sample 256 uniformly, update."""

    def __init__(self, env_id: str, learning_starts: int, seed: int, capacity: int = 1_000_000):
        import gymnasium as gym
        import numpy as np
        from peers import JaxDDPG

        self.np = np
        self.env = gym.make(env_id)
        space = self.env.action_space
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)
        od, self.ad = self.env.observation_space.shape[0], space.shape[0]
        self.peer = JaxDDPG(od, self.ad, seed=seed)
        self.rng = np.random.default_rng(seed)
        f32 = np.float32
        self.buf = dict(
            obs=np.zeros((capacity, od), f32),
            action=np.zeros((capacity, self.ad), f32),
            reward=np.zeros((capacity, 1), f32),
            next_obs=np.zeros((capacity, od), f32),
            done=np.zeros((capacity, 1), f32),
        )
        self.discount = np.full((256, 1), 0.99, f32)
        self.capacity, self.size, self.learning_starts = capacity, 0, learning_starts
        self.obs, _ = self.env.reset(seed=seed)
        self.steps(learning_starts)

    def steps(self, n: int) -> None:
        np = self.np
        for _ in range(n):
            if self.size < self.learning_starts:
                a = self.rng.uniform(-1.0, 1.0, self.ad)
            else:
                a = np.clip(
                    self.peer.act(self.obs[None].astype(np.float32))[0] + self.rng.normal(0.0, 0.1, self.ad), -1.0, 1.0
                )
            next_obs, r, term, trunc, _ = self.env.step(self.low + (a + 1.0) * 0.5 * (self.high - self.low))
            i = self.size % self.capacity
            for k, v in (("obs", self.obs), ("action", a), ("reward", r), ("next_obs", next_obs), ("done", term)):
                self.buf[k][i] = v
            self.size += 1
            self.obs = self.env.reset()[0] if term or trunc else next_obs
            if self.size > self.learning_starts:
                idx = self.rng.integers(0, min(self.size, self.capacity), 256)
                self.peer.update({**{k: v[idx] for k, v in self.buf.items()}, "discount": self.discount})
        import jax

        jax.block_until_ready(self.peer.state)  # the chunk's last update is part of its time


def _version(dist: str):
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def timed(runner, n: int) -> float:
    t0 = time.perf_counter()
    runner.steps(n)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=None, help="default HalfCheetah-v5, with --crossq Hopper-v5")
    p.add_argument("--crossq", type=int, metavar="W", help="CrossQ with a W-W critic against SBX and sb3-contrib")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--measure", type=int, default=3000, help="timed env steps per library (one update each)")
    p.add_argument("--chunk", type=int, default=250, help="steps per timed chunk; the libraries alternate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--skip-jax", action="store_true")
    p.add_argument("--skip-autograd", action="store_true", help="leave out pydpg with update_backend='torch'")
    p.add_argument("--out", type=Path, default=RESULTS / "training.json")
    args = p.parse_args(argv)
    args.env = args.env or ("Hopper-v5" if args.crossq else "HalfCheetah-v5")

    from peers import xla_threads

    # The process on `threads` cores, as bench_update.py does: XLA's flags alone do not keep every
    # JAX thread off the other cores (SBX's CrossQ ran 1.6x faster unpinned with one thread asked for).
    if hasattr(os, "sched_setaffinity") and args.threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    xla_threads(args.threads)  # before anything imports jax
    import torch

    torch.set_num_threads(args.threads)
    have_sb3 = not args.skip_sb3
    if have_sb3:
        try:
            import stable_baselines3
        except ImportError:
            print("stable-baselines3 is not installed (pip install -e .[bench]); measuring pydpg only", file=sys.stderr)
            have_sb3 = False
    load_before = os.getloadavg()
    w = args.crossq
    runners = {"pydpg": PydpgRunner(args.env, args.learning_starts, args.seed, crossq_width=w)}
    if not args.skip_autograd:
        runners["pydpg autograd"] = PydpgRunner(args.env, args.learning_starts, args.seed, "torch", w)
    jax_version = None
    if w:
        from peers import sb3_contrib_crossq, sbx_crossq

        for name, make in (("sbx", sbx_crossq), ("sb3-contrib", sb3_contrib_crossq)):
            if (name == "sbx" and args.skip_jax) or (name == "sb3-contrib" and not have_sb3):
                continue
            try:
                runners[name] = CrossQPeerRunner(make, args.env, w, args.learning_starts, args.seed)
            except ImportError as e:
                print(f"{name} skipped ({e}); pip install -e .[bench]", file=sys.stderr)
        if "sbx" in runners:
            import jax

            jax_version = jax.__version__
        for runner in runners.values():  # untimed: JAX compiles, caches warm
            runner.steps(20)
    elif have_sb3:
        runners["sb3"] = SB3Runner(args.env, args.learning_starts, args.seed)
    if not args.skip_jax and not w:
        try:
            import jax

            jax_version = jax.__version__
            runners["jax"] = JaxRunner(args.env, args.learning_starts, args.seed)
        except ImportError as e:
            print(f"JAX peer skipped ({e}); pip install -e .[bench]", file=sys.stderr)
    sps = {k: [] for k in runners}
    for i in range(args.measure // args.chunk):
        # Alternate short chunks: a burst of load from other processes hits both libraries alike,
        # and the medians below ignore the chunks it hit.
        for name, runner in runners.items():
            sps[name].append(timed(runner, args.chunk))
        print(
            f"chunk {i}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in sps.items()) + " steps/s",
            file=sys.stderr,
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in sps.items()}

    def ratios(peer):  # pydpg's rate over the peer's: ratio of medians, median of per-chunk ratios
        if peer not in sps:
            return None, None
        return med["pydpg"] / med[peer], statistics.median(a / b for a, b in zip(sps["pydpg"], sps[peer]))

    ratio, paired = ratios("sb3") if not w else ratios("sbx")

    result = {
        "benchmark": "training throughput, env steps/s after learning starts (one update per step)",
        "env": args.env,
        "crossq_critic_width": w,
        "hidden": [256, 256],
        "batch_size": 256,
        "learning_starts": args.learning_starts,
        "measured_steps": args.measure,
        "chunk": args.chunk,
        "torch_threads": args.threads,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "sps_per_chunk": sps,
        "median_sps": med,
        "max_sps": {k: max(v) for k, v in sps.items()},
        ("ratio_pydpg_over_sbx" if w else "ratio_pydpg_over_sb3"): ratio,
        "median_paired_ratio": paired,
        "ratios_pydpg_over": {k: ratios(k) for k in sps if k != "pydpg"},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sb3": stable_baselines3.__version__ if have_sb3 else None,
            **({"sbx-rl": _version("sbx-rl"), "sb3-contrib": _version("sb3-contrib")} if w else {}),
            "jax": jax_version,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "platform": platform.platform(),
        },
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)

    what = f"CrossQ, 256-256 actor, {w}-{w} critic" if w else "256-256 nets"
    print(
        f"\nTraining throughput on {args.env}, {args.threads} CPU threads, {what}, batch 256, "
        f"1 update/step: {args.measure} steps per library after {args.learning_starts} random steps, "
        f"in alternating chunks of {args.chunk}\n"
    )
    print("| contender | env steps/s (median over chunks) | fastest chunk | pydpg / it (paired) |")
    print("|---|---:|---:|---:|")
    names = {
        "pydpg": "pydpg --preset crossq" if w else "pydpg",
        "pydpg autograd": "pydpg, autograd update",
        "sb3": "SB3 DDPG",
        "jax": "JAX DDPG (jitted)",
        "sbx": "SBX CrossQ (JAX)",
        "sb3-contrib": "sb3-contrib CrossQ (PyTorch)",
    }
    for k, v in sps.items():
        r, pr = ratios(k) if k != "pydpg" else (None, None)
        cell = f"{r:.2f}x ({pr:.2f}x)" if r is not None else "—"
        print(f"| {names[k]} | {med[k]:.1f} | {max(v):.1f} | {cell} |")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
