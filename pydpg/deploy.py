"""Deployment helpers: the shipped C++ control loop (``pydpg run``) and the CMake package location
(``python -m pydpg --cmake-dir``).

The wheel installs, inside the ``pydpg`` package directory:

    bin/pydpg_control_loop          MuJoCo C API + pydpg::runtime, no Python (csrc/control_loop.cpp)
    lib/libpydpg_runtime.so         the policy runtime (links libtorch from the torch package)
    include/pydpg/policy_runtime.hpp
    share/cmake/pydpg/pydpgConfig.cmake   find_package(pydpg) -> pydpg::runtime
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

CONTROL_LOOP = "pydpg_control_loop"


def _package_dirs() -> list[Path]:
    import pydpg

    # Editable installs split the package: sources in the checkout, built files in site-packages.
    return [Path(p) for p in pydpg.__path__]


def _find(relative: str) -> Path:
    for d in _package_dirs():
        candidate = d / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"pydpg/{relative} is not installed (looked in {', '.join(map(str, _package_dirs()))}); "
                            "reinstall pydpg with its C++ components (pip install pydpg)")


def cmake_dir() -> str:
    """Directory holding pydpgConfig.cmake: pass it as ``-Dpydpg_DIR=...`` (or add its prefix to
    CMAKE_PREFIX_PATH) and ``find_package(pydpg)`` gives ``pydpg::runtime``."""
    return str(_find("share/cmake/pydpg"))


def control_loop_path() -> str:
    """Path of the shipped control-loop executable."""
    return str(_find(f"bin/{CONTROL_LOOP}"))


def build_cmake_project(source: Union[str, os.PathLike], build: Union[str, os.PathLike], timeout: float = 600) -> Path:
    """Configure and build a CMake project that uses ``find_package(pydpg)`` against this installed
    pydpg (Release; Ninja when available). Raises ``subprocess.CalledProcessError`` with the tool's
    output on failure. Returns the build directory."""
    import shutil

    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", os.fspath(source), "-B", os.fspath(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    f"-Dpydpg_DIR={cmake_dir()}"], check=True, capture_output=True, text=True, timeout=timeout)
    subprocess.run(["cmake", "--build", os.fspath(build)], check=True, capture_output=True, text=True, timeout=timeout)
    return Path(build)


def cmake_dir_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pydpg --cmake-dir``: print the CMake package directory (as ``pybind11 --cmakedir``)."""
    try:
        print(cmake_dir())
    except FileNotFoundError as e:
        print(f"pydpg: error: {e}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------- pydpg run
def control_loop_args(policy: Union[str, os.PathLike], *, model: Optional[str] = None, hz: Optional[float] = None,
                      episodes: int = 1, max_steps: Optional[int] = None, seed: int = 0, realtime: bool = True,
                      threads: int = 1, on_nonfinite: str = "hold", init_states: Optional[str] = None,
                      json_out: Optional[str] = None, trace: Optional[str] = None, quiet: bool = False) -> list[str]:
    args = [control_loop_path(), os.fspath(policy), "--episodes", str(int(episodes)), "--seed", str(int(seed)),
            "--threads", str(int(threads)), "--on-nonfinite", on_nonfinite]
    if model is not None:
        args += ["--model", os.fspath(model)]
    if hz is not None:
        args += ["--hz", repr(float(hz))]
    if max_steps is not None:
        args += ["--max-steps", str(int(max_steps))]
    if not realtime:
        args.append("--no-sleep")
    if init_states is not None:
        args += ["--init-states", os.fspath(init_states)]
    if json_out is not None:
        args += ["--json", os.fspath(json_out)]
    if trace is not None:
        args += ["--trace", os.fspath(trace)]
    if quiet:
        args.append("--quiet")
    return args


class ControlLoopError(RuntimeError):
    """The control loop exited with an error; the message is its stderr."""


def run_policy(policy: Union[str, os.PathLike], *, initial_states: Optional[np.ndarray] = None,
               timeout: Optional[float] = None, **kwargs: Any) -> dict[str, Any]:
    """Run the C++ control loop and return its JSON report: returns, lengths, latency_us (policy
    act()), step_us (act + physics), deadline_misses, ...

    ``initial_states``: [episodes, nq + nv] qpos‖qvel to start each episode from (instead of the
    env's reset noise), which makes a run comparable step for step with a Python evaluation.
    Other keyword arguments are those of ``control_loop_args``.
    """
    with tempfile.TemporaryDirectory(prefix="pydpg-run-") as tmp:
        out = os.path.join(tmp, "result.json")
        if initial_states is not None:
            states = np.atleast_2d(np.asarray(initial_states, dtype=np.float64))
            path = os.path.join(tmp, "init.txt")
            np.savetxt(path, states, fmt="%.17g")
            kwargs["init_states"] = path
        proc = subprocess.run(control_loop_args(policy, json_out=out, **kwargs), capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise ControlLoopError(proc.stderr.strip() or f"control loop exited with {proc.returncode}")
        with open(out) as f:
            result = json.load(f)
    result["stdout"] = proc.stdout
    return result


def run_main(argv: Optional[Sequence[str]] = None) -> int:
    """``pydpg run POLICY [options]``: run the policy in the C++ control loop; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="pydpg run",
        description="Run an exported policy in the C++ control loop (MuJoCo C API, fixed rate, no Python).")
    p.add_argument("policy", help="policy file written by `pydpg export`")
    p.add_argument("--model", help="MuJoCo XML to load instead of the model stored in the policy")
    p.add_argument("--hz", type=float, help="control rate (default: the training env's, 1 / (timestep * frame_skip))")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="steps per episode (default: the env's time limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reset noise")
    p.add_argument("--no-sleep", action="store_true", help="run as fast as possible instead of at --hz")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the runtime (default 1)")
    p.add_argument("--on-nonfinite", choices=("raise", "hold", "safe"), default="hold",
                   help="NaN/Inf observation or action: stop, hold the last action, or output zeros")
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    if not os.path.isfile(args.policy):
        print(f"pydpg run: error: policy file {args.policy!r} does not exist", file=sys.stderr)
        return 2
    if args.model is not None and not os.path.isfile(args.model):
        print(f"pydpg run: error: model file {args.model!r} does not exist", file=sys.stderr)
        return 2
    for name in ("episodes", "max_steps", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"pydpg run: error: --{name.replace('_', '-')} must be >= 1, got {v}", file=sys.stderr)
            return 2
    if args.hz is not None and not args.hz > 0:
        print(f"pydpg run: error: --hz must be > 0, got {args.hz}", file=sys.stderr)
        return 2
    try:
        cmd = control_loop_args(args.policy, model=args.model, hz=args.hz, episodes=args.episodes,
                                max_steps=args.max_steps, seed=args.seed, realtime=not args.no_sleep,
                                threads=args.threads, on_nonfinite=args.on_nonfinite, json_out=args.json)
    except FileNotFoundError as e:
        print(f"pydpg run: error: {e}", file=sys.stderr)
        return 2
    return subprocess.call(cmd)


# ---------------------------------------------------------------------------------------- replay
def read_trace(path: Union[str, os.PathLike]) -> list[dict]:
    """The episodes of a ``pydpg run --trace`` file: initial qpos/qvel, and per step the observation
    the policy saw, the action it sent and the loop's reward (NaN where it computes none)."""
    episodes: list[dict] = []
    nq = nv = act_dim = obs_dim = None
    with open(path) as f:  # FileNotFoundError names a missing path
        for line in f:
            if line.startswith("# pydpg control loop trace"):
                words = line.split()
                try:
                    nq, nv, act_dim, obs_dim = (int(words[words.index(k) + 1]) for k in ("nq", "nv", "act_dim", "obs_dim"))
                except (ValueError, IndexError):
                    raise ValueError(f"{path}: malformed trace header {line.strip()!r}") from None
                continue
            if line.startswith("#") or not line.strip():
                continue
            kind, *rest = line.rstrip("\n").split(",")
            if nq is None:
                raise ValueError(f"{path} is not a pydpg control loop trace (no header line)")
            try:
                values = np.array(rest[1:] if kind == "init" else rest[3:], dtype=np.float64)
            except ValueError:
                raise ValueError(f"{path}: a corrupt trace line (not numbers): {line[:80]!r}") from None
            if kind == "init":
                if values.size != nq + nv:
                    raise ValueError(f"{path}: an init line holds {values.size} values, the header says nq + nv = {nq + nv}")
                episodes.append({"qpos": values[:nq], "qvel": values[nq:nq + nv], "obs": [], "action": [],
                                 "reward": []})
            elif kind == "step":
                if not episodes:
                    raise ValueError(f"{path}: a step line before any init line")
                if len(rest) < 3 or values.size != act_dim + obs_dim:
                    raise ValueError(f"{path}: a step line holds {values.size} values, the header says act_dim + "
                                     f"obs_dim = {act_dim + obs_dim}")
                # float32 values printed with 9 digits: parsed as float32 they are exact, as float64
                # they would be the decimal (the replay would then step with other actions).
                values = np.array(rest[3:], dtype=np.float32).astype(np.float64)
                ep = episodes[-1]
                ep["reward"].append(float(rest[2]))
                ep["action"].append(values[:act_dim])
                ep["obs"].append(values[act_dim:])
            else:
                raise ValueError(f"{path}: unknown trace line kind {kind!r}")
    for ep in episodes:
        for key in ("obs", "action", "reward"):
            ep[key] = np.array(ep[key])
    return episodes


def replay_trace(path: Union[str, os.PathLike], env) -> list[dict]:
    """Replay a control-loop trace through the Gymnasium ``env`` (no reward code in C++ needed):
    each episode starts from the logged qpos/qvel and takes the logged actions. Per episode it
    reports the largest observation difference relative to max(1, |obs|) between what the loop's
    policy saw and what the env observes, the env's return up to its first termination, the
    loop's return (None when the loop computes none), and the step the env terminated at."""
    from .observation import observation_error

    u = env.unwrapped
    if not hasattr(u, "set_state") or not hasattr(u, "_get_obs"):
        raise TypeError(f"{type(u).__name__} is not a Gymnasium MuJoCo env: the trace cannot be replayed through it")
    out = []
    for ep in read_trace(path):
        if ep["qpos"].size != u.model.nq or ep["qvel"].size != u.model.nv:
            raise ValueError(f"the trace's states have nq {ep['qpos'].size}, nv {ep['qvel'].size}; this env's model has "
                             f"nq {u.model.nq}, nv {u.model.nv} (a trace of another robot?)")
        env.reset(seed=0)
        u.set_state(ep["qpos"], ep["qvel"])
        obs = u._get_obs()
        worst, ret, ended = 0.0, 0.0, None
        for t, (seen, action) in enumerate(zip(ep["obs"], ep["action"])):
            worst = max(worst, float(np.max(observation_error(seen, obs), initial=0.0)))
            obs, reward, terminated, truncated, _ = u.step(action)
            if ended is None:
                ret += float(reward)
                if terminated:
                    ended = t + 1
        cpp = ep["reward"]
        out.append({"steps": len(ep["action"]), "max_obs_diff": worst, "python_return": ret, "terminated_at": ended,
                    "cpp_return": None if len(cpp) == 0 or np.isnan(cpp).any() else float(cpp.sum())})
    return out


# ---------------------------------------------------------------------------------------- the journey
def journey_main(argv: Optional[Sequence[str]] = None) -> int:
    """The main job: train briefly, export with the parity check, run the policy in the C++ control
    loop, print the return (next to Python's evaluation of the same policy) and the latency table."""
    p = argparse.ArgumentParser(prog="pydpg journey", description=journey_main.__doc__)
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--steps", type=int, default=20_000,
                   help="training step budget; training stops early once an evaluation reaches --target "
                        "(default %(default)s)")
    p.add_argument("--target", type=float, default=950.0,
                   help="stop training at this noiseless eval return (default %(default)s, of 1000 on "
                        "InvertedPendulum-v5)")
    p.add_argument("--out", default="runs/journey", help="run directory (checkpoints, policy.pt)")
    p.add_argument("--episodes", type=int, default=3, help="evaluation episodes, Python and C++")
    p.add_argument("--realtime-steps", type=int, default=250,
                   help="control periods run at the env's own rate to measure deadline misses")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from . import presets
    from .envs import evaluate, initial_states, make_env
    from .export import export_policy
    from .trainer import Trainer, make_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] training DDPG on {args.env} (task preset; at most {args.steps} steps, stopping at "
          f"eval return {args.target:g}) ...", flush=True)
    cfg, train = presets.resolve(args.env, train={
        "seed": args.seed, "total_steps": args.steps, "eval_every": 1000, "eval_episodes": 5,
        "target_return": args.target, "checkpoint_every": 0})
    trainer = Trainer(cfg, train, out_dir=out, tensorboard=False)
    summary = trainer.run()
    print(f"      trained {summary['steps']} steps; last eval return {summary['final_eval']['mean']:.1f}",
          flush=True)
    print(f"[2/4] exporting to {out / 'policy.pt'} (parity check) ...", flush=True)
    export_policy(trainer, out / "policy.pt")
    env = make_env(args.env, {})
    seed = args.seed + 1000
    python = evaluate(make_policy(trainer.agent, trainer.normalizer), env, args.episodes, seed=seed)
    states = initial_states(env, args.episodes, seed)  # where those evaluation episodes started
    env.close()
    trainer.close()
    print("[3/4] running the policy in the C++ control loop (MuJoCo C API, no Python) ...", flush=True)
    fast = run_policy(out / "policy.pt", initial_states=states, realtime=False, quiet=True)
    live = run_policy(out / "policy.pt", realtime=True, max_steps=args.realtime_steps, seed=args.seed)
    print("[4/4] results\n")
    print(f"return, Python evaluation : {np.round(python.returns, 3).tolist()} (mean {python.returns.mean():.3f})")
    print(f"return, C++ control loop  : {np.round(fast['returns'], 3).tolist()} (mean {fast['mean_return']:.3f}); "
          f"max |difference| {np.max(np.abs(np.array(fast['returns']) - python.returns)):.2g}\n")
    print(live["stdout"].split("\n\n", 1)[-1].rstrip())
    return 0
