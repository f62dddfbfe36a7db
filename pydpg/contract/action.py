"""The action contract: how a policy's output in [-1, 1] becomes the robot's actuator commands.

A spec is data (JSON-able, versioned) and travels with the policy (metadata ``"action"``), as the
observation contract does. One entry per policy output, in order, each naming its actuator::

    {"version": 1,
     "actuators": [
        {"actuator": "thigh_joint", "scale": 0.5, "pd": {"joint": "thigh_joint", "kp": 20, "kd": 0.5}},
        {"actuator": "leg_joint"},                       # ctrl: the actuator's ctrlrange, as today
        ...],
     "max_delta": 0.25,                                  # at most this change of a per control step
     "safe_action": "default"}                           # or "hold", "zero"

- ``command = offset + scale * a``. Without ``pd`` it is the actuator's ctrl, and ``scale``/``offset``
  default to the actuator's ctrlrange (its half-width and middle: Gymnasium's own action mapping).
- With ``pd`` it is a position target for the joint: ``offset`` defaults to the joint's ``qpos0``
  (the model's default pose), ``scale`` is required, and at every physics step
  ``ctrl = clip(kp (target - q) - kd qdot, +-torque_limit)`` drives a torque actuator (rl_sar's
  ``rl_kp``/``rl_kd``/``torque_limits``; IsaacLab's joint-position action with a PD actuator). The
  policy runs at the control rate (frame_skip physics steps per action), the PD at the physics rate.
- ``a`` is clipped to [-1, 1] and, with ``max_delta``, rate limited; ctrl is clipped to the
  actuator's ctrlrange where the model limits it. The safe action (``default``: a = 0, the default
  pose or the middle of ctrlrange; ``hold``: the last action; ``zero``: ctrl 0, no PD) replaces a
  non-finite action, and is what a stale input or a stop sends. Unlisted actuators get ctrl 0.

The evaluator is C++ (csrc/deploy/action.cpp, ``pydpg::ActionMap``): training runs it through
``ActionContract`` (a Gymnasium wrapper), and the C++ control loop and users' C++ loops link it, so
the robot gets exactly the commands training produced.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

import gymnasium as gym
import numpy as np

from pydpg import _core
from pydpg.common.envs import find_wrapper
from pydpg.contract.observation import _BoundToModel, _checked_numbers, _require_mujoco

SPEC_VERSION = 1
ActionError = getattr(_core, "ActionError", ValueError)  # a ValueError naming the bad entry

# Every key of a spec, where it stands, its default and what it means: docs/config.md's [action]
# section is generated from this, and tests/test_action.py checks it against the C++ reader's keys.
KEYS = (
    ("version", "", "required", "1 (a newer version is refused: upgrade pydpg)"),
    ("actuators", "", "required", "one entry per policy output, in the output's order"),
    ("max_delta", "", "none", "the largest change of an output per control step (> 0; rate limit)"),
    ("safe_action", "", '"default"', '"default" (a = 0), "hold" (the last action) or "zero" (ctrl 0, no PD)'),
    ("actuator", "actuators[]", "-", "the actuator's name (this or `joint`)"),
    ("joint", "actuators[]", "-", "the joint the actuator drives (for unnamed actuators, as Gymnasium's)"),
    ("scale", "actuators[]", "ctrlrange half-width", "command = offset + scale * a; required with `pd`; not 0"),
    ("offset", "actuators[]", "ctrlrange middle", "with `pd`: the joint's qpos0 (the default pose)"),
    ("pd", "actuators[]", "none", "a table: the command is a position target, a PD law drives ctrl"),
    ("joint", "actuators[].pd", "the actuator's joint", "a hinge or slide joint whose position is targeted"),
    ("kp", "actuators[].pd", "required", "position gain (> 0)"),
    ("kd", "actuators[].pd", "0", "velocity gain (>= 0)"),
    ("torque_limit", "actuators[].pd", "none", "|ctrl| <= torque_limit (> 0); ctrlrange clips as well"),
)


def as_action_spec(spec: Union[dict, str]) -> dict:
    """The spec as a plain dict (from a dict, or its JSON text), refused where the C++ reader would
    refuse it before any model is seen: no ``version``, NaN or an infinity anywhere, a NUL in a name.
    What needs the model (names, ctrlrange) is checked when it is bound (``ActionMap``)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"the action spec is not JSON: {e}") from None
    if not isinstance(spec, dict):
        raise TypeError(f"an action spec is a dict {{'version', 'actuators', ...}}, got {type(spec).__name__}")
    if "version" not in spec:
        raise ValueError(
            f"the action spec has no 'version' (this pydpg reads version {SPEC_VERSION}: add "
            f"version = {SPEC_VERSION}); the C++ loop would refuse it"
        )
    out = _checked_numbers(dict(spec), "action spec")  # no key of an action spec may be infinite
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"an action spec must be plain JSON-able data: {e}") from None
    return out


class ActionMap(_BoundToModel):
    """A spec bound to one ``mujoco.MjModel`` (``pydpg::ActionMap``): ``command(a)`` at the control
    rate, ``apply(data)`` at every physics step. Raises ``ActionError`` (a ValueError) naming the
    entry for a spec the model cannot satisfy."""

    def __init__(self, spec: Union[dict, str], model: Any):
        super().__init__(_core.ActionMap, spec, model, canonical=as_action_spec)
        self.actuators = np.array([e["actuator"] for e in self._core.entries], dtype=np.int64)

    size = property(lambda self: self._core.size, doc="the policy's action size")
    has_pd = property(lambda self: self._core.has_pd)
    entries = property(lambda self: self._core.entries, doc="each output's actuator, scale, offset and PD")
    counters = property(lambda self: self._core.counters, doc="commands, clips, rate limits, safe actions")
    last_action = property(lambda self: self._core.last_action, doc="the action after clip and rate limit")
    commands = property(lambda self: self._core.commands, doc="ctrl values, or PD position targets")

    def reset(self) -> None:
        self._core.reset()

    def command(self, action) -> bool:
        """False when the safe action went out instead (a non-finite action)."""
        return bool(self._core.command(np.asarray(action, dtype=np.float64)))

    def command_safe(self) -> None:
        self._core.command_safe()

    def apply(self, data: Any) -> None:
        self._core.apply(self._data_address(data))

    def step(self, data: Any, physics_steps: int) -> None:
        """``physics_steps`` times (apply, mj_step), then mj_rnePostConstraint: one control step's
        physics, in C++, as pydpg_control_loop runs it."""
        self._core.step(self._data_address(data), int(physics_steps))

    def state(self) -> dict[str, Any]:
        return {"last_action": np.array(self._core.last_action), "sending_zero": bool(self._core.sending_zero)}

    def load_state(self, s: dict[str, Any]) -> None:
        self._core.restore(np.asarray(s["last_action"], dtype=np.float64), bool(s["sending_zero"]))


class ActionContract(gym.Wrapper):
    """A Gymnasium MuJoCo env driven through an action spec: its action space is [-1, 1]^n, and
    every physics step writes ctrl with the C++ ``ActionMap`` (the PD law, when the spec has one),
    exactly as the control loop does. The inner env's ``step`` (and so its reward) sees the
    commands: ctrl values, or the PD position targets."""

    def __init__(self, env: gym.Env, spec: Union[dict, str]):
        super().__init__(env)
        base = env.unwrapped
        if not all(hasattr(base, k) for k in ("model", "data", "_step_mujoco_simulation", "frame_skip")):
            raise ValueError(
                f"the action contract needs a Gymnasium MuJoCo env (MujocoEnv); {type(base).__name__} is not one"
            )
        self.map = ActionMap(spec, base.model)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.map.size,), np.float32)
        self._ctrl = np.zeros(base.model.nu)
        step, data = self.map.step, base.data

        def simulate(ctrl, n_frames):  # MujocoEnv's own step, with the map at every physics step (C++)
            step(data, n_frames)

        base._step_mujoco_simulation = simulate  # an instance attribute: this env only

    @property
    def spec(self):
        """The inner env's spec: ``gym.make(env.spec)`` makes a plain copy, and whoever needs the
        contract wraps it (pydpg.common.envs's ``wrapper``), so that no copy is wrapped twice."""
        return self.env.spec

    def reset(self, **kwargs):
        self.map.reset()
        return self.env.reset(**kwargs)

    def step(self, action):
        return self.env.step(self.commands_for(action))

    def commands_for(self, action) -> np.ndarray:
        """The control-rate half of a step: the map takes ``action``, and the inner env's ``step``
        takes what this returns (every actuator's command; the physics-rate half runs inside it)."""
        self.map.command(action)
        self._ctrl[:] = 0.0
        self._ctrl[self.map.actuators] = self.map.commands
        return self._ctrl.copy()

    # The map's memory (max_delta, "hold") is part of the env's state: checkpoints keep it
    # (pydpg.common.envs.get_env_state asks every wrapper that has these).
    def wrapper_state(self) -> dict[str, Any]:
        return self.map.state()

    def load_wrapper_state(self, s: dict[str, Any]) -> None:
        self.map.load_state(s)


def find_contract(env: gym.Env) -> Optional[ActionContract]:
    """The ActionContract among ``env``'s wrappers, or None."""
    return find_wrapper(env, ActionContract)


class ActionMismatch(ValueError):
    """The loop's action map, on the loop's model, does not reproduce what the env's did."""


def verify_action(env: gym.Env, model_xml: Optional[str] = None, steps: int = 200, seed: int = 0) -> dict:
    """Check that the control loop's side of the action contract reproduces the env's.

    ``env`` is driven through its ``ActionContract`` with random actions, a fifth of them beyond
    [-1, 1] and one non-finite (so the clip and the safe action are exercised too). Beside it, the
    loop's side: a second ``ActionMap`` of the same spec bound to the model the loop loads (from
    ``model_xml``, else the env's), with its own MjData started from each episode's initial state and
    stepped ``frame_skip`` physics steps per action with ``apply`` before each (``ActionMap.step``),
    as pydpg_control_loop does. ctrl, qpos and qvel must be equal after every step: it is the same code
    on the same model, so any difference is a wrong binding (another model, another name's actuator),
    never rounding. Returns what it saw: steps, episodes and the env map's counters."""
    contract = find_contract(env)
    if contract is None:
        raise ValueError("verify_action needs an env wrapped in ActionContract")
    mujoco = _require_mujoco()
    u = env.unwrapped
    model = u.model
    if model_xml is not None:
        try:
            model = mujoco.MjModel.from_xml_string(model_xml)
        except Exception:  # noqa: BLE001 - a model with assets beside it: the env's own compiled copy
            model = u.model
    loop_map = ActionMap(contract.map.spec, model)
    data = mujoco.MjData(model)
    kind = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, kind))
    rng = np.random.default_rng(seed)
    n, episodes = loop_map.size, 0

    def start(ep_seed: int) -> None:
        env.reset(seed=ep_seed)
        loop_map.reset()
        mujoco.mj_getState(u.model, u.data, state, kind)
        mujoco.mj_setState(model, data, state, kind)
        mujoco.mj_forward(model, data)

    start(seed)
    for t in range(steps):
        a = rng.uniform(-1.0, 1.0, n) * (1.5 if t % 5 == 4 else 1.0)
        if t == steps // 2:
            a[0] = np.nan
        _, _, terminated, truncated, _ = env.step(a)
        loop_map.command(a)
        loop_map.step(data, u.frame_skip)  # what pydpg_control_loop runs
        for name in ("ctrl", "qpos", "qvel"):
            got, want = getattr(data, name), getattr(u.data, name)
            if not np.array_equal(got, want):
                i = int(np.argmax(np.abs(got - want)))
                raise ActionMismatch(
                    f"step {t}: the loop's action map gives {name}[{i}] = {got[i]!r}, the env's {want[i]!r} "
                    "(is the policy's model the env's, and does each entry name the actuator it means?)"
                )
        if terminated or truncated:
            episodes += 1
            start(seed + episodes)
    return {"steps": int(steps), "episodes": episodes + 1, "counters": dict(contract.map.counters)}
