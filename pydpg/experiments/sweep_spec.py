"""Sweep specs: which tasks, seeds and settings a sweep (``pydpg.experiments.sweep``) runs, checked before it starts.

A spec is a TOML file (``pydpg sweep SPEC.toml``) or the same structure as a dict::

    tasks = ["InvertedPendulum-v5", "Hopper-v5"]
    seeds = [0, 1, 2]
    total_steps = 100_000          # optional, every trial (a [train] table may say it too)
    name = "tau"                   # optional: the Tune experiment's name (default: from the trials)

    [agent]                        # optional, every setting: DDPGConfig fields
    hidden = [64, 64]
    [train]                        # optional, every setting: TrainConfig fields (not seed, env_id)
    eval_every = 2_000
    [env]                          # optional, every setting: gymnasium.make keyword arguments

    [settings.base]                # one table per setting; none at all = one setting "default"
    [settings.fast_tau]
    label = "tau 0.02"             # optional: the name in tables and plots
    agent = { tau = 0.02 }         # or [settings.fast_tau.agent]; also train = {...}, env = {...}
    [settings.td3]
    preset = "td3"                 # an algorithm preset (pydpg presets)
    [settings.sb3]
    impl = "sb3"                   # Stable-Baselines3's DDPG with the same hyper-parameters
    tasks = ["Hopper-v5"]          # optional: only these of the sweep's tasks (default: all)

Each (task, setting, seed) is one trial, configured as ``pydpg.train.config.resolve`` does for a run: the
task preset, then the setting's ``preset``, then the sweep's tables, then the setting's tables.
Unknown keys anywhere are refused naming the key and the closest known one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pydpg import presets
from pydpg.common.names import did_you_mean
from pydpg.experiments.sb3_peer import unsupported
from pydpg.train.config import check_layer, resolve

IMPLS = ("pydpg", "sb3")
TOP_KEYS = ("tasks", "seeds", "total_steps", "name", "agent", "train", "env", "settings")
SETTING_KEYS = ("impl", "label", "preset", "tasks", "agent", "train", "env")
TABLES = ("agent", "train", "env")
# Trial keys that the sweep sets itself; a [train] table may not.
_SWEEP_OWNED = {"seed": "seeds", "env_id": "tasks", "env_kwargs": "[env]", "threads": "one CPU per trial"}
# Setting names and experiment names become directory names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_SETTING = "default"


def task_dir(task: str) -> str:
    """The directory name of a task: its id, with characters that are not safe in a path replaced
    (namespaced ids such as ``module:Name-v0`` or ``ns/Name-v0``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", task)
    # "." and ".." (or any name of dots) would be this directory or its parent: never under OUT.
    return name.replace(".", "_") if set(name) <= {"."} else name


@dataclass(frozen=True)
class Setting:
    name: str
    impl: str = "pydpg"
    label: str = ""
    preset: Optional[str] = None
    agent: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    # A subset of the sweep's tasks, or None for all of them. A setting leaves out the tasks whose
    # runs exist already (a baseline measured before) rather than paying for them twice.
    tasks: Optional[tuple[str, ...]] = None

    def runs_on(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: resolved ``DDPGConfig`` and ``TrainConfig`` fields, as plain dicts."""

    task: str
    setting: str
    seed: int
    impl: str
    agent: dict
    train: dict

    @property
    def rel_dir(self) -> str:
        return f"{task_dir(self.task)}/{self.setting}/seed{self.seed}"

    @property
    def name(self) -> str:
        return f"{task_dir(self.task)}-{self.setting}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "setting": self.setting,
            "seed": self.seed,
            "impl": self.impl,
            "agent": self.agent,
            "train": self.train,
        }


@dataclass(frozen=True)
class SweepSpec:
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Setting]
    total_steps: Optional[int] = None
    name: Optional[str] = None
    agent: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    source: str = "sweep spec"

    def trials(self) -> list[Trial]:
        """Every (task, setting, seed), seed-major so that an early stop has seen every setting."""
        # Resolved once per (task, setting); the seed is the only difference between a cell's trials
        # (100,000 seeds resolved one by one took a minute before Ray started).
        cells = [self.resolve(task, s, self.seeds[0]) for task, s in self.cells()]
        out = [
            dataclasses.replace(c, seed=seed, agent=dict(c.agent), train={**c.train, "seed": seed})
            for seed in self.seeds
            for c in cells
        ]
        names: dict[str, Trial] = {}
        for t in out:  # names join task and setting with '-', which both may contain
            other = names.setdefault(t.name, t)
            if other is not t:
                raise ValueError(
                    f"{self.source}: {other.task} with setting {other.setting!r} and {t.task} with "
                    f"setting {t.setting!r} would both be trial {t.name!r}; rename a setting"
                )
        return out

    def cells(self) -> list[tuple[str, Setting]]:
        """Every (task, setting) the sweep runs, task-major: a setting limited to some tasks
        (``Setting.tasks``) has cells on those only."""
        return [(task, s) for task in self.tasks for s in self.settings.values() if s.runs_on(task)]

    def resolve(self, task: str, s: Setting, seed: int) -> Trial:
        train = {
            **({} if self.total_steps is None else {"total_steps": self.total_steps}),
            **self.train,
            **s.train,
            "seed": seed,
        }
        try:
            config, run = resolve(
                task, preset=s.preset, agent={**self.agent, **s.agent}, train=train, env_kwargs={**self.env, **s.env}
            )
        except ValueError as e:
            raise ValueError(f"{self.source}: setting {s.name!r} on {task}: {e}") from None
        if s.impl == "sb3":
            bad = unsupported(config, run.n_envs)
            if bad:
                raise ValueError(
                    f'{self.source}: setting {s.name!r} (impl = "sb3") on {task}: Stable-Baselines3 '
                    f"cannot run {', '.join(bad)}"
                )
        return Trial(task, s.name, seed, s.impl, config.to_dict(), run.to_dict())

    def experiment_name(self, trials: list[Trial]) -> str:
        """``name``, else one derived from the resolved trials: the same sweep gets the same name
        (and so resumes), a changed one another."""
        if self.name is not None:
            return self.name
        blob = json.dumps([t.to_dict() for t in trials], sort_keys=True, default=str)
        return "sweep-" + hashlib.sha1(blob.encode()).hexdigest()[:10]

    def label(self, setting: str) -> str:
        return self.settings[setting].label or setting


# ---------------------------------------------------------------------------------------- parsing
def load_spec(spec: Union[SweepSpec, dict, str, os.PathLike]) -> SweepSpec:
    """A checked ``SweepSpec`` from a dict, a TOML file path, or a spec (returned as is)."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec, "sweep spec")
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"sweep spec '{path}' does not exist")
        try:
            data = presets._tomllib().loads(path.read_text())
        except ValueError as e:  # tomllib.TOMLDecodeError
            raise ValueError(f"{path}: invalid TOML: {e}") from None
        return parse_spec(data, str(path))
    raise TypeError(f"a sweep spec is a dict or a TOML file path, got {type(spec).__name__}")


def _unknown(where: str, keys, known) -> None:
    bad = [k for k in keys if k not in known]
    if bad:
        raise ValueError(
            f"{where}: unknown key "
            + ", ".join(f"{k!r}{did_you_mean(k, known)}" for k in bad)
            + f"; allowed: {', '.join(known)}"
        )


def _table(where: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table, got {type(value).__name__} {value!r}")
    return dict(value)


def _check_tables(where: str, tables: dict[str, dict]) -> None:
    """Each table's keys and values on their own, so that an error names the table it is in."""
    for key, owner in _SWEEP_OWNED.items():
        if key in tables["train"]:
            raise ValueError(f"{where}: [train] {key!r} is set by the sweep (its {owner}), not by a [train] table")
    check_layer(where, tables["agent"], tables["train"])


def parse_spec(data: dict, source: str = "sweep spec") -> SweepSpec:
    """Check a spec's structure, names and values (each layer on its own) and build it; every
    (task, setting) is then resolved once so that a bad combination fails before anything runs."""
    if not isinstance(data, dict):
        raise TypeError(f"{source}: a sweep spec is a table (dict), got {type(data).__name__}")
    _unknown(source, data, TOP_KEYS)
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"{source}: 'tasks' must be a non-empty list of environment ids, got {tasks!r}")
    seeds = data.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds)
    ):
        raise ValueError(f"{source}: 'seeds' must be a non-empty list of ints in [0, 2**32), got {seeds!r}")
    for what, values in (("tasks", tasks), ("seeds", seeds)):
        dup = sorted((v for v, n in collections.Counter(values).items() if n > 1), key=str)
        if dup:
            raise ValueError(f"{source}: {what} repeats {', '.join(map(repr, dup))}")
    total = data.get("total_steps")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
        raise ValueError(f"{source}: 'total_steps' must be an int >= 1, got {total!r}")
    name = data.get("name")
    if name is not None and not (isinstance(name, str) and _NAME.match(name)):
        raise ValueError(
            f"{source}: 'name' must be letters, digits, '.', '_' or '-' (it names a directory), got {name!r}"
        )
    common = {k: _table(f"{source}: [{k}]", data.get(k, {})) for k in TABLES}
    _check_tables(source, common)

    raw = _table(f"{source}: [settings]", data.get("settings", {DEFAULT_SETTING: {}}))
    if not raw:
        raise ValueError(f"{source}: [settings] is empty; leave it out for one default setting")
    settings = {}
    for sname, body in raw.items():
        where = f"{source}: [settings.{sname}]"
        if not _NAME.match(sname):
            raise ValueError(f"{where}: a setting name must be letters, digits, '.', '_' or '-' (it names a directory)")
        body = _table(where, body)
        _unknown(where, body, SETTING_KEYS)
        impl = body.get("impl", "pydpg")
        if impl not in IMPLS:
            raise ValueError(
                f"{where}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}{did_you_mean(impl, IMPLS)}"
            )
        for key in ("label", "preset"):
            if key in body and not isinstance(body[key], str):
                raise ValueError(f"{where}: {key} must be a string, got {body[key]!r}")
        own_tasks = body.get("tasks")
        if own_tasks is not None:
            if (
                not isinstance(own_tasks, list)
                or not own_tasks
                or not all(isinstance(t, str) for t in own_tasks)
                or len(set(own_tasks)) != len(own_tasks)
            ):
                raise ValueError(
                    f"{where}: tasks must be a non-empty list of distinct environment ids, got {own_tasks!r}"
                )
            stray = [t for t in own_tasks if t not in tasks]
            if stray:
                raise ValueError(
                    f"{where}: tasks {', '.join(map(repr, stray))} are not among the sweep's tasks ({', '.join(tasks)})"
                )
            own_tasks = tuple(own_tasks)
        tables = {k: _table(f"{where}.{k}", body.get(k, {})) for k in TABLES}
        _check_tables(where, tables)
        settings[sname] = Setting(sname, impl, body.get("label", ""), body.get("preset"), **tables, tasks=own_tasks)

    spec = SweepSpec(tuple(tasks), tuple(seeds), settings, total, name, source=source, **common)
    for task, s in spec.cells():
        spec.resolve(task, s, spec.seeds[0])
    return spec
