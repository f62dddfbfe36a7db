"""Environments: construction and checks, the one action-scaling function, the one evaluation loop,
and exact capture/restore of environment state for checkpoints.

The agent always acts in the normalized box [-1, 1]^act_dim (tanh actor, noise and target smoothing
in those units, see ``pydpg.core.networks.Actor``). ``scale_action`` is the only place where such an
action becomes an action in the environment's own units.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import gymnasium as gym
import numpy as np

# The Gymnasium MuJoCo v5 tasks this package ships presets for (pydpg/presets/<id>.toml).
MUJOCO_TASKS = (
    "HalfCheetah-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "Ant-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
    "Swimmer-v5",
    "Reacher-v5",
    "Pusher-v5",
    "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5",
)

EnvLike = Union[str, gym.Env]


# ---------------------------------------------------------------------------------------- checks
def check_env_id(env_id: str) -> None:
    """Raise ValueError for an id Gymnasium does not know, naming the closest registered ids.

    For ``"module:Name-v0"`` the module is imported first, as ``gym.make`` does (that import is what
    registers the id): a module that cannot be imported, and a name it did not register, are
    ValueErrors that say so, not Gymnasium's tracebacks.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"environment id must be a non-empty string, got {env_id!r}")
    if ":" in env_id:
        module, _, name = env_id.partition(":")
        if not module or not name:
            raise ValueError(f"environment id {env_id!r} must be 'module:Name-vN'")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(
                f"cannot import the module {module!r} that should register {name!r} ({e}); it must be "
                "importable from here: run from its directory or add that directory to PYTHONPATH"
            ) from None
        except Exception as e:  # its own code failed while registering
            raise ValueError(f"importing the module {module!r} failed: {type(e).__name__}: {e}") from None
        if name not in gym.registry:
            close = difflib.get_close_matches(name, list(gym.registry.keys()), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"the module {module!r} registers no environment {name!r}{hint}")
        return
    if env_id in gym.registry:
        return
    ids = list(gym.registry.keys())
    close = difflib.get_close_matches(env_id, ids, n=5, cutoff=0.6)
    if not close:  # "hopper" / "Hopper-v9": match the name without its version, case-insensitively
        stem = env_id.split("-v")[0].lower()
        close = [i for i in ids if i.split("-v")[0].lower() == stem][:5]
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; see gymnasium.pprint_registry()"
    raise ValueError(f"unknown environment id {env_id!r}{hint}")


def check_spaces(env: gym.Env | gym.vector.VectorEnv, name: str = "") -> gym.spaces.Box:
    """Return the single-env action Box after checking that DDPG can act in this env.

    DDPG's actor outputs a real vector and the actor's gradient flows through dQ/da, so the action
    space must be a continuous, bounded, flat Box; the observation space must be a flat Box too.
    """
    what = f"environment {name!r}" if name else "this environment"
    act = getattr(env, "single_action_space", env.action_space)
    obs = getattr(env, "single_observation_space", env.observation_space)
    if not isinstance(act, gym.spaces.Box):
        raise ValueError(
            f"{what} has a {type(act).__name__} action space ({act}); DDPG needs a continuous Box action "
            "space: its actor outputs real-valued actions and is trained through dQ/da, which does not "
            "exist for discrete actions. Use a discrete-action method (e.g. DQN) instead."
        )
    if len(act.shape) != 1:
        raise ValueError(f"{what} has a {act.shape}-shaped action Box; pydpg needs a flat (1-D) Box")
    if not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
        raise ValueError(
            f"{what} has an unbounded action Box (low={act.low}, high={act.high}); pydpg maps the actor's "
            "tanh output in [-1, 1] onto finite bounds, so every action dimension needs finite low and high"
        )
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise ValueError(
            f"{what} has observation space {obs}; pydpg needs a flat (1-D) Box "
            "(wrap dict or image observations, e.g. with gymnasium.wrappers.FlattenObservation)"
        )
    return act


# ---------------------------------------------------------------------------------------- making
def _resolve_kwargs(env_kwargs: Optional[dict]) -> dict:
    kwargs = dict(env_kwargs or {})
    xml = kwargs.get("xml_file")
    # Gymnasium resolves a relative xml_file against its own assets folder unless it starts with '.'
    # or '/'; a user naming a model file of theirs means the one relative to the working directory.
    if isinstance(xml, str) and not xml.startswith(("/", ".", "~")) and os.path.isfile(xml):
        kwargs["xml_file"] = os.path.abspath(xml)
    return kwargs


# A wrapper every env of a run gets (pydpg.contract.action's ActionContract for a run's action spec).
EnvWrapper = Optional[Callable[[gym.Env], gym.Env]]


def env_factory(
    env: EnvLike, env_kwargs: Optional[dict] = None, render_mode: Optional[str] = None, wrapper: EnvWrapper = None
) -> Callable[[], gym.Env]:
    """A zero-argument function making a fresh copy of ``env`` (an id, or an instance with a spec),
    wrapped by ``wrapper`` if given.

    ``env_kwargs`` go to ``gym.make`` (e.g. ``{"xml_file": "my_robot.xml"}`` for a custom MJCF model
    of a MuJoCo task).
    """
    kwargs = _resolve_kwargs(env_kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if isinstance(env, str):
        check_env_id(env)
        target = env
    elif isinstance(env, gym.Env):
        if env.spec is None:
            raise ValueError(
                f"cannot make another copy of {env} (it has no spec); pass an environment id "
                "or an env made with gym.make"
            )
        target = env.spec
    else:
        raise TypeError(f"expected an environment id or a gymnasium.Env, got {type(env).__name__}")
    if wrapper is None:
        return lambda: gym.make(target, **kwargs)
    return lambda: wrapper(gym.make(target, **kwargs))


def make_env(
    env: EnvLike, env_kwargs: Optional[dict] = None, render_mode: Optional[str] = None, wrapper: EnvWrapper = None
) -> gym.Env:
    """One checked environment from an id (or a fresh copy of an env instance)."""
    e = env_factory(env, env_kwargs, render_mode, wrapper)()
    check_spaces(e, env if isinstance(env, str) else getattr(e.spec, "id", ""))
    return e


def make_vec_env(
    env: EnvLike, n_envs: int = 1, env_kwargs: Optional[dict] = None, wrapper: EnvWrapper = None
) -> gym.vector.SyncVectorEnv:
    """``n_envs`` copies of ``env`` stepped in this process, with Gymnasium's default next-step autoreset.

    A given env *instance* becomes the first sub-env (more copies are made from its spec). Sub-envs
    live in this process because their exact state is captured for checkpoints (``get_env_state``);
    with one gradient update per env step, stepping is not what limits throughput.
    """
    if isinstance(env, gym.Env):
        first = env if wrapper is None else wrapper(env)
        fns = [lambda: first] + ([env_factory(env, env_kwargs, wrapper=wrapper)] * (n_envs - 1) if n_envs > 1 else [])
        name = getattr(env.spec, "id", "")
    else:
        fns = [env_factory(env, env_kwargs, wrapper=wrapper)] * n_envs
        name = env
    vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    try:
        check_spaces(vec, name)
    except ValueError:
        vec.close()
        raise
    return vec


# ---------------------------------------------------------------------------------------- actions
def scale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action in [-1, 1] to the Box [low, high]: ``low + (a + 1) / 2 * (high - low)``.

    The one place where the agent's units become the environment's. Clipped first, so a policy
    without a squashing output (a custom actor) still gives legal actions.
    """
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    return (low + (a + 1.0) * 0.5 * (high - low)).astype(np.asarray(low).dtype, copy=False)


def unscale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Inverse of ``scale_action`` (environment units to [-1, 1])."""
    return (2.0 * (np.asarray(action, dtype=np.float64) - low) / (high - low) - 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    frames: list = field(default_factory=list, repr=False)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def __str__(self) -> str:
        return (
            f"{self.mean:.2f} +/- {self.std:.2f} over {len(self.returns)} episodes "
            f"(mean length {np.mean(self.lengths):.0f})"
        )


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    env: gym.Env,
    episodes: int,
    seed: Optional[int] = None,
    record: bool = False,
) -> EvalResult:
    """Run ``episodes`` episodes of ``policy`` on ``env`` and return their undiscounted returns.

    ``policy`` maps one raw observation to one action in [-1, 1] (no exploration noise: that is the
    caller's choice); ``scale_action`` maps it to the env's Box. ``env.reset(seed=seed)`` starts the
    first episode, so every evaluation with the same seed starts from the same initial states, which
    makes evaluations along a learning curve comparable and needs no eval-env state in checkpoints.
    ``record=True`` collects ``env.render()`` frames (the env needs ``render_mode="rgb_array"``).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    box = check_spaces(env)
    low, high = box.low, box.high
    returns, lengths, frames = [], [], []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        total, n, done = 0.0, 0, False
        if record:
            frames.append(env.render())
        while not done:
            obs, reward, terminated, truncated, _ = env.step(scale_action(policy(obs), low, high))
            total += float(reward)
            n += 1
            done = terminated or truncated
            if record:
                frames.append(env.render())
        returns.append(total)
        lengths.append(n)
        if len(returns) < episodes:
            obs, _ = env.reset()
    return EvalResult(np.asarray(returns), np.asarray(lengths), frames)


def initial_states(env: gym.Env, episodes: int, seed: Optional[int] = None) -> np.ndarray:
    """The qpos‖qvel each episode of ``evaluate(policy, env, episodes, seed)`` starts from, as
    [episodes, nq + nv]: ``evaluate`` resets with the seed once and then without, and MuJoCo envs draw
    their randomness in reset only. The C++ control loop (``--init-states``) takes these to replay an
    evaluation; ``env`` is reset by this call."""
    u = env.unwrapped
    if not hasattr(u, "data") or not hasattr(u.data, "qpos"):
        raise TypeError(f"{env.spec.id if env.spec else type(u).__name__} is not a MuJoCo env: it has no mjData")
    states = []
    for i in range(episodes):
        env.reset(seed=seed) if i == 0 else env.reset()
        states.append(np.concatenate([u.data.qpos, u.data.qvel]))
    return np.array(states)


# ---------------------------------------------------------------------------------------- env state
# A checkpoint taken mid-episode must restore each training env exactly, or a resumed run diverges
# from the uninterrupted one at the first step. Three kinds of state are involved:
#   * the simulator: for MuJoCo envs, every array of mjData. mjSTATE_INTEGRATION alone is what
#     mj_step needs, but Gymnasium envs also read derived quantities *between* steps (Ant calls
#     get_body_com before stepping, Humanoid reads xipos), and after mj_step those still hold the
#     values of the last substep's forward pass, which a fresh mj_forward would not reproduce
#     (restoring only the integration state made Ant-v5 and Humanoid-v5 diverge in our tests).
#     Arrays whose size depends on the current contacts (efc_*) are recomputed by the next mj_step.
#   * the env's np_random (it draws the initial state of every later episode);
#   * wrapper counters: TimeLimit's elapsed steps, so truncation happens at the same step.
# Other envs can take part by defining ``state_dict()`` / ``load_state_dict(state)`` on the
# unwrapped env; envs that do neither are not capturable (``get_env_state`` returns None).


def _mujoco_data(env: gym.Env):
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:  # gymnasium without the mujoco extra
        return None
    base = env.unwrapped
    return base.data if isinstance(base, MujocoEnv) else None


def is_capturable(env: gym.Env) -> bool:
    base = env.unwrapped
    return _mujoco_data(env) is not None or (hasattr(base, "state_dict") and hasattr(base, "load_state_dict"))


def find_wrapper(env: gym.Env, kind: type) -> Optional[gym.Wrapper]:
    """The outermost wrapper of type ``kind`` around ``env``, or None."""
    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, kind):
            return e
        e = e.env
    return None


def get_env_state(env: gym.Env) -> Optional[dict[str, Any]]:
    """Everything needed to continue ``env`` exactly from here, as numpy arrays and plain Python
    values, or None if this env's simulator state cannot be captured (see the comment above)."""
    base = env.unwrapped
    data = _mujoco_data(env)
    if data is not None:
        import mujoco

        sim = {
            name: np.array(getattr(data, name))
            for name in dir(data)
            if not name.startswith("_") and isinstance(getattr(data, name), np.ndarray)
        }
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        full = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, data, full, spec)
        sim = {"kind": "mujoco", "integration": full, "arrays": sim}
    elif hasattr(base, "state_dict") and hasattr(base, "load_state_dict"):
        sim = {"kind": "custom", "state": base.state_dict()}
    else:
        return None
    wrappers, wrapper_states = [], []
    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            wrappers.append(int(e._elapsed_steps or 0))
        if hasattr(e, "wrapper_state"):  # a wrapper with memory of its own (ActionContract's last action)
            wrapper_states.append(e.wrapper_state())
        e = e.env
    rng = base._np_random
    return {
        "sim": sim,
        "time_limits": wrappers,
        "wrapper_states": wrapper_states,
        "np_random": None if rng is None else rng.bit_generator.state,
        "np_random_seed": getattr(base, "_np_random_seed", None),
    }


def set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore a state from ``get_env_state`` into an env of the same kind (already reset once)."""
    base = env.unwrapped
    sim = state["sim"]
    if sim["kind"] == "mujoco":
        import mujoco

        data = _mujoco_data(env)
        if data is None:
            raise ValueError("checkpointed env state is MuJoCo state but this env is not a MuJoCo env")
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        full = np.asarray(sim["integration"], dtype=np.float64)
        if full.size != mujoco.mj_stateSize(base.model, spec):
            raise ValueError("checkpointed MuJoCo state does not fit this model (different xml_file?)")
        mujoco.mj_setState(base.model, data, full, spec)
        for name, value in sim["arrays"].items():
            target = getattr(data, name, None)
            if isinstance(target, np.ndarray) and target.shape == np.shape(value):
                target[...] = value
    else:
        base.load_state_dict(sim["state"])
    limits, own = iter(state["time_limits"]), iter(state.get("wrapper_states", []))  # older checkpoints have none
    e = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            e._elapsed_steps = next(limits)
        if hasattr(e, "load_wrapper_state"):
            s = next(own, None)
            if s is None:
                raise ValueError(f"the checkpointed env state has nothing for its {type(e).__name__} wrapper")
            e.load_wrapper_state(s)
        e = e.env
    if state["np_random"] is not None:
        base.np_random.bit_generator.state = state["np_random"]
        base._np_random_seed = state["np_random_seed"]
