"""The shipped C++ control loop from Python: where it and the CMake package are, running a policy
file in it (``run_policy``, which ``pydpg run`` and ``pydpg journey`` call), and the loop's traces
read and replayed through the Gymnasium env.

The wheel installs, inside the ``pydpg`` package directory:

    bin/pydpg_control_loop          MuJoCo C API + pydpg::runtime, no Python (csrc/deploy/control_loop.cpp)
    lib/libpydpg_runtime.so         the policy runtime (links libtorch from the torch package)
    include/pydpg/policy_runtime.hpp
    share/cmake/pydpg/pydpgConfig.cmake   find_package(pydpg) -> pydpg::runtime
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

import pydpg
from pydpg.common.envs import check_env_id, find_wrapper
from pydpg.contract.action import find_contract
from pydpg.contract.history import ObservationHistory
from pydpg.contract.observation import observation_error
from pydpg.contract.randomization import DomainRandomization, as_randomization_spec
from pydpg.contract.wrappers import contract_wrapper

CONTROL_LOOP = "pydpg_control_loop"


def _package_dirs() -> list[Path]:
    # Editable installs split the package: sources in the checkout, built files in site-packages.
    return [Path(p) for p in pydpg.__path__]


def _find(relative: str) -> Path:
    for d in _package_dirs():
        candidate = d / relative
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"pydpg/{relative} is not installed (looked in {', '.join(map(str, _package_dirs()))}); "
        "reinstall pydpg with its C++ components (pip install pydpg)"
    )


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
    subprocess.run(
        [
            "cmake",
            "-S",
            os.fspath(source),
            "-B",
            os.fspath(build),
            *gen,
            "-DCMAKE_BUILD_TYPE=Release",
            f"-Dpydpg_DIR={cmake_dir()}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    subprocess.run(["cmake", "--build", os.fspath(build)], check=True, capture_output=True, text=True, timeout=timeout)
    return Path(build)


# ---------------------------------------------------------------------------------------- pydpg run
def control_loop_args(
    policy: Union[str, os.PathLike],
    *,
    model: Optional[str] = None,
    hz: Optional[float] = None,
    episodes: int = 1,
    max_steps: Optional[int] = None,
    realtime: bool = True,
    threads: int = 1,
    on_nonfinite: str = "hold",
    init_states: Optional[str] = None,
    json_out: Optional[str] = None,
    trace: Optional[str] = None,
    quiet: bool = False,
    randomization: Optional[str] = None,
    randomization_seed: int = 0,
) -> list[str]:
    """pydpg_control_loop's command line. ``randomization``: a spec file's path, or "policy" (the
    spec the policy was trained under); ``randomization_seed`` seeds it as an env's reset seed seeds
    the training wrapper."""
    args = [
        control_loop_path(),
        os.fspath(policy),
        "--episodes",
        str(int(episodes)),
        "--threads",
        str(int(threads)),
        "--on-nonfinite",
        on_nonfinite,
    ]
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
    if randomization is not None:
        seed = int(randomization_seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"randomization_seed must be a whole number in [0, 2^64), got {randomization_seed!r}")
        args += ["--randomization", os.fspath(randomization), "--randomization-seed", str(seed)]
    return args


class ControlLoopError(RuntimeError):
    """The control loop exited with an error; the message is its stderr."""


def _env_for(
    env, action: Optional[dict] = None, observation: Optional[dict] = None, randomization: Optional[dict] = None
) -> Any:
    """``env`` itself, or a fresh Gymnasium env for an id (``"module:EnvId"`` imports the module
    that registers it, as ``gymnasium.make`` does) with the policy's contracts (its metadata
    ``"action"`` and ``"observation"``, pydpg.contract.wrappers), and ``randomization`` if given."""
    if not isinstance(env, str):
        return env
    import gymnasium as gym

    check_env_id(env)  # an unknown id, or a module:Name whose module cannot be imported, by name
    wrap = contract_wrapper(action, observation, randomization)
    made = gym.make(env)
    return made if wrap is None else wrap(made)


def run_policy(
    policy: Union[str, os.PathLike],
    *,
    initial_states: Optional[np.ndarray] = None,
    replay=None,
    timeout: Optional[float] = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the C++ control loop and return its JSON report: lengths, terminated (and by which
    condition), latency_us (policy act()), step_us (act + physics), deadline_misses, ...

    ``initial_states``: [episodes, nq + nv] qpos‖qvel to start each episode from (else the model's
    qpos0), which makes a run comparable step for step with a Python evaluation.
    ``replay``: a Gymnasium env (or env id) to replay the run through (``replay_trace``): the report
    then also holds ``returns`` and ``mean_return`` (the env's rewards for the loop's actions, from
    the same states), ``max_obs_diff`` and the per-episode ``replay``. The loop computes no rewards.
    ``randomization`` may also be a spec as a dict; a replay env then needs the same randomization
    (``_env_for(..., randomization=spec)``), which the replay drives with the loop's seed.
    Other keyword arguments are those of ``control_loop_args``.
    """
    with tempfile.TemporaryDirectory(prefix="pydpg-run-") as tmp:
        out = os.path.join(tmp, "result.json")
        if isinstance(kwargs.get("randomization"), dict):
            path = os.path.join(tmp, "randomization.json")
            with open(path, "w") as f:
                json.dump(as_randomization_spec(kwargs["randomization"]), f)
            kwargs["randomization"] = path
        if initial_states is not None:
            states = np.atleast_2d(np.asarray(initial_states, dtype=np.float64))
            path = os.path.join(tmp, "init.txt")
            np.savetxt(path, states, fmt="%.17g")
            kwargs["init_states"] = path
        if replay is not None and kwargs.get("trace") is None:
            kwargs["trace"] = os.path.join(tmp, "trace.csv")
        proc = subprocess.run(
            control_loop_args(policy, json_out=out, **kwargs), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise ControlLoopError(proc.stderr.strip() or f"control loop exited with {proc.returncode}")
        with open(out) as f:
            result = json.load(f)
        if replay is not None:
            env = _env_for(replay)
            try:
                episodes = replay_trace(kwargs["trace"], env, randomization_seed=kwargs.get("randomization_seed", 0))
            finally:
                if env is not replay:
                    env.close()
            result["replay"] = episodes
            result["returns"] = [e["replay_return"] for e in episodes]
            result["mean_return"] = float(np.mean(result["returns"]))
            result["max_obs_diff"] = max((e["max_obs_diff"] for e in episodes), default=0.0)
    result["stdout"] = proc.stdout
    return result


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
                    nq, nv, act_dim, obs_dim = (
                        int(words[words.index(k) + 1]) for k in ("nq", "nv", "act_dim", "obs_dim")
                    )
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
                    raise ValueError(
                        f"{where}: an init line holds {values.size} values, the header says nq + nv = {nq + nv}"
                    )
                if not np.isfinite(values).all():
                    raise ValueError(f"{where}: an initial state holds a NaN or infinite value")
                if version == 2 and episodes and episodes[-1]["failed"] is None:
                    raise ValueError(f"{where}: episode {len(episodes) - 1} has no end line")
                episodes.append(
                    {"qpos": values[:nq], "qvel": values[nq : nq + nv], "obs": [], "action": [], "failed": None}
                )
                continue
            if not episodes:
                raise ValueError(f"{where}: a {kind} line before any init line")
            if kind == "end":
                if (
                    values.size != 2
                    or not np.isfinite(values).all()
                    or (values != np.round(values)).any()
                    or values[0] < 0
                    or values[1] < -1
                    or values[0] > 1e12
                ):
                    raise ValueError(
                        f"{where}: an end line must hold two whole numbers, the steps and the failed "
                        f"condition (-1: none), got {','.join(rest[skip:])!r}"
                    )
                if values[0] != len(episodes[-1]["action"]):
                    raise ValueError(
                        f"{where}: the end line says {int(values[0])} steps, the episode logged "
                        f"{len(episodes[-1]['action'])}"
                    )
                episodes[-1]["failed"] = int(values[1])
                continue
            if len(rest) < skip or values.size != act_dim + obs_dim:
                raise ValueError(
                    f"{where}: a step line holds {values.size} values, the header says act_dim + "
                    f"obs_dim = {act_dim + obs_dim}"
                )
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


def replay_trace(path: Union[str, os.PathLike], env, randomization_seed: int = 0) -> list[dict]:
    """Replay a control-loop trace through the Gymnasium ``env``: each episode starts from the logged
    qpos/qvel and takes the logged actions. Per episode it reports the largest observation
    difference relative to max(1, |obs|) between what the loop's policy saw and what the env
    observes, the env's return for the loop's actions up to its first termination
    (``replay_return``), the step the env
    terminated at, and whether the loop ended the episode at that same step
    (``termination_agrees``; None for traces that do not log it).

    An env with a ``DomainRandomization`` (a trace of ``pydpg_control_loop --randomization``) is
    driven as the loop drives its own: seeded once with ``randomization_seed``, redrawn before each
    episode, the logged actions through its noise, delay and pushes, and its noise on the observation."""

    u = env.unwrapped
    contract = find_contract(env)  # the policy's action spec: the logged actions go through its map
    history = find_wrapper(env, ObservationHistory)  # the policy reads past observations too
    randomized = find_wrapper(env, DomainRandomization)
    if randomized is not None:
        randomized.seed_stream(randomization_seed)

    def observe(obs):
        if randomized is not None:
            obs = randomized.noisy(obs)
        return obs if history is None else history.observe(obs)

    def actuate(action):
        if randomized is not None:
            action = randomized.applied(action)
        return action if contract is None else contract.commands_for(action)

    if not hasattr(u, "set_state") or not hasattr(u, "_get_obs"):
        raise TypeError(f"{type(u).__name__} is not a Gymnasium MuJoCo env: the trace cannot be replayed through it")
    out = []
    for ep in read_trace(path):
        if ep["qpos"].size != u.model.nq or ep["qvel"].size != u.model.nv:
            raise ValueError(
                f"the trace's states have nq {ep['qpos'].size}, nv {ep['qvel'].size}; this env's model has "
                f"nq {u.model.nq}, nv {u.model.nv} (a trace of another robot?)"
            )
        if randomized is not None:
            randomized.redraw()  # before the env's reset, as the loop and the wrapper draw
        u.reset(seed=0)  # the env itself: each wrapper's own start is made here, as the loop makes it
        u.set_state(ep["qpos"], ep["qvel"])
        if contract is not None:
            contract.map.reset()  # as the loop's map starts each episode
        if history is not None:
            history.builder.reset()  # as the loop's observation starts each episode
        obs = observe(u._get_obs())
        act_dim = int(np.prod(env.action_space.shape))
        # Sizes compared exactly: numpy would broadcast a 1-wide observation against the env's.
        if ep["obs"].shape[1] != np.size(obs) or ep["action"].shape[1] != act_dim:
            raise ValueError(
                f"the trace logs observations of {ep['obs'].shape[1]} and actions of "
                f"{ep['action'].shape[1]} values; this env observes {np.size(obs)} and acts with "
                f"{act_dim} (a trace of another policy?)"
            )
        worst, ret, ended = 0.0, 0.0, None
        for t, (seen, action) in enumerate(zip(ep["obs"], ep["action"])):
            worst = max(worst, float(np.max(observation_error(seen, obs), initial=0.0)))
            obs, reward, terminated, truncated, _ = u.step(actuate(action))
            obs = observe(obs)
            if ended is None:
                ret += float(reward)
                if terminated:
                    ended = t + 1
        steps = len(ep["action"])
        agrees = None if ep["failed"] is None else (ended == steps if ep["failed"] >= 0 else ended is None)
        out.append(
            {
                "steps": steps,
                "max_obs_diff": worst,
                "replay_return": ret,
                "terminated_at": ended,
                "termination_agrees": agrees,
            }
        )
    return out
