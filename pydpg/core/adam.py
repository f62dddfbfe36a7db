"""Adam as the agent and the C++ update both run it: fused, and stepped through its two kernels.

The C++ update (``mlp_update``) calls the same fused kernels on the optimizers' own state, so it may
run only where ``fused_adam_issue`` finds nothing; the agent's autograd path steps through
``adam_step``. One module, so both paths test the same conditions.
"""

from __future__ import annotations

from typing import Optional

import torch


def make_adam(
    params, lr: float, device: torch.device, weight_decay: float = 0.0, beta1: float = 0.9
) -> torch.optim.Adam:
    # Fused Adam (one kernel for all parameters) on CUDA and CPU, where it was faster per whole DDPG
    # update than foreach=True (docs/benchmarks.md, "How the autograd update was measured before the
    # C++ update"); multi-tensor foreach elsewhere.
    # Adam's weight_decay is the coupled L2 penalty (added to the gradient), as in Lillicrap et al. §7.
    kernel = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay, **kernel)


def _has_step_hooks(opt: torch.optim.Optimizer) -> bool:
    """Hooks registered on ``opt`` or on all optimizers run only inside ``opt.step()``."""
    from torch.optim import optimizer as optim_module

    return bool(
        opt._optimizer_step_pre_hooks
        or opt._optimizer_step_post_hooks
        or optim_module._global_optimizer_pre_hooks
        or optim_module._global_optimizer_post_hooks
    )


def fused_adam_issue(opt: torch.optim.Optimizer) -> Optional[str]:
    """None if ``opt`` is a plain fused Adam whose step is its two kernels and nothing else (one
    parameter group; no AMSGrad, maximize, decoupled decay, differentiable or tensor lr; no step
    hooks), else what is not, as a predicate ("is not ...", "has ..."). Callers that run those
    kernels themselves (``adam_step``, the C++ update) need exactly this."""
    if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
        return "is not a torch.optim.Adam with one parameter group"
    g = opt.param_groups[0]
    if (
        not g.get("fused")
        or g["amsgrad"]
        or g["maximize"]
        or g.get("decoupled_weight_decay")
        or g.get("differentiable")
        or torch.is_tensor(g["lr"])
    ):
        return "is not a plain fused Adam (amsgrad, maximize, decoupled decay or a tensor lr)"
    if _has_step_hooks(opt):
        return "has step hooks, which only opt.step() runs"
    return None


def adam_step(opt: torch.optim.Adam) -> None:
    """``opt.step()`` without its Python bookkeeping: the same two kernels on the same state.

    A fused ``Adam.step`` spends a good part of a small update in Python (grouping tensors by
    device and dtype, checking flags) around one ``_foreach_add_`` of the step counters and one
    ``_fused_adam_`` kernel (docs/benchmarks.md, "How the autograd update was measured before the
    C++ update"). With one parameter group on one device and the state already created by a first
    ``step()``, call the two kernels directly. The state stays the optimizer's own, so
    ``opt.state_dict()`` and checkpoints are unchanged; any other case (first step, foreach Adam,
    amsgrad, ...) takes ``opt.step()``.
    """
    group = opt.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    states = [opt.state.get(p) for p in params]
    if (
        fused_adam_issue(opt)
        or not params
        or any(not s for s in states)
        or len({(p.device, p.dtype) for p in params}) != 1
    ):
        opt.step()
        return
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(
        params,
        [p.grad for p in params],
        [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states],
        [],
        steps,
        amsgrad=False,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )
