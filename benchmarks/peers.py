"""Peer agents configured like pydpg's defaults, shared by the benchmarks (one definition each).

Stable-Baselines3 comes with the optional ``bench`` extra: pip install -e .[bench]
"""

from __future__ import annotations


def sb3_ddpg(env, learning_starts: int, seed: int):
    """SB3's DDPG with pydpg's default hyper-parameters (the TD3 paper's OurDDPG, sfujim/TD3):
    256-256 nets, Adam 3e-4, batch 256, tau 0.005, gamma 0.99, 1M buffer, one update per env step,
    Gaussian exploration noise of std 0.1 (``pydpg.sb3_peer.sb3_model`` maps a DDPGConfig onto SB3;
    sweeps use it too). ``env`` is an id or a gymnasium env."""
    from pydpg.config import DDPGConfig
    from pydpg.sb3_peer import sb3_model

    return sb3_model(env, DDPGConfig(learning_starts=learning_starts), seed)
