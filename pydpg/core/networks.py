"""Actor and critic MLPs for DDPG.

Defaults follow the "re-tuned DDPG" of Fujimoto et al. 2018 (TD3 paper, ``OurDDPG.py`` in
github.com/sfujim/TD3) and CleanRL's ``ddpg_continuous_action.py``: two 256-unit ReLU layers, the
action concatenated with the observation at the critic's *input*, PyTorch's default init.

The original paper (Lillicrap et al. 2015, "Continuous control with deep reinforcement learning",
§7) used 400-300 units and drew the final layer of both networks from U(-3e-3, 3e-3); pass
``hidden=(400, 300), final_init=3e-3`` (the ``"paper"`` config preset) for that. Two parts of the
paper's networks are deliberately not reproduced: its batch normalization of the state, and feeding the
action into the critic's second layer instead of its first (neither survived into TD3's or CleanRL's
baselines). Normalization came back with CrossQ, as batch renormalization in every layer of both
networks (``BatchRenorm``, ``DDPGConfig.batch_renorm``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Type

import torch
from torch import nn


class BatchRenorm(nn.Module):
    """Batch renormalization (Ioffe 2017), CrossQ's normalization layer (Bhatt et al. 2024).

    In training mode a batch x is normalized with its own statistics and then corrected towards the
    running ones: x_hat = (x - mean_B) / std_B * r + d with r = std_B / std and d = (mean_B - mean) / std,
    both held constant for the gradient and clipped to [1/r_max, r_max] and [-d_max, d_max]. Unclipped,
    x_hat's value is (x - mean) / std, the running statistics' normalization, while the gradient still
    flows through the batch's; so training and evaluation normalize alike, which plain batch norm does
    not once the batches stop resembling the running average. For the first ``warmup`` training
    forwards, r = 1 and d = 0 (plain batch norm): the running statistics are not yet worth trusting.
    Every training forward moves the running statistics ``momentum`` of the way to the batch's.
    In evaluation mode: (x - mean) / std with the running statistics, a fixed affine map, so a
    deployed actor is a function of its input row alone.
    """

    def __init__(self, features: int, momentum: float = 0.01, warmup: int = 100_000, eps: float = 1e-3):
        super().__init__()
        self.momentum, self.warmup, self.eps = float(momentum), int(warmup), float(eps)  # eps 1e-3: CrossQ, sb3-contrib
        # r's and d's bounds: Ioffe 2017's final values, as CrossQ's code and sb3-contrib use them.
        # Attributes, not class constants, so that TorchScript (the export) compiles the module.
        self.r_max, self.d_max = 3.0, 5.0
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps) * self.weight + self.bias
        # torch's fused batch norm normalizes with the batch's statistics and backpropagates through
        # them (x_hat * weight + bias); r and d, constants of the gradient, then enter as the affine
        # map y = (x_hat * r + d) * weight + bias = y0 * r + (d * weight + bias * (1 - r)). Written
        # as a separate mean, Tensor.var(0) and six element-wise passes, a CrossQ update took much
        # longer on a CPU (docs/benchmarks.md, "CrossQ at 300k: seed 1 on Hopper and Walker2d").
        y0, mean, inv_std = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        std = inv_std.detach().reciprocal()
        var = (std.square() - self.eps).clamp_min(0.0)  # the batch's (biased) variance, for the running one
        running_std = torch.sqrt(self.running_var + self.eps)
        r = (std / running_std).clamp(1.0 / self.r_max, self.r_max)
        d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
        # r = 1, d = 0 during warmup, chosen on the device: a Python `if` on the step count would
        # synchronize a GPU at every layer of every update.
        renorm = self.steps >= self.warmup
        r = torch.where(renorm, r, torch.ones_like(r))
        d = torch.where(renorm, d, torch.zeros_like(d))
        # Buffers never require gradients: with detached inputs these in-place updates stay out of the graph.
        self.running_mean.lerp_(mean.detach(), self.momentum)
        self.running_var.lerp_(var, self.momentum)
        self.steps.add_(1)
        return torch.addcmul(d * self.weight + self.bias * (1.0 - r), y0, r)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, momentum={self.momentum}, warmup={self.warmup}, eps={self.eps}"


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (256, 256),
    activation: Type[nn.Module] = nn.ReLU,
    final_init: Optional[float] = None,
    layer_norm: bool = False,
    batch_renorm: Optional[Callable[[int], nn.Module]] = None,
) -> nn.Sequential:
    """Linear layers of widths ``hidden`` with ``activation`` between them; no output activation.
    ``layer_norm``: a LayerNorm (with its affine gain and bias) after each hidden Linear, before the
    activation, as RLPD's critic has it (Ball et al. 2023). ``batch_renorm``: a factory of a
    normalization layer of a given width, put before every Linear, the input's and the output
    layer's included, as CrossQ's networks have it (sb3-contrib's ``create_mlp`` with
    ``pre_linear_modules``)."""
    widths = [in_dim, *hidden]
    pre = (lambda w: [batch_renorm(w)]) if batch_renorm is not None else (lambda w: [])
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [*pre(w_in), nn.Linear(w_in, w_out), *([nn.LayerNorm(w_out)] if layer_norm else []), activation()]
    layers += pre(widths[-1])
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
        batch_renorm: Optional[Callable[[int], nn.Module]] = None,
    ):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation, final_init, batch_renorm=batch_renorm)

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
        batch_renorm: Optional[Callable[[int], nn.Module]] = None,
    ):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, activation, final_init, layer_norm, batch_renorm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))
