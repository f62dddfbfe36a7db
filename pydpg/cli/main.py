"""The ``pydpg`` command line: ``train``, ``eval``, ``sweep`` and ``presets``.

Only argparse is imported at module level: ``pydpg --help`` must not pay for torch, gymnasium or
MuJoCo. Each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pydpg.cli.errors import EXIT_USAGE, CLIError, guarded

if TYPE_CHECKING:
    from pydpg.train.trainer import Trainer


def _int_at_least(minimum: int):
    """An argparse type: an integer (underscores allowed, as in 300_000) no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as a TOML value (numbers, booleans, [lists]), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    from pydpg.presets import _tomllib  # light: pydpg.presets imports no torch

    try:
        value = _tomllib().loads(f"v = {raw}")["v"]
    except Exception:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    from pydpg.core.config import algorithm_presets  # light, as above

    parser = argparse.ArgumentParser(
        prog="pydpg", description="DDPG (and TD3) on Gymnasium MuJoCo tasks, with a C++ replay buffer."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train an agent",
        description=(
            "Train DDPG on ENV_ID. Settings are layered: task preset (shipped for the MuJoCo v5 tasks) < "
            "--preset < --config FILE.toml < --td3 < --set and the other flags."
        ),
    )
    t.add_argument("env_id", nargs="?", metavar="ENV_ID", help="Gymnasium environment id, e.g. HalfCheetah-v5")
    t.add_argument("--steps", type=_positive_int, help="total environment steps (default: the preset's)")
    t.add_argument("--seed", type=_nonneg_int, help="random seed (default 0)")
    t.add_argument(
        "--config", metavar="FILE.toml", help="TOML file with [agent], [train], [env] and [observation] tables"
    )
    t.add_argument("--out", metavar="DIR", help="output directory (default runs/ENV_ID/seedS)")
    t.add_argument("--device", help="torch device: cpu or cuda (default cpu)")
    t.add_argument("--td3", action="store_true", help="switch on TD3's twin critics, delayed actor, target smoothing")
    t.add_argument(
        "--preset",
        metavar="NAME",
        help=f"an algorithm preset ({', '.join(algorithm_presets())}) or a task preset (see `pydpg presets`)",
    )
    t.add_argument("--resume", metavar="DIR", help="continue the run (or checkpoint) in DIR exactly where it stopped")
    t.add_argument("--n-envs", type=_positive_int, help="parallel environments (default 1; per worker with --workers)")
    t.add_argument(
        "--workers",
        type=_positive_int,
        help="collect with N Ray actors feeding this learner (needs pydpg[ray]); default: no workers, "
        "the envs are stepped in this process",
    )
    t.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster (HOST:PORT of its head) instead of starting a local, loopback-only "
        "Ray. Ray has no authentication: the cluster must be on a trusted network",
    )
    t.add_argument("--eval-every", type=_nonneg_int, help="evaluate every N steps (0: never)")
    t.add_argument("--eval-episodes", type=_positive_int, help="episodes per evaluation")
    t.add_argument("--checkpoint-every", type=_nonneg_int, help="checkpoint every N steps (0: only at the end)")
    t.add_argument("--target-return", type=float, help="stop once an evaluation's mean return reaches this")
    t.add_argument(
        "--env-kwarg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for gymnasium.make, e.g. xml_file=my_robot.xml (repeatable)",
    )
    t.add_argument(
        "--set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="any DDPGConfig/TrainConfig field, e.g. tau=0.01 or hidden=[64,64] (repeatable)",
    )
    t.add_argument(
        "--threads",
        type=_positive_int,
        help="torch CPU threads (default: torch's choice); stored with the run, so --resume keeps it",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")

    e = sub.add_parser(
        "eval",
        help="evaluate a trained agent",
        description=("Run noiseless episodes of a model file, checkpoint directory or run directory."),
    )
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="model file (.pt), checkpoint dir or run dir")
    e.add_argument("--episodes", type=_positive_int, default=10, help="number of episodes (default 10)")
    e.add_argument("--seed", type=_nonneg_int, help="first reset seed (default: the run's seed + 100)")
    e.add_argument("--env", metavar="ENV_ID", help="evaluate on this env id instead of the training env")
    e.add_argument("--render-video", metavar="FILE", help="write the episodes as a video (.mp4 or .gif)")
    e.add_argument("--device", help="torch device (default cpu)")

    s = sub.add_parser(
        "sweep",
        help="run tasks x settings x seeds as trials on Ray Tune; summarize a sweep",
        description=(
            "Run every (task, setting, seed) of SPEC.toml as a Ray Tune trial, each a normal run directory "
            "OUT/<task>/<setting>/seed<k>/, then print the table (final, tail and best eval, mean +/- std over "
            "seeds) and write OUT/sweep_summary.md, OUT/sweep_summary.json, OUT/sweep_runs.json and "
            "OUT/curves_<task>.png. See "
            "docs/sweeps.md for the spec format. Needs the optional extra: pip install 'pydpg[ray]'."
        ),
    )
    s.add_argument("spec", nargs="?", metavar="SPEC.toml", help="the sweep spec")
    s.add_argument("--out", metavar="DIR", help="output directory (default runs/sweeps/<SPEC name>)")
    s.add_argument(
        "--ray-address",
        metavar="ADDR",
        help=(
            "join the Ray cluster whose head is at ADDR (HOST:PORT, 'auto' or ray://...) instead of starting a "
            "local Ray. Ray has no authentication: anyone who can reach the cluster can run code on it, so it "
            "must be on a trusted network. DIR must be on a filesystem every node can write. Without it, a "
            "local Ray listens on 127.0.0.1 only and starts no dashboard"
        ),
    )
    s.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all); each trial takes one")
    s.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue an interrupted sweep: unfinished trials continue from their checkpoints, finished ones "
            "are not run again"
        ),
    )
    s.add_argument(
        "--summarize",
        metavar="DIR",
        help=(
            "only aggregate the sweep in DIR again (no Ray needed); also writes DIR/sweep_runs.json, every "
            "run's evaluation curve, small enough to keep where run directories are not"
        ),
    )
    s.add_argument(
        "--add-runs",
        metavar="FILE",
        action="append",
        default=[],
        help=(
            "with --summarize: also count the runs of FILE (a sweep_runs.json of an earlier summary) whose "
            "task, setting and seed DIR has no run of; may be repeated"
        ),
    )
    s.add_argument(
        "--until",
        metavar="STEP",
        type=int,
        help=(
            "with --summarize: the table and plots see every run up to STEP only, so that runs of different "
            "lengths compare at equal steps (sweep_runs.json keeps the whole curves)"
        ),
    )
    s.add_argument(
        "--window",
        metavar="STEPS",
        type=int,
        help=(
            "with --summarize: the tail column averages each run's evaluations over its last STEPS steps "
            "(default: the last 100k, or the last 10%% of a shorter run)"
        ),
    )
    s.add_argument("--quiet", action="store_true", help="no Tune status output")

    p = sub.add_parser("presets", help="list the shipped presets, or print one")
    p.add_argument("name", nargs="?", help="preset to print (an algorithm preset: every [agent] key with its value)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="print the reference of every [agent] and [train] key, with defaults and their sources (docs/config.md)",
    )
    # These parse their own arguments (pydpg.cli.export, .run, .journey, .robustness); listed here for --help.
    for name, text in _DELEGATED_HELP.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


_DELEGATED_HELP = {
    "export": "export a checkpoint as a deployable policy (TorchScript, ONNX or .pt2) with a parity check",
    "run": "run an exported policy in the shipped C++ control loop (MuJoCo C API, fixed rate)",
    "journey": "the main job: train briefly, export, run in the C++ loop, print returns and latency",
    "robustness": "an exported policy's return across model errors, delay and noise (table, PNG, JSON)",
}


def _delegated(command: str):
    """Subcommands that own their argument parsing, imported only when used."""
    if command == "export":
        from pydpg.cli.export import export_main  # import time: see the module docstring

        return export_main
    if command == "run":
        from pydpg.cli.run import run_main  # import time: see the module docstring

        return run_main
    if command == "robustness":
        from pydpg.cli.robustness import robustness_main  # import time: see the module docstring

        return robustness_main
    from pydpg.cli.journey import journey_main  # import time: see the module docstring

    return journey_main


# ---------------------------------------------------------------------------------------- train
_CONFIG_FLAGS = (
    "config",
    "td3",
    "preset",
    "n_envs",
    "eval_every",
    "eval_episodes",
    "checkpoint_every",
    "target_return",
    "seed",
    "env_kwarg",
    "sets",
    "workers",
    "ray_address",
)


def _start_training(args: argparse.Namespace) -> "Trainer":
    """The Trainer that ``pydpg train`` runs: a resumed run's, or a new one from the flags."""
    from pydpg.train.trainer import Trainer  # import time: see the module docstring

    if args.resume is not None:
        trainer = Trainer.resume(
            args.resume,
            total_steps=args.steps,
            device=args.device,
            threads=args.threads,
            progress=not args.no_progress,
            verbose=True,
            tensorboard=not args.no_tensorboard,
        )
        if args.env_id is not None and args.env_id != trainer.train_cfg.env_id:
            raise CLIError(f"{args.resume} is a run of {trainer.train_cfg.env_id!r}, not {args.env_id!r}")
        threads = trainer.train_cfg.threads
        print(
            f"resuming {trainer.env_name} from step {trainer.step} ({args.resume}), "
            f"{threads if threads is not None else 'default'} torch thread(s)",
            file=sys.stderr,
        )
    else:
        from pydpg.train.config import resolve, split_overrides  # import time: see the module docstring

        agent_over, train_over = split_overrides(dict(args.sets))
        if args.device is not None:
            agent_over["device"] = args.device
        for flag, key in (
            ("steps", "total_steps"),
            ("seed", "seed"),
            ("n_envs", "n_envs"),
            ("eval_every", "eval_every"),
            ("eval_episodes", "eval_episodes"),
            ("checkpoint_every", "checkpoint_every"),
            ("target_return", "target_return"),
            ("workers", "workers"),
            ("ray_address", "ray_address"),
            ("threads", "threads"),
        ):
            if getattr(args, flag) is not None:
                train_over[key] = getattr(args, flag)
        config, train = resolve(
            args.env_id,
            preset=args.preset,
            config_file=args.config,
            td3=args.td3,
            agent=agent_over,
            train=train_over,
            env_kwargs=dict(args.env_kwarg),
        )
        out = Path(args.out) if args.out else Path("runs") / args.env_id / f"seed{train.seed}"
        if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
            raise CLIError(
                f"{out} already holds a run; continue it with `pydpg train --resume {out}` or choose another --out"
            )
        trainer = Trainer(
            config, train, out_dir=out, progress=not args.no_progress, verbose=True, tensorboard=not args.no_tensorboard
        )
    return trainer


def cmd_train(args: argparse.Namespace) -> int:
    if args.env_id is None and args.resume is None:
        raise CLIError("train needs ENV_ID (or --resume DIR)")
    if args.resume is not None:
        changed = [
            f"--{f.replace('_', '-')}".replace("--sets", "--set")
            for f in _CONFIG_FLAGS
            if getattr(args, f) is not None and getattr(args, f) is not False and getattr(args, f) != []
        ]
        if args.out is not None:
            changed.append("--out")
        if changed:
            raise CLIError(
                f"--resume continues a run with its own settings; {', '.join(changed)} cannot be "
                "changed (only --steps, --device, --threads, --no-progress)"
            )
    try:
        trainer = _start_training(args)
    except KeyboardInterrupt:
        # Ctrl-C while environments or Ray workers start (which can take minutes on a loaded
        # machine): no step was taken, so there is nothing to save; exit as an interrupted run does.
        again = (
            f"`pydpg train --resume {args.resume}` continues it"
            if args.resume is not None
            else "run the same command again to start"
        )
        print(f"\ninterrupted while starting, before training; {again}", file=sys.stderr)
        return 130
    try:
        trainer.run()
    except KeyboardInterrupt:
        print(
            f"\ninterrupted at step {trainer.step}; `pydpg train --resume {trainer.out_dir}` continues from "
            "the last checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        trainer.close()
    print(f"outputs in {trainer.out_dir}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    if args.render_video:
        suffix = Path(args.render_video).suffix.lower()
        if suffix not in (".mp4", ".gif"):
            raise CLIError(f"--render-video writes .mp4 or .gif files, got {args.render_video!r}")
        # Without a display, MuJoCo's default GLFW backend cannot open a context; EGL renders
        # offscreen on GPUs and Mesa. Must be set before the renderer is created.
        if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
            os.environ["MUJOCO_GL"] = "egl"
    from pydpg.common.envs import evaluate, make_env  # import time: see the module docstring
    from pydpg.contract.wrappers import contract_wrapper  # import time: see the module docstring
    from pydpg.files.checkpoint import load_model_any  # import time: see the module docstring
    from pydpg.files.model import agent_from_model, make_policy  # import time: see the module docstring

    model, _ = load_model_any(args.checkpoint, map_location=args.device)
    run = model["run"]
    env_id = args.env or run.get("env_id")
    if env_id is None:
        raise CLIError(f"{args.checkpoint} does not name its environment; pass --env ENV_ID")
    agent, normalizer = agent_from_model(model, device=args.device)
    wrapper = contract_wrapper(run.get("action"), run.get("observation"))  # the run's contracts, if any
    if args.render_video:
        env = _make_rendering_env(env_id, run.get("env_kwargs") or {}, wrapper)
    else:
        env = make_env(env_id, run.get("env_kwargs") or {}, wrapper=wrapper)
    if tuple(env.observation_space.shape) != (int(model["obs_dim"]),):
        raise CLIError(
            f"{env_id} has observations of shape {env.observation_space.shape}; the model expects ({model['obs_dim']},)"
        )
    seed = args.seed if args.seed is not None else int(run.get("seed", 0)) + int(run.get("eval_seed_offset", 100))
    result = evaluate(make_policy(agent, normalizer), env, args.episodes, seed, record=bool(args.render_video))
    print(f"{env_id}: return {result}")
    for i, (r, n) in enumerate(zip(result.returns, result.lengths)):
        print(f"  episode {i}: return {r:.2f}, length {n}")
    if args.render_video:
        fps = int(env.metadata.get("render_fps") or 30)
        write_video(result.frames, args.render_video, fps)
        print(f"video: {args.render_video} ({len(result.frames)} frames, {fps} fps)")
    env.close()
    return 0


def _make_rendering_env(env_id: str, env_kwargs: dict, wrapper=None):
    """An env with render_mode="rgb_array" that has rendered one frame, or a CLIError saying why not."""
    from pydpg.common.envs import check_env_id, make_env  # import time: see the module docstring

    check_env_id(env_id)  # a bad id is a ValueError of its own, not a rendering problem
    try:
        env = make_env(env_id, env_kwargs, render_mode="rgb_array", wrapper=wrapper)
        env.reset(seed=0)
        frame = env.render()
    except ValueError:
        raise
    except Exception as e:  # GL failures surface as RuntimeError, AttributeError, FatalError, ... by backend
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise CLIError(
            f"offscreen rendering does not work here (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')}: "
            f"{type(e).__name__}: {detail}). It needs EGL (MUJOCO_GL=egl, e.g. apt-get install libegl1) or "
            "OSMesa (MUJOCO_GL=osmesa, apt-get install libosmesa6); evaluation without --render-video works "
            "regardless"
        ) from None
    if frame is None:
        raise CLIError(f"{env_id} returned no frame for render_mode='rgb_array'; it cannot be recorded")
    return env


def write_video(frames: Sequence[Any], path: str, fps: int) -> None:
    """Write RGB frames to ``path``: GIF through Pillow, MP4 through imageio's ffmpeg plugin."""
    if not frames:
        raise CLIError("no frames were recorded")
    tmp = f"{path}.tmp{Path(path).suffix}"
    if path.lower().endswith(".gif"):
        try:
            from PIL import Image
        except ImportError:
            raise CLIError("writing .gif needs Pillow (pip install pillow)") from None
        images = [Image.fromarray(f) for f in frames]
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    else:
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (imageio's mp4 writer)
        except ImportError:
            raise CLIError(
                "writing .mp4 needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                "or write a .gif instead"
            ) from None
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- sweep
def cmd_sweep(args: argparse.Namespace) -> int:
    if args.summarize is not None:
        given = [
            f
            for f, v in (
                ("SPEC.toml", args.spec),
                ("--out", args.out),
                ("--ray-address", args.ray_address),
                ("--num-cpus", args.num_cpus),
                ("--resume", args.resume),
            )
            if v
        ]
        if given:
            raise CLIError(f"--summarize DIR only reads DIR; {', '.join(given)} cannot be given with it")
        from pydpg.experiments.sweep_summary import summarize  # import time: see the module docstring

        summary = summarize(args.summarize, add_runs=args.add_runs, until=args.until, window=args.window)
        print(summary.markdown, end="")
        print(
            f"written in {summary.out_dir}: sweep_summary.md, sweep_summary.json, sweep_runs.json"
            + "".join(f", {p.name}" for p in summary.pngs),
            file=sys.stderr,
        )
        return 0
    summary_only = [
        f
        for f, given in (
            ("--add-runs FILE", args.add_runs),
            ("--until STEP", args.until is not None),
            ("--window STEPS", args.window is not None),
        )
        if given
    ]
    if summary_only:
        raise CLIError(f"{', '.join(summary_only)} {'goes' if len(summary_only) == 1 else 'go'} with --summarize DIR")
    if args.spec is None:
        raise CLIError("sweep needs SPEC.toml (or --summarize DIR)")
    if args.ray_address is not None and args.num_cpus is not None:
        raise CLIError("--num-cpus sizes a local Ray; a cluster joined with --ray-address has its own CPUs")
    from pydpg.experiments.sweep import SweepError, check_ray, run_sweep  # import time: see the module docstring

    try:
        check_ray()
    except ImportError as e:
        raise CLIError(str(e)) from None

    out = Path(args.out) if args.out else Path("runs") / "sweeps" / Path(args.spec).stem
    resume_hint = f"`pydpg sweep {args.spec} --out {out} --resume` continues it"
    try:
        # Tune writes its status to stdout; there it would mix with the table, which is the output.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_sweep(
                args.spec,
                out,
                address=args.ray_address,
                num_cpus=args.num_cpus,
                resume=args.resume,
                verbose=0 if args.quiet else 1,
            )
    except SweepError as e:
        print(e.result.summary.markdown, end="")
        print(f"pydpg sweep: error: {e}\n{resume_hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; {resume_hint}", file=sys.stderr)
        return 130
    print(result.summary.markdown, end="")
    print(
        f"{len(result.trials)} trials in {result.wall_time_s:.0f} s; written in {result.out_dir}: sweep_summary.md, "
        "sweep_summary.json, sweep_runs.json" + "".join(f", {p.name}" for p in result.summary.pngs),
        file=sys.stderr,
    )
    if result.unfinished:
        print(f"{len(result.unfinished)} trial(s) did not finish (Tune was stopped); {resume_hint}", file=sys.stderr)
        return 130
    return 0


# ---------------------------------------------------------------------------------------- presets
def cmd_presets(args: argparse.Namespace) -> int:
    from pydpg import presets  # import time: see the module docstring
    from pydpg.core.config import DDPGConfig, algorithm_presets  # import time: see the module docstring

    if getattr(args, "reference", False):
        from pydpg.cli.config_reference import reference_markdown  # import time: see the module docstring

        print(reference_markdown(), end="")
        return 0
    if args.name:
        from pydpg.cli.config_reference import _value  # import time: see the module docstring

        if args.name in DDPGConfig.presets():
            # Every [agent] key with the preset's value, as a config file would state it.
            changed = DDPGConfig.presets()[args.name]
            print(
                f"# algorithm preset {args.name!r}: every [agent] key (DDPGConfig); "
                + (f"{len(changed)} differ from the defaults (marked)" if changed else "all are the defaults")
                + ". docs/config.md says what each is and where its default comes from."
            )
            print("[agent]")
            for f in dataclasses.fields(DDPGConfig):
                value = changed.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
                mark = "  # preset" if f.name in changed else ""
                # TOML has no null: an unset key (None) is shown as a comment.
                print(f"# {f.name} unset (None){mark}" if value is None else f"{f.name} = {_value(value)}{mark}")
        else:
            print(presets.text(args.name), end="")
        return 0
    print("algorithm presets: " + ", ".join(algorithm_presets()))
    print("task presets:      " + ", ".join(presets.available()))
    return 0


# ---------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--cmake-dir"]:  # as `pybind11 --cmakedir`: where find_package(pydpg) looks
        from pydpg.cli.cmake_dir import cmake_dir_main  # import time: see the module docstring

        return cmake_dir_main()
    if argv and argv[0] in _DELEGATED_HELP:
        return _delegated(argv[0])(argv[1:])  # each guards itself (pydpg.cli.errors)
    parser = build_parser()
    parser.add_argument(
        "--cmake-dir", action="store_true", help="print the directory of pydpg's CMake package config and exit"
    )
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(version("pydpg"))
        except PackageNotFoundError:
            print("0+unknown")
        return 0
    commands = {"train": cmd_train, "eval": cmd_eval, "sweep": cmd_sweep, "presets": cmd_presets}
    if args.command not in commands:
        parser.print_help()
        return EXIT_USAGE
    return guarded(args.command, lambda: commands[args.command](args))
