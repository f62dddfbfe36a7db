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

or an external input ``{"input": "prev_action", "size": 6}`` that the caller sets. Any term may add
``history``: k, its last k control steps, oldest first (pydpg.contract.history).

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

The evaluator is C++ (csrc/deploy/observation.cpp, the same code the C++ control loop links); this module
binds it to Python's ``mujoco.MjModel``/``MjData`` and verifies a spec against a Gymnasium env.
The specs of the 11 Gymnasium MuJoCo v5 tasks ship with their presets (``[observation]`` tables).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from pydpg import _core, presets

SPEC_VERSION = 1
ObservationError = getattr(_core, "ObservationError", ValueError)  # a ValueError naming the bad term


class ObservationMismatch(ValueError):
    """A spec that does not reproduce the env's observations; the message names the first wrong term."""


def as_spec(spec: Union[dict, Sequence[dict]]) -> dict:
    """The canonical ``{"version", "terms"}`` form of a spec given as such a dict or as a list of terms.

    Numbers are checked where they stand, the way the C++ reader checks them (one answer for one
    file): NaN is refused anywhere; an infinite ``min`` or ``clip`` low of -inf and ``max`` or ``clip``
    high of +inf mean "no bound" and become null (strict JSON has no Infinity); any other infinity
    (``min = +inf``: every value fails it; ``scale = inf``) is refused, naming the entry. A dict
    without ``version`` is refused, as the C++ loop refuses it; a list of terms is version 1."""
    if isinstance(spec, dict):
        if "version" not in spec:
            raise ValueError(
                f"the observation spec has no 'version' (this pydpg reads version {SPEC_VERSION}: add "
                f"version = {SPEC_VERSION}); the C++ loop would refuse it"
            )
        out = dict(spec)
    elif isinstance(spec, (list, tuple)):
        out = {"version": SPEC_VERSION, "terms": list(spec)}
    else:
        raise TypeError(
            f"an observation spec is a dict {{'version', 'terms'}} or a list of terms, got {type(spec).__name__}"
        )
    out = _checked_numbers(out, "observation spec")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"an observation spec must be plain JSON-able data: {e}") from None
    return out


# Where an infinity may stand, and which: it is then "no bound" and written as null.
_UNBOUNDED_SIDE = {"min": -1, "max": 1}


def _checked_numbers(x: Any, where: str, key: Optional[str] = None, index: Optional[int] = None) -> Any:
    """``x`` with its legal infinities (see ``as_spec``) as None; NaN, an infinity on the wrong side
    or anywhere else, and names holding a NUL character raise ValueError naming the entry."""
    if isinstance(x, dict):
        return {k: _checked_numbers(v, f"{where}.{k}", key=k) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_checked_numbers(v, f"{where}[{i}]", key=key, index=i) for i, v in enumerate(x)]
    if isinstance(x, str):
        if "\0" in x:
            raise ValueError(f"{where}: {x.split(chr(0))[0]!r}... holds a NUL character; refused, never cut short")
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return x
    v = float(x)
    if math.isnan(v):
        raise ValueError(f"{where} is NaN: a NaN is refused, never read as a value or a bound")
    if math.isinf(v):
        side = _UNBOUNDED_SIDE.get(key) if index is None else ({0: -1, 1: 1}.get(index) if key == "clip" else None)
        if side is None:
            raise ValueError(f"{where} must be finite, got {v}")
        if (v > 0) != (side > 0):
            raise ValueError(f"{where} is {v}: every value fails it (use null, or leave it out, for no bound)")
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

    def __init__(self, core_class, spec: Union[dict, Sequence[dict]], model: Any, canonical=None):
        mujoco = _require_mujoco()
        if not isinstance(model, mujoco.MjModel):
            raise TypeError(f"model must be a mujoco.MjModel, got {type(model).__name__}")
        self.spec = (canonical or as_spec)(spec)
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

    @property
    def base_size(self) -> int:
        """The width of every term once, without history (``size`` when no term has one)."""
        return self._b.base_size

    @property
    def has_history(self) -> bool:
        return self._b.has_history

    @property
    def term_details(self) -> list[dict]:
        """Each term's label, offset, size (history x width), history, offset in the base, and input
        name (None for an mjData term)."""
        return list(self._b.term_details)

    def build(self, data: Any) -> np.ndarray:
        """The observation now, recording this control step in the history terms: once per step."""
        return self._b.build(self._data_address(data))

    def build_from_current(self, current) -> np.ndarray:
        """The observation from the base's values now (``base_size`` of them), recorded likewise."""
        current = np.asarray(current, dtype=np.float64)
        if current.shape != (self.base_size,):
            raise ValueError(f"build_from_current takes the base's {self.base_size} values, got shape {current.shape}")
        return self._b.build_from_current(current)

    def reset(self) -> None:
        """A new episode: the next build fills every history slot with its current value."""
        self._b.reset()

    def history_state(self) -> dict[str, Any]:
        return dict(self._b.history_state())

    def load_history_state(self, state: dict[str, Any]) -> None:
        self._b.load_history_state(bool(state["primed"]), list(state["heads"]), list(state["values"]))

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

    @property
    def conditions(self) -> list[dict]:
        """Each condition's label, offset and size in ``evaluate``'s values, min, max, strict, finite."""
        return list(self._c.conditions)

    def evaluate(self, data: Any) -> tuple[np.ndarray, np.ndarray]:
        """(every condition's term values, concatenated; a bool per condition: it fails)."""
        values, failed = self._c.evaluate(self._data_address(data))
        return np.asarray(values), np.asarray(failed, dtype=bool)

    def describe(self, data: Any) -> str:
        """The conditions with their values now, e.g. ``qpos[1:2] > 0.7 = 1.25``, for messages."""
        values, failed = self.evaluate(data)
        return "; ".join(
            f"{c['label']} = {_plain(values[c['offset'] : c['offset'] + c['size']])}" + (" (fails)" if f else "")
            for c, f in zip(self.conditions, failed)
        )


def task_spec(env_id: str) -> Optional[dict]:
    """The observation spec shipped with the task preset for ``env_id``, or None."""

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


def _plain(x) -> str:
    """Numbers as a message shows them: 0.25 and [0.25, 1], never np.float64(0.25)."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    text = ", ".join(f"{float(v):.6g}" for v in arr)
    return text if arr.size == 1 else f"[{text}]"


@dataclass
class ConditionReport:
    """What verification saw of one termination condition."""

    label: str
    failed_steps: int = 0  # steps after which it failed (and the env terminated with it)
    held_steps: int = 0
    lowest: float = math.inf  # the range its values took
    highest: float = -math.inf
    closest: Optional[float] = None  # the smallest distance of a value to a finite bound it states

    @property
    def exercised(self) -> bool:
        """Seen both to hold and to fail: only then did verification compare it with the env."""
        return self.failed_steps > 0 and self.held_steps > 0

    def as_dict(self) -> dict:
        finite = [v if math.isfinite(v) else None for v in (self.lowest, self.highest)]
        return {
            "label": self.label,
            "failed_steps": self.failed_steps,
            "held_steps": self.held_steps,
            "range": finite,
            "closest_to_bound": self.closest,
        }


@dataclass
class Verification:
    """The result of ``verify_report``: how far the spec's observations were from the env's, and
    which termination conditions the rollout exercised. ``as_metadata()`` is what a policy file
    records (``verification``)."""

    steps: int
    episodes: int
    starts: str
    max_difference: float
    conditions: list[ConditionReport] = field(default_factory=list)

    @property
    def unexercised(self) -> list[ConditionReport]:
        return [c for c in self.conditions if not c.exercised]

    def as_metadata(self) -> dict:
        return {
            "steps": self.steps,
            "episodes": self.episodes,
            "starts": self.starts,
            "max_observation_difference": self.max_difference,
            "termination": [c.as_dict() for c in self.conditions],
        }

    def summary(self) -> str:
        text = (
            f"observation spec verified over {self.steps} env steps ({self.episodes} episodes, {self.starts}): "
            f"largest difference {self.max_difference:.3g}"
        )
        if self.conditions:
            text += (
                f"; termination conditions seen to fail: {len(self.conditions) - len(self.unexercised)} of "
                f"{len(self.conditions)}"
            )
        return text

    def warnings(self) -> list[str]:
        """One line per condition the rollout never saw both hold and fail, then what to do; empty
        when every condition was exercised."""
        out = []
        for c in self.unexercised:
            seen = (
                f"values in [{_plain(c.lowest)}, {_plain(c.highest)}]" if math.isfinite(c.lowest) else "no finite value"
            )
            near = f", {_plain(c.closest)} from its bound at the closest" if c.closest is not None else ""
            what = "never failed" if c.failed_steps == 0 else "never held"
            out.append(
                f"termination condition '{c.label}' {what} in verification ({seen}{near}): it was never "
                "compared with the env's own termination"
            )
        if out:
            out.append(
                "to exercise them, verify from states that reach them: pydpg export --verify-steps N, "
                "--verify-perturb STD or --verify-init-states FILE.npz (export_policy's verify_steps, "
                "verify_perturb, verify_init_states)"
            )
        return out


def load_init_states(init_states, model) -> tuple[np.ndarray, np.ndarray]:
    """(qpos [N, nq], qvel [N, nv]) from a dict or an .npz file holding arrays ``qpos`` and ``qvel``
    (one start state per row), checked against ``model``'s sizes; non-finite values are refused."""
    if isinstance(init_states, (str, os.PathLike)):
        path = os.fspath(init_states)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init states file {path!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                init_states = {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"init states file {path!r} is not an .npz of arrays qpos and qvel: {e}") from None
    if not isinstance(init_states, dict) or set(init_states) != {"qpos", "qvel"}:
        got = sorted(init_states) if isinstance(init_states, dict) else type(init_states).__name__
        raise ValueError(f"init states must hold exactly the arrays 'qpos' and 'qvel', got {got}")
    out = []
    for key, width in (("qpos", model.nq), ("qvel", model.nv)):
        a = np.asarray(init_states[key], dtype=np.float64)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != width or a.shape[0] == 0:
            raise ValueError(f"init states '{key}' has shape {a.shape}, expected (N, {width}) for this model")
        if not np.isfinite(a).all():
            raise ValueError(
                f"init states '{key}' holds a NaN or infinite value (row {int(np.argwhere(~np.isfinite(a))[0][0])})"
            )
        out.append(a)
    if out[0].shape[0] != out[1].shape[0]:
        raise ValueError(f"init states have {out[0].shape[0]} qpos rows and {out[1].shape[0]} qvel rows")
    return out[0], out[1]


def verify(
    spec: Union[dict, Sequence[dict]],
    env,
    *,
    steps: int = 200,
    seed: int = 0,
    rtol: float = 1e-5,
    inputs: Optional[dict] = None,
) -> float:
    """``verify_report(...).max_difference``: the largest observation difference, after every check."""
    return verify_report(spec, env, steps=steps, seed=seed, rtol=rtol, inputs=inputs).max_difference


def verify_report(
    spec: Union[dict, Sequence[dict]],
    env,
    *,
    steps: int = 200,
    seed: int = 0,
    rtol: float = 1e-5,
    inputs: Optional[dict] = None,
    perturb: float = 0.0,
    init_states=None,
) -> Verification:
    """Check that ``spec`` reproduces ``env``'s observations: from ``env.reset(seed=seed)``, over
    ``steps`` steps of uniformly random actions (new episodes as the old ones end), compare the
    builder's observation with the env's. Raises ``ObservationMismatch`` naming the first wrong term,
    index, step and both values when the difference relative to max(1, |observation|) exceeds
    ``rtol`` (the C++ builder rounds to float32: 6e-8 relative, and computes sin/cos in float64 as
    numpy does; 1e-5 is far above both on any CPU), or when the widths differ. With a
    ``termination`` list, the env's ``terminated`` must agree with it after every step (the mismatch
    names the condition, or shows every condition's value when the env ends and none fails), and the
    report says which conditions the rollout saw fail: a condition it never saw fail was never
    compared with the env's own termination.

    Where episodes start: ``init_states`` (a dict or .npz of ``qpos`` [N, nq] and ``qvel`` [N, nv]:
    the first N episodes start from these states, set after the reset), ``perturb`` (a standard
    deviation: Gaussian noise added to qpos and qvel after each reset), else the env's own reset.
    Both need a Gymnasium MujocoEnv (``set_state``, ``_get_obs``).

    External inputs: ``prev_action`` is filled with the action taken before (zeros after a reset),
    as the control loop fills it; an input named in ``inputs`` gets that constant value; any other
    input is filled from the env's own observation at its place (it is the caller's to feed, so
    only the terms around it are checked)."""
    u = getattr(env, "unwrapped", env)
    if not hasattr(u, "model") or not hasattr(u, "data"):
        raise TypeError(f"{getattr(env, 'spec', None) and env.spec.id or type(u).__name__} is not a MuJoCo env")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if not (isinstance(perturb, (int, float)) and math.isfinite(perturb) and perturb >= 0):
        raise ValueError(f"perturb must be a finite number >= 0 (a standard deviation), got {perturb!r}")
    builder = ObservationBuilder(spec, u.model)
    check = Termination(spec, u.model) if builder.spec.get("termination") else None
    starts_qpos, starts_qvel = load_init_states(init_states, u.model) if init_states is not None else (None, None)
    if (starts_qpos is not None or perturb > 0) and not (hasattr(u, "set_state") and hasattr(u, "_get_obs")):
        raise TypeError(
            "init_states and perturb set the env's state: they need a Gymnasium MujocoEnv (set_state and _get_obs)"
        )
    rng = np.random.default_rng(seed)
    inputs = dict(inputs or {})
    # An input's value now stands in the newest (last) of its history blocks.
    places = {
        t["input"]: (t["offset"] + t["size"] - t["size"] // t["history"], t["size"] // t["history"])
        for t in builder.term_details
        if t["input"] is not None
    }
    act_dim = int(np.prod(env.action_space.shape))

    def feed(obs_now: np.ndarray, previous_action: np.ndarray) -> None:
        for name, (offset, size) in places.items():
            if name in inputs:
                builder.set_input(name, inputs[name])
            elif name == "prev_action" and size == act_dim:
                builder.set_input(name, previous_action)
            else:
                builder.set_input(name, obs_now[offset : offset + size])

    episodes = 0

    def start(first: bool):
        nonlocal episodes
        obs, _ = env.reset(seed=seed) if first else env.reset()
        builder.reset()  # as the control loop does at each episode's start: history starts over
        if starts_qpos is not None and episodes < len(starts_qpos):
            u.set_state(starts_qpos[episodes], starts_qvel[episodes])
            obs = u._get_obs()
        elif perturb > 0:
            u.set_state(
                u.data.qpos + rng.normal(0, perturb, u.model.nq), u.data.qvel + rng.normal(0, perturb, u.model.nv)
            )
            obs = u._get_obs()
        episodes += 1
        return obs

    obs = start(first=True)
    action = np.zeros(act_dim)
    env.action_space.seed(seed)
    width = int(np.prod(np.shape(obs)))
    if builder.size != width:
        hint = (
            f"; without history its terms build {builder.base_size}: an env observes through the history "
            "wrapper (pydpg.contract.history.ObservationHistory), as a run with this spec trains"
            if builder.has_history
            else ""
        )
        raise ObservationMismatch(
            f"the spec builds {builder.size} values, the env observes {width} "
            f"(terms: {', '.join(f'{label} [{size}]' for label, _, size in builder.terms)}){hint}"
        )
    reports = [ConditionReport(c["label"]) for c in check.conditions] if check is not None else []
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
            raise ObservationMismatch(
                f"observation index {i} (term '{label}', entry {k}) at step {step}: the spec "
                f"gives {_plain(got[i])}, the env {_plain(want[i])}"
            )
        worst = max(worst, float(err.max(initial=0.0)))
        if step == steps:
            break
        action = env.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        if check is not None:
            failed = check.first_failure(u.data)
            if (failed >= 0) != bool(terminated):
                raise ObservationMismatch(
                    f"termination at step {step + 1}: "
                    + (
                        f"condition {failed} '{check.labels[failed]}' fails but the env did not terminate"
                        if failed >= 0
                        else "the env terminated but every termination condition holds"
                    )
                    + f" ({check.describe(u.data)})"
                )
            _record(check, u.data, reports)
        if terminated or truncated:
            obs = start(first=False)
            action = np.zeros(act_dim)
    where = (
        f"the first {min(len(starts_qpos), episodes)} from init_states"
        if starts_qpos is not None
        else f"resets perturbed by {_plain(perturb)}"
        if perturb > 0
        else "the env's resets"
    )
    return Verification(steps=steps, episodes=episodes, starts=where, max_difference=worst, conditions=reports)


def _record(check: Termination, data, reports: list[ConditionReport]) -> None:
    values, failed = check.evaluate(data)
    for c, f, r in zip(check.conditions, failed, reports):
        v = values[c["offset"] : c["offset"] + c["size"]]
        if f:
            r.failed_steps += 1
        else:
            r.held_steps += 1
        finite = v[np.isfinite(v)]
        if finite.size:
            r.lowest, r.highest = min(r.lowest, float(finite.min())), max(r.highest, float(finite.max()))
            gaps = [np.abs(finite - b) for b in (c["min"], c["max"]) if math.isfinite(b)]
            if gaps:
                gap = float(min(g.min() for g in gaps))
                r.closest = gap if r.closest is None else min(r.closest, gap)
