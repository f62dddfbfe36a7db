"""Run configuration files: the per-task presets shipped here (``<env id>.toml``) and user TOML files.

A file has up to six tables, every key optional::

    [agent]   # pydpg.DDPGConfig fields, e.g. hidden = [256, 256], learning_starts = 1000
    [train]   # pydpg.TrainConfig fields, e.g. total_steps = 300000, n_envs = 4
    [env]     # keyword arguments for gymnasium.make, e.g. xml_file = "my_cheetah.xml"
    [observation]  # the observation spec (pydpg.contract.observation): version = 1, [[observation.terms]]
    [action]  # the action spec (pydpg.contract.action): version = 1, [[action.actuators]]
    [randomization]  # domain randomization (pydpg.contract.randomization): version = 1, [[randomization.model]]

``pydpg.train.config.resolve`` layers the sources from general to specific, each overriding the one before:

1. ``DDPGConfig`` defaults, with ``learning_starts_for(env_id)``;
2. the task preset: the shipped file for ``env_id`` (if there is one), or the file preset ``preset`` names;
3. the algorithm preset ``preset`` names, if it names one (``"ddpg"``, ``"paper"``, ``"td3"``);
4. the user's ``config_file``;
5. ``td3=True``: TD3's three switches;
6. explicit overrides (CLI flags, ``pydpg.DDPG(**overrides)``).

Every value is checked with the source it came from named in the error.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

from pydpg.common.names import did_you_mean

SECTIONS = ("agent", "train", "env", "observation", "action", "randomization")


def _tomllib():
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading TOML on Python 3.10 needs the 'tomli' package (pip install tomli)") from None
    return tomllib


def available() -> list[str]:
    """Names of the shipped task presets (their env ids)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def find(name: str) -> Optional[str]:
    """The shipped preset ``name`` refers to: exact, case-insensitive, or the id without its version."""
    names = available()
    if name in names:
        return name
    low = name.lower()
    matches = [n for n in names if n.lower() == low or n.split("-v")[0].lower() == low]
    return matches[0] if len(matches) == 1 else None


def text(name: str) -> str:
    found = find(name)
    if found is None:
        raise ValueError(
            f"no shipped preset {name!r}{did_you_mean(name, available())}; presets: {', '.join(available())}"
        )
    return resources.files(__name__).joinpath(f"{found}.toml").read_text()


def parse(source: str, content: str) -> dict[str, dict[str, Any]]:
    """Parse TOML ``content`` (named ``source`` in errors) into its tables."""
    try:
        data = _tomllib().loads(content)
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise ValueError(f"{source}: invalid TOML: {e}") from None
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ValueError(
            f"{source}: unknown table or key "
            + ", ".join(f"{k!r}{did_you_mean(k, SECTIONS)}" for k in unknown)
            + f"; expected tables [{'], ['.join(SECTIONS)}]"
        )
    for k in SECTIONS:
        if k in data and not isinstance(data[k], dict):
            raise ValueError(f"{source}: '{k}' must be a table ([{k}]), got {type(data[k]).__name__}")
    return {k: dict(data.get(k, {})) for k in SECTIONS}


def read_file(path: Union[str, os.PathLike]) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file '{path}' does not exist")
    return parse(str(path), path.read_text())
