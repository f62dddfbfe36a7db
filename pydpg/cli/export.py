"""``pydpg export CHECKPOINT -o policy.pt``: a checkpoint or model file as a deployable policy file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from pydpg.cli.errors import guarded
from pydpg.deploy.export import (
    DEFAULT_ATOL,
    DEFAULT_N_CHECK,
    FORMATS,
    export_checkpoint,
    read_spec_file,
)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``pydpg export CHECKPOINT -o policy.pt [--format torchscript|onnx|pt2]``; returns the exit code."""
    p = argparse.ArgumentParser(prog="pydpg export", description="Export a trained checkpoint as a deployable policy.")
    p.add_argument("checkpoint", help="checkpoint file written by `pydpg train`")
    p.add_argument("-o", "--output", required=True, help="policy file to write (.pt, .onnx or .pt2)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from the output suffix (.onnx, .pt2), else torchscript",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="parity allowance beyond float32 rounding, in [-1, 1] action units (default: 0 for a "
        f"TorchScript file of a pydpg actor, {DEFAULT_ATOL:g} for ONNX/pt2 or a custom actor)",
    )
    p.add_argument("--n-check", type=int, default=DEFAULT_N_CHECK, help="observations in the parity check")
    p.add_argument(
        "--verify-steps",
        type=int,
        default=200,
        metavar="N",
        help="env steps of random actions over which the observation spec and its termination "
        "conditions are checked against the env (default %(default)s)",
    )
    p.add_argument(
        "--verify-perturb",
        type=float,
        default=0.0,
        metavar="STD",
        help="start verification's episodes from resets with Gaussian noise of this standard "
        "deviation added to qpos and qvel, to reach termination bounds (default 0)",
    )
    p.add_argument(
        "--verify-init-states",
        metavar="FILE.npz",
        default=None,
        help="start verification's first episodes from these states: an .npz with arrays qpos [N, nq] and qvel [N, nv]",
    )
    p.add_argument(
        "--observation-spec",
        metavar="FILE",
        default=None,
        help="the observation spec (pydpg.contract.observation) for your own env: a TOML file with an "
        "[observation] table (a run config works) or a JSON file; default: the one the run's "
        "config stated, else the task preset's",
    )
    p.add_argument(
        "--action-spec",
        metavar="FILE",
        default=None,
        help="the action spec (pydpg.contract.action) the policy was trained under: a TOML file with an "
        "[action] table or a JSON file; default: the one the run's config stated (none: ctrl = the output)",
    )
    args = p.parse_args(argv)
    return guarded("export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    fmt = args.format or {".onnx": "onnx", ".pt2": "pt2"}.get(Path(args.output).suffix, "torchscript")
    extra = {}  # else the run's own specs, or the task preset's observation
    if args.observation_spec is not None:
        extra["observation_spec"] = read_spec_file(args.observation_spec, "observation")
    if args.action_spec is not None:
        extra["action_spec"] = read_spec_file(args.action_spec, "action")
    export_checkpoint(
        args.checkpoint,
        args.output,
        format=fmt,
        atol=args.atol,
        n_check=args.n_check,
        verify_steps=args.verify_steps,
        verify_perturb=args.verify_perturb,
        verify_init_states=args.verify_init_states,
        **extra,
    )
    return 0
