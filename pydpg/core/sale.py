"""SALE: state-action learned embeddings (Fujimoto et al. 2023, "For SALE: State-Action
Representation Learning for Deep Reinforcement Learning", the representation half of TD7).

An encoder learns two embeddings from the dynamics alone: zs = f(s) and zsa = g(zs, a), trained so
that zsa predicts the next state's embedding, ``mse(g(f(s), a), f(s').detach())``. The actor then
sees (s, zs) and the critic (s, a, zs, zsa). Neither the critic target nor the deterministic policy
gradient changes: the embeddings only change which features Q and mu are functions of, and they come
from a *fixed* copy of the encoder that is refreshed with the targets (``DDPGAgent.update_targets``), so
a network's inputs do not drift under it between refreshes.

Sizes and activations are TD7's (github.com/sfujim/TD7, ``TD7.py``): 256-unit layers, zs_dim 256,
ELU in the encoder and critic, ReLU in the actor, and AvgL1Norm on zs and on each network's first
layer, which keeps the embeddings' scale fixed however the encoder drifts.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

AVG_L1_EPS = 1e-8  # TD7's AvgL1Norm floor; the runtime's mlp backend reads it from the export's plan


def avg_l1_norm(x: torch.Tensor, eps: float = AVG_L1_EPS) -> torch.Tensor:
    """x / mean(|x|) over the last dimension: every row's features average magnitude 1 (TD7's
    AvgL1Norm), so concatenated inputs of different origins enter the next layer on one scale."""
    return x / x.abs().mean(-1, keepdim=True).clamp(min=eps)


class Encoder(nn.Module):
    """f: s -> zs (3 ELU layers, AvgL1Norm on the output) and g: (zs, a) -> zsa (3 ELU layers)."""

    def __init__(self, obs_dim: int, act_dim: int, zs_dim: int = 256, hidden: int = 256):
        super().__init__()
        self.zs1, self.zs2, self.zs3 = nn.Linear(obs_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, zs_dim)
        self.zsa1 = nn.Linear(zs_dim + act_dim, hidden)
        self.zsa2, self.zsa3 = nn.Linear(hidden, hidden), nn.Linear(hidden, zs_dim)

    def zs(self, obs: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.zs2(F.elu(self.zs1(obs))))
        return avg_l1_norm(self.zs3(h))

    def zsa(self, zs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.zsa2(F.elu(self.zsa1(torch.cat([zs, action], dim=-1)))))
        return self.zsa3(h)

    def loss(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """The dynamics loss mse(g(f(s), a), f(s')), the target f(s') held constant (TD7)."""
        with torch.no_grad():
            target = self.zs(next_obs)
        return F.mse_loss(self.zsa(self.zs(obs), action), target)


class SaleActor(nn.Module):
    """mu(s) = tanh(MLP([AvgL1Norm(W0 s), zs])), zs from ``encoder`` (the agent's fixed copy,
    frozen: the actor step never changes it). Being a submodule, the encoder travels with the actor
    into targets, checkpoints and exported policies, so a deployed policy is this one module."""

    def __init__(self, obs_dim: int, act_dim: int, encoder: Encoder, zs_dim: int = 256, hidden: int = 256):
        super().__init__()
        self.encoder = encoder
        self.l0 = nn.Linear(obs_dim, hidden)
        self.l1, self.l2 = nn.Linear(zs_dim + hidden, hidden), nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, act_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # pydpg.deploy.export._sale_plan describes this forward to the C++ runtime: change both together
        # (a plan that no longer matches fails the runtime's load check and runs on the interpreter).
        h = torch.cat([avg_l1_norm(self.l0(obs)), self.encoder.zs(obs)], dim=-1)
        return torch.tanh(self.l3(F.relu(self.l2(F.relu(self.l1(h))))))


class SaleCritic(nn.Module):
    """Q heads on (AvgL1Norm(W0 [s, a]), zsa, zs), one output column per head ([B, heads]).

    Twin critics are two heads of this one module, as in TD7, so the embeddings they share are
    computed once per call; ``DDPGAgent`` takes the min over columns for the target and the mean for the
    actor loss (TD7 averages both heads there, where TD3 uses the first)."""

    def __init__(
        self, obs_dim: int, act_dim: int, encoder: Encoder, zs_dim: int = 256, hidden: int = 256, heads: int = 2
    ):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(_SaleHead(obs_dim + act_dim, 2 * zs_dim, hidden) for _ in range(heads))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        zs = self.encoder.zs(obs)
        emb = torch.cat([self.encoder.zsa(zs, action), zs], dim=-1)
        sa = torch.cat([obs, action], dim=-1)
        return torch.cat([head(sa, emb) for head in self.heads], dim=-1)


class _SaleHead(nn.Module):
    def __init__(self, sa_dim: int, emb_dim: int, hidden: int):
        super().__init__()
        self.l0 = nn.Linear(sa_dim, hidden)
        self.l1, self.l2 = nn.Linear(hidden + emb_dim, hidden), nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)

    def forward(self, sa: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = torch.cat([avg_l1_norm(self.l0(sa)), emb], dim=-1)
        return self.l3(F.elu(self.l2(F.elu(self.l1(h)))))


def sale_networks(
    obs_dim: int, act_dim: int, twin: bool, zs_dim: int = 256, hidden: int = 256
) -> tuple[Encoder, SaleActor, SaleCritic]:
    """The trained encoder, and an actor and a critic sharing one frozen copy of it (the fixed
    encoder, refreshed from the trained one at every target update)."""
    encoder = Encoder(obs_dim, act_dim, zs_dim, hidden)
    fixed = Encoder(obs_dim, act_dim, zs_dim, hidden)
    fixed.load_state_dict(encoder.state_dict())
    fixed.requires_grad_(False)
    return (
        encoder,
        SaleActor(obs_dim, act_dim, fixed, zs_dim, hidden),
        SaleCritic(obs_dim, act_dim, fixed, zs_dim, hidden, heads=2 if twin else 1),
    )


def fixed_encoder(module: nn.Module) -> Optional[Encoder]:
    """The frozen encoder a SALE actor or critic reads, else None."""
    enc = getattr(module, "encoder", None)
    return enc if isinstance(enc, Encoder) else None
