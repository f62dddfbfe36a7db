"""What a run reports: an evaluation's metrics row, the best model, the summary and the plot.

The training loop (``Trainer``) calls ``RunReport`` at each evaluation (``record``) and at the end
(``summary``, ``finish``); the report holds nothing of the loop's but the run's counters, where the
rows and the best evaluation live and are checkpointed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pydpg import __version__
from pydpg.common.envs import EvalResult
from pydpg.core.config import DDPGConfig
from pydpg.files import checkpoint as ckpt_io
from pydpg.train.config import TrainConfig
from pydpg.train.plotting import plot_learning_curve
from pydpg.train.run_log import Progress, RunLogger
from pydpg.train.run_state import RunCounters

BEST_MODEL = "best_model.pt"  # in the run directory (TrainConfig.save_best)


# Preset crossq end to end on one CPU core, Hopper-v5, the C++ update (docs/benchmarks.md, "CrossQ's
# update in C++ against SBX and sb3-contrib"): env-steps/s by critic width. From 1024 on the critic's
# products are ~95 % of a step, so a wider critic's pace scales by width^2 from 1024's.
_STEPS_PER_S = {1024: 11.5, 256: 101.8}


def wide_critic_note(critic_widths: tuple[int, ...], total_steps: int) -> str:
    """What a CPU run of a wide critic (preset crossq's 2048-2048) is told at its start: its pace and
    hours from the measured env-steps/s, and the 256-256 setting's beside."""
    width = max(critic_widths)
    rate = _STEPS_PER_S[1024] * (1024 / width) ** 2
    hours = total_steps / rate / 3600
    cheap = total_steps / _STEPS_PER_S[256] / 3600
    return (
        f"note: a {'-'.join(map(str, critic_widths))} critic is slow on a CPU: about {rate:.1f} env-steps/s on one "
        f"core, {hours:.1f} h for {total_steps} steps (docs/benchmarks.md); with --set critic_hidden=[256,256], the "
        f"setting measured on CPUs, about {_STEPS_PER_S[256]:.0f} env-steps/s ({cheap:.1f} h)"
    )


class RunReport:
    """The reporting side of one run (``out_dir`` None: rows in memory only)."""

    def __init__(
        self,
        config: DDPGConfig,
        train: TrainConfig,
        counters: RunCounters,
        out_dir: Optional[Path],
        env_name: str,
        tensorboard: bool = True,
    ):
        self.config, self.train, self.counters = config, train, counters
        self.out_dir, self.env_name, self.tensorboard = out_dir, env_name, tensorboard
        self.best_model_step: Optional[int] = None  # the evaluation OUT/best_model.pt holds, once written
        self.on_eval: Optional[Callable[[dict[str, Any]], None]] = None

    def start_lines(self, device, critic_widths: tuple[int, ...]) -> list[str]:
        """What a verbose run says as it starts."""
        t = self.train
        lines = [
            f"training {self.env_name} for {t.total_steps} steps, seed {t.seed}, {t.n_envs} env(s), device {device}"
            + (f", output in {self.out_dir}" if self.out_dir else "")
        ]
        if device.type == "cpu" and max(critic_widths, default=0) >= 1024:
            lines.append(wide_critic_note(critic_widths, t.total_steps))
        return lines

    def open_logger(self) -> Optional[RunLogger]:
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        c = self.counters
        resume_step = c.step if (c.step > 0 or c.history) else None
        return RunLogger(self.out_dir, resume_step, self.tensorboard)

    def record(
        self,
        result: EvalResult,
        run_elapsed: float,
        model_dict: Callable[[], dict[str, Any]],
        logger: Optional[RunLogger],
        progress: Progress,
    ) -> dict[str, Any]:
        """One evaluation: its metrics row (with the interval's learner statistics), a new best model
        file when it beats every earlier one, the target check, the log line; returns the row."""
        c = self.counters
        acc = c.interval
        span = c.train_time - acc["train_time"]
        starts = self.config.learning_starts
        row = {
            "step": c.step,
            "wall_time": round(c.elapsed + run_elapsed, 3),
            "sps": (c.step - acc["step"]) / span if span > 0 else math.nan,
            "eval_mean": result.mean,
            "eval_std": result.std,
            "critic_loss": acc["critic_loss"] / acc["n"] if acc["n"] else math.nan,
            "actor_loss": acc["actor_loss"] / acc["n_actor"] if acc["n_actor"] else math.nan,
            "q_mean": acc["q_mean"] / acc["n"] if acc["n"] else math.nan,
            "train_return": float(np.mean(acc["returns"])) if acc["returns"] else math.nan,
            # Updates per stored transition over the interval, once learning has started.
            "replay_ratio": (
                acc["n"] / (c.step - max(acc["step"], starts)) if c.step > max(acc["step"], starts) else math.nan
            ),
            "episodes": c.episodes,
        }
        updates = acc["n"]
        c.history.append(row)
        if c.best is None or result.mean > c.best["eval_mean"]:
            c.best = {"step": c.step, "eval_mean": result.mean, "eval_std": result.std}
            if self.out_dir is not None and self.train.save_best:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                ckpt_io.write_model(
                    self.out_dir / BEST_MODEL,
                    {**model_dict(), "evaluation": {"step": c.step, "mean": result.mean, "std": result.std}},
                )
                self.best_model_step = c.step
        target = self.train.target_return
        if target is not None and result.mean >= target:
            c.reached_target = True
        c.new_interval()
        if logger is not None:
            logger.log(row)
        # Before learning_starts the interval has no updates; "critic nan" there read as a diverged critic.
        if updates:
            learner = f"critic {row['critic_loss']:.4g} | q {row['q_mean']:.4g}"
        elif c.step <= starts:
            learner = f"no updates yet (random actions until step {starts})"
        else:
            learner = "no updates in this interval"
        progress.write(
            f"step {c.step:>9} | eval {result.mean:9.2f} +/- {result.std:7.2f} | {row['sps']:6.0f} sps | {learner}"
        )
        if self.on_eval is not None:
            self.on_eval(row)
        return row

    def summary(self, collector_kind: str, collector_stats: dict[str, Any]) -> dict[str, Any]:
        c = self.counters
        last = c.history[-1] if c.history else None
        return {
            "env_id": self.env_name,
            "seed": self.train.seed,
            "steps": c.step,
            "gradient_steps": c.n_grad,
            "episodes": c.episodes,
            "wall_time_s": round(c.elapsed, 3),
            "sps": round(c.step / c.train_time, 2) if c.train_time > 0 else None,
            "final_eval": None
            if last is None
            else {"step": last["step"], "mean": last["eval_mean"], "std": last["eval_std"]},
            "best_eval": None
            if c.best is None
            else {
                "step": c.best["step"],
                "mean": c.best["eval_mean"],
                "std": c.best["eval_std"],
                "model": BEST_MODEL if self.best_model_step == c.best["step"] else None,
            },
            "reached_target": c.reached_target,
            "collector": {"kind": collector_kind, **collector_stats},
            "config": self.config.to_dict(),
            "train": self.train.to_dict(),
            "pydpg_version": __version__,
        }

    def finish(self, summary: dict[str, Any]) -> None:
        """The end of a run with an output directory: summary.json and the learning curve."""
        ckpt_io.atomic_write_bytes(self.out_dir / "summary.json", json.dumps(summary, indent=2).encode())
        if (self.out_dir / "metrics.csv").exists() and self.counters.history:
            plot_learning_curve(
                self.out_dir / "metrics.csv",
                self.out_dir / "learning_curve.png",
                title=f"{self.env_name} (seed {self.train.seed})",
            )

    def adopt_best_model(self) -> None:
        """On resume: keep OUT/best_model.pt if it is the restored best evaluation's. A file from an
        evaluation after the checkpoint (the resume replays those steps, exactly only on the same
        machine and thread count) or from another run is moved aside, named for its step, and
        replaced by this run's next best."""
        path = None if self.out_dir is None else self.out_dir / BEST_MODEL
        if path is None or not path.is_file():
            return
        try:
            ev = ckpt_io.read_model(path, map_location="cpu").get("evaluation") or {}
        except ckpt_io.CheckpointError:
            ev = {}
        best = self.counters.best
        if best is not None and ev.get("step") == best["step"] and ev.get("mean") == best["eval_mean"]:
            self.best_model_step = best["step"]
            return
        aside = path.with_name(f"best_model.step{ev.get('step', 'unknown')}-before-resume.pt")
        os.replace(path, aside)
        warnings.warn(
            f"{path} is not the best evaluation of the checkpoint resumed from (it holds step "
            f"{ev.get('step', '?')}'s); moved to {aside.name}"
        )


def summary_line(s: dict[str, Any]) -> str:
    """The one line a verbose run ends with."""
    fin, best = s["final_eval"], s["best_eval"]
    ev = (
        ""
        if fin is None
        else (
            f", final eval {fin['mean']:.2f} +/- {fin['std']:.2f}, best {best['mean']:.2f} "
            f"at step {best['step']}" + (f" ({best['model']})" if best.get("model") else "")
        )
    )
    return f"done: {s['steps']} steps in {s['wall_time_s']:.0f} s{ev}"
