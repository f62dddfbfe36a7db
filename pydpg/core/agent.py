"""The DDPG update (Lillicrap et al. 2015), with TD3's switches (Fujimoto et al. 2018), TD7's
(Fujimoto et al. 2023: SALE embeddings, LAP, hard targets, value clipping) and CrossQ's (Bhatt et al.
2024: batch renormalization, no target networks).

Notation follows docs/theory.md: actor mu_theta, critic Q_phi, targets mu', Q'. One ``update`` is

    y      = r + discount * (1 - done) * Q'(s', mu'(s'))           critic_target
    L(phi) = mean_i w_i * (Q_phi(s_i, a_i) - y_i)^2                 critic_loss
    J(theta) = -mean_i Q_phi(s_i, mu_theta(s_i))                    actor_loss
    theta', phi' <- tau * (theta, phi) + (1 - tau) * (theta', phi')  soft_update

Without target networks (CrossQ) mu' and Q' are the online mu and Q, and Q(s, a) and Q(s', mu(s'))
come from one forward pass over both batches (``critic_loss``).

The core works on tensors and torch modules only: no gymnasium, no replay buffer.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydpg.core.adam import adam_step, make_adam
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
from pydpg.core.mlp_update import MlpUpdater, why_not
from pydpg.core.networks import Actor, BatchRenorm, Critic
from pydpg.core.sale import Encoder, fixed_encoder, sale_networks
from pydpg.core.snapshots import PolicySnapshots


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available (torch {torch.__version__})")
        if dev.index is None:  # pin the index so tensor.device == agent.device comparisons hold
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def batch_statistics(module: nn.Module, on: bool = True):
    """Train mode for the block (normalization layers use and update their batch statistics), then
    back to evaluation mode, in which batch-renormalized networks live: acting, targets, the actor
    loss's critic and every export read the running statistics. ``on`` False: no change."""
    if on:
        module.train()
    try:
        yield module
    finally:
        if on:
            module.eval()


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Exclude ``module``'s parameters from autograd graphs built inside the block.

    Autograd decides per op, at forward time, which inputs need gradients, so a graph recorded here
    carries gradients through the module's *inputs* but never computes its weight gradients, even when
    ``backward()`` runs after the block. Restores each parameter's own flag afterwards.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


class DDPGAgent:
    """Actor, critic(s), their Polyak targets and optimizers, and the DDPG/TD3 update.

    Attributes: ``actor``, ``actor_target``, ``critics`` / ``critic_targets`` (``nn.ModuleList`` of one,
    or two with ``config.twin_critics``; ``critic`` is ``critics[0]``; the targets are None with
    ``config.target_networks`` off), ``actor_opt``, ``critic_opt``,
    ``n_updates`` (critic steps so far) and ``action_bound``: the box actions live in, used to clamp
    smoothed target actions and noisy ``act`` outputs; 1.0 for the tanh ``Actor``, None (no clamp) for
    other actor modules. Set it explicitly for a custom bounded actor. With ``config.sale``:
    ``encoder`` and ``encoder_opt`` (the trained encoder; ``fixed_encoder`` is the frozen copy inside
    actor and critic); with ``config.value_clip``: ``value_range`` and ``value_seen``; with
    ``config.policy_checkpoints``: ``checkpoint_actor`` (= ``policy_actor``) and ``checkpoints``.
    """

    def __init__(
        self,
        actor: nn.Module,
        critics: list[nn.Module],
        config: Optional[DDPGConfig] = None,
        device: Union[str, torch.device, None] = None,
        encoder: Optional[Encoder] = None,
    ):
        self.config = cfg = (config if config is not None else DDPGConfig()).validate()
        self.device = resolve_device(device if device is not None else cfg.device)
        self.actor = actor.to(self.device)
        self.critics = nn.ModuleList(critics).to(self.device)
        # SALE: ``encoder`` is the one trained (by its own loss, before each critic step); actor and
        # critics read a frozen copy, ``fixed_encoder``, which no optimizer holds.
        self.encoder: Optional[Encoder] = None
        fixed = fixed_encoder(actor)
        if cfg.sale:
            if encoder is None or fixed is None or any(fixed_encoder(c) is not fixed for c in self.critics):
                raise ValueError(
                    "DDPGConfig.sale needs pydpg.core.sale's networks sharing one fixed encoder, and the "
                    "trained encoder: build the agent with DDPGAgent.from_dims"
                )
            self.encoder = encoder.to(self.device)
            self.encoder_opt = make_adam(self.encoder.parameters(), cfg.encoder_lr, self.device, beta1=cfg.adam_beta1)
        elif encoder is not None:
            raise ValueError("an encoder was given but DDPGConfig.sale is False")
        frozen_ids = {id(p) for p in fixed.parameters()} if cfg.sale else set()
        if cfg.batch_renorm:  # normalized networks live in evaluation mode; the update switches (batch_statistics)
            self.actor.eval()
            self.critics.eval()
        # Targets never receive gradients; they move only through soft_update / update_targets.
        self.actor_target: Optional[nn.Module] = None
        self.critic_targets: Optional[nn.ModuleList] = None
        if cfg.target_networks:
            self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
            self.critic_targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor_opt = make_adam(
            [p for p in self.actor.parameters() if id(p) not in frozen_ids],
            cfg.actor_lr,
            self.device,
            beta1=cfg.adam_beta1,
        )
        self.critic_opt = make_adam(
            [p for p in self.critics.parameters() if id(p) not in frozen_ids],
            cfg.critic_lr,
            self.device,
            cfg.critic_l2,
            beta1=cfg.adam_beta1,
        )
        self.action_bound: Optional[float] = 1.0 if isinstance(actor, Actor) or cfg.sale else None
        # Value clipping (TD7): Q' in the target is clamped to value_range, the [min, max] of the
        # targets seen (value_seen) when the targets last moved. TD7 starts both bounds at 0.
        if cfg.value_clip:
            self.value_range = torch.zeros(2, device=self.device)
            self.value_seen = torch.tensor([math.inf, -math.inf], device=self.device)
        # TD7's policy checkpoints (pydpg.core.snapshots): the policy deployed and evaluated is a
        # frozen copy of the actor taken at the end of a successful assessment; until the first, the
        # initial actor (as in TD7).
        self.checkpoints = PolicySnapshots() if cfg.policy_checkpoints else None
        self.checkpoint_actor = copy.deepcopy(self.actor).requires_grad_(False) if cfg.policy_checkpoints else None
        self.n_updates = 0
        # Target-smoothing noise has its own stream (seeded from the global one) so a checkpoint can
        # restore it and a resumed run draws exactly what the uninterrupted one would have.
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(int(torch.randint(2**62, ())))
        # Flat (online, target) parameter lists, built once, for the single fused Polyak call.
        self._online = [*self.actor.parameters(), *self.critics.parameters()] if cfg.target_networks else []
        self._target = (
            [*self.actor_target.parameters(), *self.critic_targets.parameters()] if cfg.target_networks else []
        )
        # Normalization statistics (batch_renorm with targets) are copied, not averaged, whenever the
        # weights move: a target in evaluation mode must normalize as its online network does
        # (SB3's TD3 copies BatchNorm running stats with tau = 1 at each target update).
        self._online_stats = [*self.actor.buffers(), *self.critics.buffers()] if cfg.target_networks else []
        self._target_stats = (
            [*self.actor_target.buffers(), *self.critic_targets.buffers()] if cfg.target_networks else []
        )
        # The C++ update bound to these tensors (pydpg.core.mlp_update), or why it can't run them, for the
        # tensors identified by _updater_key.
        self._updater: Optional[MlpUpdater] = None
        self._updater_key: Optional[tuple] = None
        self._updater_reason: Optional[str] = None

    def __getstate__(self) -> dict[str, Any]:
        # The C++ update holds raw views of this agent's tensors: a copy (deepcopy, pickle) rebuilds its own.
        return {**self.__dict__, "_updater": None, "_updater_key": None, "_updater_reason": None}

    @classmethod
    def from_dims(
        cls,
        obs_dim: int,
        act_dim: int,
        config: Optional[DDPGConfig] = None,
        *,
        actor: Optional[nn.Module] = None,
        critic: Optional[nn.Module] = None,
        device: Union[str, torch.device, None] = None,
    ) -> "DDPGAgent":
        """Build from sizes; ``actor``/``critic`` replace the default MLPs. ``device`` defaults to
        ``config.device``. With twin critics, a custom ``critic`` is deep-copied for the second one;
        default critics are initialized independently (as in TD3)."""
        cfg = (config if config is not None else DDPGConfig()).validate()
        if cfg.sale:
            if actor is not None or critic is not None:
                raise ValueError(
                    "DDPGConfig.sale builds its own networks (pydpg.core.sale); it takes no custom actor or critic"
                )
            encoder, actor, critic = sale_networks(obs_dim, act_dim, cfg.twin_critics, cfg.sale_dim, cfg.hidden[0])
            return cls(actor, [critic], cfg, device, encoder=encoder)
        n_critics = 2 if cfg.twin_critics else 1
        brn = None
        if cfg.batch_renorm:

            def brn(width: int) -> BatchRenorm:
                return BatchRenorm(width, cfg.batch_renorm_momentum, cfg.batch_renorm_warmup)

        if actor is None:
            actor = Actor(obs_dim, act_dim, cfg.hidden, final_init=cfg.final_init, batch_renorm=brn)
        if critic is None:
            critics = [
                Critic(
                    obs_dim,
                    act_dim,
                    cfg.critic_widths,
                    final_init=cfg.final_init,
                    layer_norm=cfg.critic_layer_norm,
                    batch_renorm=brn,
                )
                for _ in range(n_critics)
            ]
        else:
            critics = [critic] + [copy.deepcopy(critic) for _ in range(n_critics - 1)]
        return cls(actor, critics, cfg, device)

    @property
    def critic(self) -> nn.Module:
        return self.critics[0]

    @property
    def policy_actor(self) -> nn.Module:
        """The actor to deploy and evaluate: the policy checkpoint with ``config.policy_checkpoints``,
        else the actor itself."""
        return self.checkpoint_actor if self.checkpoint_actor is not None else self.actor

    @torch.no_grad()
    def save_policy_checkpoint(self, step: int) -> None:
        """The current actor (with SALE, its fixed encoder inside) becomes the policy checkpoint,
        buffers included, taken at env step ``step``."""
        self.checkpoint_actor.load_state_dict(self.actor.state_dict())
        self.checkpoints.saved_at_step = int(step)

    @property
    def fixed_encoder(self) -> Optional[Encoder]:
        """SALE's frozen encoder that actor and critics read (None without SALE)."""
        return fixed_encoder(self.actor) if self.encoder is not None else None

    @staticmethod
    def q_values(critics: nn.ModuleList, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Every critic head's Q(s, a) as the columns of one [B, heads] tensor: one column per
        default ``Critic``, and one per head of a multi-head critic (SALE's twin)."""
        qs = [q(obs, action) for q in critics]
        return qs[0] if len(qs) == 1 else torch.cat(qs, dim=-1)

    # ------------------------------------------------------------------ the update
    def target_noise(self, batch: Batch) -> Optional[torch.Tensor]:
        """TD3's target policy smoothing noise eps = clip(N(0, sigma^2), -c, c), one row per
        transition (shape of ``batch.action``), from the agent's own generator; None when off."""
        cfg = self.config
        if cfg.target_policy_noise <= 0:
            return None
        a = batch.action
        eps = torch.randn(a.shape, generator=self.generator, dtype=a.dtype, device=a.device)
        return (eps * cfg.target_policy_noise).clamp_(-cfg.target_noise_clip, cfg.target_noise_clip)

    @torch.no_grad()
    def critic_target(self, batch: Batch, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y = r + discount * (1 - done) * Q'(s', mu'(s') + noise), shape [B, 1].

        This is Q-learning's target r + gamma * max_a Q(s', a) with the intractable max over a
        continuous action replaced by the target actor's choice mu'(s') (Lillicrap et al. eq. 6).
        ``discount`` is gamma^k for a k-step return; ``done`` is 1 only on termination, so a
        truncated episode still bootstraps. TD3 adds clipped noise to mu'(s') (target policy
        smoothing; ``noise`` defaults to a fresh ``target_noise(batch)``) and takes the min over two
        target critics (clipped double Q-learning).
        """
        if self.actor_target is None:
            raise ValueError(
                "with DDPGConfig.target_networks off the target comes from the same forward pass as "
                "Q(s, a): read it from critic_loss(batch)[1]['target']"
            )
        next_action = self.next_action(self.actor_target, batch, noise)
        return self.bootstrap(batch, self.q_values(self.critic_targets, batch.next_obs, next_action))

    @torch.no_grad()
    def next_action(self, actor: nn.Module, batch: Batch, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """a' = ``actor``(s') + noise, clamped to the action bound (TD3's target policy smoothing;
        ``noise`` defaults to a fresh ``target_noise(batch)``, None when smoothing is off)."""
        if noise is None:
            noise = self.target_noise(batch)
        next_action = actor(batch.next_obs)
        if noise is not None:
            next_action = next_action + noise
            if self.action_bound is not None:
                next_action = next_action.clamp_(-self.action_bound, self.action_bound)
        return next_action

    def bootstrap(self, batch: Batch, next_q: torch.Tensor) -> torch.Tensor:
        """y = r + discount * (1 - done) * min over heads of ``next_q`` ([B, heads]), held constant."""
        next_q = next_q.detach().amin(-1, keepdim=True)
        if self.config.value_clip:  # TD7: Q' may not leave the range of the targets seen so far
            next_q = next_q.clamp(self.value_range[0], self.value_range[1])
        return batch.reward + batch.discount * (1.0 - batch.done) * next_q

    def critic_loss(
        self, batch: Batch, noise: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over critic heads of the (importance-weighted) mean squared TD error; with
        ``config.lap`` the Huber loss (threshold 1) instead.

        ``info`` (all detached): ``td_errors``, shape [B], the new PER priorities: |Q_1(s, a) - y|,
        or LAP's max(max_k |Q_k(s, a) - y|, 1); ``q_mean`` = mean Q_1(s, a), a scalar tensor; and
        ``target``, y itself. ``noise``: see ``critic_target``.
        """
        if self.actor_target is not None:
            y = self.critic_target(batch, noise)
            with batch_statistics(self.critics, self.config.batch_renorm):
                q = self.q_values(self.critics, batch.obs, batch.action)
        else:
            # CrossQ: Q(s, a) and Q(s', a') in one forward pass, so that the critic's batch
            # statistics are those of the mixture of both batches. Run apart, (s', a') (a' from the
            # current policy) would be normalized with statistics of the replayed (s, a) only, a
            # distribution it is not from (Bhatt et al. 2024). a' is the actor's with its running
            # statistics, as every action the agent takes.
            n = batch.obs.shape[0]
            next_action = self.next_action(self.actor, batch, noise)
            with batch_statistics(self.critics, self.config.batch_renorm):
                q_both = self.q_values(
                    self.critics, torch.cat([batch.obs, batch.next_obs]), torch.cat([batch.action, next_action])
                )
            q = q_both[:n]
            y = self.bootstrap(batch, q_both[n:])
        td = q - y
        if self.config.lap:
            # LAP (Fujimoto et al. 2020): sampling with probability ~ max(|delta|, 1)^alpha and
            # training on the Huber loss: at alpha = 1 the uniform MSE's expected gradient, without
            # weights (docs/theory.md §7). Its value is |delta| - 1/2 beyond 1 where TD7 logs |delta|:
            # the gradient is the same.
            per_row = F.huber_loss(q, y.expand_as(q), reduction="none", delta=1.0).sum(-1, keepdim=True)
            priorities = td.detach().abs().amax(-1).clamp_(min=1.0)
        else:
            per_row = td.square().sum(-1, keepdim=True)
            priorities = td.detach()[:, 0].abs()
        # PER: weights w_i correct the bias of sampling transitions with probability != 1/N.
        loss = (per_row if batch.weights is None else batch.weights * per_row).mean()
        return loss, {"td_errors": priorities, "q_mean": q.detach()[:, 0].mean(), "target": y}

    def actor_loss(self, obs: torch.Tensor) -> torch.Tensor:
        """J = -mean Q_1(s, mu_theta(s)) (over all heads of a multi-head critic, as TD7); its
        theta-gradient is the deterministic policy gradient
        grad_a Q(s, a)|_{a = mu(s)} * grad_theta mu(s) (Silver et al. 2014), averaged over the batch.

        The critic is frozen while the graph is built, so backward computes only d/da through the
        critic and never the critic's weight gradients (which the actor step would throw away).
        """
        with frozen(self.critic), batch_statistics(self.actor, self.config.batch_renorm):
            # With batch renormalization the actor uses (and updates) its batch statistics; the
            # critic, frozen, reads its running ones (CrossQ; sb3-contrib's CrossQ does the same).
            return -self.critic(obs, self.actor(obs)).mean()

    @torch.no_grad()
    def soft_update(self) -> None:
        """Polyak averaging theta' <- tau*theta + (1 - tau)*theta' for the actor and all critics.

        lerp_(target, online, tau) = target + tau * (online - target): one fused multi-tensor call.
        """
        torch._foreach_lerp_(self._target, self._online, self.config.tau)
        if self._target_stats:
            torch._foreach_copy_(self._target_stats, self._online_stats)

    @torch.no_grad()
    def update_targets(self) -> None:
        """The hard target update (``hard_target_interval``; TD7, as DQN): every target <- its
        online network. Then SALE's fixed encoder <- the trained one, so the targets read the fixed
        encoder of the previous interval (TD7's fixed_encoder_target) and the online networks the
        newest."""
        torch._foreach_copy_(self._target, self._online)
        if self._target_stats:
            torch._foreach_copy_(self._target_stats, self._online_stats)
        if self.encoder is not None:
            torch._foreach_copy_(list(self.fixed_encoder.parameters()), list(self.encoder.parameters()))

    def mlp_updater(self) -> Optional[MlpUpdater]:
        """The C++ update for this agent as it is now, or None for the autograd path.

        None while ``update_backend`` is "torch", before both optimizers have state (their first
        autograd step creates it), and whenever ``pydpg.core.mlp_update`` finds a reason the C++ update
        would not compute what autograd does; with "cpp" that reason is raised as a ValueError.
        """
        backend = self.config.update_backend
        if backend == "torch" or not MlpUpdater.ready(self):
            return None
        key = MlpUpdater.current_key(self)
        if key != self._updater_key:  # first use, or tensors replaced (a loaded optimizer state, ...)
            self._updater_key, self._updater = key, None
            self._updater_reason = why_not(self)
            if self._updater_reason is None:
                self._updater = MlpUpdater(self)
        reason = self._updater_reason or (self._updater.runtime_issue() if self._updater else None)
        if reason is not None:
            if backend == "cpp":
                raise ValueError(f"DDPGConfig.update_backend='cpp' but the C++ update can't run this agent: {reason}")
            return None
        return self._updater

    def actor_step_due(self) -> bool:
        """Whether the update just counted (``n_updates``) also steps the actor and the targets: every
        ``policy_delay``-th (TD3's delayed policy updates, Fujimoto et al. 2018 §5.2). Both update
        paths, autograd and C++, ask here."""
        return self.n_updates % self.config.policy_delay == 0

    def update(self, batch: Batch) -> dict[str, Any]:
        """One critic step; every ``policy_delay``-th call also an actor step and a Polyak update.
        With SALE an encoder step comes first; with ``hard_target_interval`` the targets are copied
        every that many calls instead of averaged.

        Returns floats ``critic_loss``, ``actor_loss`` (NaN when the actor step was skipped),
        ``q_mean``, ``td_errors`` (tensor [B], on the agent's device) for PER, and
        ``targets_updated`` (a hard target update happened; LAP's replay resets its maximum
        priority then). The C++ update (``mlp_updater``) runs it when it can; otherwise autograd,
        below.
        """
        if batch.obs.device != self.device:
            batch = batch.to(self.device, non_blocking=True)
        updater = self.mlp_updater()
        if updater is not None:
            return updater.update(batch)
        cfg = self.config
        if self.encoder is not None:  # SALE: the encoder learns the dynamics first, as in TD7
            self._step(self.encoder_opt, self.encoder.loss(batch.obs, batch.action, batch.next_obs))
        # The noise is drawn here, outside the loss, so that the loss is a function of tensors only
        # (a generator argument stops torch.compile's graph capture; see bench_update.py --compile).
        critic_loss, info = self.critic_loss(batch, self.target_noise(batch))
        self._step(self.critic_opt, critic_loss)
        self.n_updates += 1

        critic_loss = critic_loss.detach()
        targets_moved = False
        if self.actor_step_due():
            actor_loss = self.actor_loss(batch.obs)
            self._step(self.actor_opt, actor_loss)
            if not cfg.hard_target_interval and cfg.target_networks:
                self.soft_update()
                targets_moved = True
            actor_loss = actor_loss.detach()
        else:
            actor_loss = critic_loss.new_full((), math.nan)
        targets_updated = bool(cfg.hard_target_interval) and self.n_updates % cfg.hard_target_interval == 0
        if targets_updated:
            self.update_targets()
            targets_moved = True
        if cfg.value_clip:
            y = info["target"]
            torch.minimum(self.value_seen[:1], y.min().reshape(1), out=self.value_seen[:1])
            torch.maximum(self.value_seen[1:], y.max().reshape(1), out=self.value_seen[1:])
            if targets_moved:
                self.value_range.copy_(self.value_seen)
        # One device->host transfer for all statistics.
        c, a, q = torch.stack([critic_loss, actor_loss, info["q_mean"]]).tolist()
        return {
            "critic_loss": c,
            "actor_loss": a,
            "q_mean": q,
            "td_errors": info["td_errors"],
            "targets_updated": targets_updated,
        }

    @staticmethod
    def _step(opt: torch.optim.Adam, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        adam_step(opt)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: Union[np.ndarray, torch.Tensor], noise=None, deploy: bool = False) -> np.ndarray:
        """mu(obs) (+ ``noise.sample()``, then clamped to ``action_bound``) as a numpy array.

        ``obs`` is [n, obs_dim] (returns [n, act_dim]) or a single [obs_dim] (returns [act_dim]).
        ``deploy``: act with ``policy_actor`` (the policy checkpoint, where there is one) instead of
        the actor being trained, which exploration uses.
        """
        actor = self.policy_actor if deploy else self.actor
        param = next(actor.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        x = torch.as_tensor(obs, dtype=dtype, device=self.device)
        single = x.ndim == 1
        action = actor(x.unsqueeze(0) if single else x).cpu().numpy()
        if noise is not None:
            eps = noise.sample()
            if eps.size != action.size:
                raise ValueError(f"noise gives {eps.shape} samples for actions of shape {action.shape}")
            action = (action + eps.reshape(action.shape)).astype(action.dtype, copy=False)
            if self.action_bound is not None:
                np.clip(action, -self.action_bound, self.action_bound, out=action)
        return action[0] if single else action

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain Python only: loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "actor": self.actor.state_dict(),
            "critics": self.critics.state_dict(),
            **(
                {"actor_target": self.actor_target.state_dict(), "critic_targets": self.critic_targets.state_dict()}
                if self.actor_target is not None
                else {}
            ),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "n_updates": self.n_updates,
            "generator": self.generator.get_state(),
            # Only with the switches that have them, so checkpoints of agents without stay loadable.
            **(
                {"encoder": self.encoder.state_dict(), "encoder_opt": self.encoder_opt.state_dict()}
                if self.encoder is not None
                else {}
            ),
            **(
                {"value_range": self.value_range.clone(), "value_seen": self.value_seen.clone()}
                if self.config.value_clip
                else {}
            ),
            **(
                {"checkpoint_actor": self.checkpoint_actor.state_dict(), "checkpoints": self.checkpoints.state_dict()}
                if self.checkpoints is not None
                else {}
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"DDPG state: missing keys {sorted(expected - set(state))}, "
                f"unexpected keys {sorted(set(state) - expected)}"
            )
        for name in (
            "actor",
            "critics",
            *(("actor_target", "critic_targets") if self.actor_target is not None else ()),
            "actor_opt",
            "critic_opt",
            *(("encoder", "encoder_opt") if self.encoder is not None else ()),
            *(("checkpoint_actor", "checkpoints") if self.checkpoints is not None else ()),
        ):
            value = state[name]
            if name.endswith("_opt"):
                # torch's Optimizer.load_state_dict keeps same-device tensors as they are, so a state
                # taken from a live agent would share its Adam moments and both would update them.
                value = copy.deepcopy(value)
            try:
                getattr(self, name).load_state_dict(value)
            except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
                # torch's own messages name neither the entry nor always the problem ("'int' object
                # has no attribute 'copy'", KeyError 'step'): say which part of the state is bad.
                raise ValueError(f"DDPG state: {name!r} does not fit this agent: {type(e).__name__}: {e}") from e
        if self.config.value_clip:
            for name in ("value_range", "value_seen"):
                value = torch.as_tensor(state[name])
                if value.shape != (2,):
                    raise ValueError(f"DDPG state: {name} must have shape (2,), got {tuple(value.shape)}")
                getattr(self, name).copy_(value)
        self.n_updates = int(state["n_updates"])
        saved = state["generator"].cpu()
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
        else:
            # Saved by a generator of another device type (CUDA keeps 16 bytes, CPU 5056): its state
            # cannot be carried over, so reseed from it, deterministically. Exact resume is a
            # same-device promise; loading a CUDA-trained agent on CPU (export, eval) must work.
            self.generator.manual_seed(int.from_bytes(bytes(saved[:8].tolist()), "little") % 2**63)
