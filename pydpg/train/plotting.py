"""Learning-curve PNGs (matplotlib, imported only here and only when a plot is made)."""

from __future__ import annotations

import math
import os
import warnings
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from pydpg.train.run_log import read_metrics

PathLike = Union[str, os.PathLike]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        warnings.warn("matplotlib is not installed: no learning-curve PNG (pip install matplotlib)")
        return None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(
    metrics: Union[PathLike, Sequence[Mapping[str, float]]], out_png: PathLike, title: str = ""
) -> Optional[str]:
    """Eval mean return +/- std against env steps, from a run's metrics.csv (or its rows)."""

    rows = read_metrics(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    rows = [r for r in rows if not math.isnan(float(r["eval_mean"]))]
    plt = _pyplot()
    if plt is None or not rows:
        return None
    steps = np.array([r["step"] for r in rows], dtype=float)
    mean = np.array([r["eval_mean"] for r in rows], dtype=float)
    std = np.nan_to_num(np.array([r["eval_std"] for r in rows], dtype=float))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, mean, lw=1.5)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25, lw=0)
    _style(ax, title, "eval return (mean +/- std over episodes)")
    return _save(fig, plt, out_png)


def plot_seed_curves(
    curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    out_png: PathLike,
    title: str = "",
    anchors: Optional[Mapping[str, float]] = None,
    band: str = "minmax",
) -> Optional[str]:
    """Several labelled groups of (steps, eval mean) curves, one per seed: each group's mean over
    seeds as a line, shaded over seeds by ``band``: "minmax" (min..max) or "std" (mean +/- the
    population std); seeds are cut to their common length. ``anchors`` draws reference returns as
    dashed horizontal lines."""
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    plt = _pyplot()
    if plt is None or not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, runs in curves.items():
        runs = [(np.asarray(s, float), np.asarray(m, float)) for s, m in runs if len(s)]
        if not runs:
            continue
        n = min(len(s) for s, _ in runs)
        steps = runs[0][0][:n]
        ys = np.stack([m[:n] for _, m in runs])
        (line,) = ax.plot(steps, ys.mean(0), lw=1.5, label=f"{label} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            lo, hi = (ys.min(0), ys.max(0)) if band == "minmax" else (ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0))
            ax.fill_between(steps, lo, hi, alpha=0.2, lw=0, color=line.get_color())
    for name, value in (anchors or {}).items():
        ax.axhline(value, ls="--", lw=1, color="gray")
        ax.annotate(name, (ax.get_xlim()[0], value), fontsize=7, color="gray", va="bottom")
    ax.legend(fontsize=7, loc="best", framealpha=0.8)  # several groups: let matplotlib find the emptiest corner
    _style(ax, title, "eval return (mean over seeds; " + ("min..max" if band == "minmax" else "+/- std") + " shaded)")
    return _save(fig, plt, out_png)


def _style(ax, title: str, ylabel: str) -> None:
    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _save(fig, plt, out_png: PathLike) -> str:
    out_png = os.fspath(out_png)
    tmp = out_png + ".tmp.png"
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)  # a reader never sees half a PNG
    return out_png
