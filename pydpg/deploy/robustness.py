"""Will the exported policy survive the robot? Its return across model errors, delay and noise.

``robustness_report(policy, varies)`` evaluates the policy file in the C++ runtime (``pydpg.Policy``)
acting in its Gymnasium env (through the action contract the file carries), at the nominal model and
at every value of each varied quantity, one at a time, the others nominal. A varied quantity is
named as in a ``[randomization]`` table (pydpg.contract.randomization), and each point is that
table with a range of one value:

    body_mass=0.7:1.3:7     every body's mass times 0.7, 0.8, ..., 1.3 (a model field: any of FIELDS)
    delay=0:2               the action applied 0, 1 or 2 control steps late
    obs_noise=0:0.05:3      Gaussian observation noise of std 0, 0.025, 0.05
    action_noise=0:0.2:3    Gaussian action noise, in half-ranges of the action space
    geom_friction=0.5,1,1.5 a list of values instead of LOW:HIGH:N

Each point runs ``episodes`` episodes from the same seeds (the policy's ``eval_seed`` by default,
as `pydpg eval` and `pydpg run`); the noise draws follow from them. Points run in parallel
processes. The report gives each point's mean return and its fraction of the nominal return
(1 + (R - R_nominal) / |R_nominal|: R / R_nominal when the nominal return is positive), and per
quantity the values where the policy keeps at least ``keep`` (0.8) of it.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from pydpg.common.envs import evaluate
from pydpg.common.names import did_you_mean
from pydpg.contract.randomization import FIELDS, MAX_DELAY
from pydpg.deploy.loop import _env_for
from pydpg.deploy.policy_file import read_metadata
from pydpg.deploy.runtime import Policy

QUANTITIES = (*FIELDS, "delay", "obs_noise", "action_noise")
DEFAULT_POINTS = 5


@dataclass(frozen=True)
class Vary:
    name: str
    values: tuple[float, ...]


def parse_vary(text: str) -> Vary:
    """``NAME=LOW:HIGH[:N]`` (N evenly spaced values, default 5; every whole step for delay) or
    ``NAME=V1,V2,...``; refused by name when the quantity, a number or the range is wrong."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not rest:
        raise ValueError(f"--vary {text!r}: expected NAME=LOW:HIGH[:N] or NAME=V1,V2,...")
    if name not in QUANTITIES:
        raise ValueError(
            f"--vary {text!r}: unknown quantity {name!r}{did_you_mean(name, QUANTITIES)} "
            f"(known: {', '.join(QUANTITIES)})"
        )

    def number(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"--vary {text!r}: {s!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"--vary {text!r}: {s!r} is not finite")
        return v

    if "," in rest:
        values = [number(s) for s in rest.split(",")]
    else:
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--vary {text!r}: expected LOW:HIGH[:N]")
        lo, hi = number(parts[0]), number(parts[1])
        if lo > hi:
            raise ValueError(f"--vary {text!r}: low {lo} > high {hi}")
        if len(parts) == 3:
            n = number(parts[2])
            if n != int(n) or not 1 <= n <= 1000:
                raise ValueError(f"--vary {text!r}: N must be a whole number in 1..1000")
            values = list(np.linspace(lo, hi, int(n))) if n > 1 else [lo]
        elif name == "delay":
            values = list(np.arange(int(lo), int(hi) + 1))
        else:
            values = list(np.linspace(lo, hi, DEFAULT_POINTS))
    if name == "delay" and any(v != int(v) or not 0 <= v <= MAX_DELAY for v in values):
        raise ValueError(f"--vary {text!r}: a delay is a whole number of control steps in 0..{MAX_DELAY}")
    if any(v < 0 for v in values):  # a scale, a std or a delay
        raise ValueError(f"--vary {text!r}: {name} must be >= 0")
    return Vary(name, tuple(float(v) for v in values))


def perturbation(name: str, value: float, *more: tuple[str, float]) -> dict:
    """The randomization spec of one point: a range of one value for ``name`` (and for each further
    (name, value) pair: a grid point varies two at once)."""
    spec: dict[str, Any] = {"version": 1}
    for n, v in ((name, value), *more):
        if n == "delay":
            spec.setdefault("action", {})["delay"] = [int(v), int(v)]
        elif n == "obs_noise":
            spec["observation"] = {"noise": v}
        elif n == "action_noise":
            spec.setdefault("action", {})["noise"] = v
        else:
            spec.setdefault("model", []).append({"field": n, "scale": [v, v]})
    return spec


def _point(job: dict) -> dict:
    """One point, in a worker process: the policy in its env under one perturbation."""
    env = _env_for(job["env_id"], job["action"], job["observation"], job["perturbation"])
    try:
        result = evaluate(Policy(job["policy"]).act, env, job["episodes"], seed=job["seed"])
    finally:
        env.close()
    return {"returns": result.returns.tolist(), "lengths": result.lengths.tolist()}


def _fraction(value: float, nominal: float) -> float:
    """How much of the nominal return a point keeps: value / nominal for a positive nominal return,
    and in general 1 + (value - nominal) / |nominal|, so that losing 20 % of |nominal| reads 0.8
    whatever the return's sign (a reaching task's returns are negative)."""
    return math.nan if nominal == 0 else 1.0 + (value - nominal) / abs(nominal)


def robustness_report(
    policy: Union[str, os.PathLike],
    varies: Sequence[Vary],
    *,
    env_id: Optional[str] = None,
    episodes: int = 5,
    seed: Optional[int] = None,
    jobs: Optional[int] = None,
    keep: float = 0.8,
    grid: bool = False,
    map_points: Optional[Callable[[Callable[[dict], dict], list[dict]], list[dict]]] = None,
) -> dict[str, Any]:
    """The report as data (see the module docstring): ``nominal``, ``rows`` (one per point),
    ``survives`` (per quantity: the values keeping ``keep`` of the nominal return), and with ``grid``
    (two quantities) ``grid``: every pair of their values at once, as ``mean`` and ``fraction``
    matrices (rows: the first quantity's values). ``map_points(fn, jobs)`` evaluates the points
    elsewhere (``[fn(j) for j in jobs]``, in order: `pydpg robustness --ray-address` passes Ray's);
    without it they run in ``jobs`` local processes."""
    meta = read_metadata(policy)
    env_id = env_id or meta.get("env_id")
    if env_id is None:
        raise ValueError(f"{policy} names no env: pass env_id (--env)")
    if not varies:
        raise ValueError("nothing to vary: give at least one quantity (--vary NAME=LOW:HIGH[:N])")
    if episodes < 1 or not 0 < keep <= 1:
        raise ValueError(f"episodes must be >= 1 and keep in (0, 1], got {episodes} and {keep}")
    if grid and len(varies) != 2:
        raise ValueError(f"a grid varies two quantities at once; {len(varies)} given")
    if seed is None:
        seed = meta.get("eval_seed") if isinstance(meta.get("eval_seed"), int) else 100
    base = {"policy": os.fspath(policy), "env_id": env_id, "action": meta.get("action"), "episodes": episodes}
    base["observation"] = meta.get("observation")
    points = [(None, None)] + [(v.name, x) for v in varies for x in v.values]
    pairs = [(x, y) for x in varies[0].values for y in varies[1].values] if grid else []
    perturbations = [None if n is None else perturbation(n, x) for n, x in points]
    perturbations += [perturbation(varies[0].name, x, (varies[1].name, y)) for x, y in pairs]
    jobs_ = [{**base, "seed": seed, "perturbation": p} for p in perturbations]
    workers = max(1, min(jobs or os.cpu_count() or 1, len(jobs_)))
    if map_points is not None:
        results = list(map_points(_point, jobs_))
    elif workers == 1:
        results = [_point(j) for j in jobs_]
    else:
        # spawn: a fork of a process holding torch's thread pools can deadlock in the child
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_point, jobs_))
    nominal = float(np.mean(results[0]["returns"]))
    rows = []
    for (name, value), r in zip(points[1:], results[1 : len(points)]):
        mean = float(np.mean(r["returns"]))
        rows.append(
            {
                "quantity": name,
                "value": value,
                "mean": mean,
                "std": float(np.std(r["returns"])),
                "fraction": _fraction(mean, nominal),
                "returns": r["returns"],
                "lengths": r["lengths"],
            }
        )
    survives = {}
    for v in varies:
        kept = [r["value"] for r in rows if r["quantity"] == v.name and r["fraction"] >= keep]
        survives[v.name] = kept
    report_grid = None
    if grid:
        means = [float(np.mean(r["returns"])) for r in results[len(points) :]]
        shape = (len(varies[0].values), len(varies[1].values))
        report_grid = {
            "x": varies[0].name,
            "y": varies[1].name,
            "xs": list(varies[0].values),
            "ys": list(varies[1].values),
            "mean": np.reshape(means, shape).tolist(),
            "fraction": np.reshape([_fraction(m, nominal) for m in means], shape).tolist(),
        }
    return {
        "policy": os.fspath(policy),
        "env_id": env_id,
        "episodes": episodes,
        "seed": seed,
        "keep": keep,
        "trained_under": meta.get("randomization"),
        "nominal": {
            "mean": nominal,
            "std": float(np.std(results[0]["returns"])),
            "returns": results[0]["returns"],
            "lengths": results[0]["lengths"],
        },
        "rows": rows,
        "survives": survives,
        "grid": report_grid,
    }


def report_table(report: dict) -> str:
    """The report as text: the nominal return, then per point its mean, std and fraction."""
    n = report["nominal"]
    lines = [
        f"{report['policy']} on {report['env_id']}: {report['episodes']} episode(s) per point from seed "
        f"{report['seed']}; trained under {'randomization' if report['trained_under'] else 'the nominal model only'}",
        f"nominal: {n['mean']:.1f} ± {n['std']:.1f}",
        "",
        f"{'quantity':18} {'value':>8} {'return':>10} {'± std':>8} {'of nominal':>11}",
    ]
    for r in report["rows"]:
        frac = "n/a" if math.isnan(r["fraction"]) else f"{100 * r['fraction']:.0f} %"
        lines.append(f"{r['quantity']:18} {r['value']:8.3g} {r['mean']:10.1f} {r['std']:8.1f} {frac:>11}")
    g = report.get("grid")
    if g:
        lines += ["", f"both at once, fraction of nominal ({g['x']} down, {g['y']} across):"]
        lines.append(f"{'':10}" + "".join(f"{y:>9.3g}" for y in g["ys"]))
        for x, row in zip(g["xs"], g["fraction"]):
            lines.append(f"{x:<10.3g}" + "".join(f"{100 * f:>8.0f}%" for f in row))
    lines.append("")
    for name, kept in report["survives"].items():
        values = [r["value"] for r in report["rows"] if r["quantity"] == name]
        verdict = (
            "at every value tried"
            if len(kept) == len(values)
            else ("at none of the values tried" if not kept else "at " + ", ".join(f"{v:.3g}" for v in kept))
        )
        lines.append(f"keeps >= {100 * report['keep']:.0f} % of its nominal return under {name}: {verdict}")
    return "\n".join(lines)


def plot_report(report: dict, path: Union[str, os.PathLike]) -> None:
    """One panel per quantity: mean return ± std against the value, the nominal return and the
    ``keep`` line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["survives"])
    g = report.get("grid")
    panels = len(names) + (1 if g else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    if g:  # the last panel: both quantities at once, as a heatmap of the fraction of nominal
        ax = axes[0][-1]
        im = ax.imshow(np.array(g["fraction"]) * 100, origin="lower", aspect="auto", cmap="RdYlGn", vmin=0, vmax=120)
        ax.set_xticks(range(len(g["ys"])), [f"{y:.3g}" for y in g["ys"]], fontsize=7)
        ax.set_yticks(range(len(g["xs"])), [f"{x:.3g}" for x in g["xs"]], fontsize=7)
        ax.set_xlabel(g["y"])
        ax.set_ylabel(g["x"])
        fig.colorbar(im, ax=ax, label="% of nominal")
    nominal = report["nominal"]["mean"]
    for ax, name in zip(axes[0], names):
        rows = [r for r in report["rows"] if r["quantity"] == name]
        x = [r["value"] for r in rows]
        y = np.array([r["mean"] for r in rows])
        s = np.array([r["std"] for r in rows])
        ax.plot(x, y, marker="o")
        ax.fill_between(x, y - s, y + s, alpha=0.2)
        ax.axhline(nominal, color="gray", linestyle="--", label="nominal")
        ax.axhline(report["keep"] * nominal, color="red", linestyle=":", label=f"{100 * report['keep']:.0f} %")
        ax.set_xlabel(name)
        ax.set_ylabel("return")
        ax.legend(fontsize=7)
    fig.suptitle(Path(report["policy"]).name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(report: dict, path: Union[str, os.PathLike]) -> None:
    Path(path).write_text(json.dumps(report, indent=1) + "\n")
