"""``pydpg run POLICY``: a policy file in the C++ control loop, its actions replayed through the
env, and the same file acting in Python beside it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Optional, Sequence, Union

from pydpg.cli.errors import CLIError, guarded
from pydpg.common.envs import evaluate, initial_states
from pydpg.contract.randomization import as_randomization_spec
from pydpg.deploy.export import read_spec_file
from pydpg.deploy.loop import ControlLoopError, _env_for, control_loop_args, control_loop_path, run_policy
from pydpg.deploy.policy_file import read_metadata
from pydpg.deploy.runtime import Policy


def _policy_metadata(policy: Union[str, os.PathLike]) -> dict:
    try:
        return read_metadata(policy)
    except Exception:  # noqa: BLE001 - the loop itself reports what is wrong with the file
        return {}


def _randomization(args: argparse.Namespace) -> Optional[dict]:
    """--randomization's spec: the policy's own ('policy'), or a file's; None without the option."""
    if args.randomization is None:
        if args.randomization_seed is not None:
            raise CLIError("--randomization-seed needs --randomization")
        return None
    if args.randomization_seed is not None and not 0 <= args.randomization_seed < 2**64:
        raise CLIError(f"--randomization-seed must be in [0, 2^64), got {args.randomization_seed}")
    if args.randomization == "policy":
        spec = _policy_metadata(args.policy).get("randomization")
        if spec is None:
            raise CLIError(f"--randomization policy: {args.policy} was trained without randomization")
        return as_randomization_spec(spec)
    try:
        return read_spec_file(args.randomization, "randomization")
    except ValueError as e:
        raise CLIError(f"--randomization: {e}") from None


def _policy_env_id(policy: Union[str, os.PathLike]) -> Optional[str]:
    return _policy_metadata(policy).get("env_id")


def _env_hint(env_id: str, error: Exception) -> str:
    """What to do when ``env_id`` cannot be made: the module of a ``module:EnvId`` id must be importable
    (its directory on PYTHONPATH); a bare id needs the module that registers it named."""
    module = env_id.split(":", 1)[0] if ":" in env_id else None
    if "PYTHONPATH" in str(error):  # check_env_id's message says it already
        return ""
    if module is not None and isinstance(error, ModuleNotFoundError):
        return (
            f" (the module '{module}' that registers it is not importable from here: run from its directory or "
            f"add that directory to PYTHONPATH, e.g. PYTHONPATH=path/to/dir pydpg run ...)"
        )
    if module is None:
        return " (if a module of yours registers it, pass --env module:EnvId)"
    return ""


def _policy_eval_seed(policy: Union[str, os.PathLike]) -> int:
    """The seed `pydpg eval` uses for the run the policy came from (metadata ``eval_seed``), else 100
    (a seed-0 run's)."""
    seed = _policy_metadata(policy).get("eval_seed")
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 100


def run_main(argv: Optional[Sequence[str]] = None) -> int:
    """``pydpg run POLICY [options]``: run the policy in the C++ control loop; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="pydpg run",
        description="Run an exported policy in the C++ control loop (MuJoCo C API, fixed rate, no Python). "
        "Episodes start from the Gymnasium env's own initial states, and the run is replayed "
        "through the env afterwards for its returns and observation parity.",
    )
    p.add_argument("policy", help="policy file written by `pydpg export`")
    p.add_argument("--model", help="MuJoCo XML to load instead of the model stored in the policy")
    p.add_argument(
        "--env",
        help="Gymnasium env id for initial states and the replay (default: the policy's "
        "env_id; 'module:EnvId' imports the module that registers it)",
    )
    p.add_argument(
        "--no-replay", action="store_true", help="no Gymnasium env: start from the model's qpos0 and report no returns"
    )
    p.add_argument("--hz", type=float, help="control rate (default: the training env's, 1 / (timestep * frame_skip))")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="steps per episode (default: the env's time limit)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the env's first reset, which draws the initial states (default: the policy's "
        "eval_seed, the run's seed + 100, as `pydpg eval` uses; 100 when the file has none)",
    )
    p.add_argument("--no-sleep", action="store_true", help="run as fast as possible instead of at --hz")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the runtime (default 1)")
    p.add_argument(
        "--on-nonfinite",
        choices=("raise", "hold", "safe"),
        default="hold",
        help="NaN/Inf observation or action: stop, hold the last action, or output zeros",
    )
    p.add_argument(
        "--randomization",
        metavar="SPEC",
        help="run under domain randomization (pydpg::DomainRandomization): 'policy' for the spec the policy "
        "was trained under, or a JSON file, or a TOML file with a [randomization] table; the replay and the "
        "Python evaluation run under the same spec and seed",
    )
    p.add_argument(
        "--randomization-seed",
        type=int,
        help="seed of the randomization's draws (default: --seed, so that the loop, the replay and the Python "
        "evaluation draw alike)",
    )
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    return guarded("run", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.policy):
        raise CLIError(f"policy file {args.policy!r} does not exist")
    if args.model is not None and not os.path.isfile(args.model):
        raise CLIError(f"model file {args.model!r} does not exist")
    for name in ("episodes", "max_steps", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.hz is not None and not args.hz > 0:
        raise CLIError(f"--hz must be > 0, got {args.hz}")
    try:
        control_loop_path()
    except FileNotFoundError as e:
        raise CLIError(str(e))
    loop = dict(
        model=args.model,
        hz=args.hz,
        episodes=args.episodes,
        max_steps=args.max_steps,
        realtime=not args.no_sleep,
        threads=args.threads,
        on_nonfinite=args.on_nonfinite,
    )
    randomization = _randomization(args)
    if randomization is not None:
        loop["randomization"] = randomization
    env_id = None if args.no_replay else (args.env or _policy_env_id(args.policy))
    env = None
    if env_id is not None:
        try:
            meta = _policy_metadata(args.policy)
            env = _env_for(env_id, meta.get("action"), meta.get("observation"), randomization)
        except Exception as e:  # noqa: BLE001 - any failure to make the env means: run without it
            hint = _env_hint(env_id, e)
            if args.env:
                raise CLIError(f"cannot make the env {env_id!r}: {e}{hint}")
            print(
                f"pydpg run: note: cannot make the policy's env {env_id!r} ({type(e).__name__}: {e}); episodes start "
                f"from the model's qpos0 and no returns are reported{hint}",
                file=sys.stderr,
            )
    seed = args.seed if args.seed is not None else _policy_eval_seed(args.policy)
    if randomization is not None:
        loop["randomization_seed"] = args.randomization_seed if args.randomization_seed is not None else seed
    if env is None:
        if randomization is None:
            return subprocess.call(control_loop_args(args.policy, json_out=args.json, **loop))
        with tempfile.TemporaryDirectory(prefix="pydpg-run-") as tmp:
            path = os.path.join(tmp, "randomization.json")
            with open(path, "w") as f:
                json.dump(randomization, f)
            return subprocess.call(
                control_loop_args(args.policy, json_out=args.json, **{**loop, "randomization": path})
            )
    try:
        states = initial_states(env, args.episodes, seed)
        try:
            result = run_policy(args.policy, initial_states=states, replay=env, **loop)
        except ControlLoopError as e:
            raise ControlLoopError(f"pydpg_control_loop: {e}") from None
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
    print(
        f"\nreturns from the same initial states (seed {seed}): the loop's actions replayed through {env_id}, and "
        "the same policy file acting in Python (pydpg.Policy in the env):"
    )
    for i, e in enumerate(result["replay"]):
        ended = "" if e["terminated_at"] is None else f", env terminated at step {e['terminated_at']}"
        agree = "" if e["termination_agrees"] else " (the loop ended the episode elsewhere!)"
        print(
            f"episode {i}: loop {e['replay_return']:.3f} over {e['steps']} steps{ended}{agree}; Python "
            f"{python.returns[i]:.3f} over {int(python.lengths[i])} steps; max observation difference "
            f"{e['max_obs_diff']:.2g}"
        )
    print(f"mean return: loop {result['mean_return']:.3f}, Python {float(python.returns.mean()):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
