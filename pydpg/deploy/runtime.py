"""``pydpg.Policy``: the C++ policy runtime (csrc/deploy/policy_runtime.cpp) from Python.

The same code a C++ control loop links (``pydpg::runtime``) runs here: the file is loaded and
validated by libtorch, the network runs on preallocated buffers under ``c10::InferenceMode`` with a
fixed thread count, NaN/Inf are guarded, actions are clamped to the bounds and every call is timed.

    policy = pydpg.Policy("policy.pt")
    action = policy.act(obs)               # one observation [obs_dim] -> [act_dim]
    actions = policy.act(obs_batch)        # [B, obs_dim] -> [B, act_dim], B <= max_batch
    policy.latency()                       # {"count", "mean_us", "p50_us", ..., "max_us"}
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from pydpg import _core

PolicyFormatError = _core.PolicyFormatError  # ValueError: not a usable pydpg policy file
NonFiniteError = _core.NonFiniteError  # ValueError: NaN/Inf under on_nonfinite="raise"
FORMAT_VERSION = _core.POLICY_FORMAT_VERSION


class Policy:
    """An exported pydpg policy (TorchScript file) run by the C++ runtime.

    Args:
        path: file written by ``pydpg export`` / ``pydpg.deploy.export.export_policy``.
        max_batch: largest batch ``act`` accepts; buffers are allocated once for it.
        num_threads: intra-op threads. libtorch has one pool per process, so this also sets
            ``torch.get_num_threads()`` for the rest of the process; ``0`` leaves it as it is.
        on_nonfinite: what a NaN/Inf observation (or resulting action) does: ``"raise"``
            (``NonFiniteError``), ``"hold"`` (that row's last good action) or ``"safe"``
            (``safe_action``, default zeros clamped into the bounds). Events are counted in
            ``guard_stats()`` whatever the choice.
        backend: ``"auto"`` (allocation-free MLP path when the file describes its network, else the
            TorchScript interpreter), ``"mlp"`` or ``"torchscript"``.
        batch_invariant: compute every row on its own, so that row i's action is exactly what
            ``act`` returns for that row alone, whatever else is in the batch. Off by default: one
            BLAS call per batch is faster, and BLAS picks its kernel by matrix shape, so a row can
            then differ in the last bits between batch sizes (within the rounding bound of
            ``pydpg.deploy.rounding``; a long-trained actor amplifies them).
        mlp_kernels: ``"auto"`` (MKL's sgemm and VML tanh where libtorch exports them, as torch
            itself calls them) or ``"portable"`` (at::addmm and std::tanh, what a torch build
            without MKL gets; allocates per call). ``kernels`` says which were bound.

    Not thread-safe: one Policy per thread.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        max_batch: int = 1,
        num_threads: int = 1,
        on_nonfinite: str = "raise",
        safe_action: Optional[Sequence[float]] = None,
        warmup_calls: int = 64,
        latency_window: int = 1 << 16,
        backend: str = "auto",
        batch_invariant: bool = False,
        mlp_kernels: str = "auto",
    ):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"policy file {path!r} does not exist")
        for name, v in (
            ("max_batch", max_batch),
            ("num_threads", num_threads),
            ("warmup_calls", warmup_calls),
            ("latency_window", latency_window),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not isinstance(batch_invariant, (bool, np.bool_)):
            raise TypeError(f"batch_invariant must be a bool, got {type(batch_invariant).__name__}")
        if safe_action is not None:
            safe_action = [float(x) for x in np.asarray(safe_action, dtype=np.float64).reshape(-1)]
        self._rt = _core.PolicyRuntime(
            path,
            max_batch=int(max_batch),
            num_threads=int(num_threads),
            warmup_calls=int(warmup_calls),
            on_nonfinite=on_nonfinite,
            safe_action=safe_action,
            latency_window=int(latency_window),
            backend=backend,
            batch_invariant=bool(batch_invariant),
            mlp_kernels=mlp_kernels,
        )
        self.metadata: dict[str, Any] = json.loads(self._rt.metadata_json)

    # ------------------------------------------------------------------ acting
    def act(
        self, obs: Union[np.ndarray, torch.Tensor, Sequence[float]], out: Optional[np.ndarray] = None
    ) -> Union[np.ndarray, torch.Tensor]:
        """Actions in the env's units for one observation ``[obs_dim]`` or a batch ``[B, obs_dim]``.

        NumPy in, NumPy out; a CPU torch tensor in, a torch tensor out (zero-copy both ways).
        float32 C-contiguous input is read in place; float64 is converted (one copy). Integer/bool
        dtypes raise TypeError; non-contiguous arrays and wrong shapes raise ValueError. ``out``: a
        preallocated float32 array to write into (no allocation per call).
        """
        if isinstance(obs, torch.Tensor):
            if obs.device.type != "cpu":
                raise TypeError(f"obs is a torch tensor on {obs.device}; the runtime reads CPU memory (use .cpu())")
            if not (obs.is_floating_point()):
                raise TypeError(f"obs must hold floating-point numbers (float32 preferred), got {obs.dtype}")
            result = self._rt.act(obs.detach().numpy(), out)
            return torch.from_numpy(result)
        return self._rt.act(obs, out)

    __call__ = act

    # ------------------------------------------------------------------ statistics
    def latency(self) -> dict[str, float]:
        """Per-call latency since the last reset: count, mean, p50, p90, p99, p99.9, max (µs).
        Percentiles cover the most recent ``window`` calls."""
        return self._rt.latency()

    def reset_latency(self) -> None:
        self._rt.reset_latency()

    def guard_stats(self) -> dict[str, int]:
        """Counts of non-finite observation rows, non-finite action rows, and how they were answered."""
        return self._rt.guard_stats()

    def reset_guard_stats(self) -> None:
        self._rt.reset_guard_stats()

    # ------------------------------------------------------------------ facts
    @property
    def obs_dim(self) -> int:
        return self._rt.obs_dim

    @property
    def act_dim(self) -> int:
        return self._rt.act_dim

    @property
    def max_batch(self) -> int:
        return self._rt.max_batch

    @property
    def backend(self) -> str:
        return self._rt.backend

    @property
    def kernels(self) -> str:
        """What the backend computes with, e.g. ``"sgemm: mkl, tanh: mkl vml"``."""
        return self._rt.kernels

    @property
    def batch_invariant(self) -> bool:
        return self._rt.batch_invariant

    @property
    def action_low(self) -> np.ndarray:
        return np.asarray(self._rt.action_low, dtype=np.float32)

    @property
    def action_high(self) -> np.ndarray:
        return np.asarray(self._rt.action_high, dtype=np.float32)

    @property
    def env_id(self) -> Optional[str]:
        return self.metadata.get("env_id")

    def model_xml(self) -> Optional[str]:
        """The MuJoCo model XML stored in the policy file, if any."""
        xml = self._rt.extra_file("model.xml")
        return xml.decode() if xml else None

    def __repr__(self) -> str:
        return (
            f"Policy({self._rt.path!r}, env_id={self.env_id!r}, obs_dim={self.obs_dim}, act_dim={self.act_dim}, "
            f"max_batch={self.max_batch}, backend={self.backend!r}, on_nonfinite={self._rt.on_nonfinite!r})"
        )


def format_latency_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table of latency dicts (as returned by ``Policy.latency``), one row per name."""
    cols = [
        ("mean_us", "mean"),
        ("p50_us", "p50"),
        ("p90_us", "p90"),
        ("p99_us", "p99"),
        ("p999_us", "p99.9"),
        ("max_us", "max"),
    ]
    lines = ["| latency (µs) | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, d in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{d[k]:.2f}" for k, _ in cols) + " |")
    return "\n".join(lines)
