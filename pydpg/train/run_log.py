"""What a run writes as it goes: metrics.csv (one row per evaluation), TensorBoard scalars, and the
progress bar or lines on the terminal."""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from pydpg.files import checkpoint as ckpt_io

# "episodes" stays last: a resumed run keeps the rows whose last column is complete.
METRICS_COLUMNS = (
    "step",
    "wall_time",
    "sps",
    "eval_mean",
    "eval_std",
    "critic_loss",
    "actor_loss",
    "q_mean",
    "train_return",
    "replay_ratio",
    "episodes",
)


class Progress:
    """tqdm's bar on stderr (steps, SPS, last eval) when ``bar`` and stderr is a terminal; ``lines``
    prints a line per evaluation (above the bar)."""

    def __init__(self, total: int, bar: bool, lines: bool, stream=None):
        self.lines = lines
        self.stream = stream or sys.stderr
        self.bar = None
        if bar and hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=self.stream, dynamic_ncols=True, mininterval=0.25)

    def update(self, step: int, sps: float, last_eval: Optional[float], force: bool = False) -> None:
        if self.bar is None:
            return
        self.bar.n = step  # the trainer counts steps itself (and resumes mid-run)
        self.bar.set_postfix_str(
            f"{sps:.0f} sps | eval {'-' if last_eval is None else f'{last_eval:.1f}'}", refresh=False
        )
        self.bar.refresh() if force else self.bar.update(0)

    def write(self, line: str) -> None:
        if not self.lines:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunLogger:
    """metrics.csv (one row per evaluation) and TensorBoard scalars under an output directory."""

    def __init__(self, out_dir: Path, resume_step: Optional[int] = None, tensorboard: bool = True):
        self.path = out_dir / "metrics.csv"
        if resume_step is not None and self.path.exists():
            # Rows past the checkpoint were written by the interrupted run; the resumed run
            # writes them again, so the file ends up as the uninterrupted run's.
            with open(self.path, newline="") as f:
                # A row cut short by a kill has no last column; rows past the checkpoint go.
                rows = [
                    r
                    for r in csv.DictReader(f)
                    if r.get(METRICS_COLUMNS[-1]) not in (None, "") and int(r["step"]) <= resume_step
                ]
            ckpt_io.atomic_write_bytes(self.path, _csv_bytes(rows))
        elif not self.path.exists() or resume_step is None:
            ckpt_io.atomic_write_bytes(self.path, _csv_bytes([]))
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, METRICS_COLUMNS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")
            else:
                # purge_step drops the interrupted run's events past the checkpoint.
                self.tb = SummaryWriter(
                    str(out_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1
                )

    def log(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: _fmt(row.get(k)) for k in METRICS_COLUMNS})
        self._file.flush()
        if self.tb is not None:
            step = row["step"]
            for key, tag in (
                ("eval_mean", "eval/mean_return"),
                ("eval_std", "eval/std_return"),
                ("critic_loss", "train/critic_loss"),
                ("actor_loss", "train/actor_loss"),
                ("q_mean", "train/q_mean"),
                ("train_return", "train/episode_return"),
                ("sps", "time/sps"),
            ):
                v = row.get(key)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self.tb.add_scalar(tag, v, step)
            self.tb.flush()

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def _csv_bytes(rows: list[dict]) -> bytes:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, METRICS_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def read_metrics(path: Union[str, os.PathLike]) -> list[dict[str, float]]:
    """metrics.csv rows as dicts of floats (NaN for empty cells)."""
    with open(path, newline="") as f:
        # A cell missing from a short row (a run killed mid-write) reads as None: NaN like an empty one.
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
