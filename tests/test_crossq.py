"""CrossQ's switches (Bhatt et al. 2024): batch renormalization in every layer, no target networks,
and the one forward pass of (s, a) and (s', mu(s')) through the critic.

The layer's fused kernel (torch.native_batch_norm, r and d folded into an addcmul) is compared with
Ioffe's formulas written out in torch: two computations of the same numbers, so each comparison is
held to the forward error bound of both (tests/float_bounds.py: any summation order, any grouping),
never to a tolerance measured here. The layer's own tests run it in float64 (the module is the same
code in any dtype), where that bound is 2^29 times narrower than float32's: a formula that is off
shows at once. Where both sides run the same operations on the same shapes, they are compared bit
for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from float_bounds import U32, U64, Enc, agree, variance
from policy_helpers import scramble_batch_renorm, unit_box_policy

from pydpg.core.agent import DDPGAgent
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
from pydpg.core.mlp_update import why_not
from pydpg.core.networks import BatchRenorm
from pydpg.deploy.rounding import assert_within_rounding, rounding_bound, within

OBS, ACT = 5, 2
SMALL = dict(hidden=(16, 16), critic_hidden=(24, 24), batch_renorm_warmup=3)


def _batch(g: torch.Generator, n: int = 32, weights: bool = False) -> Batch:
    """Observations and next observations from different distributions (the joint pass's two halves
    must differ); PER weights in [0.5, 1.5) with ``weights``."""
    return Batch(
        obs=torch.randn(n, OBS, generator=g) * 2 + 1,
        action=torch.rand(n, ACT, generator=g) * 2 - 1,
        reward=torch.randn(n, 1, generator=g),
        next_obs=torch.randn(n, OBS, generator=g) - 1,
        done=(torch.rand(n, 1, generator=g) < 0.2).float(),
        discount=torch.full((n, 1), 0.99),
        weights=torch.rand(n, 1, generator=g) + 0.5 if weights else None,
    )


def _crossq(**kw) -> DDPGAgent:
    torch.manual_seed(0)
    return DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("crossq", **{**SMALL, **kw}))


def _layers(module) -> list[BatchRenorm]:
    return [m for m in module.modules() if isinstance(m, BatchRenorm)]


def _buffers(module) -> list[torch.Tensor]:
    return [b.clone() for b in module.buffers()]


# ---------------------------------------------------------------------------- float64 enclosures
U = U64  # the layer tests run BatchRenorm in float64
R_LOW = 1 / 3  # the clamp's lower bound, the float64 1/3 on a float64 tensor


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def _stats(x: torch.Tensor, eps: float):
    """A training batch's statistics as the layer and the written-out formulas compute them: x, its
    mean, 1/std and std, each an atom covering both (native_batch_norm's mean and invstd, then
    invstd.reciprocal(); the reference's x.mean(0), sqrt(x.var(0) + eps) and division by it)."""
    xe = Enc.exact(_np(x), U)
    var = variance(xe, 0) + Enc.constant(eps, U)
    std_ref = var.sqrt()
    inv_mod = var.rsqrt()
    return xe, xe.mean(0).closed(), inv_mod.widen(1.0 / std_ref), (1.0 / inv_mod).widen(std_ref)


def _r_d(mean: Enc, std: Enc, brn: BatchRenorm):
    """r and d (Ioffe 2017) from the batch statistics and the layer's running ones, clipped."""
    running_std = (Enc.exact(_np(brn.running_var), U) + Enc.constant(brn.eps, U)).sqrt()
    r = (std / running_std).clamp(R_LOW, brn.r_max)
    d = ((mean - Enc.exact(_np(brn.running_mean), U)) / running_std).clamp(-brn.d_max, brn.d_max)
    return r, d


def _layer_out(xe, mean, inv, w, b, r, d) -> Enc:
    """The layer's training forward: y0 = native batch norm, then addcmul(d w + b (1 - r), y0, r)."""
    y0 = (xe - mean) * inv * w + b
    return (d * w + b * (1 - r)) + y0 * r


def _written_out(xe, mean, inv, w, b, r, d) -> Enc:
    """Ioffe's formula as the tests write it: ((x - mean) / std * r + d) * weight + bias."""
    return ((xe - mean) * inv * r + d) * w + b


def _eval_out(x: torch.Tensor, brn: BatchRenorm) -> Enc:
    """Evaluation mode: (x - running_mean) * rsqrt(running_var + eps) * weight + bias."""
    rs = (Enc.exact(_np(brn.running_var), U) + Enc.constant(brn.eps, U)).rsqrt()
    return (Enc.exact(_np(x), U) - Enc.exact(_np(brn.running_mean), U)) * rs * Enc.exact(
        _np(brn.weight), U
    ) + Enc.exact(_np(brn.bias), U)


def _interior(e: Enc, low: float, high: float) -> bool:
    """Whether every exact value and evaluation is strictly inside (low, high): no clamp acts."""
    return bool(np.all((e.centre - 2 * e.bound > low) & (e.centre + 2 * e.bound < high)))


# ---------------------------------------------------------------------------- the layer
def test_batch_renorm_is_batch_norm_during_warmup_and_moves_its_running_statistics():
    torch.manual_seed(1)
    brn = BatchRenorm(4, momentum=0.1, warmup=10).double()
    with torch.no_grad():
        brn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        brn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 3.0]))
    x = (torch.randn(64, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + torch.tensor([0.0, -5.0, 2.0, 7.0])).double()
    w, b = Enc.exact(_np(brn.weight), U), Enc.exact(_np(brn.bias), U)
    out = brn(x)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    xe, mean_e, inv, std = _stats(x, 1e-3)
    one, zero = Enc.exact(1.0, U), Enc.exact(0.0, U)  # warmup: r = 1, d = 0 exactly
    agree(
        _np(out),
        _np((x - mean) / torch.sqrt(var + 1e-3) * brn.weight + brn.bias),
        _layer_out(xe, mean_e, inv, w, b, one, zero),
        _written_out(xe, mean_e, inv, w, b, one, zero),
        what="warmup forward",
    )
    # running_mean.lerp_(mean, 0.1) = 0 + 0.1 (mean - 0); running_var.lerp_(var, 0.1) = 1 + 0.1 (var - 1),
    # the layer's var being (1 / invstd)^2 - eps; the written-out 0.1 mean and 0.9 + 0.1 var.
    tenth = Enc.constant(0.1, U)
    agree(_np(brn.running_mean), _np(0.1 * mean), 0 + tenth * (mean_e - 0), tenth * mean_e, what="running mean")
    var_mod = (std.square() - Enc.constant(1e-3, U)).clamp(0.0, None)
    var_ref = variance(xe, 0)
    agree(
        _np(brn.running_var),
        _np(0.9 + 0.1 * var),
        1 + tenth * (var_mod - 1),
        Enc.constant(0.9, U) + tenth * var_ref,
        what="running var",
    )
    assert int(brn.steps) == 1


def test_after_warmup_the_value_is_the_running_normalization_and_the_gradient_the_batchs():
    """Ioffe 2017: with r and d inside their bounds, a training forward's value equals the
    evaluation forward's (x - mean) / std with the running statistics, while the gradient still
    flows through the batch statistics: the batch's normalized sum does not depend on a shift of
    every row (zero gradient), which a plain running-statistics normalization's would."""
    torch.manual_seed(2)
    brn = BatchRenorm(3, momentum=0.05, warmup=0).double()
    x = (torch.randn(128, 3) * 1.5 + 0.3).double()
    with torch.no_grad():  # running statistics near the batch's: r in (1/3, 3), |d| < 5
        brn.running_mean.copy_(torch.tensor([0.1, 0.5, 0.2]))
        brn.running_var.copy_(torch.tensor([2.0, 3.0, 1.5]))
    want = brn.eval()(x)
    want_e = _eval_out(x, brn)
    brn.train()
    xe, mean, inv, std = _stats(x, brn.eps)
    r, d = _r_d(mean, std, brn)
    assert _interior(r, R_LOW, brn.r_max) and _interior(d, -brn.d_max, brn.d_max)  # unclipped: the identity holds
    w, b = Enc.exact(_np(brn.weight), U), Enc.exact(_np(brn.bias), U)
    xg = x.clone().requires_grad_(True)
    out = brn(xg)
    agree(_np(out), _np(want), _layer_out(xe, mean, inv, w, b, r, d), want_e, what="training value vs running")
    out.sum().backward()
    # Batch statistics: the column sums do not move with a shift, so the exact gradient is 0. The
    # backward of native batch norm with dy = r: (dy - mean(dy) - (x - mean) invstd^2 mean((x - mean) dy))
    # invstd w, whose float32 evaluation is within this bound of 0.
    xm = xe - mean
    dy = r * Enc.exact(np.ones(x.shape), U)
    grad_e = ((dy - dy.mean(0)) - xm * inv * inv * (dy * xm).mean(0)) * inv * w
    assert (xg.grad.abs().numpy() <= grad_e.rounds(4).bound).all()
    xe = x.clone().requires_grad_(True)
    brn.eval()(xe).sum().backward()
    assert xe.grad.abs().min() > 0.1  # the running normalization has no such invariance


def test_r_and_d_are_constants_of_the_gradient_and_renormalization_starts_after_warmup_forwards():
    """Ioffe 2017, Algorithm 1: r and d are treated as constants by backpropagation (a nonlinear loss
    sees the difference: with r live, d(x_hat * r) would not be r * d(x_hat)). The first ``warmup``
    training forwards are plain batch norm, the next one renormalizes."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(64, 3, generator=g) * 2 + 1).double()
    brn = BatchRenorm(3, momentum=0.0, warmup=2).double()  # momentum 0: the running statistics stay where put
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.5, 1.5, 0.8]))
        brn.running_var.copy_(torch.tensor([3.0, 6.0, 2.0]))
        brn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        brn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    running_std = torch.sqrt(brn.running_var + brn.eps)

    def reference(xg, renorm, weight, bias):
        mean, std = xg.mean(0), torch.sqrt(xg.var(0, unbiased=False) + brn.eps)
        x_hat = (xg - mean) / std
        if renorm:  # r and d computed from detached values: constants
            r = (std.detach() / running_std).clamp(1 / 3, 3)
            d = ((mean.detach() - brn.running_mean) / running_std).clamp(-5, 5)
            x_hat = x_hat * r + d
        return x_hat * weight + bias

    # The same quantities as float32 enclosures of the layer's computation and of the reference's
    # (autograd through the written-out formula): compared within the sum of both bounds.
    xe, mean, inv, std = _stats(x, brn.eps)
    xm = xe - mean
    w, b = Enc.exact(_np(brn.weight), U), Enc.exact(_np(brn.bias), U)
    n = x.shape[0]
    for step, renorm in ((0, False), (1, False), (2, True), (3, True)):
        xg, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        weight, bias = brn.weight.detach().clone().requires_grad_(True), brn.bias.detach().clone().requires_grad_(True)
        brn.zero_grad()
        out, want = brn(xg), reference(xr, renorm, weight, bias)
        if renorm:
            r, d = _r_d(mean, std, brn)
        else:
            r, d = Enc.exact(1.0, U), Enc.exact(0.0, U)
        out_mod, out_ref = _layer_out(xe, mean, inv, w, b, r, d), _written_out(xe, mean, inv, w, b, r, d)
        agree(_np(out), _np(want), out_mod, out_ref, what=f"forward {step}")
        (out**2).sum().backward()
        (want**2).sum().backward()
        # Upstream: 2 out (exact doubling) of each side's own output; r and d constants of the gradient.
        g = out_mod.widen(out_ref).scale(2.0)
        dy = g * r  # addcmul's gradient for y0
        dx_mod = ((dy - dy.mean(0)) - xm * inv * inv * (dy * xm).sum(0).div_exact(n)) * inv * w
        h = g * w * r  # d loss / d x_hat, then through (x - mean) / std, the mean and the variance
        dx_ref = (h - h.mean(0)) * inv - xm * inv * inv * inv * (h * xm).mean(0)
        # Autograd's separate kernels (var's 2/n, sqrt's 1/2, division's 1/std^2) add roundings: 8 more.
        agree(_np(xg.grad), _np(xr.grad), dx_mod.rounds(8), dx_ref.rounds(8), what=f"gradient {step}")
        dw_mod = (dy * xm * inv).sum(0) + (g * d).sum(0)
        dw_ref = (g * (xm * inv * r + d)).sum(0)
        agree(
            _np(brn.weight.grad), _np(weight.grad), dw_mod.rounds(2), dw_ref.rounds(2), what=f"weight gradient {step}"
        )
        db_mod = (g * (1 - r)).sum(0) + dy.sum(0)
        agree(_np(brn.bias.grad), _np(bias.grad), db_mod.rounds(2), g.sum(0), what=f"bias gradient {step}")
    assert int(brn.steps) == 4


def test_r_and_d_are_clipped_when_the_batch_is_far_from_the_running_statistics():
    brn = BatchRenorm(1, warmup=0).double()
    with torch.no_grad():
        brn.running_var.fill_(100.0)  # std 10: a batch of std ~1 would give r ~0.1, clipped to 1/3
        brn.running_mean.fill_(-100.0)  # d ~ 10, clipped to 5
    x = torch.randn(256, 1, generator=torch.Generator().manual_seed(3)).double()
    out = brn(x)
    mean, std = x.mean(0), torch.sqrt(x.var(0, unbiased=False) + 1e-3)
    xe, mean_e, inv, std_e = _stats(x, brn.eps)
    r, d = _r_d(mean_e, std_e, brn)
    assert (r.centre == R_LOW).all() and (d.centre == brn.d_max).all() and not r.bound.any() and not d.bound.any()
    w, b = Enc.exact(_np(brn.weight), U), Enc.exact(_np(brn.bias), U)
    # The layer multiplies by r = float64(1/3), the formula here divides by 3: their exact values differ
    # by |x_hat| |float64(1/3) - 1/3| (bounded with 1/3's rounding, u / 3), added to the two rounding bounds.
    written = (xe - mean_e) * inv / Enc.exact(3.0, U) + 5.0
    gap = (np.abs(written.centre - 5.0) + written.bound) * U + written.bound
    agree(
        _np(out),
        _np((x - mean) / std / 3.0 + 5.0),
        _layer_out(xe, mean_e, inv, w, b, r, d),
        Enc.atom(written.centre, gap, U),
        what="clipped r and d",
    )


def test_evaluation_mode_is_a_fixed_row_wise_map_that_changes_nothing():
    brn = BatchRenorm(4, warmup=0)
    brn(torch.randn(32, 4))
    brn.eval()
    before = _buffers(brn)
    x = torch.randn(8, 4)
    rows = torch.cat([brn(x[i : i + 1]) for i in range(8)])
    # Element-wise IEEE operations, each correctly rounded, on a rsqrt of the same [4] running variance:
    # a row gives the same bits alone as in a batch.
    assert torch.equal(brn(x), rows)
    assert all(torch.equal(a, b) for a, b in zip(before, _buffers(brn)))


def test_networks_put_one_layer_before_every_linear_and_the_critic_has_its_own_widths():
    a = _crossq()
    actor_layers = list(a.actor.net)
    linears = [m for m in actor_layers if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and len(_layers(a.actor)) == 3
    for i, m in enumerate(actor_layers):
        if isinstance(m, torch.nn.Linear):
            assert isinstance(actor_layers[i - 1], BatchRenorm) and actor_layers[i - 1].weight.numel() == m.in_features
    assert [m.out_features for m in a.critic.net if isinstance(m, torch.nn.Linear)] == [24, 24, 1]
    assert [m.out_features for m in a.actor.net if isinstance(m, torch.nn.Linear)] == [16, 16, ACT]
    assert len(a.critics) == 2 and all(len(_layers(c)) == 3 for c in a.critics)
    assert a.actor_opt.param_groups[0]["betas"] == (0.5, 0.999) == a.critic_opt.param_groups[0]["betas"]


# ---------------------------------------------------------------------------- the update
def test_no_target_networks_exist_and_critic_target_says_where_the_target_is():
    a = _crossq()
    assert a.actor_target is None and a.critic_targets is None
    assert not {"actor_target", "critic_targets"} & set(a.state_dict())
    with pytest.raises(ValueError, match="critic_loss"):
        a.critic_target(_batch(torch.Generator().manual_seed(0)))


def test_the_target_reads_the_online_critic_through_one_joint_forward():
    """y = r + discount * (1 - done) * min_k Q_k(s', a'), a' = clip(mu(s') + eps) with mu's running
    statistics, and Q(s, a), Q(s', a') from one train-mode pass over the concatenated batch: the
    critic's layers see (and move their running statistics to) the statistics of both batches."""
    a = _crossq()
    g = torch.Generator().manual_seed(4)
    b = _batch(g)
    noise = a.target_noise(b)
    critics = copy.deepcopy(a.critics).train()
    with torch.no_grad():
        next_a = (a.actor(b.next_obs) + noise).clamp(-1, 1)
        both = torch.cat([c(torch.cat([b.obs, b.next_obs]), torch.cat([b.action, next_a])) for c in critics], -1)
    y_want = b.reward + b.discount * (1 - b.done) * both[32:].amin(-1, keepdim=True)
    first = _layers(a.critic)[0]
    mean_before = first.running_mean.clone()
    loss, info = a.critic_loss(b, noise)
    # The same modules on the same concatenated inputs, the same operations in the same order: the
    # same bits (the copies hold the same weights and, before the pass, the same statistics).
    assert torch.equal(info["target"], y_want)
    assert torch.equal(info["q_mean"], both[:32, 0].mean())
    joint_input = torch.cat([torch.cat([b.obs, b.action], -1), torch.cat([b.next_obs, next_a], -1)])
    # The layer's batch mean (native_batch_norm's own sum) against torch's mean: other summation
    # orders, each lerp'ed by 0.01 (m + 0.01 (mean - m)) within its float32 bound.
    m0 = Enc.exact(_np(mean_before), U32)
    mean_e = Enc.exact(_np(joint_input), U32).mean(0).closed()
    lerp_e = m0 + Enc.constant(0.01, U32) * (mean_e - m0)
    agree(
        _np(first.running_mean),
        _np(torch.lerp(mean_before, joint_input.mean(0), 0.01)),
        lerp_e,
        lerp_e,
        what="running mean after the joint pass",
    )
    # Apart, (s, a) alone would be normalized with other statistics: the joint pass is not a detail.
    with torch.no_grad():
        alone = copy.deepcopy(a.critic).train()(b.obs, b.action)
    assert not torch.allclose(alone, both[:32, :1], atol=1e-3)
    # The target is held constant: the loss's gradient is the TD error's through Q(s, a) only.
    assert not info["target"].requires_grad


def test_an_update_trains_in_train_mode_and_leaves_every_network_in_evaluation_mode(tmp_path):
    a = _crossq()
    g = torch.Generator().manual_seed(5)
    for _ in range(6):  # past the warmup of 3: the renormalized branch runs
        a.update(_batch(g))
    assert not a.actor.training and not a.critics.training
    # Critic layers step once per update (joint pass), the actor's once per actor step (every 3rd).
    assert {int(m.steps) for m in _layers(a.critics)} == {6}
    assert {int(m.steps) for m in _layers(a.actor)} == {2}
    obs = np.random.default_rng(0).standard_normal((7, OBS)).astype(np.float32)
    before = _buffers(a.actor)
    batch_act = a.act(obs)
    rows = np.stack([a.act(o) for o in obs])
    assert all(torch.equal(x, y) for x, y in zip(before, _buffers(a.actor)))
    # Batch 7 against batch 1: other BLAS kernels, equal up to float32 rounding (pydpg.deploy.rounding; the
    # evaluation-mode BatchRenorm layers are in the bound's plan).
    assert_within_rounding(batch_act, rows, unit_box_policy(a, tmp_path / "p.pt", OBS, ACT), obs, "batch vs rows")


def test_the_actor_step_moves_the_actors_statistics_not_the_critics():
    a = _crossq(policy_delay=1)
    b = _batch(torch.Generator().manual_seed(6))
    critic_before, actor_before = _buffers(a.critics), _buffers(a.actor)
    loss = a.actor_loss(b.obs)
    assert all(torch.equal(x, y) for x, y in zip(critic_before, _buffers(a.critics)))
    assert not all(torch.equal(x, y) for x, y in zip(actor_before, _buffers(a.actor)))
    loss.backward()
    assert all(p.grad is None for p in a.critics.parameters())  # the DPG: the critic is a function here
    assert all(p.grad is not None for p in a.actor.parameters())


def test_the_cpp_update_runs_crossq_and_steps_aside_for_its_ablations():
    """The preset itself runs on the C++ update (tests/test_crossq_update.py pins it to autograd); the
    ablations without batch renormalization, or with target networks, step aside by name."""
    assert "target_networks is off without batch_renorm" in why_not(_crossq(batch_renorm=False))
    assert "batch_renorm is on with target networks" in why_not(_crossq(target_networks=True))
    a = _crossq(update_backend="cpp", policy_delay=1)
    a.update(_batch(torch.Generator().manual_seed(7)))  # the first steps are autograd's, creating Adam's state
    a.update(_batch(torch.Generator().manual_seed(8)))
    assert why_not(a) is None and a.mlp_updater() is not None
    b = _crossq(update_backend="cpp", policy_delay=1, target_networks=True)
    b.update(_batch(torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="batch_renorm is on with target networks"):
        b.update(_batch(torch.Generator().manual_seed(8)))


def test_checkpoint_round_trip_carries_the_running_statistics_and_continues_exactly():
    a = _crossq()
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        a.update(_batch(g))
    b = _crossq()
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(_buffers(a.actor), _buffers(b.actor)))
    batches = [_batch(g) for _ in range(4)]
    for batch in batches:
        ra, rb = a.update(batch), b.update(batch)
        assert ra["critic_loss"] == rb["critic_loss"]
    assert all(torch.equal(x, y) for x, y in zip(a.critics.state_dict().values(), b.critics.state_dict().values()))
    with pytest.raises(ValueError, match="unexpected keys.*actor_target"):
        b.load_state_dict(_crossq(target_networks=True, batch_renorm=True).state_dict())


def test_with_target_networks_the_targets_normalize_as_their_online_networks():
    """batch_renorm with target networks (CrossQ's ablation): the targets run in evaluation mode on
    running statistics, so each target update copies the statistics with the weights (as SB3's TD3
    does with BatchNorm); with tau = 1 a target is then its online network exactly."""
    a = _crossq(target_networks=True, tau=1.0)
    g = torch.Generator().manual_seed(5)
    for _ in range(a.config.policy_delay):  # the last one steps the actor and the targets
        a.update(_batch(g))
    obs = torch.randn(16, OBS, generator=g)
    act = torch.rand(16, ACT, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.actor_target(obs), a.actor(obs))
        for c, t in zip(a.critics, a.critic_targets):
            assert torch.equal(t(obs, act), c(obs, act))
    assert any(float(m.running_var.sub(1).abs().max()) > 0 for m in _layers(a.actor_target))
    a.update_targets()  # the hard update (hard_target_interval) copies them too
    assert all(torch.equal(x, y) for x, y in zip(_buffers(a.actor_target), _buffers(a.actor)))


def test_config_refuses_what_cannot_combine_or_make_sense():
    bad = [
        dict(hard_target_interval=250),
        dict(value_clip=True),
        dict(sale=True, hard_target_interval=1),
        dict(critic_layer_norm=True),
        dict(adam_beta1=1.0),
        dict(adam_beta1=-0.1),
        dict(batch_renorm_momentum=0.0),
        dict(batch_renorm_momentum=float("nan")),
        dict(batch_renorm_warmup=-1),
        dict(batch_renorm_warmup=1.5),
        dict(critic_hidden=(0, 4)),
        dict(critic_hidden="wide"),
        dict(batch_renorm="yes"),
        dict(target_networks=0),
    ]
    for kw in bad:
        with pytest.raises(ValueError, match="DDPGConfig"):
            DDPGConfig.preset("crossq", **kw)
    with pytest.raises(ValueError, match="critic_hidden"):
        DDPGConfig.preset("td7", critic_hidden=(64, 64))
    cfg = DDPGConfig.preset("crossq")
    assert DDPGConfig.from_dict(cfg.to_dict()) == cfg  # the JSON round trip of a checkpoint's config
    assert cfg.to_dict()["critic_hidden"] == [2048, 2048]


# ---------------------------------------------------------------------------- deployment
def test_a_crossq_policy_runs_on_the_allocation_free_backend_with_the_trainers_arithmetic(tmp_path):
    """The export's network plan names each BatchRenorm before its Linear; the runtime's mlp backend
    repeats the layer's evaluation-mode float32 steps in torch's order, so the deployed actions are
    the actor's own, not merely within the parity tolerance (a trained CrossQ actor amplifies
    rounding: Hopper's, evaluated in float32 and float64, differs by 5.5e-4)."""
    import pydpg
    from pydpg.deploy.export import export_policy

    a = _crossq()
    g = torch.Generator().manual_seed(10)
    for _ in range(6):
        a.update(_batch(g))
    scramble_batch_renorm(a.actor, g)
    obs = torch.randn(256, OBS, generator=g) * 2

    low, high = -2 * np.ones(ACT), 3 * np.ones(ACT)
    a.actor.train()  # a caller's actor left in training mode: exported as its evaluation-mode function
    res = export_policy(a, tmp_path / "crossq.pt", action_low=low, action_high=high, obs_dim=OBS)
    assert a.actor.training and all(int(m.steps) == 2 for m in _layers(a.actor))  # the export moved no statistic
    a.actor.eval()
    plan = res.metadata["network"]
    assert plan["kind"] == "mlp" and [("input_norm" in L) for L in plan["layers"]] == [True] * 3
    assert plan["layers"][0]["input_norm"]["mean"] == "actor.net.0.running_mean"
    policy = pydpg.Policy(str(tmp_path / "crossq.pt"), max_batch=256)
    ts = pydpg.Policy(str(tmp_path / "crossq.pt"), max_batch=256, backend="torchscript")
    assert res.runtime_backend == policy.backend == "mlp"
    rows = obs.numpy()
    got = np.stack([policy.act(o) for o in rows])
    # Row by row and as one batch, the mlp backend gives the TorchScript module's float32 results.
    # Where it calls MKL's sgemm and tanh, as torch does, the two make the same calls with the same
    # shapes, and the normalization's four roundings are torch's: equal to the last bit (a folded or
    # reordered normalization would not be; trained actors amplify that, docs/deployment.md). Without
    # MKL the two are different computations, held to pydpg.deploy.rounding's bound of the file.
    path = tmp_path / "crossq.pt"
    exact = "sgemm: mkl, tanh: mkl vml" in policy.kernels
    check = (
        np.testing.assert_array_equal
        if exact
        else (lambda x, y: assert_within_rounding(x, y, path, rows, "mlp backend vs TorchScript"))
    )
    check(got, np.stack([ts.act(o) for o in rows]))
    check(policy.act(rows), ts.act(rows))
    with torch.no_grad():
        want = low + (a.actor(obs).double().numpy() + 1) * (high - low) / 2
    # The eager actor in float32 (batch 256), scaled in float64 without the file's final float32
    # rounding: within the bound of the file's evaluation plus that of this one.
    _, file_bound = rounding_bound(path, rows)
    _, want_bound = rounding_bound(path, rows, float32_output=False)
    ok, i, d, allowed = within(got, want, file_bound + want_bound)
    assert ok, f"{res}: |diff| {d:.3g} > {allowed:.3g} at {i}"


def test_distributed_workers_act_with_the_learners_running_statistics():
    """A Ray worker rebuilds the actor from the config and loads the broadcast state dict: the
    batch renormalization statistics travel with the weights, and the worker acts in evaluation
    mode, exactly as the learner would."""
    from pydpg.train.distributed import _Acting, _cpu_agent

    a = _crossq()
    g = torch.Generator().manual_seed(11)
    for _ in range(6):
        a.update(_batch(g))

    class Worker(_Acting):
        def __init__(self):
            self.agent, self.version, self.norm = _cpu_agent(a.config.to_dict(), OBS, ACT), None, None

    w = Worker()
    w._load(
        {"actor": {k: v.detach().cpu().numpy() for k, v in a.actor.state_dict().items()}, "norm": None, "version": 1}
    )
    obs = np.random.default_rng(3).standard_normal((9, OBS)).astype(np.float32)
    assert not w.agent.actor.training
    np.testing.assert_array_equal(w.agent.act(obs), a.act(obs))


def test_training_the_wide_critic_on_a_cpu_says_what_it_costs(capsys):
    """The preset's 2048-2048 critic is a GPU's setting; a CPU run says so once, at its start, with
    the measured alternative. A 256-wide critic trains without the note."""
    import toy_env

    from pydpg.train.config import TrainConfig
    from pydpg.train.trainer import Trainer

    toy_env.register()
    for width, noted in ((1024, True), (256, False)):
        cfg = DDPGConfig.preset("crossq", hidden=(8,), critic_hidden=(width,), learning_starts=10)
        tr = Trainer(
            cfg,
            TrainConfig(env_id=toy_env.ID, total_steps=3, eval_every=0, seed=0),
            verbose=True,
            tensorboard=False,
            progress=False,
        )
        try:
            tr.run()
        finally:
            tr.close()
        err = capsys.readouterr()
        assert ("critic_hidden=[256,256]" in err.out + err.err) == noted, (width, err)


def test_a_wide_critic_on_a_cpu_is_told_its_pace_at_the_start():
    """Preset crossq's 2048-2048 critic on a CPU: the run's first lines give its env-steps/s and hours
    from the measured pace (docs/benchmarks.md, 11.5 env-steps/s at 1024, a quarter of it at 2048) and
    name the 256-256 setting (101.8); a 256-256 run is not warned."""
    import torch

    from pydpg.train.config import TrainConfig
    from pydpg.train.report import RunReport

    def lines(widths):
        report = RunReport(None, TrainConfig(total_steps=1_000_000), None, None, "Hopper-v5", tensorboard=False)
        return report.start_lines(torch.device("cpu"), widths)

    note = lines((2048, 2048))[1]
    assert "about 2.9 env-steps/s on one core, 96.6 h for 1000000 steps" in note
    assert "--set critic_hidden=[256,256]" in note and "about 102 env-steps/s (2.7 h)" in note
    assert len(lines((256, 256))) == 1
