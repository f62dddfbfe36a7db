"""The observation contract: which mjData values a policy reads, in which order, with which operations.

A spec is data (JSON-able, versioned) and travels with the policy: an ordered list of terms, each
reading one mjData array (``qpos qvel qacc act ctrl qfrc_actuator qfrc_constraint cfrc_ext cinert
cvel xpos xquat site_xpos sensordata``), optionally only the entries of named joints, actuators,
bodies, sites or sensors (resolved by MuJoCo name when bound to a model), then:

    start/stop   a slice of what was selected
    minus        the same selection shape from another field/name, subtracted (fingertip - target)
    scale/offset v * scale + offset
    fn           "sin" or "cos"
    clip         [low, high]

or an external input ``{"input": "prev_action", "size": 6}`` that the caller sets.

An optional ``termination`` list says when an episode ends (Gymnasium's terminate_when_unhealthy,
or a real robot's safety stop): each entry is a term (as above, inputs excepted) with bounds
``min``/``max`` (``strict``, default true: min < v < max) and/or ``finite = true``. The episode
ends when any entry fails; values are compared in float64. Hopper-v5's z check, for example::

    {"field": "qpos", "start": 1, "stop": 2, "min": 0.7, "strict": true}

Infinite bounds (a clip or a min/max) are written as null: the spec is strict JSON. Example,
Gymnasium's Reacher-v5::

    {"version": 1, "terms": [
        {"field": "qpos", "stop": 2, "fn": "cos"}, {"field": "qpos", "stop": 2, "fn": "sin"},
        {"field": "qpos", "start": 2}, {"field": "qvel", "stop": 2},
        {"field": "xpos", "names": "fingertip", "stop": 2,
         "minus": {"field": "xpos", "names": "target", "stop": 2}}]}

The evaluator is C++ (csrc/observation.*, the same code the C++ control loop links); this module
binds it to Python's ``mujoco.MjModel``/``MjData`` and verifies a spec against a Gymnasium env.
The specs of the 11 Gymnasium MuJoCo v5 tasks ship with their presets (``[observation]`` tables).
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _core

SPEC_VERSION = 1
ObservationError = getattr(_core, "ObservationError", ValueError)  # a ValueError naming the bad term


class ObservationMismatch(ValueError):
    """A spec that does not reproduce the env's observations; the message names the first wrong term."""


def as_spec(spec: Union[dict, Sequence[dict]]) -> dict:
    """The canonical ``{"version", "terms"}`` form of a spec given as such a dict or as a list of terms."""
    if isinstance(spec, dict):
        out = dict(spec)
        out.setdefault("version", SPEC_VERSION)
    elif isinstance(spec, (list, tuple)):
        out = {"version": SPEC_VERSION, "terms": list(spec)}
    else:
        raise TypeError(f"an observation spec is a dict {{'version', 'terms'}} or a list of terms, got "
                        f"{type(spec).__name__}")
    out = _strict_json(out)
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"an observation spec must be plain JSON-able data: {e}") from None
    return out


def _strict_json(x: Any) -> Any:
    """``x`` with ±inf numbers as None (an unbounded clip side or bound), as the C++ reader takes
    them; NaN stays, for ``as_spec`` to refuse."""
    if isinstance(x, dict):
        return {k: _strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict_json(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return None
    return x


def _require_mujoco():
    if not getattr(_core, "HAVE_MUJOCO", False):
        raise RuntimeError("this pydpg was built without MuJoCo's headers: no observation builder")
    import mujoco

    return mujoco


class _BoundToModel:
    """A C++ object built from a spec and bound to one ``mujoco.MjModel`` by raw pointer: the model
    is kept alive here, and only mjData of that same model is passed on."""

    def __init__(self, core_class, spec: Union[dict, Sequence[dict]], model: Any):
        mujoco = _require_mujoco()
        if not isinstance(model, mujoco.MjModel):
            raise TypeError(f"model must be a mujoco.MjModel, got {type(model).__name__}")
        self.spec = as_spec(spec)
        self._model = model
        self._core = core_class(json.dumps(self.spec), model._address)

    def _data_address(self, data: Any) -> int:
        mujoco = _require_mujoco()
        if not isinstance(data, mujoco.MjData):
            raise TypeError(f"data must be a mujoco.MjData, got {type(data).__name__}")
        if data.model._address != self._model._address:
            # Indices were resolved against this model; another model's arrays may be shorter.
            raise ValueError(f"data belongs to another model than the one this {type(self).__name__} is bound to")
        return data._address


class ObservationBuilder(_BoundToModel):
    """A spec bound to one ``mujoco.MjModel``: ``build(data)`` returns the float32 observation.

    Raises ``ObservationError`` (a ValueError) for a spec the model cannot satisfy: an unknown
    field, key, name or fn, a slice out of range, a ``minus`` of another width, a newer version.
    """

    def __init__(self, spec: Union[dict, Sequence[dict]], model: Any):
        super().__init__(_core.ObservationBuilder, spec, model)
        self._b = self._core

    @property
    def size(self) -> int:
        return self._b.size

    @property
    def terms(self) -> list[tuple[str, int, int]]:
        """(label, first observation index, size) of every term, in order."""
        return [tuple(t) for t in self._b.terms]

    @property
    def input_names(self) -> list[str]:
        return list(self._b.input_names)

    def set_input(self, name: str, values) -> None:
        self._b.set_input(name, np.asarray(values, dtype=np.float32).reshape(-1))

    def build(self, data: Any) -> np.ndarray:
        return self._b.build(self._data_address(data))

    def term_at(self, index: int) -> tuple[str, int]:
        """The term holding observation ``index`` and the index within it."""
        for label, offset, size in self.terms:
            if offset <= index < offset + size:
                return label, index - offset
        raise IndexError(f"observation index {index} is outside [0, {self.size})")


class Termination(_BoundToModel):
    """A spec's ``termination`` list bound to one ``mujoco.MjModel`` (the C++ check the control loop
    runs): ``first_failure(data)`` is the index of the first condition that fails, or -1."""

    def __init__(self, spec: Union[dict, Sequence[dict]], model: Any):
        super().__init__(_core.TerminationCheck, spec, model)
        self._c = self._core

    @property
    def labels(self) -> list[str]:
        """One description per condition, e.g. ``qpos[1:2] > 0.7``."""
        return list(self._c.labels)

    def first_failure(self, data: Any) -> int:
        return int(self._c.first_failure(self._data_address(data)))


def task_spec(env_id: str) -> Optional[dict]:
    """The observation spec shipped with the task preset for ``env_id``, or None."""
    from . import presets

    found = presets.find(env_id)
    if found is None:
        return None
    table = presets.parse(f"preset {found}", presets.text(found)).get("observation") or None
    return as_spec(table) if table else None


def observation_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per entry |got - want| / max(1, |want|): how observation parity is measured everywhere (export's
    check, the control loop's replay). Entries NaN on both sides count as equal."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    err[np.isnan(got) & np.isnan(want)] = 0.0
    return err


def verify(spec: Union[dict, Sequence[dict]], env, *, steps: int = 200, seed: int = 0, rtol: float = 1e-5,
           inputs: Optional[dict] = None) -> float:
    """Check that ``spec`` reproduces ``env``'s observations: from ``env.reset(seed=seed)``, over
    ``steps`` steps of uniformly random actions (new episodes as the old ones end), compare the
    builder's observation with the env's. Returns the largest difference relative to
    max(1, |observation|); raises ``ObservationMismatch`` naming the first wrong term, index, step
    and both values when it exceeds ``rtol``, or when the widths differ. With a ``termination``
    list, the env's ``terminated`` must agree with it after every step (the mismatch names the
    condition).

    External inputs: ``prev_action`` is filled with the action taken before (zeros after a reset),
    as the control loop fills it; an input named in ``inputs`` gets that constant value; any other
    input is filled from the env's own observation at its place (it is the caller's to feed, so
    only the terms around it are checked)."""
    u = getattr(env, "unwrapped", env)
    if not hasattr(u, "model") or not hasattr(u, "data"):
        raise TypeError(f"{getattr(env, 'spec', None) and env.spec.id or type(u).__name__} is not a MuJoCo env")
    builder = ObservationBuilder(spec, u.model)
    check = Termination(spec, u.model) if builder.spec.get("termination") else None
    inputs = dict(inputs or {})
    places = {label[len("input "):]: (offset, size) for label, offset, size in builder.terms
              if label.startswith("input ")}
    act_dim = int(np.prod(env.action_space.shape))

    def feed(obs_now: np.ndarray, previous_action: np.ndarray) -> None:
        for name, (offset, size) in places.items():
            if name in inputs:
                builder.set_input(name, inputs[name])
            elif name == "prev_action" and size == act_dim:
                builder.set_input(name, previous_action)
            else:
                builder.set_input(name, obs_now[offset:offset + size])

    obs, _ = env.reset(seed=seed)
    action = np.zeros(act_dim)
    env.action_space.seed(seed)
    width = int(np.prod(np.shape(obs)))
    if builder.size != width:
        raise ObservationMismatch(f"the spec builds {builder.size} values, the env observes {width} "
                                  f"(terms: {', '.join(f'{label} [{size}]' for label, _, size in builder.terms)})")
    worst = 0.0
    for step in range(steps + 1):
        want = np.asarray(obs, dtype=np.float64).reshape(-1)
        feed(want, action)
        got = builder.build(u.data).astype(np.float64)
        err = observation_error(got, want)
        bad = np.flatnonzero(~(err <= rtol))
        if bad.size:
            i = int(bad[0])
            label, k = builder.term_at(i)
            raise ObservationMismatch(f"observation index {i} (term '{label}', entry {k}) at step {step}: the spec "
                                      f"gives {got[i]!r}, the env {want[i]!r}")
        worst = max(worst, float(err.max(initial=0.0)))
        if step == steps:
            break
        action = env.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        if check is not None:
            failed = check.first_failure(u.data)
            if (failed >= 0) != bool(terminated):
                raise ObservationMismatch(
                    f"termination at step {step + 1}: " + (
                        f"condition {failed} '{check.labels[failed]}' fails but the env did not terminate"
                        if failed >= 0 else "the env terminated but every termination condition holds"))
        if terminated or truncated:
            obs, _ = env.reset()
            action = np.zeros(act_dim)
    return worst
