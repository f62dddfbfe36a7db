"""A sweep's results, aggregated over seeds from its run directories (no Ray needed).

``summarize(out_dir)`` reads every ``<task>/<setting>/seed<k>/metrics.csv`` under ``out_dir`` (the
layout ``pydpg.experiments.sweep`` writes) and gives, per task x setting, over seeds: the final evaluation, the
mean of the evaluations over the last 100k steps of each run (the last 10% for runs shorter than
that), and each run's best evaluation, each as mean +/- std over seeds with the number of seeds. It
writes ``sweep_summary.md``, ``sweep_summary.json`` and one ``curves_<task>.png`` per task (mean over
seeds +/- std, one line per setting).

It also writes ``sweep_runs.json``: every run's evaluation curve, small enough to commit. Run
directories (replay buffers, checkpoints) are too large to keep, yet a study's seeds may be run on
different machines or days; ``summarize(out_dir, add_runs=[record])`` counts the runs of earlier
records beside the ones on disk, so a table over seeds survives the directories it came from.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from pydpg.experiments.sweep_spec import task_dir
from pydpg.files.checkpoint import atomic_write_bytes
from pydpg.train.plotting import plot_seed_curves
from pydpg.train.run_log import read_metrics

SUMMARY_MD = "sweep_summary.md"
SUMMARY_JSON = "sweep_summary.json"
RUNS_JSON = "sweep_runs.json"
RUNS_FORMAT = "pydpg.sweep_runs"
RUNS_VERSION = 1
SETTING_FILE = "setting.json"  # written by pydpg.experiments.sweep beside a setting's seed directories
# The steadier number of the learning benchmark (docs/benchmarks_training.md): a single evaluation
# of a MuJoCo task swings by hundreds, so the evaluations of the run's last 100k steps are averaged.
TAIL_STEPS = 100_000
TAIL_FRACTION = 0.1  # runs shorter than TAIL_STEPS average over their last 10% instead
_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class Run:
    """One run directory's evaluations (rows with an eval_mean)."""

    seed: int
    path: Path
    steps: np.ndarray
    evals: np.ndarray
    wall_time_s: float
    finished: bool


@dataclass
class Group:
    """The runs of one task x setting."""

    task: str
    setting: str
    label: str
    impl: str
    runs: list[Run] = field(default_factory=list)


def read_run(run_dir: Union[str, os.PathLike], seed: int) -> Optional[Run]:
    """The run in ``run_dir``, or None while it has no evaluation yet."""

    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    rows = [r for r in read_metrics(path) if not math.isnan(r["eval_mean"])]
    if not rows:
        return None
    summary = _read_json(run_dir / "summary.json")
    finished = False
    if summary is not None:
        total = (summary.get("train") or {}).get("total_steps")
        finished = total is None or summary.get("steps", 0) >= total or bool(summary.get("reached_target"))
    return Run(
        seed,
        run_dir,
        np.array([r["step"] for r in rows]),
        np.array([r["eval_mean"] for r in rows]),
        float(rows[-1]["wall_time"]),
        finished,
    )


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(out_dir: Union[str, os.PathLike]) -> list[Group]:
    """Every task x setting under ``out_dir`` that has a run with an evaluation, sorted by name."""
    out_dir = Path(out_dir)
    groups = []
    for tdir in sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for setting_dir in sorted(p for p in tdir.iterdir() if p.is_dir()):
            runs = []
            for d in sorted(setting_dir.iterdir()):
                m = _SEED_DIR.match(d.name)
                run = read_run(d, int(m.group(1))) if m and d.is_dir() else None
                if run is not None:
                    runs.append(run)
            if not runs:
                continue
            meta = _read_json(setting_dir / SETTING_FILE) or {}
            first = _read_json(runs[0].path / "summary.json") or {}
            task = meta.get("task") or first.get("env_id") or tdir.name
            groups.append(
                Group(
                    task,
                    setting_dir.name,
                    meta.get("label") or setting_dir.name,
                    meta.get("impl") or first.get("impl") or "pydpg",
                    sorted(runs, key=lambda r: r.seed),
                )
            )
    return groups


def runs_record(groups: list[Group]) -> dict[str, Any]:
    """Every run's curve, in the form ``read_runs_record`` reads back."""
    return {
        "format": RUNS_FORMAT,
        "version": RUNS_VERSION,
        "runs": [
            {
                "task": g.task,
                "setting": g.setting,
                "label": g.label,
                "impl": g.impl,
                "seed": r.seed,
                "finished": r.finished,
                "wall_time_s": r.wall_time_s,
                "steps": [int(x) for x in r.steps],
                "evals": [float(x) for x in r.evals],
            }
            for g in groups
            for r in g.runs
        ],
    }


def read_runs_record(path: Union[str, os.PathLike]) -> list[Group]:
    """The groups of a ``sweep_runs.json``; ValueError naming the file, the run and the field if it is bad."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the runs record '{path}': {e}") from None
    if not isinstance(record, dict) or record.get("format") != RUNS_FORMAT:
        raise ValueError(f'\'{path}\' is not a runs record (no "format": "{RUNS_FORMAT}")')
    if record.get("version") != RUNS_VERSION:
        raise ValueError(
            f"'{path}' is a runs record of version {record.get('version')!r}; this pydpg reads version {RUNS_VERSION}"
        )
    if not isinstance(record.get("runs"), list):
        raise ValueError(f"'{path}': \"runs\" must be a list")
    groups: dict[tuple[str, str], Group] = {}
    for i, run in enumerate(record["runs"]):
        where = f"'{path}', run {i}"
        if not isinstance(run, dict):
            raise ValueError(f"{where}: must be an object")
        for key in ("task", "setting", "label", "impl"):
            if not isinstance(run.get(key), str) or not run[key]:
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        seed = run.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{where}: 'seed' must be an integer >= 0, not {seed!r}")
        if not isinstance(run.get("finished"), bool):
            raise ValueError(f"{where}: 'finished' must be true or false")
        wall = run.get("wall_time_s")
        if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not math.isfinite(wall) or wall < 0:
            raise ValueError(f"{where}: 'wall_time_s' must be a finite number >= 0, not {wall!r}")
        steps, evals = run.get("steps"), run.get("evals")
        if not isinstance(steps, list) or not isinstance(evals, list) or not steps or len(steps) != len(evals):
            raise ValueError(f"{where}: 'steps' and 'evals' must be non-empty lists of the same length")
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in steps) or any(
            b <= a for a, b in zip(steps, steps[1:])
        ):
            raise ValueError(f"{where}: 'steps' must be increasing integers >= 0")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in evals):
            raise ValueError(f"{where}: 'evals' must be finite numbers")
        g = groups.setdefault(
            (run["task"], run["setting"]), Group(run["task"], run["setting"], run["label"], run["impl"])
        )
        if any(r.seed == seed for r in g.runs):
            raise ValueError(f"{where}: {run['task']} / {run['setting']} seed {seed} is recorded twice")
        g.runs.append(Run(seed, path, np.array(steps), np.array(evals, dtype=float), float(wall), run["finished"]))
    return list(groups.values())


def merge_groups(found: list[Group], added: list[Group]) -> list[Group]:
    """``found`` with the runs of ``added`` whose task, setting and seed ``found`` has no run of."""
    by_key = {(g.task, g.setting): g for g in found}
    for a in added:
        g = by_key.setdefault((a.task, a.setting), Group(a.task, a.setting, a.label, a.impl))
        seeds = {r.seed for r in g.runs}
        g.runs = sorted(g.runs + [r for r in a.runs if r.seed not in seeds], key=lambda r: r.seed)
    return sorted(by_key.values(), key=lambda g: (task_dir(g.task), g.setting))


def cut_at(groups: list[Group], until: int) -> list[Group]:
    """Every run's evaluations at steps <= ``until``, so that runs of different lengths compare at
    equal steps; runs with none are left out. A run cut short has no wall time to report (its
    directory or record keeps only the whole run's): NaN. A run that went past ``until`` counts as
    finished for this view."""
    _check_steps("until", until)
    out = []
    for g in groups:
        runs = []
        for r in g.runs:
            keep = r.steps <= until
            if not keep.any():
                continue
            cut = not keep.all()
            runs.append(
                Run(r.seed, r.path, r.steps[keep], r.evals[keep], math.nan if cut else r.wall_time_s, r.finished or cut)
            )
        if runs:
            out.append(Group(g.task, g.setting, g.label, g.impl, runs))
    return out


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinity (a cut run's wall time) as None: strict JSON has no NaN,
    and jq or a browser refuse the file that Python's json module would write with one."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _check_steps(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a step count >= 1, not {value!r}")


def tail_window(steps: float, window: Optional[int] = None) -> tuple[int, str]:
    """(window in steps, rule) for a run of ``steps`` steps; a given ``window`` is used as it is."""
    if window is not None:
        _check_steps("window", window)
        return window, f"last {window // 1000}k" if window % 1000 == 0 else f"last {window:,}"
    if steps > TAIL_STEPS:
        return TAIL_STEPS, f"last {TAIL_STEPS // 1000}k"
    return max(1, int(round(TAIL_FRACTION * steps))), f"last {TAIL_FRACTION:.0%}"


def _mean_std(values: list[float]) -> dict[str, float]:
    # Population std (ddof 0), as the learning benchmark has always reported it.
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def group_stats(group: Group, window: Optional[int] = None) -> dict[str, Any]:
    """One table row: final, tail and best evaluation, each mean +/- std over the group's seeds. The
    tail is the mean of the evaluations after each run's last step minus the window (``tail_window``)."""
    window, rule = tail_window(max(float(r.steps[-1]) for r in group.runs), window)
    tails = [float(np.mean(r.evals[r.steps > r.steps[-1] - window])) for r in group.runs]
    return {
        "task": group.task,
        "setting": group.setting,
        "label": group.label,
        "impl": group.impl,
        "seeds": [r.seed for r in group.runs],
        "n_seeds": len(group.runs),
        "finished": sum(r.finished for r in group.runs),
        "steps": int(min(r.steps[-1] for r in group.runs)),
        "final": _mean_std([float(r.evals[-1]) for r in group.runs]),
        "tail": {**_mean_std(tails), "window": window, "rule": rule},
        "best": _mean_std([float(r.evals.max()) for r in group.runs]),
        "wall_time_s": float(np.mean([r.wall_time_s for r in group.runs])),
        # What a step costs, evaluations included: each run's steps over its wall time.
        "env_steps_per_s": float(
            np.mean([r.steps[-1] / r.wall_time_s if r.wall_time_s > 0 else math.nan for r in group.runs])
        ),
    }


def format_pm(d: Mapping[str, float]) -> str:
    return f"{d['mean']:.1f} ± {d['std']:.1f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def tail_header(rows: list[dict[str, Any]]) -> str:
    """The tail column's header: its rule and window when every row shares them."""
    kinds = {(r["tail"]["rule"], r["tail"]["window"]) for r in rows}
    if len(kinds) != 1:
        return "tail mean (window per row)"
    rule, window = kinds.pop()
    return f"{rule} ({window:,} steps)" if rule.endswith("%") else f"{rule} steps"


def tail_cell(row: dict[str, Any], header: str) -> str:
    """The tail column's cell, with the row's window when the header cannot say it."""
    per_row = header.startswith("tail")
    return format_pm(row["tail"]) + (f" ({row['tail']['rule']}: {row['tail']['window']:,})" if per_row else "")


def markdown_table(rows: list[dict[str, Any]], window: Optional[int] = None) -> str:
    header = tail_header(rows)
    over = (
        f"its last {window:,} steps (a window given to the summary)"
        if window is not None
        else f"its last {TAIL_STEPS // 1000}k steps, or its last {TAIL_FRACTION:.0%} if it is shorter than that"
    )
    lines = [
        f"Eval return, mean ± std over seeds (population std). *final*: each run's last evaluation; "
        f"*{header}*: the mean of each run's evaluations after {over}; *best*: each run's best evaluation. "
        "*seeds*: runs with an evaluation (how many of them are still running). *env steps/s*: steps over wall "
        "time, evaluations included, mean over seeds.",
        "",
        f"| task | setting | seeds | steps | final eval | {header} | best eval | wall time per seed | env steps/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        running = r["n_seeds"] - r["finished"]
        seeds = f"{r['n_seeds']}" + (f" ({running} running)" if running else "")
        lines.append(
            f"| {r['task']} | {r['label']} | {seeds} | {r['steps']:,} | {format_pm(r['final'])} | "
            f"{tail_cell(r, header)} | "
            f"{format_pm(r['best'])} | {_duration(r['wall_time_s'])} | "
            f"{r['env_steps_per_s']:.0f} |".replace("| nan |", "| — |")
        )
    return "\n".join(lines) + "\n"


def plot_task(
    groups: list[Group], out_png: Union[str, os.PathLike], title: str, anchors: Optional[Mapping[str, float]] = None
) -> Optional[str]:
    """One task's learning curves: a line per setting, mean over seeds +/- std shaded."""

    curves = {g.label: [(r.steps, r.evals) for r in g.runs] for g in groups}
    return plot_seed_curves(curves, out_png, title=title, anchors=anchors, band="std")


@dataclass
class SweepSummary:
    rows: list[dict[str, Any]]
    markdown: str
    pngs: list[Path]
    out_dir: Path


def summarize(
    out_dir: Union[str, os.PathLike],
    write: bool = True,
    add_runs: Sequence[Union[str, os.PathLike]] = (),
    until: Optional[int] = None,
    window: Optional[int] = None,
) -> SweepSummary:
    """Aggregate ``out_dir``'s runs, and those of the ``add_runs`` records that ``out_dir`` has no run of the
    same task, setting and seed for (the first record wins among them); with ``write``, also
    ``sweep_summary.md``/``.json``, ``sweep_runs.json`` and the PNGs. ``until``: the table and the
    PNGs see each run up to that step only (``cut_at``); ``sweep_runs.json`` keeps the whole curves.
    ``window``: the tail column averages every run's evaluations over its last ``window`` steps, in
    place of the 100k-or-10% rule (whose windows are awkward for short cuts: at 120k its 100k window
    reaches back into the random-action phase)."""
    out_dir = Path(out_dir)
    if window is not None:
        _check_steps("window", window)  # refused before anything is read
    if not out_dir.is_dir():
        raise ValueError(f"'{out_dir}' is not a directory")
    groups = collect(out_dir)
    for record in add_runs:
        groups = merge_groups(groups, read_runs_record(record))
    shown = groups if until is None else cut_at(groups, until)
    rows = [group_stats(g, window) for g in shown]
    md = markdown_table(rows, window) if rows else "no run under this directory has an evaluation yet\n"
    pngs: list[Path] = []
    if write:
        atomic_write_bytes(out_dir / SUMMARY_MD, md.encode())
        atomic_write_bytes(
            out_dir / SUMMARY_JSON, json.dumps({"rows": _finite_or_null(rows)}, indent=2, allow_nan=False).encode()
        )
        atomic_write_bytes(out_dir / RUNS_JSON, json.dumps(runs_record(groups)).encode())
        for task in dict.fromkeys(g.task for g in shown):
            png = out_dir / f"curves_{task_dir(task)}.png"
            title = task if until is None else f"{task}, first {until:,} steps"
            if plot_task([g for g in shown if g.task == task], png, title=title):
                pngs.append(png)
    return SweepSummary(rows, md, pngs, out_dir)
