"""Sweeps on Ray Tune: tasks x settings x seeds, one Tune trial per run (``pydpg sweep``).

    from pydpg.experiments.sweep import run_sweep
    result = run_sweep({"tasks": ["Hopper-v5"], "seeds": [0, 1, 2],
                        "settings": {"ddpg": {}, "td3": {"preset": "td3"}}}, "runs/sweep")
    print(result.summary.markdown)

Every trial trains with ``pydpg.train.trainer.Trainer`` (or SB3, for a setting with ``impl = "sb3"``) into
``out_dir/<task>/<setting>/seed<k>/``, a normal run directory, and reports each evaluation to Tune.
Tune's own state (experiment checkpoints, per-trial logs) lives under ``out_dir/_tune/<name>/``.

Resuming. A sweep that was killed is continued by running it again with ``resume=True``: Tune
restores its experiment and restarts the unfinished trials, and a trial that finds a checkpoint in
its run directory continues it with ``Trainer.resume`` (exactly, on the same machine) rather than
starting over. A trial whose run directory holds a finished run reports it and returns. So a run is
never trained twice, even where Tune's state is older than the run directories (a kill between a
trial's end and Tune's next experiment checkpoint).

Ray is started or joined by ``pydpg.train.ray_session`` only: locally it listens on the loopback interface
and starts no dashboard. A cluster given by ``address`` must be on a trusted network (Ray has no
authentication), and ``out_dir`` must be a path every node can write (a shared filesystem).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from pydpg.common.envs import make_env
from pydpg.contract.wrappers import contract_wrapper
from pydpg.core.config import DDPGConfig
from pydpg.experiments.sb3_peer import run_sb3
from pydpg.experiments.sweep_spec import SweepSpec, Trial, load_spec, task_dir
from pydpg.experiments.sweep_summary import SETTING_FILE, SweepSummary, summarize
from pydpg.files.checkpoint import CheckpointError, atomic_write_bytes, resolve_checkpoint
from pydpg.train import ray_session
from pydpg.train.config import TrainConfig, check_observation
from pydpg.train.trainer import Trainer

__all__ = ["run_sweep", "run_trial", "summarize", "load_spec", "SweepSpec", "SweepResult", "SweepError", "check_ray"]

# One CPU per trial: a DDPG update at batch 256 is matmul-bound, and two runs with one thread each
# use two cores better than one run with two threads (shared/DESIGN.md, "Facts worth knowing").
CPUS_PER_TRIAL = 1
TUNE_DIR = "_tune"
SPEC_FILE = "spec.json"  # the resolved trials of an experiment, beside Tune's own state


class SweepError(RuntimeError):
    """Some trials failed; ``result`` holds the sweep's result (its summary covers the others)."""

    def __init__(self, message: str, result: "SweepResult"):
        super().__init__(message)
        self.result = result


@dataclass
class SweepResult:
    out_dir: Path
    name: str
    trials: list[Trial]
    summary: SweepSummary
    wall_time_s: float
    results: Any  # Tune's ResultGrid: per-trial last reported metrics and errors
    failed: list[tuple[str, str]]  # (trial name, error)
    unfinished: list[str]  # trials that neither finished nor failed: Tune was stopped (Ctrl+C)


# ---------------------------------------------------------------------------------------- the trial
def _finished(summary_path: Path, total_steps: int) -> Optional[dict]:
    """The run's summary.json if it holds a finished run of at least ``total_steps`` steps."""
    if not summary_path.is_file():
        return None
    s = json.loads(summary_path.read_text())
    return s if s.get("steps", 0) >= total_steps or s.get("reached_target") else None


# What a run may differ in from its trial and still be that trial: the step count may grow, and how
# often it checkpoints changes nothing it learns (a resume is exact), so a trial started by hand
# with `pydpg train --checkpoint-every` into the sweep's directory is continued by the sweep. The
# thread count and best_model.pt change no learned value either (a run continued by hand with
# `pydpg train --resume --threads 1` is still its trial).
_BOOKKEEPING = frozenset({"total_steps", "checkpoint_every", "keep_checkpoints", "threads", "save_best"})


def _check_same_run(found_agent: dict, found_train: dict, trial: dict, where: Path) -> None:
    """Refuse to continue a run made with other settings (bookkeeping aside, ``_BOOKKEEPING``)."""
    for kind, found, want in (("agent", found_agent, trial["agent"]), ("train", found_train, trial["train"])):
        for key in sorted(set(found) & set(want) - _BOOKKEEPING):
            if found[key] != want[key]:
                raise ValueError(
                    f"{where} holds a run with {kind}.{key} = {found[key]!r}, but this trial has "
                    f"{want[key]!r}; give the setting another name or the sweep another out_dir"
                )


def _run_pydpg(trial: dict, out: Path, on_eval: Callable[[dict], None]) -> tuple[dict, int]:
    """Train (or continue) the trial's run in ``out``: (its summary, the step it started from)."""

    try:
        resolve_checkpoint(out)
    except CheckpointError:  # none yet: a fresh run
        # The trial's thread count is the sweep's CPU share, stored so that a resume by hand keeps it.
        train = TrainConfig.from_dict({**trial["train"], "threads": CPUS_PER_TRIAL})
        trainer = Trainer(DDPGConfig.from_dict(trial["agent"]), train, out_dir=out, verbose=True)
    else:
        trainer = Trainer.resume(out, total_steps=trial["train"]["total_steps"], verbose=True)
        _check_same_run(trainer.config.to_dict(), trainer.train_cfg.to_dict(), trial, out)
    resumed_from = trainer.step
    try:
        # Every evaluation reaches Tune as it happens; the run writes metrics, TensorBoard,
        # checkpoints and summary like any other.
        return trainer.run(on_eval=on_eval), resumed_from
    finally:
        trainer.close()


def run_trial(
    trial: Union[Trial, dict], out_dir: Union[str, os.PathLike], on_eval: Optional[Callable[[dict], None]] = None
) -> tuple[dict, int]:
    """One trial, without Tune, into ``out_dir/<task>/<setting>/seed<k>``: trains it, continues it
    from its checkpoint, or (finished) only reads it. Returns (the run's summary, the step it
    started from: 0 for a fresh run, the total for one that had finished). ``on_eval`` sees each
    new evaluation row."""
    trial = trial.to_dict() if isinstance(trial, Trial) else trial
    out = Path(out_dir) / Trial(**trial).rel_dir
    out.mkdir(parents=True, exist_ok=True)
    on_eval = on_eval or (lambda row: None)
    summary = _finished(out / "summary.json", trial["train"]["total_steps"])
    if summary is not None:  # finished before (Tune's state may predate it): nothing to train
        _check_same_run(summary.get("config", {}), summary.get("train", {}), trial, out)
        return summary, summary["steps"]
    if trial["impl"] == "sb3":
        return run_sb3(trial["agent"], trial["train"], out, on_eval=on_eval), 0  # SB3 runs start over
    return _run_pydpg(trial, out, on_eval)


def _metrics(row: dict) -> dict:
    return {k: row[k] for k in ("step", "eval_mean", "eval_std", "sps") if row.get(k) is not None}


def _trial_main(config: dict[str, Any], trials: dict[str, dict], out_dir: str) -> None:
    """A Tune function trainable: ``run_trial`` of ``trials[config["trial"]]``. Reports each
    evaluation, then the run's final evaluation with ``finished`` and ``resumed_from``."""
    import torch
    from ray import tune

    torch.set_num_threads(CPUS_PER_TRIAL)
    summary, resumed_from = run_trial(
        trials[config["trial"]], out_dir, on_eval=lambda row: tune.report({**_metrics(row), "finished": False})
    )
    final = summary.get("final_eval") or {}
    tune.report(
        {
            **_metrics({"step": summary["steps"], "eval_mean": final.get("mean"), "eval_std": final.get("std")}),
            "resumed_from": resumed_from,
            "finished": True,
        }
    )


# ---------------------------------------------------------------------------------------- the sweep
def check_ray() -> None:
    """ImportError naming the extra if Ray is not installed, without importing Ray: the first import
    of ray must be ray_session.init's, which puts Ray in its loopback-only mode before it."""
    if importlib.util.find_spec("ray") is None:
        ray_session.require_ray("pydpg sweep")


def _check_envs(trials: list[Trial]) -> None:
    """Make each (task, env kwargs) once, and verify each (task, env kwargs, observation spec) a
    setting states, so that a bad id, [env] key or [train] observation fails before Ray starts."""

    seen = set()
    for t in trials:
        observation = t.train.get("observation")
        key = (
            t.task,
            json.dumps(t.train["env_kwargs"], sort_keys=True, default=str),
            json.dumps(observation, sort_keys=True, default=str),
            json.dumps(t.train.get("action"), sort_keys=True, default=str),
            json.dumps(t.train.get("randomization"), sort_keys=True, default=str),
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            wrap = contract_wrapper(t.train.get("action"), t.train.get("observation"), t.train.get("randomization"))
            make_env(t.task, t.train["env_kwargs"], wrapper=wrap).close()
            if observation is not None:
                check_observation(observation, t.task, t.train["env_kwargs"])
        except TypeError as e:  # gym.make(id, **kwargs) with a keyword the env does not take
            raise ValueError(f"setting {t.setting!r} on {t.task}: {e} (check the [env] table)") from None
        except ValueError as e:
            raise ValueError(f"setting {t.setting!r} on {t.task}: {e}") from None


def _check_paths(trials: list[Trial], out: Path) -> None:
    """Every directory a trial writes lies under OUT, whatever its task and setting names hold."""
    root = out.resolve()
    for t in trials:
        d = (out / t.rel_dir).resolve()
        if root != d and root not in d.parents:
            raise ValueError(f"trial {t.name!r} would write to {d}, outside OUT ({root}): rename its task or setting")


def _setting_record(t: Trial, spec: SweepSpec) -> dict[str, Any]:
    train = {k: v for k, v in t.train.items() if k not in ("seed", "total_steps")}
    return {
        "task": t.task,
        "setting": t.setting,
        "label": spec.label(t.setting),
        "impl": t.impl,
        "agent": t.agent,
        "train": train,
    }


def _canonical(kind: str, values: Any) -> str:
    """``values`` of a setting record as comparable JSON. A field that a later pydpg added to
    DDPGConfig or TrainConfig is missing from an older record; it takes its default there, so that a
    sweep started before the field existed still resumes."""
    if kind in ("agent", "train") and isinstance(values, dict):
        import dataclasses

        cls = DDPGConfig if kind == "agent" else TrainConfig
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        values = {**{k: v for k, v in defaults.items() if k not in ("seed", "total_steps")}, **values}
    return json.dumps(values, sort_keys=True, default=list)


def _write_setting_files(trials: list[Trial], spec: SweepSpec, out: Path) -> None:
    """``<task>/<setting>/setting.json``: what the setting is, for the summary and for later sweeps.
    A setting name already used in ``out`` for other values is refused: its runs would mix."""

    records = {}
    for t in trials:
        records.setdefault(out / task_dir(t.task) / t.setting, _setting_record(t, spec))
    for d, rec in records.items():
        path = d / SETTING_FILE
        if path.is_file():
            old = json.loads(path.read_text())
            for kind in ("impl", "agent", "train"):
                if _canonical(kind, old.get(kind)) != _canonical(kind, rec[kind]):
                    raise ValueError(
                        f"setting {rec['setting']!r} of {rec['task']} in {out} was run with other "
                        f"{kind} values ({path}); give the setting another name or use another out_dir"
                    )
    for d, rec in records.items():
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / SETTING_FILE, json.dumps(rec, indent=2).encode())


def _check_not_started(trials: list[Trial], out: Path, name: str) -> None:
    if (out / TUNE_DIR / name).exists():
        raise ValueError(
            f"{out} already holds this sweep ({name}); continue it with resume=True (--resume) or "
            "choose another out_dir"
        )
    for t in trials:
        d = out / t.rel_dir
        if (d / "summary.json").exists() or ((d / "checkpoints").is_dir() and any((d / "checkpoints").iterdir())):
            raise ValueError(
                f"{d} already holds a run; resume=True (--resume) continues or extends it, or choose another out_dir"
            )


def _trial_name(r: Any) -> str:
    # A trial that died before its first report (its worker could not import pydpg, say) comes
    # back with no config; its directory is still named for it (trial_dirname_creator).
    return (r.config or {}).get("trial") or Path(str(r.path)).name


def _outcomes(grid: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """(failed trials with their errors, unfinished trials) of Tune's results. A trial's error carries
    the remote traceback (Tune keeps it in the trial's error.txt); the last line is the exception."""
    failed = [
        (_trial_name(r), (str(r.error).strip().splitlines() or [repr(r.error)])[-1])
        for r in grid
        if r.error is not None
    ]
    unfinished = [_trial_name(r) for r in grid if r.error is None and not (r.metrics or {}).get("finished")]
    return failed, unfinished


def run_sweep(
    spec: Union[SweepSpec, dict, str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    *,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    resume: bool = False,
    verbose: int = 1,
) -> SweepResult:
    """Run every (task, setting, seed) of ``spec`` as a Ray Tune trial into ``out_dir``; then
    ``summarize(out_dir)``. ``address`` joins a Ray cluster (trusted network only), else a local,
    loopback-only Ray with ``num_cpus`` CPUs runs the trials, one CPU each. ``resume=True`` continues
    a sweep that was interrupted (see the module docstring). ``verbose`` is Tune's (0 quiet, 1 status).
    Raises ``SweepError`` (with the result) if a trial failed."""
    check_ray()
    spec = load_spec(spec)
    trials = spec.trials()
    out = Path(out_dir).resolve()  # Tune wants an absolute storage path; trials may run elsewhere
    name = spec.experiment_name(trials)
    spec_path = out / TUNE_DIR / name / SPEC_FILE
    if resume and spec_path.is_file():
        if json.loads(spec_path.read_text()) != json.loads(json.dumps([t.to_dict() for t in trials], default=str)):
            raise ValueError(
                f"{out} holds a sweep named {name!r} with other trials; resume it with the spec it "
                "was started with, or give this one another name"
            )
    elif not resume:
        _check_not_started(trials, out, name)
    _check_envs(trials)
    _check_paths(trials, out)
    _write_setting_files(trials, spec, out)

    ray_session.init(address=address, num_cpus=num_cpus)
    from ray import tune

    # The trials travel once, through Ray's object store; Tune's config holds only their names.
    trainable = tune.with_resources(
        tune.with_parameters(_trial_main, trials={t.name: t.to_dict() for t in trials}, out_dir=str(out)),
        {"cpu": CPUS_PER_TRIAL},
    )
    exp_dir = out / TUNE_DIR / name
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        # resume_errored: a trial that died (its worker killed, say) continues from its checkpoint too.
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.name for t in trials])},
            tune_config=tune.TuneConfig(
                # One worker process per CPU runs trial after trial: no torch import per trial.
                reuse_actors=True,
                trial_name_creator=lambda tr: tr.config["trial"],
                trial_dirname_creator=lambda tr: tr.config["trial"],
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(out / TUNE_DIR), verbose=verbose),
        )
    exp_dir.mkdir(parents=True, exist_ok=True)

    atomic_write_bytes(spec_path, json.dumps([t.to_dict() for t in trials], indent=1, default=str).encode())
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    failed, unfinished = _outcomes(grid)
    result = SweepResult(out, name, trials, summarize(out), wall, grid, failed, unfinished)
    if failed:
        raise SweepError(
            f"{len(failed)} of {len(trials)} trials failed (each one's traceback is in "
            f"{exp_dir}/<trial>/error.txt; resume=True / --resume reruns them):\n"
            + "\n".join(f"  {n}: {e}" for n, e in failed),
            result,
        )
    return result
