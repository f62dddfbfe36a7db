"""The algorithm: the agent and its update (``agent``; the C++ update's wrapper ``mlp_update``; Adam
as both run it, ``adam``), networks, SALE, noise, the observation normalizer, the replay buffer and
its batch, TD7's policy snapshots, ``DDPGConfig``. Imports no gymnasium.
"""
