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

from .policy_file import read_metadata

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
                      episodes: int = 1, max_steps: Optional[int] = None, realtime: bool = True,
                      threads: int = 1, on_nonfinite: str = "hold", init_states: Optional[str] = None,
                      json_out: Optional[str] = None, trace: Optional[str] = None, quiet: bool = False) -> list[str]:
    args = [control_loop_path(), os.fspath(policy), "--episodes", str(int(episodes)),
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


def _env_for(env) -> Any:
    """``env`` itself, or a fresh Gymnasium env for an id (``"module:EnvId"`` imports the module
    that registers it, as ``gymnasium.make`` does)."""
    if not isinstance(env, str):
        return env
    import gymnasium as gym

    from .envs import check_env_id

    check_env_id(env)  # an unknown id, or a module:Name whose module cannot be imported, by name
    return gym.make(env)


def run_policy(policy: Union[str, os.PathLike], *, initial_states: Optional[np.ndarray] = None, replay=None,
               timeout: Optional[float] = None, **kwargs: Any) -> dict[str, Any]:
    """Run the C++ control loop and return its JSON report: lengths, terminated (and by which
    condition), latency_us (policy act()), step_us (act + physics), deadline_misses, ...

    ``initial_states``: [episodes, nq + nv] qpos‖qvel to start each episode from (else the model's
    qpos0), which makes a run comparable step for step with a Python evaluation.
    ``replay``: a Gymnasium env (or env id) to replay the run through (``replay_trace``): the report
    then also holds ``returns`` and ``mean_return`` (the env's rewards for the loop's actions, from
    the same states), ``max_obs_diff`` and the per-episode ``replay``. The loop computes no rewards.
    Other keyword arguments are those of ``control_loop_args``.
    """
    with tempfile.TemporaryDirectory(prefix="pydpg-run-") as tmp:
        out = os.path.join(tmp, "result.json")
        if initial_states is not None:
            states = np.atleast_2d(np.asarray(initial_states, dtype=np.float64))
            path = os.path.join(tmp, "init.txt")
            np.savetxt(path, states, fmt="%.17g")
            kwargs["init_states"] = path
        if replay is not None and kwargs.get("trace") is None:
            kwargs["trace"] = os.path.join(tmp, "trace.csv")
        proc = subprocess.run(control_loop_args(policy, json_out=out, **kwargs), capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise ControlLoopError(proc.stderr.strip() or f"control loop exited with {proc.returncode}")
        with open(out) as f:
            result = json.load(f)
        if replay is not None:
            env = _env_for(replay)
            try:
                episodes = replay_trace(kwargs["trace"], env)
            finally:
                if env is not replay:
                    env.close()
            result["replay"] = episodes
            result["returns"] = [e["replay_return"] for e in episodes]
            result["mean_return"] = float(np.mean(result["returns"]))
            result["max_obs_diff"] = max((e["max_obs_diff"] for e in episodes), default=0.0)
    result["stdout"] = proc.stdout
    return result


def _policy_env_id(policy: Union[str, os.PathLike]) -> Optional[str]:
    try:
        return read_metadata(policy).get("env_id")
    except Exception:  # noqa: BLE001 - the loop itself reports what is wrong with the file
        return None


def _env_hint(env_id: str, error: Exception) -> str:
    """What to do when ``env_id`` cannot be made: the module of a ``module:EnvId`` id must be importable
    (its directory on PYTHONPATH); a bare id needs the module that registers it named."""
    module = env_id.split(":", 1)[0] if ":" in env_id else None
    if "PYTHONPATH" in str(error):  # check_env_id's message says it already
        return ""
    if module is not None and isinstance(error, ModuleNotFoundError):
        return (f" (the module '{module}' that registers it is not importable from here: run from its directory or "
                f"add that directory to PYTHONPATH, e.g. PYTHONPATH=path/to/dir pydpg run ...)")
    if module is None:
        return " (if a module of yours registers it, pass --env module:EnvId)"
    return ""


def _policy_eval_seed(policy: Union[str, os.PathLike]) -> int:
    """The seed `pydpg eval` uses for the run the policy came from (metadata ``eval_seed``), else 100
    (a seed-0 run's)."""
    try:
        seed = read_metadata(policy).get("eval_seed")
    except Exception:  # noqa: BLE001 - the loop itself reports what is wrong with the file
        seed = None
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 100


def run_main(argv: Optional[Sequence[str]] = None) -> int:
    """``pydpg run POLICY [options]``: run the policy in the C++ control loop; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="pydpg run",
        description="Run an exported policy in the C++ control loop (MuJoCo C API, fixed rate, no Python). "
                    "Episodes start from the Gymnasium env's own initial states, and the run is replayed "
                    "through the env afterwards for its returns and observation parity.")
    p.add_argument("policy", help="policy file written by `pydpg export`")
    p.add_argument("--model", help="MuJoCo XML to load instead of the model stored in the policy")
    p.add_argument("--env", help="Gymnasium env id for initial states and the replay (default: the policy's "
                                 "env_id; 'module:EnvId' imports the module that registers it)")
    p.add_argument("--no-replay", action="store_true",
                   help="no Gymnasium env: start from the model's qpos0 and report no returns")
    p.add_argument("--hz", type=float, help="control rate (default: the training env's, 1 / (timestep * frame_skip))")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="steps per episode (default: the env's time limit)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the env's first reset, which draws the initial states (default: the policy's "
                        "eval_seed, the run's seed + 100, as `pydpg eval` uses; 100 when the file has none)")
    p.add_argument("--no-sleep", action="store_true", help="run as fast as possible instead of at --hz")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the runtime (default 1)")
    p.add_argument("--on-nonfinite", choices=("raise", "hold", "safe"), default="hold",
                   help="NaN/Inf observation or action: stop, hold the last action, or output zeros")
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)

    def fail(message: str) -> int:
        print(f"pydpg run: error: {message}", file=sys.stderr)
        return 2

    if not os.path.isfile(args.policy):
        return fail(f"policy file {args.policy!r} does not exist")
    if args.model is not None and not os.path.isfile(args.model):
        return fail(f"model file {args.model!r} does not exist")
    for name in ("episodes", "max_steps", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            return fail(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.hz is not None and not args.hz > 0:
        return fail(f"--hz must be > 0, got {args.hz}")
    try:
        control_loop_path()
    except FileNotFoundError as e:
        return fail(str(e))
    loop = dict(model=args.model, hz=args.hz, episodes=args.episodes, max_steps=args.max_steps,
                realtime=not args.no_sleep, threads=args.threads, on_nonfinite=args.on_nonfinite)
    env_id = None if args.no_replay else (args.env or _policy_env_id(args.policy))
    env = None
    if env_id is not None:
        try:
            env = _env_for(env_id)
        except Exception as e:  # noqa: BLE001 - any failure to make the env means: run without it
            hint = _env_hint(env_id, e)
            if args.env:
                return fail(f"cannot make the env {env_id!r}: {e}{hint}")
            print(f"pydpg run: note: cannot make the policy's env {env_id!r} ({type(e).__name__}: {e}); episodes start "
                  f"from the model's qpos0 and no returns are reported{hint}", file=sys.stderr)
    if env is None:
        return subprocess.call(control_loop_args(args.policy, json_out=args.json, **loop))
    seed = args.seed if args.seed is not None else _policy_eval_seed(args.policy)
    try:
        from .envs import evaluate, initial_states
        from .runtime import Policy

        states = initial_states(env, args.episodes, seed)
        try:
            result = run_policy(args.policy, initial_states=states, replay=env, **loop)
        except ControlLoopError as e:
            print(f"pydpg_control_loop: {e}", file=sys.stderr)
            return 1
        # The same file acting in Python (pydpg.Policy in the env), from the same initial states and
        # for at most as many steps as the loop ran.
        policy = Policy(args.policy, on_nonfinite=args.on_nonfinite)
        python_env = env
        if args.max_steps is not None:
            from gymnasium.wrappers import TimeLimit

            python_env = TimeLimit(env, max_episode_steps=args.max_steps)
        python = evaluate(policy.act, python_env, args.episodes, seed=seed)
    finally:
        env.close()
    result["seed"] = seed
    result["python_returns"] = python.returns.tolist()
    print(result.pop("stdout").rstrip())
    print(f"\nreturns from the same initial states (seed {seed}): the loop's actions replayed through {env_id}, and "
          "the same policy file acting in Python (pydpg.Policy in the env):")
    for i, e in enumerate(result["replay"]):
        ended = "" if e["terminated_at"] is None else f", env terminated at step {e['terminated_at']}"
        agree = "" if e["termination_agrees"] else " (the loop ended the episode elsewhere!)"
        print(f"episode {i}: loop {e['replay_return']:.3f} over {e['steps']} steps{ended}{agree}; Python "
              f"{python.returns[i]:.3f} over {int(python.lengths[i])} steps; max observation difference "
              f"{e['max_obs_diff']:.2g}")
    print(f"mean return: loop {result['mean_return']:.3f}, Python {float(python.returns.mean()):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


# ---------------------------------------------------------------------------------------- replay
def read_trace(path: Union[str, os.PathLike]) -> list[dict]:
    """The episodes of a control loop ``--trace`` file: initial qpos/qvel, per step the observation
    the policy saw and the action it sent, and (trace version 2) how the episode ended: ``failed``,
    the index of the termination condition that ended it, -1 when none did, None when not logged.

    A trace is an input from elsewhere, checked line by line: a file with no episode, a header with
    sizes that cannot be (below 1, or absurd), a line of the wrong length or not numbers, a
    non-finite action or state, an ``end`` line that is not two whole numbers, and (version 2) an
    episode without its ``end`` line (a trace cut short) are ValueErrors naming the line."""
    episodes: list[dict] = []
    nq = nv = act_dim = obs_dim = version = None
    with open(path) as f:  # FileNotFoundError names a missing path
        for number, line in enumerate(f, start=1):
            where = f"{os.fspath(path)}, line {number}"
            if line.startswith("# pydpg control loop trace"):
                words = line.replace(":", " ").split()
                try:
                    version = int(words[5])
                    nq, nv, act_dim, obs_dim = (int(words[words.index(k) + 1]) for k in ("nq", "nv", "act_dim", "obs_dim"))
                except (ValueError, IndexError):
                    raise ValueError(f"{where}: malformed trace header {line.strip()!r}") from None
                if version not in (1, 2):
                    raise ValueError(f"{where}: trace version {version}; this pydpg reads versions 1 and 2")
                for name, v in (("nq", nq), ("nv", nv), ("act_dim", act_dim), ("obs_dim", obs_dim)):
                    if not 1 <= v <= (1 << 20) and not (name == "nv" and v == 0):
                        raise ValueError(f"{where}: the header's {name} {v} is not a size (1 to 2^20)")
                continue
            if line.startswith("#") or not line.strip():
                continue
            kind, *rest = line.rstrip("\n").split(",")
            if nq is None:
                raise ValueError(f"{path} is not a pydpg control loop trace (no header line)")
            # version 1 logged a reward column after the step index; version 2 logs none.
            skip = {"init": 1, "step": 3 if version == 1 else 2, "end": 1}.get(kind)
            if skip is None:
                raise ValueError(f"{where}: unknown trace line kind {kind!r}")
            try:
                values = np.array(rest[skip:], dtype=np.float64)
            except ValueError:
                raise ValueError(f"{where}: a corrupt trace line (not numbers): {line[:80]!r}") from None
            if kind == "init":
                if values.size != nq + nv:
                    raise ValueError(f"{where}: an init line holds {values.size} values, the header says nq + nv = "
                                     f"{nq + nv}")
                if not np.isfinite(values).all():
                    raise ValueError(f"{where}: an initial state holds a NaN or infinite value")
                if version == 2 and episodes and episodes[-1]["failed"] is None:
                    raise ValueError(f"{where}: episode {len(episodes) - 1} has no end line")
                episodes.append({"qpos": values[:nq], "qvel": values[nq:nq + nv], "obs": [], "action": [],
                                 "failed": None})
                continue
            if not episodes:
                raise ValueError(f"{where}: a {kind} line before any init line")
            if kind == "end":
                if values.size != 2 or not np.isfinite(values).all() or (values != np.round(values)).any() \
                        or values[0] < 0 or values[1] < -1 or values[0] > 1e12:
                    raise ValueError(f"{where}: an end line must hold two whole numbers, the steps and the failed "
                                     f"condition (-1: none), got {','.join(rest[skip:])!r}")
                if values[0] != len(episodes[-1]["action"]):
                    raise ValueError(f"{where}: the end line says {int(values[0])} steps, the episode logged "
                                     f"{len(episodes[-1]['action'])}")
                episodes[-1]["failed"] = int(values[1])
                continue
            if len(rest) < skip or values.size != act_dim + obs_dim:
                raise ValueError(f"{where}: a step line holds {values.size} values, the header says act_dim + "
                                 f"obs_dim = {act_dim + obs_dim}")
            # float32 values printed with 9 digits: parsed as float32 they are exact, as float64
            # they would be the decimal (the replay would then step with other actions). Actions
            # stay float32, the dtype a policy hands the env, whose reward arithmetic follows it.
            values = np.array(rest[skip:], dtype=np.float32)
            if not np.isfinite(values[:act_dim]).all():
                raise ValueError(f"{where}: a step's action holds a NaN or infinite value; it cannot be replayed")
            episodes[-1]["action"].append(values[:act_dim])
            episodes[-1]["obs"].append(values[act_dim:].astype(np.float64))
    if nq is None:
        raise ValueError(f"{path} is not a pydpg control loop trace (no header line)")
    if not episodes:
        raise ValueError(f"{path}: the trace holds no episode (a header and no init line)")
    if version == 2 and episodes[-1]["failed"] is None:
        raise ValueError(f"{path}: episode {len(episodes) - 1} has no end line (the trace was cut short?)")
    for ep in episodes:
        for key, width in (("obs", obs_dim), ("action", act_dim)):
            ep[key] = np.array(ep[key]).reshape(-1, width)
    return episodes


def replay_trace(path: Union[str, os.PathLike], env) -> list[dict]:
    """Replay a control-loop trace through the Gymnasium ``env``: each episode starts from the logged
    qpos/qvel and takes the logged actions. Per episode it reports the largest observation
    difference relative to max(1, |obs|) between what the loop's policy saw and what the env
    observes, the env's return for the loop's actions up to its first termination
    (``replay_return``), the step the env
    terminated at, and whether the loop ended the episode at that same step
    (``termination_agrees``; None for traces that do not log it)."""
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
        act_dim = int(np.prod(env.action_space.shape))
        # Sizes compared exactly: numpy would broadcast a 1-wide observation against the env's.
        if ep["obs"].shape[1] != np.size(obs) or ep["action"].shape[1] != act_dim:
            raise ValueError(f"the trace logs observations of {ep['obs'].shape[1]} and actions of "
                             f"{ep['action'].shape[1]} values; this env observes {np.size(obs)} and acts with "
                             f"{act_dim} (a trace of another policy?)")
        worst, ret, ended = 0.0, 0.0, None
        for t, (seen, action) in enumerate(zip(ep["obs"], ep["action"])):
            worst = max(worst, float(np.max(observation_error(seen, obs), initial=0.0)))
            obs, reward, terminated, truncated, _ = u.step(action)
            if ended is None:
                ret += float(reward)
                if terminated:
                    ended = t + 1
        steps = len(ep["action"])
        agrees = None if ep["failed"] is None else (ended == steps if ep["failed"] >= 0 else ended is None)
        out.append({"steps": steps, "max_obs_diff": worst, "replay_return": ret, "terminated_at": ended,
                    "termination_agrees": agrees})
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
    fast = run_policy(out / "policy.pt", initial_states=states, replay=args.env, realtime=False, quiet=True)
    live = run_policy(out / "policy.pt", initial_states=states[:1], realtime=True, max_steps=args.realtime_steps)
    print("[4/4] results\n")
    print(f"return, Python evaluation : {np.round(python.returns, 3).tolist()} (mean {python.returns.mean():.3f})")
    print(f"return, C++ control loop  : {np.round(fast['returns'], 3).tolist()} (mean {fast['mean_return']:.3f}); "
          f"max |difference| {np.max(np.abs(np.array(fast['returns']) - python.returns)):.2g}")
    print(f"  (the loop's actions replayed through {args.env} from the same initial states; largest observation "
          f"difference {fast['max_obs_diff']:.2g})\n")
    print(live["stdout"].split("\n\n", 1)[-1].rstrip())
    return 0
