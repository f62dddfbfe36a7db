"""Domain randomization as data: what training varies so that a policy survives the real robot.

A spec (JSON-able, versioned) is stored with the run (``TrainConfig.randomization``, a config file's
``[randomization]`` table) and in the exported policy's metadata (what it was trained under)::

    {"version": 1,
     "model": [                                            # redrawn at every episode's reset
        {"field": "body_mass", "scale": [0.7, 1.3]},       # every body, one draw each
        {"field": "geom_friction", "names": ["foot_geom"], "scale": [0.5, 1.5]},
        {"field": "dof_damping", "offset": [0.0, 0.5], "shared": true}],   # one draw for all dofs
     "observation": {"noise": 0.01},                       # N(0, std) on every entry, every step
     "action": {"noise": 0.05, "delay": [0, 2]},           # std in half-ranges; delay in control steps
     "push": [{"body": "torso", "interval": [100, 300], "force": [0, 50], "duration": 1}]}

- ``model``: a MuJoCo model array (``FIELDS``: masses, inertias, friction, damping, armature, joint
  friction and stiffness, actuator gains, biases and gears, centres of mass) times ``scale`` or plus
  ``offset``, drawn uniformly per object (or once for all, ``shared``) from [low, high], for the
  objects ``names`` lists (bodies, geoms, joints or actuators, by the field's kind), or ``indices``
  (their MuJoCo ids), or every one. The
  nominal model is put back before each draw, exactly (saved copies), and when the env closes.
- ``observation.noise``: Gaussian noise added to the observation the policy sees (a number, or one
  std per entry).
- ``action.noise``: Gaussian noise on the action, as a fraction of each dimension's half-range, then
  clipped to the action space. ``action.delay``: the env applies the action of d control steps ago,
  d drawn per episode from [low, high] (whole steps, at most ``MAX_DELAY``); the first d steps apply
  the middle of the action space.
- ``push``: a force of a magnitude drawn from ``force`` (N), in a random horizontal direction, on the
  body's centre of mass for ``duration`` control steps, every ``interval`` steps (drawn per push).

The randomness comes from the env's first ``reset(seed)`` (the run's seed, each vector env's and
Ray worker's own), so a run stays a function of its seed, and ``wrapper_state`` puts it back on
resume. Training envs are randomized; evaluation envs are not (an evaluation measures the nominal
robot). Anything out of range (a negative mass or friction, a delay past ``MAX_DELAY``), non-finite,
unknown (a field, a name, a key) or of another version is refused by name.

The reader and the randomization itself are C++ (``pydpg::DomainRandomization``,
csrc/deploy/randomization.cpp, in the installed ``pydpg::mujoco`` library): this wrapper, the C++
control loop (``pydpg_control_loop --randomization``) and a robot team's own C++ tests run the same
code, with the same random stream for the same seed.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np

from pydpg import _core
from pydpg.contract.observation import _require_mujoco

SPEC_VERSION = 1
MAX_DELAY = int(getattr(_core, "RANDOMIZATION_MAX_DELAY", 20))  # control steps an action may wait
RandomizationError = getattr(_core, "RandomizationError", ValueError)  # a ValueError naming the entry
# field -> (the kind of object its rows belong to, whether its values must stay >= 0): the C++ reader's.
FIELDS = {name: (kind, nonneg) for name, kind, nonneg in getattr(_core, "randomization_fields", list)()}
# Every key, where it stands, its default and meaning: docs/config.md's [randomization] section is
# generated from this, and a test keeps it equal to the C++ reader's keys.
KEYS = (
    ("version", "", "required", "1"),
    ("model", "", "none", "model fields redrawn at every reset ([[randomization.model]])"),
    ("observation", "", "none", "noise on what the policy sees"),
    ("action", "", "none", "noise and delay on what the policy sends"),
    ("push", "", "none", "random pushes ([[randomization.push]])"),
    ("field", "model[]", "required", "one of: " + ", ".join(FIELDS)),
    ("names", "model[]", "every object", "the bodies, geoms, joints (their dofs) or actuators to vary"),
    ("indices", "model[]", "every object", "the same by MuJoCo index (this or `names`)"),
    ("scale", "model[]", "-", "[low, high] (low >= 0): value = nominal * U(low, high) (this or `offset`)"),
    ("offset", "model[]", "-", "[low, high]: value = nominal + U(low, high)"),
    ("shared", "model[]", "false", "one draw for every selected object (else one each)"),
    ("noise", "observation", "0", "std of Gaussian noise per entry (a number, or one per entry)"),
    ("noise", "action", "0", "std of Gaussian noise, in half-ranges of the action space; then clipped"),
    ("delay", "action", "[0, 0]", f"control steps the env applies the action late, drawn per episode (<= {MAX_DELAY})"),
    ("body", "push[]", "required", "the body pushed (at its centre of mass)"),
    ("interval", "push[]", "required", "[low, high] control steps between pushes (>= 1), drawn per push"),
    ("force", "push[]", "required", "[low, high] N (>= 0), in a random horizontal direction"),
    ("duration", "push[]", "1", "control steps each push lasts"),
)


def _plain(x: Any) -> Any:
    """numpy scalars and arrays as the JSON numbers and lists they hold."""
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON data")


def as_randomization_spec(spec: Any) -> dict:
    """The spec (a dict, or its JSON text) checked where it stands by the C++ reader (keys, numbers,
    ranges), with every default written out; what needs the model (names, indices, the values a range
    makes) is checked when an env is wrapped."""
    _require_mujoco()
    if isinstance(spec, str):
        text = spec
    else:
        if not isinstance(spec, dict):
            raise ValueError(f"randomization spec must be a table (dict), got {type(spec).__name__}")
        try:
            text = json.dumps(spec, default=_plain)
        except (TypeError, ValueError) as e:
            raise ValueError(f"a randomization spec must be plain JSON-able data: {e}") from None
    return json.loads(_core.canonical_randomization_spec(text))


class DomainRandomization(gym.Wrapper):
    """A Gymnasium MuJoCo env under a randomization spec (see the module docstring), applied by the
    C++ ``DomainRandomization`` bound to the env's model."""

    def __init__(self, env: gym.Env, spec: dict):
        super().__init__(env)
        self.randomization = as_randomization_spec(spec)
        base = env.unwrapped
        if not all(hasattr(base, k) for k in ("model", "data")):
            raise ValueError(f"domain randomization needs a Gymnasium MuJoCo env; {type(base).__name__} is not one")
        box = env.action_space
        self._data = base.data
        self._core = _core.DomainRandomization(
            json.dumps(self.randomization),
            base.model,
            int(np.prod(env.observation_space.shape)),
            box.low.astype(np.float64).reshape(-1),
            box.high.astype(np.float64).reshape(-1),
        )
        self._seeded = False

    @property
    def delay(self) -> int:
        """This episode's action delay, in control steps."""
        return self._core.delay

    @property
    def drawn_values(self) -> np.ndarray:
        """Every randomized model row's values now, entry by entry."""
        return np.asarray(self._core.drawn_values)

    def restore_nominal(self) -> None:
        self._core.restore_nominal()

    # The three halves of an episode, as the control loop calls them too (replay_trace drives them).
    def seed_stream(self, seed: int) -> None:
        """Seed the draws: the env's own reset seed (each vector env's, each worker's), or
        pydpg_control_loop's --randomization-seed: the same draws for the same seed."""
        self._core.seed(int(seed) % 2**64)
        self._seeded = True

    def redraw(self) -> None:
        """An episode's start, before the env's reset: the nominal model, then a new draw."""
        self._core.reset()

    def noisy(self, obs) -> np.ndarray:
        """``obs`` with this step's observation noise."""
        flat = np.asarray(obs, dtype=np.float64).reshape(-1)
        return self._core.observe(flat).reshape(np.shape(obs)).astype(np.asarray(obs).dtype, copy=False)

    def applied(self, action) -> np.ndarray:
        """What the env applies this control step for ``action`` (noise, clip, delay); this step's
        pushes are written to the env's xfrc_applied."""
        a = np.asarray(action)
        out = self._core.step(a.astype(np.float64).reshape(-1), self._data._address)
        return out.reshape(a.shape).astype(a.dtype, copy=False)

    def reset(self, *, seed=None, options=None):
        if seed is not None or not self._seeded:
            self.seed_stream(0 if seed is None else seed)
        self.redraw()
        obs, info = self.env.reset(seed=seed, options=options)
        return self.noisy(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.applied(action))
        return self.noisy(obs), reward, terminated, truncated, info

    def close(self):
        self._core.restore_nominal()
        super().close()

    @property
    def spec(self):
        """The inner env's spec: copies made from it are plain (as ActionContract's), and whoever
        needs the randomization wraps them."""
        return self.env.spec

    # ------------------------------------------------------------------ checkpoints
    def wrapper_state(self) -> dict[str, Any]:
        return {"seeded": self._seeded, **self._core.state()}

    def load_wrapper_state(self, s: dict[str, Any]) -> None:
        if "seeded" not in s:
            raise ValueError(
                "this checkpoint's randomization state is of pydpg's earlier Python randomization; "
                "resume it with the pydpg that wrote it"
            )
        self._seeded = bool(s["seeded"])
        self._core.load_state(
            list(s["rng"]),
            list(s["values"]),
            list(s["queue"]),
            int(s["t"]),
            list(s["next_push"]),
            list(s["push_until"]),
            list(s["force"]),
        )
