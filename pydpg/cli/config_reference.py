"""The reference of every configuration key, generated from the dataclasses that define them.

``DDPGConfig`` is a run config's ``[agent]`` table (and ``--set KEY=VALUE``); ``TrainConfig`` its
``[train]`` table (and the train flags). Each key's default is the dataclass's, and its description
the comment written beside the field, which cites where the default comes from. docs/config.md is
this module's output (``pydpg presets --reference``); a test keeps the two equal, so the page cannot
drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from pydpg.contract.action import KEYS as ACTION_KEYS
from pydpg.contract.randomization import KEYS as RANDOMIZATION_KEYS
from pydpg.core.config import DDPGConfig
from pydpg.train.config import TrainConfig

HEADER = """\
# Configuration reference

Every key of a run config file (`pydpg train ENV --config run.toml`, a sweep's settings), with its
default and where that default comes from. Generated from the dataclasses by
`pydpg presets --reference` (pydpg/cli/config_reference.py); tests/test_cli.py fails when this page and
the code disagree. Unknown keys are refused by name, with the closest known key suggested.

```toml
[agent]                 # DDPGConfig: the algorithm (also --set KEY=VALUE on the command line)
batch_size = 256

[train]                 # TrainConfig: the run (also the flags of `pydpg train`)
total_steps = 300_000

[env]                   # keyword arguments of gymnasium.make, e.g. xml_file = "robot.xml"

[observation]           # the observation contract (docs/deployment.md, "The observation contract")

[action]                # the action contract (docs/deployment.md, "The action contract")

[randomization]         # domain randomization of the training envs (below)
```

Algorithm presets (`--preset NAME`, `pydpg presets NAME` prints all values) change some `[agent]`
keys: {presets}. Task presets (`pydpg presets`, one per Gymnasium MuJoCo v5 task) set `[agent]`,
`[train]` and `[observation]` for their task.
"""


def _field_comments(cls) -> dict[str, str]:
    """The comment lines above each field and the comment after it on its line, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    out: dict[str, str] = {}
    body = tree.body[0].body
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        line = lines[node.lineno - 1]
        trailing = line.split("#", 1)[1].strip() if "#" in line and not line.strip().startswith("#") else ""
        text = " ".join(p for p in (" ".join(above), trailing) if p)
        out[node.target.id] = text
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "(none)"
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}" if not v else repr(v)
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, int):
        return f"{v:_}" if abs(v) >= 10_000 else str(v)
    return repr(v)


def _table(cls, skip: tuple[str, ...] = ()) -> str:
    comments = _field_comments(cls)
    rows = ["| key | default | what it is, and where the default comes from |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        text = comments.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{_value(default)}` | {text} |")
    return "\n".join(rows)


def reference_markdown() -> str:

    presets = ", ".join(f"`{name}`" for name in DDPGConfig.presets())
    return (
        HEADER.format(presets=presets)
        + "\n## `[agent]`: DDPGConfig (pydpg/core/config.py)\n\n"
        + _table(DDPGConfig)
        + "\n\n## `[train]`: TrainConfig (pydpg/train/config.py)\n\n"
        + "`env_id` and `env_kwargs` come from the command line (`pydpg train ENV`) and the `[env]` "
        "table, `observation` from the `[observation]` table, `action` from the `[action]` table, "
        "`randomization` from the `[randomization]` table.\n\n"
        + _table(TrainConfig, skip=("env_id", "env_kwargs", "observation", "action", "randomization"))
        + "\n\n## `[action]`: the action contract (pydpg/contract/action.py)\n\n"
        "Stored with the run, applied to every env of it, shipped in the policy file and run by the C++ "
        "loop. `[[action.actuators]]` entries, one per policy output; NaN, an infinity or an unknown key "
        "is refused by name.\n\n"
        + _keys_table(ACTION_KEYS)
        + "\n\n## `[randomization]`: domain randomization (pydpg/contract/randomization.py)\n\n"
        "Applied to every training env of the run (not to evaluation envs), seeded by each env's first "
        "reset (the run's seed), recorded in the policy file's metadata. `[[randomization.model]]` and "
        "`[[randomization.push]]` entries; `[randomization.observation]` and `[randomization.action]` "
        "tables. Ranges are `[low, high]`; NaN, an infinity, an unknown key, field or name, a range that "
        "makes a mass, inertia, friction, damping, armature or stiffness negative, and a delay past the "
        "most are refused by name.\n\n" + _keys_table(RANDOMIZATION_KEYS) + "\n"
    )


def _keys_table(keys) -> str:
    rows = ["| key | in | default | meaning |", "|---|---|---|---|"]
    rows += [
        f"| `{k}` | {where or 'top'} | {default} | {text.replace('|', chr(92) + '|')} |"
        for k, where, default, text in keys
    ]
    return "\n".join(rows)
