"""Shared helpers for the export / runtime / control-loop / fuzz tests."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pydpg.core.networks import Actor
from pydpg.deploy.export import PolicyModule
from pydpg.deploy.policy_file import METADATA_FILE, quiet_torchscript

# Gains of a linear controller that balances InvertedPendulum-v5 for the full 1000 steps
# (found by a small grid search): action = 3 * tanh(K . obs).
PENDULUM_GAINS = (0.3, 5.0, 0.3, 1.0)


def pendulum_actor() -> Actor:
    """pydpg's Actor (Linear-ReLU-Linear-tanh) holding the balancing controller exactly:
    relu(K.x) - relu(-K.x) = K.x, so the network is tanh(K.x)."""
    actor = Actor(4, 1, hidden=(2,))
    k = torch.tensor(PENDULUM_GAINS)
    with torch.no_grad():
        actor.net[0].weight.copy_(torch.stack([k, -k]))
        actor.net[0].bias.zero_()
        actor.net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
        actor.net[2].bias.zero_()
    return actor


def write_raw_policy(path, module: nn.Module, meta: dict, extra: dict | None = None) -> Path:
    """A TorchScript file with arbitrary metadata, bypassing export's checks (for bad-input tests)."""
    files = {METADATA_FILE: json.dumps(meta)} if meta is not None else {}
    files.update(extra or {})
    with quiet_torchscript():
        scripted = torch.jit.script(module)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files=files)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def base_meta(obs_dim: int, act_dim: int, low=-1.0, high=1.0) -> dict:
    return {
        "format": "pydpg-policy",
        "format_version": 1,
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "action_low": [low] * act_dim,
        "action_high": [high] * act_dim,
        "normalization": None,
    }


def plain_module(obs_dim: int, act_dim: int, low=-1.0, high=1.0) -> PolicyModule:
    torch.manual_seed(0)
    return PolicyModule(
        Actor(obs_dim, act_dim, hidden=(16,)).eval(), np.full(act_dim, low), np.full(act_dim, high), obs_dim=obs_dim
    )


def have_cmake() -> bool:
    return shutil.which("cmake") is not None and shutil.which("c++") is not None


def cmake_build(source: Path, build: Path, timeout: float = 300) -> None:
    """Configure and build a CMake project against the installed pydpg package."""
    from pydpg.deploy.loop import build_cmake_project

    build_cmake_project(source, build, timeout)


def small_hopper_run(out, **train):
    """A Trainer for a short Hopper-v5 run a test can afford (32-32 networks, 1200 steps, learning from
    step 300, an evaluation and a checkpoint every 400 steps), with ``train``'s TrainConfig fields (a
    contract or a randomization under test)."""
    from pydpg.core.config import DDPGConfig
    from pydpg.train.config import TrainConfig
    from pydpg.train.trainer import Trainer

    cfg = DDPGConfig(hidden=(32, 32), batch_size=32, buffer_size=20_000, learning_starts=300)
    tc = TrainConfig(
        env_id="Hopper-v5", total_steps=1200, eval_every=400, eval_episodes=2, checkpoint_every=400, **train
    )
    return Trainer(cfg, tc, out_dir=out, tensorboard=False)


def assert_same_run(ref, resumed) -> None:
    """A resumed run is the uninterrupted one: the same evaluations and the same actor, exactly."""
    assert [r["eval_mean"] for r in ref.history] == [r["eval_mean"] for r in resumed.history]
    assert all(
        torch.equal(a, b) for a, b in zip(ref.agent.actor.parameters(), resumed.agent.actor.parameters(), strict=True)
    )


def exported_after(trainer, steps: int, path: Path):
    """``trainer`` run to ``steps``, exported to ``path`` and closed: (path, the export's result)."""
    from pydpg.deploy.export import export_policy

    trainer.run(steps)
    result = export_policy(trainer, path, verbose=False)
    trainer.close()
    return path, result


def run_alloc_check(driver: Path, mode: str, model_xml: str, spec: dict, *counts: int) -> dict:
    """alloc_check's JSON line for ``--mode MODEL SPEC COUNTS...`` (the spec written beside the driver)."""
    path = driver.parent / f"{mode}_spec.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run(
        [str(driver), f"--{mode}", model_xml, str(path), *map(str, counts)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


@torch.no_grad()
def scramble_batch_renorm(module: nn.Module, g: torch.Generator) -> None:
    """Move every BatchRenorm layer's running statistics and affine weights far from their initial
    values (an untrained layer is the identity in evaluation mode, which would test nothing)."""
    from pydpg.core.networks import BatchRenorm

    for m in module.modules():
        if isinstance(m, BatchRenorm):
            m.running_mean.normal_(0, 2, generator=g)
            m.running_var.uniform_(0.01, 5, generator=g)
            m.weight.uniform_(0.5, 2, generator=g)
            m.bias.normal_(0, 0.5, generator=g)


def unit_box_policy(agent, path, obs_dim: int, act_dim: int, normalizer=None) -> Path:
    """``agent``'s deployed actor written as a policy file whose actions are the actor's own [-1, 1]
    outputs: pydpg.deploy.rounding.rounding_bound(path, obs) then bounds every float32 evaluation of that
    actor on raw observations (batch 1 or many, any kernel), so two of them are compared within
    twice the bound (assert_within_rounding). The file's map to [low, high] = [-1, 1] is the
    identity in exact arithmetic, so the bound's centre is the actor's exact output; its rounding
    only adds to the bound."""
    from pydpg.deploy.export import export_policy

    export_policy(
        agent,
        path,
        action_low=[-1.0] * act_dim,
        action_high=[1.0] * act_dim,
        obs_dim=obs_dim,
        normalizer=normalizer,
        verbose=False,
    )
    return Path(path)
