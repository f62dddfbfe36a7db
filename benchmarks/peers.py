"""Peer agents configured like pydpg's defaults, shared by the benchmarks (one definition each).

Stable-Baselines3 comes with the optional ``bench`` extra: pip install -e .[bench]
"""

from __future__ import annotations


def sb3_ddpg(env, learning_starts: int, seed: int):
    """SB3's DDPG with pydpg's default hyper-parameters (the TD3 paper's OurDDPG, sfujim/TD3):
    256-256 nets, Adam 3e-4, batch 256, tau 0.005, gamma 0.99, 1M buffer, one update per env step,
    Gaussian exploration noise of std 0.1. SB3 adds the noise to the action in its [-1, 1] units
    (policy.scale_action) before clipping and unscaling, so sigma 0.1 there is 0.1 of the half-range,
    as pydpg's. ``env`` is an id or a gymnasium env."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import DDPG
    from stable_baselines3.common.noise import NormalActionNoise

    env = gym.make(env) if isinstance(env, str) else env
    act_dim = env.action_space.shape[0]
    noise = NormalActionNoise(np.zeros(act_dim), 0.1 * np.ones(act_dim))
    return DDPG("MlpPolicy", env, learning_rate=3e-4, buffer_size=1_000_000, learning_starts=learning_starts,
                batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1, action_noise=noise,
                policy_kwargs={"net_arch": [256, 256]}, seed=seed, device="cpu", verbose=0)
