"""Actor and critic MLPs for DDPG.

Defaults follow the "re-tuned DDPG" of Fujimoto et al. 2018 (TD3 paper, ``OurDDPG.py`` in
github.com/sfujim/TD3) and CleanRL's ``ddpg_continuous_action.py``: two 256-unit ReLU layers, the
action concatenated with the observation at the critic's *input*, PyTorch's default init.

The original paper (Lillicrap et al. 2015, "Continuous control with deep reinforcement learning",
§7) used 400-300 units and drew the final layer of both networks from U(-3e-3, 3e-3); pass
``hidden=(400, 300), final_init=3e-3`` (the ``"paper"`` config preset) for that. Two parts of the
paper's networks are deliberately not reproduced: batch normalization, and feeding the action into
the critic's second layer instead of its first (neither survived into TD3's or CleanRL's baselines).
"""

from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
from torch import nn


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (256, 256),
    activation: Type[nn.Module] = nn.ReLU,
    final_init: Optional[float] = None,
    layer_norm: bool = False,
) -> nn.Sequential:
    """Linear layers of widths ``hidden`` with ``activation`` between them; no output activation.
    ``layer_norm``: a LayerNorm (with its affine gain and bias) after each hidden Linear, before the
    activation, as RLPD's critic has it (Ball et al. 2023)."""
    widths = [in_dim, *hidden]
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(w_in, w_out), *([nn.LayerNorm(w_out)] if layer_norm else []), activation()]
    final = nn.Linear(widths[-1], out_dim)
    if final_init is not None:
        # Lillicrap et al. §7: a near-zero last layer makes the initial policy output ~0 and the
        # initial Q ~0, so early tanh saturation and large bootstrapped targets are avoided. The
        # hidden layers' PyTorch default, U(±1/sqrt(fan_in)), is already the paper's hidden init.
        nn.init.uniform_(final.weight, -final_init, final_init)
        nn.init.uniform_(final.bias, -final_init, final_init)
    layers.append(final)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy mu(s) in [-1, 1]^act_dim.

    The tanh keeps actions in a fixed normalized box; mapping to the environment's bounds happens
    outside the network so the agent (exploration noise, target smoothing clamp) can work in the
    same [-1, 1] units for every task.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: Type[nn.Module] = nn.ReLU,
        final_init: Optional[float] = None,
    ):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation, final_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class Critic(nn.Module):
    """Action-value Q(s, a) -> [B, 1] on the concatenation of observation and action.

    ``layer_norm`` normalizes each hidden layer's pre-activations (``mlp``). A normalized critic
    keeps its features bounded however far bootstrapped targets drift, which limits the
    extrapolation that feeds overestimation, and keeps units from dying, which preserves the
    critic's plasticity over a long run (Nauman et al. 2024 found it among the most effective single
    interventions; Ball et al. 2023, RLPD). It changes Q's function class, not the DDPG target or
    the actor gradient: docs/theory.md."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: Type[nn.Module] = nn.ReLU,
        final_init: Optional[float] = None,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, activation, final_init, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))
