"""When two floating-point evaluations of one policy are "equal up to rounding".

Two evaluations of the same network on the same observation can sum in different orders: another
batch shape (BLAS picks its kernel by shape), another kernel (MKL, OpenBLAS, the runtime's own
loops), another CPU, another library (TorchScript, ONNX Runtime). Their actions then differ in the
last bits, and a long-trained actor can amplify that a thousandfold. No tolerance measured on one
machine holds on the next, so pydpg compares two such evaluations against a bound computed from the
network and the observation: a forward error analysis (csrc/deploy/rounding_bound.hpp, derived in
docs/theory.md, "When are two float32 evaluations equal?"). For each action entry it gives a centre
and a bound with |evaluation - centre| <= bound for *every* evaluation in the stated arithmetic,
whatever its summation order; two evaluations A and B therefore agree within bound_A + bound_B.

Export's parity check, the runtime's load check (its mlp backend against the module's forward) and
the tests all use this one definition. It needs the network plan that export writes for pydpg's
actors (``metadata["network"]``); a custom actor has none, and its rounding cannot be bounded.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from pydpg import _core
from pydpg.deploy.policy_file import load_torchscript, metadata_json, read_metadata

FLOAT32 = 2.0**-24  # unit roundoff of float32 (round to nearest)
FLOAT64 = 2.0**-53
# A float64 actor's parameters rounded to float32 by the file: each off by at most this, relative.
FLOAT32_ROUNDED_CONSTANTS = FLOAT32 / (1.0 - FLOAT32)


class NoPlanError(ValueError):
    """The policy's metadata describes no network plan, so its rounding cannot be bounded."""


def _module_parts(policy) -> tuple[dict, dict, dict, bool, float]:
    """(metadata, parameters, buffers, normalize, obs_clip) of a policy file or a (module, metadata) pair."""
    if isinstance(policy, (str, os.PathLike)):
        meta, module = read_metadata(policy), load_torchscript(policy)
    else:
        module, meta = policy

    def arrays(named):
        return {name: t.detach().float().cpu().contiguous().numpy() for name, t in named}

    normalize = bool(getattr(module, "normalize", False))
    return (
        meta,
        arrays(module.named_parameters()),
        arrays(module.named_buffers()),
        normalize,
        float(getattr(module, "obs_clip", 0.0)) if normalize else 0.0,
    )


def rounding_bound(
    policy, obs: np.ndarray, *, unit_roundoff: float = FLOAT32, constants: float = 0.0, float32_output: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(centre, bound)``, each ``[n, act_dim]`` float64, for the raw observations ``obs``.

    ``policy``: a pydpg policy file (TorchScript) or a ``(PolicyModule, metadata dict)`` pair.
    ``unit_roundoff``: the evaluation's arithmetic (``FLOAT32``, ``FLOAT64``); ``constants``: the
    relative error of its parameters against the file's float32 ones (``FLOAT32_ROUNDED_CONSTANTS``
    for a float64 actor); ``float32_output``: its actions end rounded to float32.
    Raises ``NoPlanError`` when the metadata has no network plan."""
    meta, parameters, buffers, normalize, clip = _module_parts(policy)
    if not meta.get("network"):
        raise NoPlanError(
            "the policy's metadata describes no network plan (a custom actor): its float32 rounding cannot be bounded"
        )
    obs = np.ascontiguousarray(np.asarray(obs, dtype=np.float32))
    return _core.rounding_bound(
        metadata_json(meta),
        parameters,
        buffers,
        normalize,
        clip,
        obs,
        unit_roundoff=unit_roundoff,
        constants=constants,
        float32_output=float32_output,
    )


def within(a: np.ndarray, b: np.ndarray, allowed: np.ndarray) -> tuple[bool, Optional[tuple], float, float]:
    """Whether |a - b| <= allowed entry by entry (NaN and an infinite allowance fail): ``(ok, index
    of the worst entry, its |a - b|, its allowance)``, the worst being the largest |a - b| / allowed."""
    a, b, allowed = (np.asarray(x, dtype=np.float64) for x in (a, b, allowed))
    if a.shape != b.shape or a.shape != allowed.shape:
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, allowed {allowed.shape}")
    if a.size == 0:
        return True, None, 0.0, 0.0
    d = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(allowed) & (d <= allowed), np.where(allowed > 0, d / allowed, 0.0), np.inf)
    ratio = np.where(np.isnan(d), np.inf, ratio)
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return bool(ratio[i] <= 1.0), tuple(int(k) for k in i), float(d[i]), float(allowed[i])


def assert_within_rounding(
    got: np.ndarray, want: np.ndarray, policy: Union[str, os.PathLike, tuple], obs: np.ndarray, what: str = ""
) -> None:
    """Assert two float32 evaluations of ``policy`` on ``obs`` agree up to float32 rounding (twice
    the bound): the check for comparisons across batch shapes, kernels, CPUs and libraries."""
    _, bound = rounding_bound(policy, obs)
    ok, i, d, allowed = within(np.asarray(got).reshape(bound.shape), np.asarray(want).reshape(bound.shape), 2 * bound)
    if not ok:
        raise AssertionError(
            f"{what or 'evaluations'} differ beyond float32 rounding at {i}: |diff| {d:.3g} > "
            f"{allowed:.3g} (twice the forward error bound)"
        )
