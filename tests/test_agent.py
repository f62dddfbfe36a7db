"""Agent core: targets, gradients, Polyak, TD3 switches, PER weighting, config, checkpoints, noise."""

import copy
import io
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from float_bounds import U32, U64, Enc, agree, gamma, variance
from policy_helpers import unit_box_policy
from torch import nn

from pydpg.core.adam import adam_step, make_adam
from pydpg.core.agent import DDPGAgent, frozen
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig, learning_starts_for
from pydpg.core.networks import Actor, Critic
from pydpg.core.noise import GaussianNoise, OrnsteinUhlenbeckNoise, make_noise
from pydpg.deploy.rounding import assert_within_rounding

torch.set_num_threads(1)
F64 = torch.float64
GAMMA = 0.99


# ---------------------------------------------------------------- tiny closed-form modules
class LinearActor(nn.Module):
    """mu(s) = W s + b, no squashing."""

    def __init__(self, W, b):
        super().__init__()
        self.W = nn.Parameter(torch.tensor(np.asarray(W), dtype=F64))
        self.b = nn.Parameter(torch.tensor(np.asarray(b), dtype=F64))

    def forward(self, obs):
        return obs @ self.W.T + self.b


class LinearQ(nn.Module):
    """Q(s, a) = ws.s + wa.a + c."""

    def __init__(self, ws, wa, c):
        super().__init__()
        self.ws = nn.Parameter(torch.tensor(np.asarray(ws), dtype=F64))
        self.wa = nn.Parameter(torch.tensor(np.asarray(wa), dtype=F64))
        self.c = nn.Parameter(torch.tensor(float(c), dtype=F64))

    def forward(self, obs, action):
        return (obs @ self.ws + action @ self.wa + self.c).unsqueeze(-1)


class QuadQ(nn.Module):
    """Q(s, a) = -|a - center|^2 + k.s, so grad_a Q = -2 (a - center)."""

    def __init__(self, center, k):
        super().__init__()
        self.center = nn.Parameter(torch.tensor(np.asarray(center), dtype=F64))
        self.k = nn.Parameter(torch.tensor(np.asarray(k), dtype=F64))

    def forward(self, obs, action):
        return (-(action - self.center).square().sum(-1) + obs @ self.k).unsqueeze(-1)


def t64(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def E(x, u=U64) -> Enc:
    """An exact input of a float64 formula that torch and numpy both evaluate (tests/float_bounds.py:
    each evaluation, whatever its BLAS and summation order, is within the Enc's bound of the value)."""
    return Enc.exact(x, u)


def make_batch(obs, action, reward, next_obs, done, discount, weights=None):
    col = lambda x: t64(x).reshape(-1, 1)  # noqa: E731
    return Batch(
        t64(obs),
        t64(action),
        col(reward),
        t64(next_obs),
        col(done),
        col(discount),
        None if weights is None else col(weights),
    )


def random_batch(B, obs_dim, act_dim, seed=0, dtype=torch.float32, weights=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return Batch(
        r(B, obs_dim),
        r(B, act_dim).clamp(-1, 1),
        r(B, 1),
        r(B, obs_dim),
        (torch.rand(B, 1, generator=g) < 0.1).to(dtype),
        torch.full((B, 1), GAMMA, dtype=dtype),
        torch.rand(B, 1, generator=g, dtype=dtype) if weights else None,
    )


def small(name="ddpg", **kw):
    return DDPGConfig.preset(name, hidden=(16, 16), **kw)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- critic target
def test_critic_target_matches_hand_computation():
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(2, 3)), rng.normal(size=2)
    ws, wa, c = rng.normal(size=3), rng.normal(size=2), 0.7
    agent = DDPGAgent.from_dims(3, 2, DDPGConfig(), actor=LinearActor(W, b), critic=LinearQ(ws, wa, c))
    # The target must use the *target* networks: move the online ones away.
    with torch.no_grad():
        for p in [*agent.actor.parameters(), *agent.critic.parameters()]:
            p.add_(5.0)

    next_obs = rng.normal(size=(4, 3))
    reward = np.array([1.0, -2.0, 0.5, 3.0])
    # rows: ordinary step; termination (no bootstrap); time-limit truncation (done=0, so it
    # bootstraps); a 3-step return whose reward already sums the three discounted rewards.
    done = np.array([0.0, 1.0, 0.0, 0.0])
    discount = np.array([GAMMA, GAMMA, GAMMA, GAMMA**3])
    batch = make_batch(rng.normal(size=(4, 3)), rng.normal(size=(4, 2)), reward, next_obs, done, discount)

    q_next = next_obs @ ws + (next_obs @ W.T + b) @ wa + c
    expected = reward + discount * (1 - done) * q_next
    y = agent.critic_target(batch)
    assert y.shape == (4, 1) and y.dtype == F64 and not y.requires_grad
    # torch (MKL) and numpy (its own BLAS) sum in other orders: each within the float64 bound of the formula.
    q_enc = (E(next_obs) @ E(ws[:, None]))[:, 0] + ((E(next_obs) @ E(W.T) + E(b)) @ E(wa[:, None]))[:, 0] + c
    y_enc = E(reward) + E(discount) * (1 - E(done)) * q_enc
    agree(y.numpy().ravel(), expected, y_enc, y_enc, what="critic target, torch vs numpy")
    assert y[1, 0].item() == -2.0  # terminal: exactly the reward
    agree(y[3, 0].item(), 3.0 + GAMMA**3 * q_next[3], y_enc[3], y_enc[3], what="3-step target")


# ---------------------------------------------------------------- actor gradient
def test_actor_gradient_is_deterministic_policy_gradient():
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(2, 3)), rng.normal(size=2)
    center, k = rng.normal(size=2), rng.normal(size=3)
    agent = DDPGAgent.from_dims(3, 2, actor=LinearActor(W, b), critic=QuadQ(center, k))
    obs = rng.normal(size=(5, 3))

    agent.actor_loss(t64(obs)).backward()

    a = obs @ W.T + b
    grad_a_q = -2 * (a - center)  # [B, act]
    # J = -mean_i Q(s_i, mu(s_i)):  dJ/dW = -mean_i grad_a Q_i s_i^T,  dJ/db = -mean_i grad_a Q_i
    # Autograd and numpy group these sums and the 1/5 otherwise: each within the float64 bound.
    # (1/5 enters as a division by 5 or as the constant 0.2 rounded: Enc.constant covers both.)
    ga = ((E(obs) @ E(W.T) + E(b)) - E(center)).scale(-2.0)
    dW, db = (ga.T @ E(obs)) * Enc.constant(-0.2, U64), ga.sum(0) * Enc.constant(-0.2, U64)
    agree(agent.actor.W.grad.numpy(), -(grad_a_q.T @ obs) / 5, dW, dW, what="dJ/dW")
    agree(agent.actor.b.grad.numpy(), -grad_a_q.mean(0), db, db, what="dJ/db")
    assert agent.critic.center.grad is None and agent.critic.k.grad is None


def test_critic_gets_no_gradient_from_actor_step():
    agent = DDPGAgent.from_dims(4, 2, small())
    agent.actor_loss(torch.randn(8, 4)).backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert all(p.grad is not None for p in agent.actor.parameters())
    assert all(p.requires_grad for p in agent.critic.parameters())  # flags restored

    # Inside a full update, each critic weight gradient is computed exactly once (the critic step).
    calls = {"critic": 0, "actor": 0}
    for name, module in (("critic", agent.critic), ("actor", agent.actor)):
        for p in module.parameters():
            p.register_hook(lambda g, name=name: calls.__setitem__(name, calls[name] + 1))
    agent.update(random_batch(8, 4, 2))
    assert calls == {"critic": len(list(agent.critic.parameters())), "actor": len(list(agent.actor.parameters()))}


def test_frozen_keeps_parameters_that_were_already_frozen():
    m = nn.Linear(2, 2)
    m.bias.requires_grad_(False)
    with frozen(m):
        assert not m.weight.requires_grad
    assert m.weight.requires_grad and not m.bias.requires_grad


# ---------------------------------------------------------------- Polyak
def test_soft_update_is_exact():
    tau = 0.25  # a power of two, with dyadic parameters every operation below is exact
    agent = DDPGAgent.from_dims(
        3, 2, small("td3", tau=tau), actor=Actor(3, 2, (4,)).double(), critic=Critic(3, 2, (4,)).double()
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in [*agent._online, *agent._target]:
            p.copy_(torch.randint(-64, 64, p.shape, generator=g).double() / 8)
    online = [p.detach().numpy().copy() for p in agent._online]
    target = [p.detach().numpy().copy() for p in agent._target]
    assert len(target) == len([*agent.actor.parameters()]) + 2 * len([*agent.critic.parameters()])

    agent.soft_update()

    for o, t, new in zip(online, target, agent._target):
        np.testing.assert_array_equal(new.numpy(), tau * o + (1 - tau) * t)


def test_soft_update_default_tau_to_rounding():
    agent = DDPGAgent.from_dims(3, 2, small(), actor=Actor(3, 2, (4,)).double(), critic=Critic(3, 2, (4,)).double())
    with torch.no_grad():
        for p in agent._target:
            p.normal_()
    target = [p.detach().clone() for p in agent._target]
    online = [p.detach().clone() for p in agent._online]
    agent.soft_update()
    # torch's lerp computes t + tau (o - t) (or, for tau >= 0.5, o - (o - t)(1 - tau)); the test writes
    # tau o + 0.995 t, whose 0.995 is not exactly 1 - tau in float64: that gap is added exactly.
    tau = 0.005
    gap = float(abs(Fraction(0.995) - (1 - Fraction(tau))))
    for o, t, new in zip(online, target, agent._target):
        o, t = o.numpy(), t.numpy()
        lerp = E(t) + E(tau) * (E(o) - E(t))
        lerp_high = E(o) - (E(o) - E(t)) * Enc.constant(1 - tau, U64)
        written = E(tau) * E(o) + E(0.995) * E(t)
        allowed = np.maximum(lerp.bound, lerp_high.bound) + written.bound + gap * np.abs(t)
        assert (np.abs(new.numpy() - (0.005 * o + 0.995 * t)) <= allowed).all()


# ---------------------------------------------------------------- TD3 switches
def test_twin_critics_target_takes_min():
    cfg = DDPGConfig.preset("td3", target_policy_noise=0.0)
    agent = DDPGAgent.from_dims(2, 1, cfg, actor=LinearActor([[0.0, 0.0]], [0.0]), critic=LinearQ([0, 0], [0], 0))
    assert len(agent.critics) == 2 and agent.critics[0] is not agent.critics[1]
    batch = make_batch(np.zeros((3, 2)), np.zeros((3, 1)), [1, 2, 3], np.zeros((3, 2)), [0, 0, 1], [GAMMA] * 3)
    for c0, c1 in ((1.0, -2.0), (-2.0, 1.0)):
        with torch.no_grad():
            agent.critic_targets[0].c.fill_(c0)
            agent.critic_targets[1].c.fill_(c1)
        # Exact: Q' is the constant c (zero inputs), 0.99 * 1 * (-2) is exact, and r + (-1.98) rounds once,
        # as 1 - 2 * GAMMA does.
        np.testing.assert_array_equal(agent.critic_target(batch).numpy().ravel(), [1 - 2 * GAMMA, 2 - 2 * GAMMA, 3])

    # The critic loss sums both critics' squared errors.
    with torch.no_grad():
        agent.critics[0].c.fill_(0.5)
        agent.critics[1].c.fill_(-1.0)
    y = np.array([1 - 2 * GAMMA, 2 - 2 * GAMMA, 3])
    loss, _ = agent.critic_loss(batch)
    want = ((E(0.5) - E(y)).square() + (E(-1.0) - E(y)).square()).mean()
    agree(loss.item(), np.mean((0.5 - y) ** 2 + (-1.0 - y) ** 2), want, want, what="twin critic loss")


def test_default_twin_critics_are_initialized_independently():
    agent = DDPGAgent.from_dims(3, 2, small("td3"))
    assert not same(params(agent.critics[0]), params(agent.critics[1]))


def test_policy_delay_skips_actor_and_targets_on_odd_steps():
    agent = DDPGAgent.from_dims(4, 2, small("td3"))
    batch = random_batch(16, 4, 2)
    actor0, targets0, critic0 = params(agent.actor), [p.clone() for p in agent._target], params(agent.critic)

    stats = agent.update(batch)  # step 1 of 2: critic only
    assert math.isnan(stats["actor_loss"]) and math.isfinite(stats["critic_loss"])
    assert same(params(agent.actor), actor0) and same(agent._target, targets0)
    assert not same(params(agent.critic), critic0)

    stats = agent.update(batch)  # step 2: actor + Polyak
    assert math.isfinite(stats["actor_loss"])
    assert not same(params(agent.actor), actor0) and not same(agent._target, targets0)

    actor2 = params(agent.actor)
    agent.update(batch)  # step 3: skipped again
    assert same(params(agent.actor), actor2)


def test_target_policy_smoothing_noise_is_clipped():
    B = 2000
    batch = make_batch(np.zeros((B, 2)), np.zeros((B, 1)), np.zeros(B), np.zeros((B, 2)), np.zeros(B), np.ones(B))
    q_is_action = LinearQ([0, 0], [1.0], 0)  # y = smoothed target action

    # Custom (unbounded) actor: noise clipped to ±0.5 around mu'(s') = 0.9, no clamp to [-1, 1].
    cfg = DDPGConfig.preset("td3", target_policy_noise=1.0, target_noise_clip=0.5)
    agent = DDPGAgent.from_dims(2, 1, cfg, actor=LinearActor([[0.0, 0.0]], [0.9]), critic=q_is_action)
    assert agent.action_bound is None
    eps = agent.critic_target(batch).numpy().ravel() - 0.9
    # y = fl(0.9 + noise) exactly (Q' = a * 1 + 0, bootstrapped with 1 * 1), then - 0.9 here: two
    # float64 roundings of numbers below 0.9 + 0.9 + 0.5 in magnitude.
    off = gamma(2, U64) * (0.9 + 0.9 + 0.5)
    assert np.abs(eps).max() <= 0.5 + off
    assert (np.sum(np.abs(eps - 0.5) <= off) > 0.2 * B) and (np.sum(np.abs(eps + 0.5) <= off) > 0.2 * B)
    assert eps.max() > 0.1  # unclamped: mu' + eps exceeds 1

    # tanh Actor: the smoothed action is clamped back into [-1, 1].
    actor = Actor(2, 1, (4,)).double()
    with torch.no_grad():
        actor.net[-1].weight.zero_()
        actor.net[-1].bias.fill_(2.0)  # mu'(s') = tanh(2) ~ 0.96
    agent = DDPGAgent.from_dims(2, 1, cfg, actor=actor, critic=copy.deepcopy(q_is_action))
    y = agent.critic_target(batch).numpy().ravel()
    # The pre-activation is exactly 2 (zero weights, bias 2); torch's and libm's tanh are each within 4
    # ulps (<= 8 u) of tanh(2) < 1, and y >= fl(tanh - 0.5) loses one more rounding.
    assert agent.action_bound == 1.0 and y.max() == 1.0 and y.min() >= math.tanh(2.0) - 0.5 - 17 * U64


def test_explicit_smoothing_noise_is_the_noise_the_update_draws():
    """``update`` draws ``target_noise`` first and hands it to the critic loss; the result is the
    target ``critic_target`` computes when it draws the noise itself from the same stream."""
    agent = DDPGAgent.from_dims(4, 2, small("td3"))
    batch = random_batch(16, 4, 2)
    state = agent.generator.get_state()
    y_drawn = agent.critic_target(batch)
    agent.generator.set_state(state)
    noise = agent.target_noise(batch)
    assert noise.shape == batch.action.shape and noise.abs().max() <= agent.config.target_noise_clip
    assert torch.equal(agent.critic_target(batch, noise), y_drawn)
    assert DDPGAgent.from_dims(4, 2, small()).target_noise(batch) is None  # DDPGAgent: no smoothing


# ---------------------------------------------------------------- optimizer step
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_direct_adam_step_is_adam_step(weight_decay):
    """``adam_step`` calls the kernels ``Adam.step`` calls (fused), on the optimizer's own state:
    the same arithmetic in the same order, so parameters and state agree exactly."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [make_adam(n.parameters(), 1e-2, torch.device("cpu"), weight_decay) for n in nets]
    for i in range(5):
        x = torch.randn(16, 5)
        for n, opt, step in zip(nets, opts, (lambda o: o.step(), adam_step)):
            opt.zero_grad(set_to_none=True)
            n(x).square().mean().backward()
            step(opt)  # the first adam_step (no state yet) is an opt.step()
    assert same(params(nets[0]), params(nets[1]))
    s0, s1 = opts[0].state_dict()["state"], opts[1].state_dict()["state"]
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k][f], s1[k][f]) for k in s0 for f in s0[k])
    assert all(s["step"].item() == 5 for s in s1.values())


def test_direct_adam_step_runs_step_hooks():
    net = nn.Linear(3, 2)
    opt = make_adam(net.parameters(), 1e-2, torch.device("cpu"))
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).sum().backward()
        adam_step(opt)
    assert len(calls) == 3


# ---------------------------------------------------------------- PER
def test_importance_weights_multiply_the_loss():
    rng = np.random.default_rng(2)
    W, b, ws, wa = rng.normal(size=(2, 3)), rng.normal(size=2), rng.normal(size=3), rng.normal(size=2)
    agent = DDPGAgent.from_dims(3, 2, actor=LinearActor(W, b), critic=LinearQ(ws, wa, 0.3))
    obs, act, nobs = rng.normal(size=(6, 3)), rng.normal(size=(6, 2)), rng.normal(size=(6, 3))
    r, w = rng.normal(size=6), rng.uniform(size=6)
    batch = make_batch(obs, act, r, nobs, np.zeros(6), np.full(6, GAMMA), weights=w)

    q = obs @ ws + act @ wa + 0.3
    y = r + GAMMA * (nobs @ ws + (nobs @ W.T + b) @ wa + 0.3)
    # The same formulas as float64 enclosures: torch and numpy each within their bound of the value.
    q_e = (E(obs) @ E(ws[:, None]))[:, 0] + (E(act) @ E(wa[:, None]))[:, 0] + 0.3
    y_e = E(r) + E(np.full(6, GAMMA)) * (
        (E(nobs) @ E(ws[:, None]))[:, 0] + ((E(nobs) @ E(W.T) + E(b)) @ E(wa[:, None]))[:, 0] + 0.3
    )
    td_e = q_e - y_e
    weighted_e, plain_e = (E(w) * td_e.square()).mean(), td_e.square().mean()
    loss, info = agent.critic_loss(batch)
    agree(loss.item(), np.mean(w * (q - y) ** 2), weighted_e, weighted_e, what="weighted loss")
    agree(info["td_errors"].numpy(), np.abs(q - y), td_e.abs(), td_e.abs(), what="td errors")
    assert info["td_errors"].shape == (6,)

    unweighted, _ = agent.critic_loss(batch._replace(weights=None))
    agree(unweighted.item(), np.mean((q - y) ** 2), plain_e, plain_e, what="unweighted loss")
    stats = agent.update(batch)
    agree(stats["critic_loss"], np.mean(w * (q - y) ** 2), weighted_e, weighted_e, what="update's loss")
    agree(stats["q_mean"], q.mean(), q_e.mean(), q_e.mean(), what="q_mean")


def test_critic_layer_norm_normalizes_each_hidden_layer_and_leaves_the_target_formula():
    cfg = small("td3", critic_layer_norm=True)
    agent = DDPGAgent.from_dims(5, 2, cfg)
    for net in [c.net for c in (*agent.critics, *agent.critic_targets)]:
        kinds = [type(m) for m in net]
        assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    assert not any(isinstance(m, nn.LayerNorm) for m in agent.actor.modules())  # the actor is untouched
    # Each hidden layer's pre-activations leave the LayerNorm at mean 0, variance v / (v + eps) ~ 1 per
    # transition (gain 1, bias 0 at init; v the pre-activations' variance): recorded by hooks on a
    # forward pass, and judged against the float32 rounding bound of LayerNorm and of the reductions
    # here (tests/float_bounds.py), computed from the recorded inputs.
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach(), m.eps)))
        for m in agent.critic.net
        if isinstance(m, nn.LayerNorm)
    ]
    b = random_batch(64, 5, 2)
    agent.critic(b.obs, b.action)
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    for x, out, eps in seen:
        xe = Enc.exact(x.numpy(), U32)
        var = variance(xe, 1, keepdims=True)
        normed = (xe - xe.mean(1, keepdims=True).closed()) * (var + Enc.constant(eps, U32)).rsqrt()
        mean_e, var_e = normed.mean(1), variance(normed, 1)
        assert (out.mean(1).abs().numpy() <= mean_e.bound).all()  # exactly 0 in exact arithmetic
        v = variance(Enc.exact(x.numpy(), U64), 1)  # the exact v / (v + eps), to float64's bound
        ratio = v / (v + Enc.constant(eps, U64))
        agree(out.var(1, unbiased=False).numpy(), ratio.centre, var_e, ratio, what="LayerNorm output variance")
        assert (np.abs(ratio.centre - 1) < 1e-2).all()  # v >> eps: the variance is ~1
    # The switch changes Q's function class only: y = r + discount (1 - done) min_j Q'_j(s', mu'(s') + eps).
    noise = agent.target_noise(b)
    with torch.no_grad():
        a2 = (agent.actor_target(b.next_obs) + noise).clamp(-1, 1)
        q2 = torch.minimum(*[q(b.next_obs, a2) for q in agent.critic_targets])
        want = b.reward + b.discount * (1 - b.done) * q2
    # The same modules, inputs, shapes and operations in the same order: the same bits.
    assert torch.equal(agent.critic_target(b, noise), want)
    before = params(agent.critic)
    agent.update(b)
    assert not same(before, params(agent.critic))  # LayerNorm's gain and bias are trained too
    assert any(n.endswith("1.weight") for n, _ in agent.critic.named_parameters())


def test_critic_layer_norm_is_a_bool_and_sb3_cannot_run_it():
    with pytest.raises(ValueError, match="critic_layer_norm"):
        DDPGConfig(critic_layer_norm="yes").validate()
    from pydpg.experiments.sb3_peer import unsupported

    assert unsupported(DDPGConfig(critic_layer_norm=True)) == ["critic_layer_norm = True"]
    assert (
        DDPGConfig.from_dict({k: v for k, v in DDPGConfig().to_dict().items() if k != "critic_layer_norm"})
        == DDPGConfig()
    )  # configs written before the switch existed still load


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field,value",
    [
        ("actor_lr", -1e-3),
        ("critic_lr", 0.0),
        ("tau", 0.0),
        ("tau", 1.5),
        ("gamma", -0.1),
        ("gamma", 1.01),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("policy_delay", 0),
        ("hidden", (256, -1)),
        ("n_step", 0),
        ("exploration_noise", "gausian"),
        ("critic_l2", -1.0),
        ("per_beta0", 2.0),
        ("learning_starts", -1),
    ],
)
def test_validate_names_field_and_value(field, value):
    with pytest.raises(ValueError) as e:
        DDPGConfig(**{field: value}).validate()
    assert field in str(e.value) and repr(value) in str(e.value)
    with pytest.raises(ValueError):
        DDPGAgent.from_dims(3, 2, DDPGConfig(**{field: value}))


def test_validate_suggests_close_matches():
    with pytest.raises(ValueError, match="did you mean 'gaussian'"):
        DDPGConfig(exploration_noise="gausian").validate()
    with pytest.raises(ValueError, match=r"unknown preset 'td4'.*'td3'"):
        DDPGConfig.preset("td4")


def test_presets_have_documented_values():
    assert DDPGConfig.preset("ddpg") == DDPGConfig()
    d = DDPGConfig()
    assert (d.hidden, d.actor_lr, d.critic_lr, d.batch_size, d.tau, d.gamma, d.buffer_size) == (
        (256, 256),
        3e-4,
        3e-4,
        256,
        0.005,
        0.99,
        1_000_000,
    )
    assert (d.exploration_noise, d.exploration_sigma, d.learning_starts, d.critic_l2) == ("gaussian", 0.1, 25_000, 0.0)
    assert (d.twin_critics, d.policy_delay, d.target_policy_noise, d.target_noise_clip) == (False, 1, 0.0, 0.5)
    assert (d.prioritized, d.per_alpha, d.per_beta0, d.n_step, d.device) == (False, 0.6, 0.4, 1, "cpu")

    p = DDPGConfig.preset("paper")
    assert (p.hidden, p.final_init, p.actor_lr, p.critic_lr, p.critic_l2, p.tau, p.batch_size, p.exploration_noise) == (
        (400, 300),
        3e-3,
        1e-4,
        1e-3,
        1e-2,
        1e-3,
        64,
        "ou",
    )
    assert (p.ou_theta, p.ou_sigma) == (0.15, 0.2)

    t = DDPGConfig.preset("td3")
    assert (t.twin_critics, t.policy_delay, t.target_policy_noise, t.target_noise_clip) == (True, 2, 0.2, 0.5)
    assert t.actor_lr == d.actor_lr and t.batch_size == d.batch_size

    assert DDPGConfig.preset("ddpg", env_id="InvertedPendulum-v5").learning_starts == 1_000
    assert learning_starts_for("Hopper-v5") == 25_000
    assert DDPGConfig.preset("td3", batch_size=100).batch_size == 100


def test_paper_preset_builds_paper_networks():
    agent = DDPGAgent.from_dims(3, 2, DDPGConfig.preset("paper"))
    widths = [m.out_features for m in agent.actor.modules() if isinstance(m, nn.Linear)]
    assert widths == [400, 300, 2]
    # uniform_(-3e-3, 3e-3) draws float32 values: at most float32(3e-3) (monotone rounding), which is
    # above the float64 3e-3.
    top = float(np.float32(3e-3))
    for net in (agent.actor.net, agent.critic.net):
        assert net[-1].weight.abs().max() <= top and net[-1].bias.abs().max() <= top
    # L2 on the critic only.
    assert agent.critic_opt.param_groups[0]["weight_decay"] == 1e-2
    assert agent.actor_opt.param_groups[0]["weight_decay"] == 0.0


def test_config_dict_round_trip_and_unknown_keys():
    cfg = DDPGConfig.preset("td3", hidden=(64, 32))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert DDPGConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match=r"'tua'.*did you mean 'tau'") as e:
        DDPGConfig.from_dict({**d, "tua": 0.1, "bogus": 1})
    assert "'bogus'" in str(e.value)
    with pytest.raises(ValueError, match="'tua'"):
        DDPGConfig.preset("ddpg", tua=0.1)


# ---------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_gives_identical_next_update():
    cfg = small("td3")
    a = DDPGAgent.from_dims(5, 2, cfg)
    for i in range(3):
        a.update(random_batch(32, 5, 2, seed=i, weights=True))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)

    torch.manual_seed(123)  # b starts from different weights and noise stream
    b = DDPGAgent.from_dims(5, 2, cfg)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.n_updates == 3

    batch = random_batch(32, 5, 2, seed=10, weights=True)
    sa, sb = a.update(batch), b.update(batch)  # step 4: actor + targets move, smoothing noise drawn
    assert {k: v for k, v in sa.items() if k != "td_errors"} == {k: v for k, v in sb.items() if k != "td_errors"}
    assert torch.equal(sa["td_errors"], sb["td_errors"])
    for m in ("actor", "critics", "actor_target", "critic_targets"):
        assert same(params(getattr(a, m)), params(getattr(b, m))), m
    assert same(a._target, b._target)


def test_state_of_a_live_agent_is_copied_not_shared():
    """Loading another agent's live state_dict (no file in between) gives an independent agent:
    the same next update on both, whichever runs first."""
    cfg = small("td3")
    a = DDPGAgent.from_dims(5, 2, cfg)
    for i in range(3):
        a.update(random_batch(32, 5, 2, seed=i))
    b = DDPGAgent.from_dims(5, 2, cfg)
    b.load_state_dict(a.state_dict())
    batch = random_batch(32, 5, 2, seed=10)
    a.update(batch)
    b.update(batch)  # with shared Adam moments b would start from a's already-moved ones
    for m in ("actor", "critics"):
        assert same(params(getattr(a, m)), params(getattr(b, m))), m


@pytest.mark.parametrize(
    "part, bad",
    [
        ("actor_opt", 5),
        ("critic_opt", {"state": {}, "param_groups": []}),
        ("actor", {"net.0.weight": torch.zeros(2, 2)}),
    ],
)
def test_a_damaged_state_entry_is_refused_by_name(part, bad):
    agent = DDPGAgent.from_dims(3, 2, small("td3"))
    state = agent.state_dict()
    state[part] = bad
    with pytest.raises(ValueError, match=f"DDPG state: '{part}' does not fit this agent"):
        agent.load_state_dict(state)


def test_state_saved_on_another_device_type_loads():
    """A CUDA generator's state (16 bytes: seed, offset) cannot enter a CPU generator (5056 bytes):
    a CUDA-trained agent must still load on CPU (export, eval), reseeded deterministically."""
    src = DDPGAgent.from_dims(3, 2, small("td3"))
    state = src.state_dict()
    state["generator"] = torch.tensor(list(range(16)), dtype=torch.uint8)  # the shape a CUDA run saves
    a, b = DDPGAgent.from_dims(3, 2, small("td3")), DDPGAgent.from_dims(3, 2, small("td3"))
    a.load_state_dict(state)
    b.load_state_dict(state)
    assert same(params(a.actor), params(src.actor))
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_load_state_dict_rejects_wrong_keys():
    agent = DDPGAgent.from_dims(3, 2, small())
    state = agent.state_dict()
    del state["critic_opt"]
    with pytest.raises(ValueError, match="critic_opt"):
        agent.load_state_dict(state)


# ---------------------------------------------------------------- dtype / device
def test_float64_modules_and_batch():
    agent = DDPGAgent.from_dims(
        4, 2, small("td3"), actor=Actor(4, 2, (8,)).double(), critic=Critic(4, 2, (8,)).double()
    )
    stats = agent.update(random_batch(16, 4, 2, dtype=F64, weights=True))
    stats = agent.update(random_batch(16, 4, 2, dtype=F64, weights=True))
    assert stats["td_errors"].dtype == F64 and math.isfinite(stats["actor_loss"])
    assert all(p.dtype == F64 for p in agent._online + agent._target)
    assert agent.act(np.zeros((3, 4))).dtype == np.float64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        DDPGAgent.from_dims(3, 2, small(), device="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        DDPGAgent.from_dims(3, 2, small(device="cuda"))


# ---------------------------------------------------------------- acting and noise
def test_act_shapes_bounds_and_noise(tmp_path):
    agent = DDPGAgent.from_dims(4, 3, small())
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    a = agent.act(obs)
    assert a.shape == (5, 3) and a.dtype == np.float32 and np.abs(a).max() <= 1
    np.testing.assert_array_equal(agent.act(torch.as_tensor(obs)), a)  # the same tensor: the same call
    # Batch 1 against batch 5: BLAS may pick another kernel, so equal up to float32 rounding (pydpg.deploy.rounding).
    assert_within_rounding(
        agent.act(obs[0])[None], a[:1], unit_box_policy(agent, tmp_path / "p.pt", 4, 3), obs[:1], "batch 1 vs batch 5"
    )
    assert agent.act(obs[0]).shape == (3,)

    noisy = agent.act(obs, GaussianNoise(3, sigma=10.0, n_envs=5, rng=np.random.default_rng(1)))
    assert noisy.shape == (5, 3) and np.abs(noisy).max() == 1.0 and not np.array_equal(noisy, a)
    with pytest.raises(ValueError, match="noise"):
        agent.act(obs, GaussianNoise(3, n_envs=2))


def test_noise_reproducible_and_state_round_trip():
    for make in (
        lambda: GaussianNoise(2, 0.1, n_envs=3, rng=np.random.default_rng(7)),
        lambda: OrnsteinUhlenbeckNoise(2, n_envs=3, rng=np.random.default_rng(7)),
    ):
        n1, n2 = make(), make()
        np.testing.assert_array_equal(n1.sample(), n2.sample())
        buf = io.BytesIO()
        torch.save(n1.get_state(), buf)
        buf.seek(0)
        n3 = make()
        n3.set_state(torch.load(buf, weights_only=True))
        s1 = n1.sample()
        assert s1.shape == (3, 2)
        np.testing.assert_array_equal(s1, n3.sample())


def test_ou_process_step_and_per_env_reset():
    rng = np.random.default_rng(3)
    ou = OrnsteinUhlenbeckNoise(2, theta=0.15, sigma=0.2, dt=0.01, n_envs=3, rng=np.random.default_rng(3))
    x = ou.sample()
    # From x0 = mu = 0 the step is 0 + (0 + (0.2 * sqrt(0.01)) * z), and sqrt(0.01) is the float64 0.1
    # (sqrt is correctly rounded): the same two products as here, so the same bits.
    np.testing.assert_array_equal(x, 0.2 * 0.1 * rng.standard_normal((3, 2)))
    x_next = ou.sample()
    z = rng.standard_normal((3, 2))
    # x + theta (mu - x) dt + sigma sqrt(dt) z against the textbook x - theta x dt + 0.02 z: other
    # operations on other roundings of the decimal constants, each within its float64 bound.
    c = lambda v: Enc.constant(v, U64)  # noqa: E731
    step = E(x) + (c(0.15) * (0.0 - E(x)) * c(0.01) + c(0.2) * Enc.atom(0.1, 2 * U64 * 0.1, U64) * E(z))
    textbook = E(x) - c(0.15) * E(x) * c(0.01) + c(0.02) * E(z)
    agree(x_next, x - 0.15 * x * 0.01 + 0.02 * z, step, textbook, what="OU step")
    ou.reset([1])
    assert np.all(ou.x[1] == 0) and np.all(ou.x[[0, 2]] == x_next[[0, 2]])
    ou.reset()
    assert np.all(ou.x == 0)


def test_make_noise_from_config():
    assert isinstance(make_noise(DDPGConfig(), 2), GaussianNoise)
    ou = make_noise(DDPGConfig.preset("paper"), 2, n_envs=4)
    assert isinstance(ou, OrnsteinUhlenbeckNoise) and ou.sample().shape == (4, 2)
    assert make_noise(DDPGConfig(exploration_noise="none"), 2) is None
