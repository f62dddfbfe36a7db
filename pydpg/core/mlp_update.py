"""The C++ update (csrc/train/mlp_update.*) for agents whose networks it can run, and when it may run.

``DDPGAgent.update`` calls ``MlpUpdater.update`` instead of its autograd path when
``DDPGConfig.update_backend`` allows it and ``why_not`` finds nothing against it. The C++ side
computes the same equations (``pydpg.core.agent``'s docstring) with a hand-written backward pass; it works
in place on the modules' parameters and on the optimizers' own state, so checkpoints, export and
``state_dict`` see no difference. Only float rounding differs from the autograd path (summation
order), which ``tests/test_mlp_update.py`` bounds.

It runs what an ``Actor`` / ``Critic`` of Linear layers and ReLUs computes, and CrossQ's update
(``DDPGConfig.batch_renorm`` with ``target_networks`` off: a ``BatchRenorm`` in front of every
Linear, no targets, the joint training-mode pass). Anything it would not reproduce exactly (another
activation, LayerNorm, batch renormalization with target networks, a custom module, hooks, a GPU, a
non-fused or AMSGrad Adam, autocast, frozen parameters, a network left in training mode) sends the
update down the autograd path.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from pydpg import _core
from pydpg.core.adam import fused_adam_issue
from pydpg.core.networks import Actor, BatchRenorm, Critic

if TYPE_CHECKING:
    from pydpg.core.agent import DDPGAgent
    from pydpg.core.batch import Batch

_requires_grad = attrgetter("requires_grad")


def _plain_mlp(net: nn.Module, normalized: bool = False) -> Optional[str]:
    """None if ``net`` is nn.Sequential(Linear, ReLU, ..., Linear) with biases (``normalized``: with a
    BatchRenorm in front of every Linear), else what differs."""
    mods = list(net.children()) if type(net) is nn.Sequential else None
    unit = (BatchRenorm, nn.Linear, nn.ReLU) if normalized else (nn.Linear, nn.ReLU)
    if not mods or len(mods) % len(unit) != len(unit) - 1:
        return (
            "it is not an nn.Sequential of BatchRenorm, Linear layers and ReLU between them"
            if normalized
            else "it is not an nn.Sequential of Linear layers with ReLU between them"
        )
    for i, m in enumerate(mods):
        want = unit[i % len(unit)]
        if type(m) is not want:
            return f"layer {i} is {type(m).__name__}, the C++ update runs only {', '.join(u.__name__ for u in unit)}"
        if want is nn.Linear and m.bias is None:
            return f"layer {i} has no bias"
        if want is BatchRenorm and m.training:
            return f"layer {i} is in training mode (the agent keeps normalized networks in evaluation mode)"
    return None


def _norm_params(net: nn.Module) -> Optional[list[dict[str, Any]]]:
    """Each BatchRenorm's tensors (detached views) and constants, in order; None for a plain network."""
    norms = [m for m in net.modules() if isinstance(m, BatchRenorm)]
    if not norms:
        return None
    return [
        {
            "weight": m.weight.detach(),
            "bias": m.bias.detach(),
            "running_mean": m.running_mean,
            "running_var": m.running_var,
            "steps": m.steps,
            "momentum": m.momentum,
            "warmup": m.warmup,
            "eps": m.eps,
            "r_max": m.r_max,
            "d_max": m.d_max,
        }
        for m in norms
    ]


def _linear_params(net: nn.Module) -> list[torch.Tensor]:
    """The Linear layers' [weight, bias, ...], detached, in order."""
    return [p.detach() for m in net.modules() if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]


def _optimizer_issue(opt: torch.optim.Optimizer, params: list[nn.Parameter], name: str) -> Optional[str]:
    issue = fused_adam_issue(opt)
    if issue:
        return f"{name} {issue}"
    g = opt.param_groups[0]
    if len(g["params"]) != len(params) or any(a is not b for a, b in zip(g["params"], params)):
        return f"{name}'s parameters are not its networks' parameters in module order"
    return None


def why_not(agent: "DDPGAgent") -> Optional[str]:
    """None when the C++ update can run ``agent``'s networks as they are, else the first reason not.

    The optimizer state is not required here: it exists after the first autograd step of each
    optimizer (``MlpUpdater.ready``).
    """
    if agent.device.type != "cpu":
        return f"the agent is on {agent.device}; the C++ update runs on the CPU"
    cfg = agent.config
    on = [name for name in ("sale", "lap", "value_clip", "hard_target_interval") if getattr(cfg, name)]
    if on:
        return f"DDPGConfig.{on[0]} is on; the C++ update has DDPG's, TD3's and CrossQ's switches only"
    if cfg.batch_renorm and cfg.target_networks:
        return (
            "DDPGConfig.batch_renorm is on with target networks; the C++ update has batch renormalization "
            "without targets only (CrossQ)"
        )
    if not cfg.target_networks and not cfg.batch_renorm:
        return "DDPGConfig.target_networks is off without batch_renorm; the C++ update has CrossQ's combination only"
    if type(agent.actor) is not Actor or any(type(c) is not Critic for c in agent.critics):
        return "the networks are not pydpg.core.networks.Actor and Critic"
    for name, net in [("actor", agent.actor.net), *((f"critic {k}", c.net) for k, c in enumerate(agent.critics))]:
        issue = _plain_mlp(net, cfg.batch_renorm)
        if issue:
            return f"the {name}: {issue}"
    nets = [m for m in (agent.actor, agent.actor_target, agent.critics, agent.critic_targets) if m is not None]
    params = [p for m in nets for p in m.parameters()]
    if any(p.dtype != torch.float32 or not p.is_contiguous() for p in params):
        return "not every parameter is a contiguous float32 tensor"
    buffers = [b for m in nets for b in m.buffers()]
    if any(not b.is_contiguous() or b.dtype not in (torch.float32, torch.int64) for b in buffers):
        return "not every normalization statistic is a contiguous float32 (or int64 step count) tensor"
    if agent.action_bound is None:
        return "the agent has no action bound"
    for opt, mod, name in (
        (agent.actor_opt, agent.actor, "actor_opt"),
        (agent.critic_opt, agent.critics, "critic_opt"),
    ):
        issue = _optimizer_issue(opt, list(mod.parameters()), name)
        if issue:
            return issue
    return None


def _adam_tensors(opt: torch.optim.Adam) -> dict[str, Any]:
    group = opt.param_groups[0]
    params = group["params"]
    states = [opt.state[p] for p in params]
    grads = []
    for p in params:
        # The C++ update writes each gradient into p.grad, so p.grad holds the last update's gradient
        # as it does after the autograd path.
        if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
            p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
        grads.append(p.grad)
    return {
        "grad": grads,
        "exp_avg": [s["exp_avg"] for s in states],
        "exp_avg_sq": [s["exp_avg_sq"] for s in states],
        "step": [s["step"] for s in states],
        "beta1": group["betas"][0],
        "beta2": group["betas"][1],
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
    }


class MlpUpdater:
    """The C++ update bound to one agent's tensors. Rebuilt (``DDPGAgent.mlp_updater``) whenever the
    tensors it holds may have been replaced: a loaded optimizer state, reassigned parameter data."""

    def __init__(self, agent: "DDPGAgent", portable: bool = False):

        self.agent = agent
        targets = agent.actor_target is not None
        self._core = _core.MlpUpdate(
            _linear_params(agent.actor),
            _linear_params(agent.actor_target) if targets else None,
            [_linear_params(c) for c in agent.critics],
            [_linear_params(c) for c in agent.critic_targets] if targets else [],
            _adam_tensors(agent.actor_opt),
            _adam_tensors(agent.critic_opt),
            float(agent.action_bound),
            portable,
            _norm_params(agent.actor),
            [_norm_params(c) for c in agent.critics] if agent.config.batch_renorm else None,
        )
        nets = [m for m in (agent.actor, agent.actor_target, agent.critics, agent.critic_targets) if m is not None]
        # Every module's hook dicts, which register_*_hook fills in place: one any() per update.
        self._hook_dicts = [
            d
            for net in nets
            for m in net.modules()
            for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
        ]
        self._params = [*agent.actor.parameters(), *agent.critics.parameters()]
        # Normalization layers: the agent keeps them in evaluation mode between updates.
        self._norms = [m for net in nets for m in net.modules() if isinstance(m, BatchRenorm)]

    @staticmethod
    def ready(agent: "DDPGAgent") -> bool:
        """Both optimizers hold state for every parameter (after their first autograd step)."""
        return all(len(o.state) == len(o.param_groups[0]["params"]) for o in (agent.actor_opt, agent.critic_opt))

    @staticmethod
    def current_key(agent: "DDPGAgent") -> tuple:
        """What the bound tensors depend on: the optimizers' state dicts (load_state_dict replaces them)
        and param groups, and every parameter's and buffer's storage (normalization statistics)."""
        nets = (agent.actor, agent.critics)
        return (
            id(agent.actor_opt.state),
            id(agent.critic_opt.state),
            id(agent.actor_opt.param_groups[0]),
            id(agent.critic_opt.param_groups[0]),
            tuple(t.data_ptr() for m in nets for t in (*m.parameters(), *m.buffers())),
            tuple(p.data_ptr() for p in agent._target),
        )

    def runtime_issue(self) -> Optional[str]:
        """What, set since the last update, the C++ update would silently skip past: a module hook
        (forward or backward, on a module or global), a frozen parameter, CPU autocast."""
        from torch.nn.modules import module as m

        if (
            m._global_forward_hooks
            or m._global_forward_pre_hooks
            or m._global_backward_hooks
            or m._global_backward_pre_hooks
        ):
            return "global module hooks are registered"
        if any(self._hook_dicts):
            return "a module of the networks has hooks"
        if not all(map(_requires_grad, self._params)):
            return "a parameter is frozen (requires_grad=False)"
        if torch.is_autocast_enabled("cpu"):
            return "CPU autocast is on"
        if any(m.training for m in self._norms):
            return "a normalization layer is in training mode (the agent keeps them in evaluation mode)"
        return None

    def update(self, batch: "Batch") -> dict[str, Any]:
        """``DDPGAgent.update`` on the C++ side: the same statistics, the same policy delay."""
        agent = self.agent
        td = torch.empty(batch.obs.shape[0], dtype=torch.float32)
        agent.n_updates += 1
        actor_lr = agent.actor_opt.param_groups[0]["lr"] if agent.actor_step_due() else None
        try:
            critic_loss, q_mean, actor_loss = self._core.update(
                *batch[:7],
                agent.target_noise(batch),
                agent.critic_opt.param_groups[0]["lr"],
                actor_lr,
                agent.config.tau,
                td,
            )
        except BaseException:
            agent.n_updates -= 1  # refused before any step was taken (bad shapes, dtypes)
            raise
        return {
            "critic_loss": critic_loss,
            "actor_loss": actor_loss,
            "q_mean": q_mean,
            "td_errors": td,
            "targets_updated": False,
        }  # hard target updates (TD7) take autograd
