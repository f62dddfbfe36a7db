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
"""

from __future__ import annotations

import collections
import math
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from pydpg.common.names import did_you_mean
from pydpg.contract.observation import _require_mujoco

SPEC_VERSION = 1
MAX_DELAY = 20  # control steps an action may wait; a longer delay is a different task
# field -> (the kind of object its rows belong to, whether its values must stay >= 0)
FIELDS = {
    "body_mass": ("body", True),
    "body_inertia": ("body", True),
    "body_ipos": ("body", False),
    "geom_friction": ("geom", True),
    "dof_damping": ("joint", True),
    "dof_armature": ("joint", True),
    "dof_frictionloss": ("joint", True),
    "jnt_stiffness": ("joint", True),
    "actuator_gainprm": ("actuator", False),
    "actuator_biasprm": ("actuator", False),
    "actuator_gear": ("actuator", False),
}
# Every key, where it stands, its default and meaning: docs/config.md's [randomization] section is
# generated from this, and the reader accepts exactly these keys.
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
_KEYS: dict[str, set] = {}
for _k, _level, _, _ in KEYS:
    _KEYS.setdefault(_level, set()).add(_k)


def _keys(d: Any, level: str, where: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a table (dict), got {type(d).__name__}")
    unknown = [k for k in d if k not in _KEYS[level]]
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], _KEYS[level])} "
            f"(known: {', '.join(sorted(_KEYS[level]))})"
        )
    return d


def _number(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number, got {x!r}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{where} must be finite, got {v}: NaN and infinities are refused, never read as values")
    return v


def _range(x: Any, where: str, low_min: Optional[float] = None, integer: bool = False) -> tuple[float, float]:
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        raise ValueError(f"{where} must be [low, high], got {x!r}")
    lo, hi = _number(x[0], f"{where}[0]"), _number(x[1], f"{where}[1]")
    if lo > hi:
        raise ValueError(f"{where}: low {lo} > high {hi}")
    if low_min is not None and lo < low_min:
        raise ValueError(f"{where}: low {lo} is below {low_min}")
    if integer and (lo != int(lo) or hi != int(hi)):
        raise ValueError(f"{where} must be whole numbers, got {x!r}")
    return lo, hi


def as_randomization_spec(spec: Any) -> dict:
    """The spec as a plain dict, checked where it stands (keys, numbers, ranges); what needs the
    model (fields' names, resulting values) is checked when an env is wrapped."""
    spec = _keys(spec, "", "randomization spec")
    if "version" not in spec:
        raise ValueError(f"the randomization spec has no 'version' (this pydpg reads version {SPEC_VERSION})")
    if isinstance(spec["version"], bool) or spec["version"] != SPEC_VERSION:
        raise ValueError(f"randomization spec version {spec['version']!r}; this pydpg reads version {SPEC_VERSION}")
    out: dict[str, Any] = {"version": SPEC_VERSION}
    model = spec.get("model", [])
    if not isinstance(model, (list, tuple)):
        raise ValueError("randomization spec model must be a list of entries ([[randomization.model]])")
    out["model"] = []
    for i, e in enumerate(model):
        where = f"randomization spec model[{i}]"
        e = _keys(e, "model[]", where)
        field = e.get("field")
        if field not in FIELDS:
            raise ValueError(
                f"{where}: unknown field {field!r}{did_you_mean(str(field), FIELDS)} (known: {', '.join(FIELDS)})"
            )
        if ("scale" in e) == ("offset" in e):
            raise ValueError(f"{where}: give 'scale' or 'offset' (one of the two)")
        kind = "scale" if "scale" in e else "offset"
        lo, hi = _range(e[kind], f"{where}.{kind}", low_min=0.0 if kind == "scale" else None)
        names = e.get("names")
        if isinstance(names, str):
            names = [names]
        if names is not None and (
            not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError(f"{where}.names must be a name or a non-empty list of names")
        if names is not None and any("\0" in n or not n for n in names):
            raise ValueError(f"{where}.names: an empty name or one holding a NUL character is refused")
        indices = e.get("indices")
        if indices is not None:
            if names is not None:
                raise ValueError(f"{where}: give 'names' or 'indices', not both")
            if (
                not isinstance(indices, (list, tuple))
                or not indices
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)
            ):
                raise ValueError(f"{where}.indices must be a non-empty list of whole numbers >= 0")
        shared = e.get("shared", False)
        if not isinstance(shared, bool):
            raise ValueError(f"{where}.shared must be true or false")
        entry = {"field": field, kind: [lo, hi], "shared": shared}
        if names is not None:
            entry["names"] = list(names)
        if indices is not None:
            entry["indices"] = [int(i) for i in indices]
        out["model"].append(entry)
    if "observation" in spec:
        o = _keys(spec["observation"], "observation", "randomization spec observation")
        noise = o.get("noise", 0.0)
        where = "randomization spec observation.noise"
        if isinstance(noise, (list, tuple)):
            noise = [_number(v, f"{where}[{j}]") for j, v in enumerate(noise)]
            if any(v < 0 for v in noise):
                raise ValueError(f"{where}: a negative std")
        else:
            noise = _number(noise, where)
            if noise < 0:
                raise ValueError(f"{where} must be >= 0, got {noise}")
        out["observation"] = {"noise": noise}
    if "action" in spec:
        a = _keys(spec["action"], "action", "randomization spec action")
        noise = _number(a.get("noise", 0.0), "randomization spec action.noise")
        if noise < 0:
            raise ValueError(f"randomization spec action.noise must be >= 0, got {noise}")
        delay = _range(a.get("delay", [0, 0]), "randomization spec action.delay", low_min=0.0, integer=True)
        if delay[1] > MAX_DELAY:
            raise ValueError(
                f"randomization spec action.delay: {int(delay[1])} control steps is past the most, {MAX_DELAY}"
            )
        out["action"] = {"noise": noise, "delay": [int(delay[0]), int(delay[1])]}
    push = spec.get("push", [])
    if not isinstance(push, (list, tuple)):
        raise ValueError("randomization spec push must be a list of entries ([[randomization.push]])")
    out["push"] = []
    for i, p in enumerate(push):
        where = f"randomization spec push[{i}]"
        p = _keys(p, "push[]", where)
        body = p.get("body")
        if not isinstance(body, str) or not body or "\0" in body:
            raise ValueError(f"{where}.body must be a body's name")
        interval = _range(p.get("interval"), f"{where}.interval", low_min=1.0, integer=True)
        force = _range(p.get("force"), f"{where}.force", low_min=0.0)
        duration = p.get("duration", 1)
        if isinstance(duration, bool) or not isinstance(duration, int) or duration < 1:
            raise ValueError(f"{where}.duration must be a whole number of control steps >= 1")
        out["push"].append(
            {"body": body, "interval": [int(interval[0]), int(interval[1])], "force": list(force), "duration": duration}
        )
    return out


# ---------------------------------------------------------------------------------------- binding to a model
_OBJ = {"body": "nbody", "geom": "ngeom", "joint": "njnt", "actuator": "nu"}


def _rows(model, field: str, names: Optional[list], where: str, indices: Optional[list] = None) -> list[np.ndarray]:
    """Per selected object, the rows of ``field`` it owns (a joint owns its dofs)."""
    mujoco = _require_mujoco()

    kind = FIELDS[field][0]
    obj = {
        "body": mujoco.mjtObj.mjOBJ_BODY,
        "geom": mujoco.mjtObj.mjOBJ_GEOM,
        "joint": mujoco.mjtObj.mjOBJ_JOINT,
        "actuator": mujoco.mjtObj.mjOBJ_ACTUATOR,
    }[kind]
    count = getattr(model, _OBJ[kind])
    if indices is not None:
        bad = [i for i in indices if i >= count]
        if bad:
            raise ValueError(f"{where}: index {bad[0]} is past the model's {count} {kind} objects")
        ids = list(indices)
    elif names is None:
        ids = list(range(1 if kind == "body" else 0, count))  # the world body has no mass to vary
    else:
        ids = []
        for n in names:
            i = mujoco.mj_name2id(model, obj, n)
            if i < 0:
                known = [mujoco.mj_id2name(model, obj, j) for j in range(count)]
                known = [k for k in known if k]
                raise ValueError(f"{where}: the model has no {kind} named {n!r}{did_you_mean(n, known)}")
            ids.append(i)
    if not field.startswith("dof_"):
        return [np.array([i]) for i in ids]
    sizes = {mujoco.mjtJoint.mjJNT_FREE: 6, mujoco.mjtJoint.mjJNT_BALL: 3}
    return [model.jnt_dofadr[i] + np.arange(sizes.get(model.jnt_type[i], 1)) for i in ids]


def _index(rows: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


class DomainRandomization(gym.Wrapper):
    """A Gymnasium MuJoCo env under a randomization spec (see the module docstring)."""

    def __init__(self, env: gym.Env, spec: dict):
        super().__init__(env)
        self.randomization = as_randomization_spec(spec)
        base = env.unwrapped
        if not all(hasattr(base, k) for k in ("model", "data")):
            raise ValueError(f"domain randomization needs a Gymnasium MuJoCo env; {type(base).__name__} is not one")
        self._model, self._data = base.model, base.data
        self._entries = []
        for i, e in enumerate(self.randomization["model"]):
            where = f"randomization spec model[{i}] ({e['field']})"
            rows = _rows(self._model, e["field"], e.get("names"), where, e.get("indices"))
            array = getattr(self._model, e["field"])
            nominal = np.array(array, copy=True)
            kind = "scale" if "scale" in e else "offset"
            lo, hi = e[kind]
            if FIELDS[e["field"]][1]:  # the range's ends must keep every value >= 0
                for r in rows:
                    for end in (lo, hi):
                        v = nominal[r] * end if kind == "scale" else nominal[r] + end
                        if np.any(v < 0):
                            raise ValueError(f"{where}: {kind} {end} makes a value negative ({float(np.min(v))})")
            self._entries.append((e, array, nominal, rows, kind))
        obs_noise = self.randomization.get("observation", {}).get("noise", 0.0)
        obs_dim = int(np.prod(env.observation_space.shape))
        if isinstance(obs_noise, list) and len(obs_noise) != obs_dim:
            raise ValueError(
                f"randomization spec observation.noise lists {len(obs_noise)} stds, observations have {obs_dim}"
            )
        self._obs_noise = np.asarray(obs_noise, dtype=np.float64)
        act = self.randomization.get("action", {"noise": 0.0, "delay": [0, 0]})
        self._act_noise, self._delay_range = act["noise"], act["delay"]
        box = env.action_space
        self._low, self._high = box.low.astype(np.float64), box.high.astype(np.float64)
        self._pushes = []
        mujoco = _require_mujoco()
        for i, p in enumerate(self.randomization["push"]):
            body = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_BODY, p["body"])
            if body < 0:
                raise ValueError(f"randomization spec push[{i}]: the model has no body named {p['body']!r}")
            self._pushes.append((p, body))
        self._rng: Optional[np.random.Generator] = None
        self._queue: collections.deque = collections.deque()  # the actions still to be applied, oldest first
        self._t = 0
        self._next_push = [0] * len(self._pushes)
        self._push_until = [0] * len(self._pushes)
        self._force = np.zeros((len(self._pushes), 3))

    # ------------------------------------------------------------------ episodes
    def restore_nominal(self) -> None:
        for _, array, nominal, _, _ in self._entries:
            array[...] = nominal

    def _draw(self) -> None:
        rng = self._rng
        self.restore_nominal()
        for e, array, nominal, rows, kind in self._entries:
            lo, hi = e[kind]
            shared = rng.uniform(lo, hi)
            for r in rows:
                d = shared if e["shared"] else rng.uniform(lo, hi)
                array[r] = nominal[r] * d if kind == "scale" else nominal[r] + d
        delay = int(rng.integers(self._delay_range[0], self._delay_range[1] + 1))
        self._queue = collections.deque([(self._low + self._high) / 2] * delay)
        self._t = 0
        self._next_push = [int(rng.integers(p["interval"][0], p["interval"][1] + 1)) for p, _ in self._pushes]
        self._push_until = [0] * len(self._pushes)

    def reset(self, *, seed=None, options=None):
        if seed is not None or self._rng is None:
            # The env's own seed (each vector env's, each worker's) seeds its randomization too.
            self._rng = np.random.default_rng(np.random.SeedSequence([0 if seed is None else int(seed), 0x44A]))
        self._draw()
        obs, info = self.env.reset(seed=seed, options=options)
        return self._noisy(obs), info

    def _noisy(self, obs):
        if not np.any(self._obs_noise):
            return obs
        return (obs + self._rng.normal(0.0, 1.0, np.shape(obs)) * self._obs_noise).astype(obs.dtype, copy=False)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if self._act_noise:
            half = (self._high - self._low) / 2
            a = np.clip(a + self._rng.normal(0.0, 1.0, a.shape) * self._act_noise * half, self._low, self._high)
        if self._queue:
            self._queue.append(a)
            a = self._queue.popleft()
        self._t += 1
        xfrc = self._data.xfrc_applied
        for i, (p, body) in enumerate(self._pushes):
            if self._t == self._next_push[i]:
                magnitude, angle = self._rng.uniform(*p["force"]), self._rng.uniform(-np.pi, np.pi)
                self._force[i] = magnitude * np.cos(angle), magnitude * np.sin(angle), 0.0
                self._push_until[i] = self._t + p["duration"]
                self._next_push[i] = self._t + int(self._rng.integers(p["interval"][0], p["interval"][1] + 1))
            xfrc[body, :3] = self._force[i] if self._t < self._push_until[i] else 0.0
        obs, reward, terminated, truncated, info = self.env.step(a.astype(np.asarray(action).dtype, copy=False))
        return self._noisy(obs), reward, terminated, truncated, info

    def close(self):
        self.restore_nominal()
        super().close()

    @property
    def spec(self):
        """The inner env's spec: copies made from it are plain (as ActionContract's), and whoever
        needs the randomization wraps them."""
        return self.env.spec

    # ------------------------------------------------------------------ checkpoints
    def wrapper_state(self) -> dict[str, Any]:
        return {
            "rng": None if self._rng is None else self._rng.bit_generator.state,
            "values": [np.array(array[_index(rows)]) for _, array, _, rows, _ in self._entries],
            "queue": [np.array(q) for q in self._queue],
            "t": self._t,
            "next_push": list(self._next_push),
            "push_until": list(self._push_until),
            "force": self._force.copy(),
        }

    def load_wrapper_state(self, s: dict[str, Any]) -> None:
        if s["rng"] is not None:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = s["rng"]
        for (_, array, _, rows, _), values in zip(self._entries, s["values"], strict=True):
            array[_index(rows)] = values
        self._queue, self._t = collections.deque(np.array(q) for q in s["queue"]), int(s["t"])
        self._next_push, self._push_until = list(s["next_push"]), list(s["push_until"])
        self._force = np.array(s["force"])
