"""Export a trained actor as a self-contained policy file for deployment.

The exported module is the whole observation -> action map a robot needs:

    obs [B, obs_dim] float32
      -> (obs - mean) / sqrt(var + eps), clipped to +-clip      (when trained with obs normalization)
      -> actor (MLP, tanh)                                      in [-1, 1]
      -> low + (a + 1) / 2 * (high - low), clamped to [low, high]   in the env's own action units
    actions [B, act_dim] float32

so nobody rescales by hand (Stable-Baselines3 documents the bare [-1, 1] actor output as a trap).

File formats:

- ``torchscript`` (``.pt``, primary): loaded by libtorch's ``torch::jit::load`` in C++ (the pydpg
  runtime, ``pydpg.Policy``) and by ``torch.jit.load`` in Python. Metadata travels as the extra file
  ``pydpg_policy.json``; the MuJoCo model XML, when known, as ``model.xml``.
- ``onnx``: dynamic batch axis, metadata in the model's ``metadata_props["pydpg_policy"]``.
- ``pt2``: ``torch.export`` + AOTInductor package, metadata in the package's AOTI metadata.

Every export reloads the written file and compares it with the in-memory actor on >= 1000
observations. For pydpg's actors each action may differ by what float32 rounding can do, whatever
the order of its sums (``pydpg.deploy.rounding``, a forward error bound computed from the network and the
observation), plus ``atol`` (default 0 for TorchScript, 1e-5 for ONNX/pt2, whose tanh kernels the
bound does not model); a custom actor, whose rounding cannot be bounded, gets ``atol`` (1e-5) and
float32's resolution. A difference beyond that raises ``ParityError`` and leaves no file behind.
Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import math
import numbers
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pydpg import __version__, presets
from pydpg.contract.action import ActionContract, as_action_spec, verify_action
from pydpg.contract.history import observing
from pydpg.contract.observation import (
    ObservationBuilder,
    ObservationError,
    ObservationMismatch,
    Verification,
    as_spec,
    verify_report,
)
from pydpg.contract.observation import task_spec as preset_observation
from pydpg.contract.randomization import as_randomization_spec
from pydpg.core.networks import Actor, BatchRenorm
from pydpg.core.normalizer import standardize
from pydpg.core.sale import AVG_L1_EPS, SaleActor
from pydpg.deploy.policy_file import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    MODEL_FILE,
    load_torchscript,
    metadata_json,
    quiet_torchscript,
)
from pydpg.deploy.rounding import FLOAT32_ROUNDED_CONSTANTS, FLOAT64, rounding_bound, within
from pydpg.files.checkpoint import load_model_any
from pydpg.files.model import agent_from_model

FORMATS = ("torchscript", "onnx", "pt2")
DEFAULT_ATOL = 1e-5
DEFAULT_N_CHECK = 1024


class ParityError(RuntimeError):
    """The exported file does not reproduce the in-memory actor within tolerance."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    n_checked: int
    metadata: dict
    tolerance: float = DEFAULT_ATOL  # the largest per-entry allowance (pydpg.deploy.rounding's bound, or atol)
    worst_ratio: float = 0.0  # max over entries of |diff| / allowance: < 1 passed

    def __str__(self) -> str:
        parity = self.metadata.get("parity") or {}
        within = (
            "every action within its float32 rounding bound"
            if parity.get("rule") == "rounding_bound"
            else f"within atol (largest allowance {self.tolerance:.3g})"
        )
        return (
            f"exported {self.format} policy to {self.path}: parity check passed on {self.n_checked} observations, "
            f"max |exported - actor| = {self.max_abs_diff:.3g}, {within} (the closest at "
            f"{self.worst_ratio:.0%} of it); "
            + (
                f"pydpg.Policy runs it on its {self.runtime_backend} backend"
                if self.runtime_backend
                else "pydpg.Policy loads TorchScript files only"
            )
            + self._dated()
        )

    def _dated(self) -> str:
        """Said only when the policy is older than the run (a TD7 policy checkpoint)."""
        step, run = self.metadata.get("policy_step"), self.metadata.get("training_steps")
        if step is None or run is None or step == run:
            return ""
        return f"; the policy is the checkpoint taken at step {step} of the run's {run}"

    @property
    def runtime_backend(self) -> Optional[str]:
        """What ``pydpg.Policy`` / the C++ runtime runs this file on by default: "mlp" for pydpg's
        plain MLP actor (described in the metadata), else "torchscript" (the module's forward());
        None for the formats the runtime does not load (ONNX, pt2)."""
        if self.format != "torchscript":
            return None
        return "mlp" if self.metadata.get("network") else "torchscript"


# ----------------------------------------------------------------------------------------- the module
class PolicyModule(nn.Module):
    """Normalization + actor + action scaling as one module; see the module docstring."""

    # Constants, so TorchScript folds the branches away (and the C++ runtime reads them as attributes).
    __constants__ = ["normalize", "obs_clip"]

    def __init__(
        self,
        actor: nn.Module,
        action_low: np.ndarray,
        action_high: np.ndarray,
        obs_mean: Optional[np.ndarray] = None,
        obs_var: Optional[np.ndarray] = None,
        obs_eps: float = 1e-8,
        obs_clip: float = 0.0,
        obs_dim: Optional[int] = None,
    ):
        super().__init__()
        self.actor = actor
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float64))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float64))
        self.normalize = obs_mean is not None
        self.obs_clip = float(obs_clip or 0.0)
        if self.normalize:
            mean = torch.as_tensor(np.asarray(obs_mean, dtype=np.float64))
            std = torch.sqrt(torch.as_tensor(np.asarray(obs_var, dtype=np.float64)) + obs_eps)
        else:
            mean = torch.zeros(obs_dim or 1, dtype=torch.float64)
            std = torch.ones(obs_dim or 1, dtype=torch.float64)
        # Computed in float64 and stored in float32: the runtime's mlp backend reads these very buffers.
        self.register_buffer("obs_mean", mean.float())
        self.register_buffer("obs_std", std.float())
        self.register_buffer("action_low", low.float())
        self.register_buffer("action_high", high.float())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # float32 throughout, exactly as pydpg.core.normalizer.RunningNormalizer.forward computes it.
        x = obs
        if self.normalize:
            x = (x - self.obs_mean) / self.obs_std
            if self.obs_clip > 0:
                x = torch.clamp(x, -self.obs_clip, self.obs_clip)
        a = torch.clamp(self.actor(x), -1.0, 1.0).double()
        # pydpg.common.envs.scale_action's arithmetic, in float64 like numpy does it there: for the same
        # actor output the deployed action is the training env's action rounded once to float32.
        low = self.action_low.double()
        high = self.action_high.double()
        out = (low + (a + 1.0) * 0.5 * (high - low)).float()
        return torch.minimum(torch.maximum(out, self.action_low), self.action_high)


def _reference(
    actor: nn.Module, obs: np.ndarray, low: np.ndarray, high: np.ndarray, norm: Optional[dict], normalizer=None
) -> np.ndarray:
    """What the trained agent does in Python (trainer.make_policy + envs.scale_action), computed with
    the in-memory actor and normalizer on their own device."""
    p = next(actor.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    with torch.no_grad():
        if normalizer is not None and callable(getattr(normalizer, "normalize", None)):
            x = torch.as_tensor(normalizer.normalize(obs)).to(device, dtype)
        elif norm is not None:
            # Plain statistics normalize as RunningNormalizer does, in float32 like the exported module.

            x = standardize(
                torch.as_tensor(obs, dtype=torch.float32),
                norm["mean"],
                norm["var"],
                float(norm["eps"]),
                float(norm.get("clip") or 0.0),
            ).to(device, dtype)
        else:
            x = torch.as_tensor(obs.astype(np.float64), dtype=dtype, device=device)
        a = np.clip(actor(x).double().cpu().numpy(), -1.0, 1.0)
    return np.clip(low + (a + 1.0) * 0.5 * (high - low), low, high)


def _check_observations(obs_dim: int, norm: Optional[dict], n: int, seed: int = 0) -> np.ndarray:
    """n observations spread around the training distribution (3 std wide), plus the mean itself."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, obs_dim)) * 3.0
    if norm is not None:
        obs = np.asarray(norm["mean"]) + z * np.sqrt(np.asarray(norm["var"]) + norm["eps"])
        obs[0] = norm["mean"]
    else:
        obs = z
        obs[0] = 0.0
    return obs.astype(np.float32)


# ----------------------------------------------------------------------------------------- the plan
def _linear_spec(mod: nn.Linear, name: str) -> Optional[dict]:
    if type(mod) is not nn.Linear or mod.bias is None:
        return None
    return {
        "weight": f"actor.{name}.weight",
        "bias": f"actor.{name}.bias",
        "in": mod.in_features,
        "out": mod.out_features,
    }


def _network_plan(actor: nn.Module) -> Optional[dict]:
    """Describe the actor so the C++ runtime can run it without the TorchScript interpreter: pydpg's
    Actor (Linear/activation stack + tanh, each Linear optionally after CrossQ's BatchRenorm, kind
    "mlp") or TD7's SaleActor (kind "sale"). None for
    any other actor: the runtime then calls forward(). The runtime accepts a plan only after it
    reproduces forward() at load, so a plan that lies costs speed, never correctness."""

    if type(actor) is SaleActor:
        return _sale_plan(actor)
    if type(actor) is not Actor or not isinstance(getattr(actor, "net", None), nn.Sequential):
        return None
    acts = {nn.ReLU: "relu", nn.Tanh: "tanh"}
    layers, hidden, norm = [], set(), None
    mods = list(actor.net.named_children())
    for i, (name, mod) in enumerate(mods):
        if isinstance(mod, nn.Linear):
            spec = _linear_spec(mod, f"net.{name}")
            if spec is None:
                return None
            if norm is not None:
                spec["input_norm"], norm = norm, None
            layers.append(spec)
        elif type(mod) is BatchRenorm and norm is None:
            # CrossQ's layer before a Linear, in evaluation mode; the runtime repeats its float32 steps.
            p = f"actor.net.{name}"
            norm = {
                "kind": "batch_renorm",
                "mean": f"{p}.running_mean",
                "var": f"{p}.running_var",
                "weight": f"{p}.weight",
                "bias": f"{p}.bias",
                "eps": mod.eps,
            }
        elif type(mod) in acts and i + 1 < len(mods) and norm is None:
            hidden.add(acts[type(mod)])
        else:
            return None
    if not layers or len(hidden) > 1 or not isinstance(mods[-1][1], nn.Linear):
        return None
    return {
        "kind": "mlp",
        "layers": layers,
        "hidden_activation": hidden.pop() if hidden else "identity",
        "output_activation": "tanh",
    }


def _sale_plan(actor: nn.Module) -> Optional[dict]:
    """SaleActor.forward as a plan: h = [AvgL1Norm(l0 s), zs(s)], zs = AvgL1Norm(zs3 elu(zs2 elu(zs1 s)))
    from the frozen encoder, then relu layers l1, l2 and tanh(l3)."""

    enc = actor.encoder
    specs = [
        _linear_spec(m, n)
        for m, n in (
            (actor.l0, "l0"),
            (enc.zs1, "encoder.zs1"),
            (enc.zs2, "encoder.zs2"),
            (enc.zs3, "encoder.zs3"),
            (actor.l1, "l1"),
            (actor.l2, "l2"),
            (actor.l3, "l3"),
        )
    ]
    if any(s is None for s in specs):
        return None
    return {
        "kind": "sale",
        "state_layer": specs[0],
        "encoder": {"layers": specs[1:4], "hidden_activation": "elu"},
        "norm": {"kind": "avg_l1", "eps": AVG_L1_EPS},
        "layers": specs[4:],
        "hidden_activation": "relu",
        "output_activation": "tanh",
    }


# ----------------------------------------------------------------------------------------- task spec
def task_spec(env) -> Optional[dict]:
    """The C++ control loop's timing for ``env``: physics steps per control step, the physics
    timestep, the control rate and the episode's time limit. None for envs that are not MuJoCo
    envs (Gymnasium's MujocoEnv, or any env with ``model`` and ``frame_skip``).

    It is all the loop needs besides the observation spec (``pydpg.contract.observation``), which also
    states when an episode ends: there is no reward or reset code in the loop. Returns come from
    replaying its trace through the env (``pydpg.deploy.replay_trace``), and episodes start from the
    env's own initial states (``pydpg run`` samples them).
    """
    u = getattr(env, "unwrapped", env)
    if not (hasattr(u, "model") and hasattr(u, "frame_skip") and hasattr(getattr(u, "model"), "opt")):
        return None
    timestep = float(u.model.opt.timestep)
    return {
        "frame_skip": int(u.frame_skip),
        "timestep": timestep,
        "control_hz": 1.0 / (timestep * int(u.frame_skip)),
        "max_episode_steps": getattr(getattr(env, "spec", None), "max_episode_steps", None) or 1000,
    }


def _checked_observation_spec(
    given, env_id: Optional[str], env_spec, env, verification: dict
) -> tuple[Optional[dict], Optional[str], Optional[Verification]]:
    """The observation spec to store, a note, and its verification report: ``given``, else the one
    shipped with ``env_id``'s preset; verified (observations and terminations) against a fresh copy
    of the env (the env itself, reset and stepped, when it has no spec to copy), with
    ``verification``'s steps / perturb / init_states (``observation.verify_report``). A wrong given
    spec raises ``ObservationMismatch``; a preset's that does not fit this env (other env kwargs:
    another model, other observation or termination switches) is left out, with a note."""

    spec = as_spec(given) if given is not None else (preset_observation(env_id) if env_id else None)
    if spec is None:
        return None, None, None
    import gymnasium as gym

    target = gym.make(env_spec) if env_spec is not None else env
    if target is None:
        return spec, None, None
    try:
        # The env observes the spec's base; the policy, through the history wrapper it trained with.
        report = verify_report(spec, observing(target, spec), **verification)
    except (ObservationMismatch, ObservationError) as e:
        if given is not None:
            raise
        return (
            None,
            (
                f"observation spec left out: the {env_id} preset's does not fit this env ({e}); pass "
                "observation_spec= (or --observation-spec) so `pydpg run` can build its observations"
            ),
            None,
        )
    finally:
        if target is not env:
            target.close()
    return spec, None, report


def _describe_env(env, env_id: Optional[str], observation_spec, xml: Optional[str], verification: dict) -> dict:
    """What the policy file records about ``env`` (a single env or a vector env, which one fresh
    single env of the same spec stands for): env id, MuJoCo model XML and model, the verified
    observation spec, the loop's timing, and a note on what was left out."""
    subs = getattr(env, "envs", None)
    single = subs[0] if subs else (None if hasattr(env, "num_envs") else env)
    spec = getattr(single, "spec", None) or getattr(env, "spec", None)
    if env_id is None and spec is not None:
        env_id = spec.id
    u = getattr(single, "unwrapped", None)
    if xml is None and getattr(u, "fullpath", None) and os.path.exists(u.fullpath):
        xml = Path(u.fullpath).read_text()
    observation, note, report = _checked_observation_spec(observation_spec, env_id, spec, single, verification)
    return {
        "env_id": env_id,
        "xml": xml,
        "model": getattr(u, "model", None),
        "observation": observation,
        "task": task_spec(single) if single is not None else None,
        "note": note,
        "verification": report,
    }


# ----------------------------------------------------------------------------------------- sources
def _as_numpy(x) -> Optional[np.ndarray]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def normalizer_stats(normalizer) -> Optional[dict]:
    """{mean, var, eps, clip} from an object exposing those attributes (pydpg.core.normalizer), or a dict."""
    if normalizer is None:
        return None
    get = normalizer.get if isinstance(normalizer, dict) else (lambda k, d=None: getattr(normalizer, k, d))
    mean, var = _as_numpy(get("mean")), _as_numpy(get("var"))
    if mean is None or var is None:
        raise TypeError(f"normalizer must expose mean and var, got {type(normalizer).__name__}")
    eps = float(get("eps", 1e-8) if get("eps", None) is not None else 1e-8)
    clip = get("clip", None)
    clip = 0.0 if clip is None or not math.isfinite(float(clip)) else float(clip)
    if mean.shape != var.shape or mean.ndim != 1:
        raise ValueError(f"normalizer mean {mean.shape} and var {var.shape} must be equal 1-D shapes")
    if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var + eps > 0).all()):
        raise ValueError("normalizer statistics must be finite with var + eps > 0")
    return {"mean": mean.tolist(), "var": var.tolist(), "eps": eps, "clip": clip}


def _holders(source) -> tuple:
    """Where an agent's parts are: ``source`` itself (an agent) or its ``agent`` (a Trainer, the
    API's object); nothing for a bare actor module."""
    return () if isinstance(source, nn.Module) else (source, getattr(source, "agent", None))


def _resolve_actor(source) -> nn.Module:
    if isinstance(source, nn.Module):
        return source
    # An agent's policy_actor is what it deploys: its TD7 policy checkpoint, where it keeps one.
    for holder in _holders(source):
        for attr in ("policy_actor", "actor"):
            if isinstance(getattr(holder, attr, None), nn.Module):
                return getattr(holder, attr)
    raise TypeError(
        f"cannot find an actor in {type(source).__name__}: pass a DDPG agent, an actor module, or a checkpoint path"
    )


def _policy_step(source, training_steps: Optional[int]) -> Optional[int]:
    """The env step the exported policy comes from: a TD7 policy checkpoint's own (it can be far
    behind the run), else the run's."""
    for holder in _holders(source):
        checkpoints = getattr(holder, "checkpoints", None)
        if hasattr(checkpoints, "saved_at_step"):
            return checkpoints.saved_at_step
    return training_steps


def _step_count(name: str, value, unit: str = "env steps") -> Optional[int]:
    """An env step count (or a seed) as metadata holds it: None (unknown) or a whole number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0 ({unit}) or None, got {value!r}")
    return int(value)


def _first_linear(actor: nn.Module) -> Optional[nn.Linear]:
    return next((m for m in actor.modules() if isinstance(m, nn.Linear)), None)


def _env_of(source, env):
    if env is not None:
        return env
    for attr in ("eval_env", "env", "envs", "vec"):
        e = getattr(source, attr, None)
        if e is not None:
            return e
    return None


# ----------------------------------------------------------------------------------------- writing
def _tmp_beside(path: Path, suffix: str = ".tmp") -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _reference_arithmetic(actor: nn.Module) -> dict:
    """The arithmetic ``_reference`` evaluates the actor in, as ``pydpg.deploy.rounding.rounding_bound``
    takes it: its dtype's unit roundoff (TF32's where a GPU may use it for float32 products), and for
    a float64 actor the rounding of its parameters to the file's float32; its output is not rounded."""
    p = next(actor.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    u = torch.finfo(dtype).eps / 2
    if p is not None and p.device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        u = 2.0**-11
    return {
        "unit_roundoff": u,
        "constants": FLOAT32_ROUNDED_CONSTANTS if torch.finfo(dtype).bits > 32 else 0.0,
        "float32_output": False,
    }


def _parity_allowance(
    module: "PolicyModule",
    meta: dict,
    obs: np.ndarray,
    actor: nn.Module,
    reference: np.ndarray,
    atol: float,
    half_range: np.ndarray,
) -> tuple[np.ndarray, str]:
    """Per entry, how far the file's actions may be from the reference, and how that was decided.

    With a network plan: the forward error bound of the file's float32 evaluation plus that of the
    reference's own arithmetic (pydpg.deploy.rounding), which holds for any summation order on any CPU,
    plus ``atol`` x the action half-range. Without one (a custom actor) rounding cannot be bounded:
    ``atol`` x the half-range plus the float32 resolution of the largest action."""
    if meta.get("network"):
        _, file_bound = rounding_bound((module, meta), obs)
        _, ref_bound = rounding_bound((module, meta), obs, **_reference_arithmetic(actor))
        return file_bound + ref_bound + atol * half_range, "the float32 rounding bound of both evaluations"
    step = _float32_step(reference)
    return np.broadcast_to(atol * half_range + step, reference.shape).copy(), (
        f"atol {atol:g} x the action half-range + the float32 resolution of the actions: the actor has no "
        "network plan, so its rounding cannot be bounded"
    )


def _function_check(
    file_module: nn.Module,
    module: "PolicyModule",
    meta: dict,
    obs: np.ndarray,
    actor: nn.Module,
    low: np.ndarray,
    high: np.ndarray,
    norm: Optional[dict],
) -> Optional[str]:
    """Whether the file computes the actor's function, judged in float64, where rounding leaves a
    wrong file ~2^29 times less room to hide than in float32: the file's module and the actor, both
    evaluated in float64, must agree within the float64 rounding bound of each (the file still rounds
    its output to float32, the actor's parameters may have been float64). The reference normalizes
    with the statistics as the file defines them, float32 mean and sqrt(var + eps) rounded once,
    computed here from ``norm`` and not taken from the module under test. Returns what failed, or None."""
    x = torch.from_numpy(obs.astype(np.float64))
    if norm is not None:
        mean = torch.from_numpy(np.asarray(norm["mean"], np.float64).astype(np.float32).astype(np.float64))
        std = torch.from_numpy(
            np.sqrt(np.asarray(norm["var"], np.float64) + float(norm["eps"])).astype(np.float32).astype(np.float64)
        )
        x = (x - mean) / std
        if norm.get("clip"):
            x = torch.clamp(x, -float(norm["clip"]), float(norm["clip"]))
    actor64 = copy.deepcopy(actor).double().cpu().eval()
    with torch.no_grad():
        a = np.clip(actor64(x).numpy(), -1.0, 1.0)
        file64 = copy.deepcopy(file_module).double()(torch.from_numpy(obs.astype(np.float64))).double().numpy()
    ref64 = np.clip(low + (a + 1.0) * 0.5 * (high - low), low, high)
    rounded = any(p.dtype != torch.float32 for p in actor.parameters())
    _, file_bound = rounding_bound((module, meta), obs, unit_roundoff=FLOAT64, float32_output=True)
    _, ref_bound = rounding_bound(
        (module, meta),
        obs,
        unit_roundoff=FLOAT64,
        float32_output=False,
        constants=FLOAT32_ROUNDED_CONSTANTS if rounded else 0.0,
    )
    ok, worst, diff, allowed = within(file64, ref64, file_bound + ref_bound)
    if ok:
        return None
    where = f" at observation {worst[0]}, action {worst[1]}" if worst else ""
    return (
        f"the exported module computes another function than the actor: evaluated in float64 they differ{where} "
        f"by |diff| = {_plain(diff)} > {_plain(allowed)} (float64 rounding of both)"
    )


def _float32_step(values: np.ndarray) -> float:
    """The gap between adjacent float32 numbers at the largest |value|."""
    top = float(np.max(np.abs(values), initial=0.0))
    return float(np.spacing(np.float32(top))) if np.isfinite(top) else 0.0


def _plain(x) -> str:
    """A number as a message shows it: 0.000123, never np.float64(0.000123)."""
    return f"{float(x):.3g}"


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return math.inf if not np.isfinite(d).all() else float(d.max(initial=0.0))


def _write_torchscript(module: PolicyModule, tmp: Path, meta: dict, model_xml: Optional[str], obs: np.ndarray):
    with quiet_torchscript():
        scripted = torch.jit.script(module)
        extra = {METADATA_FILE: metadata_json(meta, indent=1)}
        if model_xml is not None:
            extra[MODEL_FILE] = model_xml
        # Through memory: the archive's root folder is then "archive", not the temporary file's name.
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files=extra)
        tmp.write_bytes(buf.getvalue())
        with torch.inference_mode():
            return load_torchscript(tmp)(torch.from_numpy(obs)).numpy()


def _write_onnx(module: PolicyModule, tmp: Path, meta: dict, obs: np.ndarray):
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "--format onnx needs the onnx package: pip install 'pydpg[bench]' or pip install onnx"
        ) from e
    example = torch.from_numpy(obs[:2].copy())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # The TorchScript-based exporter: no onnxscript dependency, and it handles this static graph.
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["obs"],
            output_names=["actions"],
            dynamic_axes={"obs": {0: "batch"}, "actions": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    entry = model.metadata_props.add()
    entry.key, entry.value = "pydpg_policy", metadata_json(meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    try:
        import onnxruntime as ort
    except ImportError:
        print(
            "onnxruntime is not installed: the ONNX file was checked against torch's ONNX graph only", file=sys.stderr
        )
        return None
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return sess.run(["actions"], {"obs": obs})[0]


def _write_pt2(module: PolicyModule, tmp: Path, meta: dict, obs: np.ndarray):
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1 << 16)
    example = (torch.from_numpy(obs[:4].copy()),)
    ep = torch.export.export(module, example, dynamic_shapes={"obs": {0: batch}})
    # AOTInductor keeps string metadata inside the package; the loader's get_metadata() returns it.
    torch._inductor.aoti_compile_and_package(
        ep, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": {"pydpg_policy": metadata_json(meta)}}
    )
    loaded = torch._inductor.aoti_load_package(str(tmp))
    with torch.inference_mode():
        return loaded(torch.from_numpy(obs)).numpy()


def export_policy(
    source,
    path: Union[str, os.PathLike],
    *,
    env=None,
    env_id: Optional[str] = None,
    action_low: Optional[Sequence[float]] = None,
    action_high: Optional[Sequence[float]] = None,
    normalizer=None,
    obs_dim: Optional[int] = None,
    training_steps: Optional[int] = None,
    policy_step: Optional[int] = None,
    eval_return: Optional[float] = None,
    format: str = "torchscript",
    n_check: int = DEFAULT_N_CHECK,
    atol: Optional[float] = None,
    model_xml: Optional[str] = None,
    observation_spec=None,
    action_spec=None,
    randomization=None,
    eval_seed: Optional[int] = None,
    verify_steps: int = 200,
    verify_perturb: float = 0.0,
    verify_init_states=None,
    verbose: bool = True,
) -> ExportResult:
    """Write ``source``'s actor as a deployable policy file and check it against the actor.

    ``source``: a DDPG agent (``.policy_actor``), an actor module, or an object holding an ``agent``.
    ``env``: a Gymnasium env (or ``env_id``) supplies the action bounds, env id, the MuJoCo model and
    the task description the C++ control loop needs; otherwise pass ``action_low``/``action_high``.
    ``normalizer``: observation statistics used in training (object or dict with mean, var, eps, clip).
    ``training_steps``: the run's env steps (a Trainer's own by default); ``policy_step``: the step
    the policy comes from, by default a TD7 policy checkpoint's, else ``training_steps``.
    ``eval_seed``: the seed of the first reset of the run's evaluations (the run's seed + 100 for a
    Trainer or a run's checkpoint), recorded so that `pydpg run` starts where `pydpg eval` does.
    ``observation_spec``: how the observation is built from mjData (``pydpg.contract.observation``); defaults
    to the spec shipped with the task preset of ``env_id``. With an env it is verified against the
    env's observations and terminations over ``verify_steps`` steps of random actions, each episode
    starting from the env's reset, perturbed by ``verify_perturb`` (a standard deviation added to
    qpos and qvel), or from ``verify_init_states`` (an .npz or dict of ``qpos``/``qvel`` rows):
    ``ObservationMismatch`` names the first wrong term. The file records what verification saw
    (metadata ``verification``); a termination condition it never saw fail is warned about.
    ``atol``: an allowance beyond float32 rounding, in the actor's [-1, 1] units (None: 0 for a
    TorchScript file of a pydpg actor, 1e-5 otherwise; see the module docstring).
    Raises ``ParityError`` (nothing written) when the file and the actor differ by more than that.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if n_check < 1000:
        raise ValueError(f"n_check must be >= 1000 observations, got {n_check}")
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {str(path.parent)!r} of the output file does not exist")
    # 1. inputs: what the source carries, under what the caller passed
    given = _inputs(
        source,
        env_id=env_id,
        action_low=action_low,
        action_high=action_high,
        normalizer=normalizer,
        training_steps=training_steps,
        policy_step=policy_step,
        eval_return=eval_return,
        observation_spec=observation_spec,
        action_spec=action_spec,
        randomization=randomization,
        eval_seed=eval_seed,
    )
    # 2. the env: action bounds, model, task timing, the observation spec verified against it
    low, high, described = _env_facts(
        _env_of(source, env),
        given,
        model_xml,
        {"steps": verify_steps, "perturb": verify_perturb, "init_states": verify_init_states},
    )
    # 3. the module and its metadata, and what the file must reproduce
    built = _build(given, low, high, described, obs_dim, n_check, atol, format)
    # 4. write it, check the file, and only then give it its name
    result = _write_and_check(built, path, format, described["xml"], low, high, given["norm"], n_check)
    if verbose:
        _report(result, described, format)
    return result


def _inputs(source, **given) -> dict:
    """Export's inputs: the caller's, completed from ``source`` (a Trainer carries bounds, step
    counts, the last evaluation, its env id, its config's observation spec and seed)."""
    action_low, action_high = given["action_low"], given["action_high"]
    training_steps, policy_step = given["training_steps"], given["policy_step"]
    eval_return, env_id = given["eval_return"], given["env_id"]
    observation_spec, eval_seed = given["observation_spec"], given["eval_seed"]
    normalizer = given["normalizer"]
    actor = _resolve_actor(source)
    normalizer = normalizer if normalizer is not None else getattr(source, "normalizer", None)
    # A pydpg Trainer carries the rest: bounds, step count, the last evaluation.
    if action_low is None and getattr(source, "low", None) is not None and getattr(source, "high", None) is not None:
        action_low, action_high = source.low, source.high
    if training_steps is None and isinstance(getattr(source, "step", None), int):
        training_steps = source.step
    if policy_step is None:
        policy_step = _policy_step(source, training_steps)
    training_steps, policy_step = _step_count("training_steps", training_steps), _step_count("policy_step", policy_step)
    if None not in (training_steps, policy_step) and policy_step > training_steps:
        raise ValueError(f"policy_step {policy_step} is after the run's training_steps {training_steps}")
    history = getattr(source, "history", None)
    if eval_return is None and isinstance(history, list) and history and isinstance(history[-1], dict):
        eval_return = history[-1].get("eval_mean")
    if env_id is None and isinstance(getattr(source, "env_name", None), str):
        env_id = source.env_name
    train_cfg = getattr(source, "train_cfg", None)
    if observation_spec is None:  # a Trainer whose config file stated the observation
        observation_spec = getattr(train_cfg, "observation", None)
    action_spec = given["action_spec"]
    if train_cfg is not None:  # a Trainer: its run's action contract is the policy's, and no other
        action_spec = _trained_action(action_spec, getattr(train_cfg, "action", None))
    randomization = given["randomization"]
    if randomization is None and train_cfg is not None:
        randomization = getattr(train_cfg, "randomization", None)
    if eval_seed is None and train_cfg is not None and isinstance(getattr(train_cfg, "seed", None), int):
        eval_seed = train_cfg.seed + int(getattr(train_cfg, "eval_seed_offset", 100))
    eval_seed = _step_count("eval_seed", eval_seed, unit="a reset seed")
    norm = normalizer_stats(normalizer)

    return {
        "actor": actor,
        "normalizer": normalizer,
        "norm": norm,
        "action_low": action_low,
        "action_high": action_high,
        "training_steps": training_steps,
        "policy_step": policy_step,
        "eval_return": eval_return,
        "env_id": env_id,
        "observation_spec": observation_spec,
        "action_spec": None if action_spec is None else as_action_spec(action_spec),
        "randomization": None if randomization is None else as_randomization_spec(randomization),
        "eval_seed": eval_seed,
    }


def _trained_action(given, trained) -> Optional[dict]:
    """The action spec to ship: the run's. One given that is not the run's is refused: the policy
    learned the actions of the contract it was trained under (its outputs mean nothing under another)."""
    given = None if given is None else as_action_spec(given)
    trained = None if trained is None else as_action_spec(trained)
    if given is not None and given != trained:
        raise ValueError(
            "the action spec given is not the one the run was trained under"
            + (" (it had none: its outputs go to the env's action space)" if trained is None else "")
            + ": a policy is exported with the run's own action contract"
        )
    return trained


def _env_facts(env, given: dict, model_xml: Optional[str], verification: dict) -> tuple:
    """(low, high, described): the action bounds and what the env says of itself (``_describe_env``),
    from ``env`` or one made from the env id."""
    env_id, observation_spec = given["env_id"], given["observation_spec"]
    action_low, action_high = given["action_low"], given["action_high"]
    own_env = None
    if env is None and env_id is not None:
        import gymnasium as gym

        env = own_env = gym.make(env_id)
    action_spec = given["action_spec"]
    if action_spec is not None:
        env, own_env = _driven_by_contract(env, own_env, action_spec)
    try:
        space = getattr(env, "single_action_space", None) or getattr(env, "action_space", None)
        if action_low is None and space is not None:
            action_low, action_high = space.low, space.high
        if action_low is None or action_high is None:
            raise ValueError("action bounds unknown: pass env=, env_id= or action_low=/action_high=")
        low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_high, dtype=np.float64).reshape(-1)
        if low.shape != high.shape or not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError(f"action bounds must be finite with low < high, got low={low}, high={high}")
        described = {
            "env_id": env_id,
            "xml": model_xml,
            "model": None,
            "observation": None,
            "task": None,
            "note": None,
            "verification": None,
        }
        if env is not None:
            described = _describe_env(
                env,
                env_id,
                observation_spec,
                model_xml,
                verification,
            )
        elif observation_spec is not None:
            described["observation"] = as_spec(observation_spec)  # no env to check it against
        described["action"] = action_spec
        described["action_verification"] = None
        if action_spec is not None and env is not None:
            single = env.envs[0] if getattr(env, "envs", None) else env
            described["action_verification"] = verify_action(single, described["xml"], verification["steps"])
    finally:
        if own_env is not None:
            own_env.close()

    return low, high, described


def _driven_by_contract(env, own_env, action_spec: dict) -> tuple:
    """(env, own_env): an env driven through ``action_spec``'s ActionContract, whose action space
    ([-1, 1]^n) is the policy's: a fresh copy of ``env`` (nominal, whatever wrappers ``env`` has:
    a training env's randomization must not enter the check), wrapped; ``env`` itself only when it
    has no spec to copy and is an ActionContract of this spec. The caller closes ``own_env``."""
    if env is None:
        return None, own_env
    if own_env is not None:  # made here from the env id
        wrapped = ActionContract(own_env, action_spec)
        return wrapped, wrapped
    single = env.envs[0] if getattr(env, "envs", None) else env
    spec = getattr(single, "spec", None)
    if spec is None:
        if isinstance(single, ActionContract) and single.map.spec == action_spec:
            return single, None
        raise ValueError("an action spec needs the env it was trained in: pass an env made with gym.make, or env_id")
    import gymnasium as gym

    wrapped = ActionContract(gym.make(spec), action_spec)
    return wrapped, wrapped


def _build(given: dict, low, high, described: dict, obs_dim, n_check: int, atol, format: str) -> dict:
    """The policy module, its metadata, the check observations, the actor's reference actions on
    them and what the file may differ by."""
    actor, norm, normalizer = given["actor"], given["norm"], given["normalizer"]
    training_steps, policy_step = given["training_steps"], given["policy_step"]
    eval_seed, eval_return = given["eval_seed"], given["eval_return"]
    lin = _first_linear(actor)
    if obs_dim is None:
        if norm is not None:
            obs_dim = len(norm["mean"])
        elif lin is not None:
            obs_dim = lin.in_features
        else:
            raise ValueError("obs_dim unknown: pass obs_dim=")
    act_dim = len(low)
    if norm is not None and len(norm["mean"]) != obs_dim:
        raise ValueError(f"normalizer has {len(norm['mean'])} statistics, obs_dim is {obs_dim}")

    env_id, task, observation, obs_model, xml, task_note, verification = (
        described[k] for k in ("env_id", "task", "observation", "model", "xml", "note", "verification")
    )
    if observation is not None and obs_model is not None:
        width = ObservationBuilder(observation, obs_model).size
        if width != int(obs_dim):
            raise ValueError(
                f"the observation spec builds {width} values from the env's model, the policy reads "
                f"obs_dim {int(obs_dim)}"
            )
    obs = _check_observations(obs_dim, norm, n_check)
    if any(isinstance(m, BatchRenorm) and m.training for m in actor.modules()):
        # A batch-normalized actor in training mode would normalize the check batch by its own
        # statistics and move its running ones: the policy is its evaluation-mode function.
        actor = copy.deepcopy(actor).eval()
    try:
        reference = _reference(actor, obs, low, high, norm, normalizer)
    except RuntimeError as e:  # a shape mismatch inside the network: name the input that caused it
        raise ValueError(f"the actor cannot run on [{n_check}, {obs_dim}] observations (obs_dim={obs_dim}): {e}") from e
    if reference.shape != (n_check, act_dim):
        raise ValueError(
            f"the actor maps [{n_check}, {obs_dim}] observations to {list(reference.shape)}, "
            f"expected [{n_check}, {act_dim}] (action bounds have {act_dim} entries)"
        )
    # atol is in the actor's [-1, 1] units, as the C++ runtime's was: it grows with each action's
    # half-range (never below 1).
    half_range = np.maximum((np.asarray(high, np.float64) - np.asarray(low, np.float64)) / 2, 1.0)
    plan = _network_plan(actor)
    if atol is None:
        # A TorchScript file of a planned actor is held to the rounding bound alone. ONNX Runtime and
        # AOTInductor compute tanh with their own approximations, whose accuracy the bound does not
        # model; a custom actor has no bound at all.
        atol = 0.0 if plan is not None and format == "torchscript" else DEFAULT_ATOL
    if not (isinstance(atol, numbers.Real) and math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pydpg_version": __version__,
        "torch_version": torch.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env_id": env_id,
        "obs_dim": int(obs_dim),
        "act_dim": int(act_dim),
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "normalization": norm,
        "training_steps": training_steps,
        "policy_step": policy_step,
        "eval_seed": eval_seed,
        "eval_return": None if eval_return is None or not math.isfinite(eval_return) else float(eval_return),
        "network": plan,
        "task": task,
        "observation": observation,
        "verification": None if verification is None else verification.as_metadata(),
        "action": described["action"],
        "randomization": given["randomization"],
        "action_verification": described["action_verification"],
    }
    cpu_actor = copy.deepcopy(actor).float().cpu().eval()
    module = PolicyModule(
        cpu_actor,
        low,
        high,
        None if norm is None else norm["mean"],
        None if norm is None else norm["var"],
        0.0 if norm is None else norm["eps"],
        0.0 if norm is None else norm["clip"],
        obs_dim,
    )
    allowed, rule = _parity_allowance(module, meta, obs, actor, reference, float(atol), half_range)
    meta["parity"] = {
        "n": int(n_check),
        "rule": "rounding_bound" if plan is not None else "atol",
        "atol": float(atol),
        "max_allowed": float(allowed.max()),
        "median_allowed": float(np.median(allowed)),
    }

    return {
        "module": module,
        "meta": meta,
        "obs": obs,
        "actor": actor,
        "reference": reference,
        "allowed": allowed,
        "rule": rule,
        "plan": plan,
    }


def _write_and_check(built: dict, path: Path, format: str, xml, low, high, norm, n_check: int) -> "ExportResult":
    """Write the file beside ``path``, check it against the reference (ParityError: nothing is
    written), and move it into place."""
    module, meta, obs, actor = built["module"], built["meta"], built["obs"], built["actor"]
    reference, allowed, rule, plan = built["reference"], built["allowed"], built["rule"], built["plan"]
    tmp = _tmp_beside(path, ".tmp.pt2" if format == "pt2" else ".tmp")  # AOTInductor insists on .pt2
    try:
        writer = {
            "torchscript": lambda: _write_torchscript(module, tmp, meta, xml, obs),
            "onnx": lambda: _write_onnx(module, tmp, meta, obs),
            "pt2": lambda: _write_pt2(module, tmp, meta, obs),
        }[format]
        got = writer()
        if got is None:  # ONNX without onnxruntime: torch's own evaluation of the module
            with torch.inference_mode():
                got = module(torch.from_numpy(obs)).numpy()
        if plan is not None:
            file_module = load_torchscript(tmp) if format == "torchscript" else module
            wrong = _function_check(file_module, module, meta, obs, actor, low, high, norm)
            if wrong is not None:
                raise ParityError(f"parity check FAILED: {wrong} on {n_check} observations; nothing written")
        shaped = np.shape(got) == reference.shape
        ok, worst, diff, allowed_there = within(got, reference, allowed) if shaped else (False, None, math.inf, 0.0)
        if not ok:
            where = f" at observation {worst[0]}, action {worst[1]}" if worst else f" (shape {np.shape(got)})"
            raise ParityError(
                f"parity check FAILED: the exported {format} policy differs from the actor{where} by "
                f"|diff| = {_plain(diff)} > {_plain(allowed_there)} ({rule}) on {n_check} observations; "
                "nothing written"
                + (
                    ""
                    if format == "torchscript"
                    else f" ({format} runs its own float32 kernels, which round differently from "
                    "torch's; if that difference is acceptable for your robot, pass a larger --atol)"
                )
            )
        diff = _max_diff(got, reference)
        with open(tmp, "rb") as f:  # durable before it becomes visible under its real name
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    ratio = float(np.max(np.abs(got - reference) / np.where(allowed > 0, allowed, np.inf), initial=0.0))
    return ExportResult(path, format, diff, n_check, meta, float(allowed.max()), ratio)


def _report(result: "ExportResult", described: dict, format: str) -> None:
    """What export prints: the result, the verification summary and its warnings, and a note when
    `pydpg run` could not run the file."""
    verification, task_note = described["verification"], described["note"]
    task, observation = described["task"], described["observation"]
    print(result)
    if verification is not None:
        print(verification.summary())
        for line in verification.warnings():
            print(f"warning: {line}", file=sys.stderr)
    seen = described.get("action_verification")
    if seen is not None:
        c = seen["counters"]
        print(
            f"action contract verified over {seen['steps']} env steps ({seen['episodes']} episodes): the loop's map on "
            f"the policy's model gives the env's ctrl, qpos and qvel exactly, through {c['action_clips']} clipped "
            f"action(s), {c['rate_limits']} rate limit(s), {c['safe_actions']} safe action(s) and "
            f"{c['ctrl_clips']} clipped physics step(s)"
        )
    if task_note:
        print(f"note: {task_note}", file=sys.stderr)
    elif (task is None or observation is None) and format == "torchscript":
        print(
            "note: `pydpg run` cannot run this policy: it needs a MuJoCo env (env= or --env) and an "
            "observation spec (a preset's, or observation_spec= / --observation-spec)",
            file=sys.stderr,
        )


# ----------------------------------------------------------------------------------------- checkpoints
def load_for_export(checkpoint: Union[str, os.PathLike]) -> dict:
    """Agent, normalizer and run facts from a model file, checkpoint dir or run dir (pydpg.files.checkpoint)."""

    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {os.fspath(checkpoint)!r} does not exist")
    model, ckpt = load_model_any(checkpoint, map_location="cpu")
    agent, normalizer = agent_from_model(model, device="cpu")
    run = model.get("run") or {}
    steps, eval_return = None, None
    if ckpt is not None:
        steps = ckpt.step
        history = ckpt.trainer.get("history") or []
        if history and history[-1].get("eval_mean") is not None:
            eval_return = float(history[-1]["eval_mean"])
    elif isinstance(model.get("evaluation"), dict):  # a run's best_model.pt says when it was saved
        steps, eval_return = int(model["evaluation"]["step"]), float(model["evaluation"]["mean"])
    return {
        "agent": agent,
        "normalizer": normalizer,
        "env_id": run.get("env_id"),
        "env_kwargs": run.get("env_kwargs") or {},
        "observation_spec": run.get("observation"),
        "action_spec": run.get("action"),
        "randomization": run.get("randomization"),
        "training_steps": steps,
        "eval_return": eval_return,
        "eval_seed": int(run["seed"]) + int(run.get("eval_seed_offset", 100))
        if isinstance(run.get("seed"), int)
        else None,
        "action_low": np.asarray(model["action_low"], dtype=np.float64),
        "action_high": np.asarray(model["action_high"], dtype=np.float64),
        "obs_dim": int(model["obs_dim"]),
    }


def export_checkpoint(checkpoint: Union[str, os.PathLike], path: Union[str, os.PathLike], **kwargs) -> ExportResult:
    """Export the agent stored in a pydpg model file / checkpoint / run directory."""
    info = load_for_export(checkpoint)
    info["action_spec"] = _trained_action(kwargs.pop("action_spec", None), info["action_spec"])
    env = None
    if kwargs.get("env") is None and info["env_id"]:
        import gymnasium as gym

        try:
            env = gym.make(info["env_id"], **info["env_kwargs"])
        except Exception as e:  # an env that is not installed here still exports, without a task spec
            print(
                f"note: cannot make {info['env_id']} here ({e}); exporting without a task description", file=sys.stderr
            )
    try:
        for k in (
            "normalizer",
            "env_id",
            "observation_spec",
            "action_spec",
            "randomization",
            "training_steps",
            "eval_return",
            "eval_seed",
            "action_low",
            "action_high",
            "obs_dim",
        ):
            if info.get(k) is not None:
                kwargs.setdefault(k, info[k])
        if env is not None:
            kwargs.setdefault("env", env)
        return export_policy(info["agent"], path, **kwargs)
    finally:
        if env is not None:
            env.close()


def read_spec_file(path: Union[str, os.PathLike], table: str) -> dict:
    """A contract spec (``table``: "observation", "action" or "randomization") from a JSON file, or
    from that table of a TOML file (a run config works)."""
    canonical = {"observation": as_spec, "action": as_action_spec, "randomization": as_randomization_spec}[table]
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{table} spec file '{path}' does not exist")
    if path.suffix == ".toml":
        found = presets.read_file(path).get(table)
        if not found:
            raise ValueError(f"{path} has no [{table}] table")
        return canonical(found)
    try:
        return canonical(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); a TOML file needs the .toml suffix") from None
