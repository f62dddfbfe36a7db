"""Stable-Baselines3's DDPG as a peer: built from a ``DDPGConfig``, run into a pydpg run directory.

A sweep setting with ``impl = "sb3"`` (``pydpg.experiments.sweep``) trains SB3 instead of pydpg with the same
hyper-parameters and the same evaluation protocol (schedule, episodes, eval seed and
``pydpg.common.envs.evaluate``), and writes ``metrics.csv`` with pydpg's columns, so that both aggregate
and plot the same way. SB3 is optional (the ``bench`` and ``test`` extras): it is imported only
when a model is built.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pydpg import __version__
from pydpg.common.envs import evaluate, make_env, unscale_action
from pydpg.core.config import DDPGConfig
from pydpg.files import checkpoint as ckpt_io
from pydpg.train.config import TrainConfig
from pydpg.train.plotting import plot_learning_curve
from pydpg.train.run_log import RunLogger

# pydpg fields that SB3's DDPG/TD3 has no way to match, with the value that it does match.
_NOT_IN_SB3 = {
    "final_init": None,
    "critic_l2": 0.0,
    "prioritized": False,
    "n_step": 1,
    "obs_normalization": False,
    "critic_layer_norm": False,
    "critic_hidden": (),
    "adam_beta1": 0.9,
    "batch_renorm": False,
    "target_networks": True,
}


def unsupported(config: DDPGConfig, n_envs: int = 1) -> list[str]:
    """The settings of a run that SB3 cannot reproduce, each as ``"key = value"``; empty if none."""
    bad = [f"{k} = {getattr(config, k)!r}" for k, ok in _NOT_IN_SB3.items() if getattr(config, k) != ok]
    if config.actor_lr != config.critic_lr:  # SB3 has one learning_rate for both networks
        bad.append(f"actor_lr = {config.actor_lr!r} with critic_lr = {config.critic_lr!r} (SB3 has one learning rate)")
    if n_envs != 1:
        bad.append(f"n_envs = {n_envs!r}")
    return bad


def sb3_model(env: Any, config: DDPGConfig, seed: int):
    """SB3's DDPG (its TD3 class when a TD3 switch is on) with ``config``'s hyper-parameters.

    Noise scales match without conversion: SB3 adds the action noise in its [-1, 1] units
    (``policy.scale_action``) before clipping and unscaling, as pydpg does. ``env`` is an id or a
    gymnasium env.
    """
    bad = unsupported(config)
    if bad:
        raise ValueError(f"Stable-Baselines3 cannot run these settings: {', '.join(bad)}")
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import DDPG, TD3
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    env = gym.make(env) if isinstance(env, str) else env
    zeros = np.zeros(env.action_space.shape[0])
    noise = {
        "gaussian": lambda: NormalActionNoise(zeros, config.exploration_sigma + zeros),
        "ou": lambda: OrnsteinUhlenbeckActionNoise(
            zeros, config.ou_sigma + zeros, theta=config.ou_theta, dt=config.ou_dt
        ),
        "none": lambda: None,
    }[config.exploration_noise]()
    common = dict(
        learning_rate=config.actor_lr,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=config.train_freq,
        gradient_steps=config.gradient_steps,
        action_noise=noise,
        seed=seed,
        device=config.device,
        verbose=0,
    )
    net = {"net_arch": list(config.hidden)}
    if not config.twin_critics and config.policy_delay == 1 and config.target_policy_noise == 0:
        return DDPG("MlpPolicy", env, policy_kwargs=net, **common)
    # SB3's DDPG is its TD3 with one critic, no delay and no target noise; the switches map one to one.
    return TD3(
        "MlpPolicy",
        env,
        policy_delay=config.policy_delay,
        target_policy_noise=config.target_policy_noise,
        target_noise_clip=config.target_noise_clip,
        policy_kwargs={**net, "n_critics": 2 if config.twin_critics else 1},
        **common,
    )


def run_sb3(
    agent: dict[str, Any],
    train: dict[str, Any],
    out_dir: Path,
    on_eval: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Train SB3 per ``agent`` (DDPGConfig fields) and ``train`` (TrainConfig fields) into ``out_dir``:
    ``metrics.csv`` (pydpg's columns; losses and Q are left empty), ``summary.json`` (as a pydpg
    run's, plus ``impl``) and ``learning_curve.png``. ``on_eval`` sees each metrics row.

    SB3 cannot continue a run exactly (its env and RNG states are not saved), so a run that was
    interrupted starts over."""
    import stable_baselines3

    config, run = DDPGConfig.from_dict(agent), TrainConfig.from_dict(train)
    env = make_env(run.env_id, run.env_kwargs)
    eval_env = make_env(run.env_id, run.env_kwargs)
    model = sb3_model(env, config, run.seed)
    low, high = eval_env.action_space.low, eval_env.action_space.high

    def policy(obs):  # SB3 acts in env units; evaluate() wants [-1, 1]
        return unscale_action(model.predict(obs, deterministic=True)[0], low, high)

    out_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(out_dir, resume_step=None, tensorboard=False)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    chunk = run.eval_every or run.total_steps
    try:
        while model.num_timesteps < run.total_steps:
            t_chunk, s_chunk = time.perf_counter(), model.num_timesteps
            model.learn(min(chunk, run.total_steps - model.num_timesteps), reset_num_timesteps=False)
            sps = (model.num_timesteps - s_chunk) / max(time.perf_counter() - t_chunk, 1e-9)
            if not run.eval_every:  # as pydpg's trainer: eval_every 0 means no evaluation
                continue
            r = evaluate(policy, eval_env, run.eval_episodes, run.seed + run.eval_seed_offset)
            row = {
                "step": int(model.num_timesteps),
                "wall_time": round(time.perf_counter() - t0, 3),
                "sps": sps,
                "eval_mean": r.mean,
                "eval_std": r.std,
            }
            logger.log(row)
            history.append(row)
            if on_eval is not None:
                on_eval(row)
            if run.target_return is not None and r.mean >= run.target_return:
                break
    finally:
        logger.close()
        env.close()
        eval_env.close()
    last = history[-1] if history else None
    best = max(history, key=lambda h: h["eval_mean"]) if history else None
    wall = time.perf_counter() - t0
    summary = {
        "env_id": run.env_id,
        "seed": run.seed,
        "steps": int(model.num_timesteps),
        "wall_time_s": round(wall, 3),
        "sps": round(model.num_timesteps / wall, 2) if wall > 0 else None,
        "final_eval": None
        if last is None
        else {"step": last["step"], "mean": last["eval_mean"], "std": last["eval_std"]},
        "best_eval": None
        if best is None
        else {"step": best["step"], "mean": best["eval_mean"], "std": best["eval_std"]},
        "reached_target": bool(last and run.target_return is not None and last["eval_mean"] >= run.target_return),
        "config": config.to_dict(),
        "train": run.to_dict(),
        "impl": "sb3",
        "sb3_version": stable_baselines3.__version__,
        "pydpg_version": __version__,
    }
    ckpt_io.atomic_write_bytes(out_dir / "summary.json", json.dumps(summary, indent=2).encode())
    if history:
        plot_learning_curve(
            out_dir / "metrics.csv", out_dir / "learning_curve.png", title=f"{run.env_id} (SB3, seed {run.seed})"
        )
    return summary
