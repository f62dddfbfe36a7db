"""Policy inference, side by side: batch-1 latency (p50, p99; one thread) and throughput at batch
64, 1024 and 4096 for the 17 -> 256 -> 256 -> 6 actor (HalfCheetah's shapes) with observation
normalization and action scaling, in every way pydpg can run it:

    C++ runtime from C++      benchmarks/cpp_runtime (find_package(pydpg)), mlp and torchscript backends
    C++ runtime from Python   pydpg.deploy.runtime.Policy.act (binding + GIL release included), also with
                              batch_invariant=True (each row computed alone)
    Python eager torch        the same normalize -> actor -> scale module, eager, inference_mode
    TorchScript from Python   torch.jit.load of the exported file
    ONNX Runtime              the --format onnx export, one intra-op thread (if installed)

All in one run on the same machine, same shapes, one thread each; ratios are against eager torch.
``--actor td7`` measures TD7's actor instead (preset td7: the frozen state encoder, AvgL1Norm and
ELU inside the policy; 17 -> [256 | 256-256-256 encoder] -> 256 -> 256 -> 6); ``--actor crossq``
CrossQ's (preset crossq: a batch renormalization before each of the three Linear layers).

    python benchmarks/bench_inference.py [--calls 20000] [--actor default|td7|crossq] [--json FILE]
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
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (64, 1024, 4096)


def percentiles(ns: np.ndarray) -> dict:
    us = np.sort(ns) / 1e3
    at = lambda q: float(us[min(len(us) - 1, max(0, int(np.ceil(q * len(us))) - 1))])  # noqa: E731
    return {
        "mean_us": float(us.mean()),
        "p50_us": at(0.5),
        "p90_us": at(0.9),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": float(us[-1]),
    }


def time_calls(fn, x, calls: int) -> dict:
    for _ in range(200):
        fn(x)
    ns = np.empty(calls, np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn(x)
        ns[i] = clock() - t0
    return percentiles(ns)


def throughput(fn, x) -> float:
    b = x.shape[0]
    reps = max(3, 200_000 // b)
    fn(x)
    fn(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return b * reps / (time.perf_counter() - t0)


def cpp_bench(policy: Path, calls: int, backend: str) -> dict | None:
    if not (shutil.which("cmake") and shutil.which("c++")):
        return None
    from pydpg.deploy.loop import build_cmake_project

    build = build_cmake_project(ROOT / "benchmarks" / "cpp_runtime", tempfile.mkdtemp(prefix="pydpg-bench-"))
    out = subprocess.run(
        [str(build / "bench_runtime"), str(policy), backend, str(calls), *map(str, BATCHES)],
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(build, ignore_errors=True)
    return json.loads(out.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20_000, help="batch-1 calls per method")
    p.add_argument(
        "--actor",
        choices=("default", "td7", "crossq"),
        default="default",
        help="pydpg's default actor, TD7's (preset td7) or CrossQ's (preset crossq)",
    )
    p.add_argument(
        "--json", default=None, help="default benchmarks/results/inference.json (inference_<actor>.json with --actor)"
    )
    args = p.parse_args(argv)
    if args.json is None:
        name = "inference.json" if args.actor == "default" else f"inference_{args.actor}.json"
        args.json = str(ROOT / "benchmarks" / "results" / name)
    torch.set_num_threads(1)

    from pydpg.core.agent import DDPGAgent
    from pydpg.core.config import DDPGConfig
    from pydpg.core.normalizer import RunningNormalizer
    from pydpg.deploy.export import PolicyModule, export_policy
    from pydpg.deploy.runtime import Policy

    torch.manual_seed(0)
    presets = {"td7": DDPGConfig.preset("td7"), "crossq": DDPGConfig.preset("crossq", critic_hidden=(256, 256))}
    agent = DDPGAgent.from_dims(17, 6, presets.get(args.actor))
    actor = agent.policy_actor.eval()  # a batch-renormalized actor acts with its running statistics
    norm = RunningNormalizer(17)
    norm.update(np.random.default_rng(0).standard_normal((4096, 17)) * 2)
    tmp = Path(tempfile.mkdtemp(prefix="pydpg-bench-"))
    low, high = [-1.0] * 6, [1.0] * 6
    pt = tmp / "policy.pt"
    export_policy(agent, pt, action_low=low, action_high=high, normalizer=norm, verbose=False)
    rng = np.random.default_rng(1)
    obs1 = rng.standard_normal((1, 17)).astype(np.float32)
    big = {b: rng.standard_normal((b, 17)).astype(np.float32) for b in BATCHES}

    rows: dict[str, dict] = {}

    def record(name, fn, convert=lambda a: a):
        lat = time_calls(fn, convert(obs1), args.calls)
        rows[name] = {**lat, "throughput": {b: throughput(fn, convert(big[b])) for b in BATCHES}}
        print(f"  {name}: p50 {lat['p50_us']:.2f} us", file=sys.stderr)

    print("measuring ...", file=sys.stderr)
    for backend in ("mlp", "torchscript"):
        r = cpp_bench(pt, args.calls, backend)
        if r is not None:
            rows[f"C++ runtime from C++ ({backend})"] = {
                **r["batch1"],
                "throughput": {int(k): v for k, v in r["throughput"].items()},
            }
    pol = Policy(pt, max_batch=max(BATCHES))
    print(f"  {args.actor} actor: runtime backend {pol.backend}", file=sys.stderr)
    out = {b: np.empty((b, 6), np.float32) for b in (1, *BATCHES)}
    record("C++ runtime from Python (mlp)", lambda x: pol.act(x, out=out[x.shape[0]]))
    pol.reset_latency()
    for _ in range(args.calls):
        pol.act(obs1, out=out[1])
    rows["  (same, runtime's own clock)"] = {**pol.latency(), "throughput": {}}
    # What per-row determinism costs: every row computed alone (batch_invariant=True).
    inv = Policy(pt, max_batch=max(BATCHES), batch_invariant=True)
    record("C++ runtime from Python (mlp, batch_invariant)", lambda x: inv.act(x, out=out[x.shape[0]]))

    module = PolicyModule(
        actor, np.array(low), np.array(high), norm.mean.numpy(), norm.var.numpy(), norm.eps, norm.clip
    ).eval()

    def eager(x):
        with torch.inference_mode():
            return module(x)

    record("Python eager torch", eager, torch.from_numpy)

    def eager_actor(x):  # the bare network, as the reference figures measured it
        with torch.inference_mode():
            return actor(x)

    record("Python eager torch (actor only)", eager_actor, torch.from_numpy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ts = torch.jit.load(str(pt))

    def script(x):
        with torch.inference_mode():
            return ts(x)

    record("TorchScript from Python", script, torch.from_numpy)
    try:
        import onnxruntime as ort

        export_policy(
            agent, tmp / "policy.onnx", action_low=low, action_high=high, normalizer=norm, format="onnx", verbose=False
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(tmp / "policy.onnx"), so, providers=["CPUExecutionProvider"])
        record("ONNX Runtime from Python", lambda x: sess.run(None, {"obs": x}))
    except ImportError:
        print("onnxruntime not installed: skipped", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    eager_tp = rows["Python eager torch"]["throughput"]
    header = (
        "| method (1 thread) | batch-1 p50 µs | p99 µs | mean µs | "
        + " | ".join(f"batch {b} obs/s" for b in BATCHES)
        + " |"
    )
    lines = [header, "|---|---:|---:|---:|" + "---:|" * len(BATCHES)]
    for name, r in rows.items():
        tp = " | ".join(
            f"{r['throughput'][b] / 1e6:.2f} M ({r['throughput'][b] / eager_tp[b]:.2f}x)"
            if b in r["throughput"]
            else ""
            for b in BATCHES
        )
        lines.append(f"| {name} | {r['p50_us']:.2f} | {r['p99_us']:.2f} | {r['mean_us']:.2f} | {tp} |")
    table = "\n".join(lines)
    print(table)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    result = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "calls": args.calls,
        "actor": args.actor,
        "rows": rows,
        "table": table,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp_json = Path(args.json).with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(result, indent=1))
    os.replace(tmp_json, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
