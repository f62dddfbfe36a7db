"""On-disk formats: the model file and the training checkpoint directory.

Model file (``DDPG.save``, and ``model.pt`` inside every checkpoint): one ``torch.save`` of tensors
and plain Python values only, so ``torch.load(path, weights_only=True)`` reads it without
unpickling code. Keys:

    format            "pydpg-model"
    format_version    FORMAT_VERSION
    config            DDPGConfig.to_dict()
    run               run settings: env_id, env_kwargs, seed, n_envs, ... (TrainConfig.to_dict())
    obs_dim, act_dim  ints
    action_low/high   float64 tensors [act_dim]: the env's Box; actions are scale_action(actor(obs))
    agent             pydpg.core.agent.DDPGAgent.state_dict(): actor, critics, targets, optimizers, counters
    normalizer        None, or RunningNormalizer.to_dict(): mean, var (float64), count, eps, clip
    evaluation        optional, in ``RUN/best_model.pt`` only: {"step", "mean", "std"} of the
                      evaluation at which the trainer saved it

An exporter needs ``agent["actor"]``, ``config["hidden"]``, ``normalizer`` and the action bounds:
the deployed policy is ``scale_action(actor(normalizer(obs)), action_low, action_high)``.

Checkpoint directory (``RUN/checkpoints/step_<10-digit step>/``): ``model.pt``, ``trainer.pt``
(counters, RNG states, env states, current observations; tensors and plain values),
``buffer.bin`` (``ReplayBuffer.save``) and ``meta.json`` (format version, step, file list).

Writes are atomic at two levels: each checkpoint is written into a temporary sibling directory
that is renamed into place only when complete, and the ``latest`` pointer file is replaced (temp
file + ``os.replace``) just before that rename. A process killed at any instant leaves the newest
complete checkpoint findable: a pointer that names no directory (missing, or killed before its
directory's rename) falls back to the newest ``step_*`` directory, and every one of those is
complete. A half-written temporary directory is removed by the next save or resume.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

FORMAT_VERSION = 1
MODEL_FORMAT = "pydpg-model"
CHECKPOINT_FORMAT = "pydpg-checkpoint"
FILES = ("model.pt", "trainer.pt", "buffer.bin", "meta.json")
_STEP_DIR = re.compile(r"^step_(\d+)$")
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A model file or checkpoint directory that is missing, corrupt, or of another format version."""


# ---------------------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def torch_load(path: PathLike, what: str, map_location=None) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and what it should be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no file at '{path}'")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message would advise weights_only=False: unsafe advice for a file from elsewhere.
        raise CheckpointError(
            f"{what} '{path}' is corrupt or not a pydpg file: it is not a torch archive of tensors "
            "and plain values (pydpg unpickles nothing else from a file)"
        ) from None
    except Exception as e:  # truncated zip, an empty file, ...: all mean "not a usable file"
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{what} '{path}' is corrupt or not a pydpg file ({type(e).__name__}: {reason})"
        ) from None


# ---------------------------------------------------------------------------------------- numpy <-> torch
def to_torch(obj: Any) -> Any:
    """Numpy arrays (nested in dicts/lists/tuples) to tensors, so weights_only loading accepts them."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_torch(v) for v in obj)
    return obj


def to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------- model file
def write_model(path: PathLike, model: dict[str, Any]) -> None:
    """Atomically write a model dict (the keys in the module docstring; format fields are added)."""
    atomic_torch_save({"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, **model}, path)


def read_model(path: PathLike, map_location=None) -> dict[str, Any]:
    model = torch_load(path, "model file", map_location)
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"'{path}' is not a pydpg model file")
    _check_version(model.get("format_version"), path)
    missing = {"config", "run", "obs_dim", "act_dim", "action_low", "action_high", "agent", "normalizer"} - set(model)
    if missing:
        raise CheckpointError(f"model file '{path}' lacks {sorted(missing)}")
    return model


def _check_version(version: Any, path: PathLike) -> None:
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has format version {version!r}; this pydpg reads version "
            f"{FORMAT_VERSION} (use the pydpg release that wrote it)"
        )


# ---------------------------------------------------------------------------------------- checkpoint dirs
def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def _home_of(aside: Path) -> Path:
    """``root/step_N`` for a checkpoint moved aside as ``root/.old-step_N-<pid>``."""
    return aside.parent / aside.name[len(".old-") :].rsplit("-", 1)[0]


def _moved_aside(root: Path) -> list[tuple[int, Path]]:
    """Checkpoints ``save_checkpoint`` moved aside (``.old-step_N-pid``) whose own name is free."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(_home_of(p).name) if p.name.startswith(".old-") else None
        if m and p.is_dir() and not _home_of(p).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def clean_partial(root: PathLike) -> None:
    """Undo what a save killed midway left: remove its temporary files and directories, and put
    back a checkpoint it had moved aside to be replaced (see ``save_checkpoint``)."""
    root = Path(root)
    if root.is_dir():
        for _, p in _moved_aside(root):
            os.replace(p, _home_of(p))
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".latest.tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def save_checkpoint(
    root: PathLike,
    step: int,
    model: dict[str, Any],
    trainer_state: dict[str, Any],
    buffer,
    meta: Optional[dict[str, Any]] = None,
    keep: int = 1,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically, point ``root/latest`` at it, and delete
    all but the newest ``keep`` checkpoints. Returns the checkpoint's path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_partial(root)
    name = f"step_{int(step):010d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    write_model(tmp / "model.pt", model)
    atomic_torch_save({"format_version": FORMAT_VERSION, **trainer_state}, tmp / "trainer.pt")
    buffer.save(tmp / "buffer.bin")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "files": list(FILES),
        **(meta or {}),
    }
    atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=2).encode())
    _fsync_dir(tmp)
    final = root / name
    # The pointer moves before the directory arrives: a kill between the two leaves a pointer to a
    # directory not yet there, and resolve_checkpoint falls back to the newest one that is. (The
    # other order would leave a complete new checkpoint behind a pointer to the one before it.)
    atomic_write_bytes(root / "latest", (name + "\n").encode())
    old = None
    if final.exists():  # re-saving a step (e.g. the final save right after a periodic one)
        # A directory cannot be renamed over a non-empty one, so the old copy steps aside first;
        # a kill between the two renames leaves it as .old-*, which clean_partial puts back.
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for _, old in _step_dirs(root)[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: PathLike) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint dir itself, a ``checkpoints`` dir, or
    a run dir (its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at '{path}' (no such file or directory)")
    if (path / "meta.json").is_file() or _STEP_DIR.match(path.name):
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    pointer = root / "latest"
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if target.is_dir():
            return target
    # A save killed while replacing a checkpoint leaves the complete old copy aside: it counts.
    dirs = sorted(_step_dirs(root) + _moved_aside(root))
    if not dirs:
        raise CheckpointError(
            f"no checkpoint found in '{path}' (expected a run directory with checkpoints/, "
            "a checkpoints directory, or a step_* checkpoint directory)"
        )
    return dirs[-1][1]


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]
    model: dict[str, Any]
    trainer: dict[str, Any]
    buffer_path: Path

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def load_checkpoint(path: PathLike, map_location=None) -> Checkpoint:
    """Read and validate a checkpoint (see ``resolve_checkpoint`` for what ``path`` may be)."""
    ckpt = resolve_checkpoint(path)
    meta_path = ckpt / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no meta.json (incomplete or not a pydpg checkpoint)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint '{ckpt}': meta.json is corrupt ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"'{ckpt}' is not a pydpg checkpoint (meta.json format {meta.get('format')!r})"
            if isinstance(meta, dict)
            else f"'{ckpt}': meta.json is not an object"
        )
    _check_version(meta.get("format_version"), ckpt)
    missing = [f for f in FILES if not (ckpt / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint '{ckpt}' is missing {missing}")
    model = read_model(ckpt / "model.pt", map_location)
    trainer = torch_load(ckpt / "trainer.pt", "trainer state", map_location="cpu")
    _check_version(trainer.get("format_version") if isinstance(trainer, dict) else None, ckpt / "trainer.pt")
    return Checkpoint(ckpt, meta, model, trainer, ckpt / "buffer.bin")


def load_model_any(path: PathLike, map_location=None) -> tuple[dict[str, Any], Optional[Checkpoint]]:
    """A model from a model file, a checkpoint dir or a run dir; the Checkpoint too when there is one."""
    p = Path(path)
    if p.is_file():
        return read_model(p, map_location), None
    ckpt = load_checkpoint(p, map_location)
    return ckpt.model, ckpt
