"""TD7's switches (Fujimoto et al. 2023) pinned to what they claim: SALE's encoder, its fixed
copies and their refresh order; hard target updates; value clipping; LAP's Huber loss, its
priorities and the unbiasedness that justifies them; and the preset, export and the C++ update's
refusal around them.

Where a test recomputes what the agent computed, with the same modules on the same tensors and the
same operations, it compares bit for bit. Where it compares two different computations (a fused
loss against its formula, per-sample against batched gradients, the runtime against torch), the
tolerance is the forward error bound of both (tests/float_bounds.py, pydpg.deploy.rounding), never a
number measured here."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from float_bounds import U32, U64, Enc, agree

from pydpg.core.agent import DDPGAgent
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
from pydpg.core.mlp_update import why_not
from pydpg.core.networks import Actor
from pydpg.core.replay import ReplayBuffer
from pydpg.core.sale import AVG_L1_EPS, Encoder, SaleActor, SaleCritic, avg_l1_norm
from pydpg.core.snapshots import EPISODES_LATE, LATE_AFTER_UPDATES, PolicySnapshots
from pydpg.deploy.rounding import rounding_bound, within

OBS, ACT = 7, 3
SMALL = dict(hidden=(16, 16), sale_dim=8)


def _batch(g: torch.Generator, n: int = 32, weights: bool = False) -> Batch:
    return Batch(
        obs=torch.randn(n, OBS, generator=g),
        action=torch.rand(n, ACT, generator=g) * 2 - 1,
        reward=torch.randn(n, 1, generator=g) * 3,
        next_obs=torch.randn(n, OBS, generator=g),
        done=(torch.rand(n, 1, generator=g) < 0.2).float(),
        discount=torch.full((n, 1), 0.99),
        weights=torch.rand(n, 1, generator=g) + 0.5 if weights else None,
    )


def _td7(**kw) -> DDPGAgent:
    torch.manual_seed(0)
    return DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("td7", **{**SMALL, **kw}))


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_avg_l1_norm_gives_rows_of_mean_magnitude_one():
    x = torch.randn(5, 9) * torch.tensor([[1e-3], [1.0], [10.0], [1e4], [3.0]])
    # Exactly 1 in exact arithmetic (every row's mean |x| is far above the eps floor): the float32
    # evaluation of x / mean|x| and of this mean is within its derived bound of 1.
    xe = Enc.exact(x.numpy(), U32)
    m = xe.abs().mean(-1, keepdims=True)
    assert (m.centre - 2 * m.bound > AVG_L1_EPS).all()
    ones = (xe / m.clamp(AVG_L1_EPS, None)).abs().mean(-1)
    assert (np.abs(avg_l1_norm(x).abs().mean(-1).numpy() - 1.0) <= ones.bound).all()
    assert torch.equal(avg_l1_norm(torch.zeros(2, 4)), torch.zeros(2, 4))  # eps: no NaN on a zero row


def test_sale_networks_share_one_frozen_fixed_encoder_no_optimizer_holds():
    a = _td7()
    fixed = a.fixed_encoder
    assert isinstance(a.actor, SaleActor) and isinstance(a.critic, SaleCritic) and len(a.critics) == 1
    assert a.actor.encoder is fixed and a.critic.encoder is fixed and fixed is not a.encoder
    assert torch.equal(_flat(fixed), _flat(a.encoder))  # TD7 starts all encoder copies equal
    assert not any(p.requires_grad for p in fixed.parameters())
    held = {id(p) for o in (a.actor_opt, a.critic_opt) for g in o.param_groups for p in g["params"]}
    assert not held & {id(p) for p in fixed.parameters()}
    assert {id(p) for p in a.encoder_opt.param_groups[0]["params"]} == {id(p) for p in a.encoder.parameters()}
    # Twin critics are two heads of one module: one column each.
    g = torch.Generator().manual_seed(0)
    b = _batch(g)
    assert a.critic(b.obs, b.action).shape == (32, 2)
    assert DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("td7", twin_critics=False, **SMALL)).critic(
        b.obs, b.action
    ).shape == (32, 1)
    assert a.action_bound == 1.0 and a.act(np.zeros(OBS, np.float32)).shape == (ACT,)


def test_encoder_loss_is_next_state_prediction_with_a_constant_target():
    enc = Encoder(OBS, ACT, zs_dim=8, hidden=16)
    g = torch.Generator().manual_seed(0)
    b = _batch(g)
    next_obs = b.next_obs.clone().requires_grad_(True)
    loss = enc.loss(b.obs, b.action, next_obs)
    pred, target = enc.zsa(enc.zs(b.obs), b.action), enc.zs(b.next_obs)
    want = ((pred - target) ** 2).mean()
    # The networks run the same calls on the same tensors in both: the same pred and target. What
    # differs is mse_loss's kernel against (.)^2.mean(): the float32 bound of that mean of squares.
    sq = (Enc.exact(pred.detach().numpy(), U32) - Enc.exact(target.detach().numpy(), U32)).square().mean()
    agree(loss.item(), want.item(), sq, sq, what="encoder loss")
    # The target f(s') is a constant: no gradient reaches s' through it, while f's and g's weights
    # get one through the prediction g(f(s), a).
    params = list(enc.parameters())
    *grads, g_next = torch.autograd.grad(loss, params + [next_obs], allow_unused=True)
    assert g_next is None
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_each_update_trains_encoder_critic_and_actor_but_never_the_fixed_encoder():
    a = _td7(hard_target_interval=1000)
    g = torch.Generator().manual_seed(1)
    before = {
        n: _flat(m).clone()
        for n, m in [("enc", a.encoder), ("fixed", a.fixed_encoder), ("actor", a.actor.l1), ("critic", a.critic.heads)]
    }
    a.update(_batch(g))
    a.update(_batch(g))  # policy_delay 2: the actor steps on the second
    after = {
        n: _flat(m)
        for n, m in [("enc", a.encoder), ("fixed", a.fixed_encoder), ("actor", a.actor.l1), ("critic", a.critic.heads)]
    }
    assert torch.equal(before["fixed"], after["fixed"])
    for n in ("enc", "actor", "critic"):
        assert not torch.equal(before[n], after[n]), n


def test_hard_targets_move_only_at_the_interval_in_td7s_order():
    a = _td7(hard_target_interval=4)
    g = torch.Generator().manual_seed(2)
    target0 = _flat(a.actor_target).clone()
    for k in range(1, 4):
        info = a.update(_batch(g))
        assert not info["targets_updated"] and torch.equal(_flat(a.actor_target), target0), k  # no Polyak
    fixed_before = _flat(a.fixed_encoder).clone()
    online_actor = copy.deepcopy(a.actor)
    online_critics = copy.deepcopy(a.critics)
    info = a.update(_batch(g))
    assert info["targets_updated"]
    # TD7: actor_target <- actor and critic_target <- critic (both reading the fixed encoder as it
    # was, which becomes fixed_encoder_target), then fixed_encoder <- encoder.
    assert torch.equal(_flat(a.actor_target.encoder), fixed_before)
    assert torch.equal(_flat(a.critic_targets[0].encoder), fixed_before)
    assert torch.equal(_flat(a.fixed_encoder), _flat(a.encoder))
    assert not torch.equal(_flat(a.fixed_encoder), fixed_before)
    # The other target weights are the online ones of this update (its actor step included).
    assert torch.equal(_flat(a.actor_target.l1), _flat(a.actor.l1)) and not torch.equal(
        _flat(online_actor.l1), _flat(a.actor.l1)
    )
    assert torch.equal(_flat(a.critic_targets[0].heads), _flat(a.critics[0].heads))
    assert not torch.equal(_flat(online_critics[0].heads), _flat(a.critics[0].heads))


def test_value_clipping_clamps_q_prime_to_the_targets_seen_before_the_last_target_update():
    a = _td7(hard_target_interval=3)
    g = torch.Generator().manual_seed(3)
    b = _batch(g)
    # Before any target update the range is TD7's [0, 0]: y = r exactly.
    assert torch.equal(a.critic_target(b), b.reward + b.discount * (1 - b.done) * 0.0)
    ys = []
    for k in range(1, 4):
        bb = _batch(g)
        rng = a.generator.get_state()
        ys.append(a.critic_target(bb, a.target_noise(bb)))  # the very target the update computes:
        a.generator.set_state(rng)  # same noise draw, and the encoder step does not touch the targets
        before = a.value_range.clone()
        a.update(bb)
        if k < 3:  # between target updates the range in force does not move
            assert torch.equal(a.value_range, before)
    # At the target update the range in force becomes the [min, max] of every target computed so far:
    # the very targets (same noise, same networks, same calls), so the same bits.
    seen = torch.cat(ys)
    assert torch.equal(a.value_range, torch.stack([seen.min(), seen.max()]))
    # The target clamps the min-over-heads Q' to the range, and does nothing else.
    a.value_range.copy_(torch.tensor([-0.1, 0.02]))
    noise = a.target_noise(b)
    next_action = (a.actor_target(b.next_obs) + noise).clamp(-1, 1)
    q_prime = a.q_values(a.critic_targets, b.next_obs, next_action).amin(-1, keepdim=True)
    assert (q_prime < -0.1).any() and (q_prime > 0.02).any()  # both bounds in play
    want = b.reward + b.discount * (1 - b.done) * q_prime.clamp(-0.1, 0.02)
    assert torch.equal(a.critic_target(b, noise), want)  # the same calls in the same order


def test_lap_loss_is_huber_summed_over_heads_and_its_gradient_is_the_clipped_td_error():
    a = _td7()
    g = torch.Generator().manual_seed(4)
    b = _batch(g)
    noise = a.target_noise(b)
    loss, info = a.critic_loss(b, noise)
    q = a.q_values(a.critics, b.obs, b.action)
    y = a.critic_target(b, noise)
    delta = (q - y).detach()
    assert delta.abs().max() > 1 and delta.abs().min() < 1  # both branches of the Huber loss in play
    huber = torch.where(delta.abs() < 1, 0.5 * delta**2, delta.abs() - 0.5)
    want = huber.sum(-1).mean()
    # q and y are the agent's own (same calls), and each Huber term rounds alike in F.huber_loss and
    # here (0.5 z z, z - 0.5): what differs is the kernels' sum and mean, within their float32 bound.
    terms = Enc.exact(huber.detach().numpy(), U32).sum(-1).mean()
    agree(loss.item(), want.item(), terms, terms, what="LAP loss")
    # d loss / d Q_ik = clamp(delta_ik, -1, 1) / B, so the gradient of the agent's loss for head k's
    # output bias (dQ_ik / db_k = 1) is the batch mean of the clipped TD errors of that head. The
    # per-row terms clamp(delta) / 32 are exact (a power of two); their sum's order is the kernels'.
    for k, head in enumerate(a.critic.heads):
        (grad,) = torch.autograd.grad(loss, head.l3.bias, retain_graph=True)
        clipped = Enc.exact(delta[:, k].clamp(-1, 1).numpy() / 32, U32).sum()
        agree(
            grad.numpy(),
            delta[:, k].clamp(-1, 1).mean().reshape(1).numpy(),
            clipped,
            clipped,
            what=f"head {k} bias gradient",
        )
    # Q and y recomputed here with the same calls on the same tensors: the same bits.
    assert torch.equal(info["td_errors"], delta.abs().amax(-1).clamp(min=1.0))


def test_lap_sampling_with_the_huber_loss_has_the_uniform_mse_gradient():
    """LAP's claim (Fujimoto et al. 2020, Theorem 2), with alpha = 1: sampling i with probability
    max(|d_i|, 1) / sum_j max(|d_j|, 1) and stepping on the Huber loss has, in expectation, the
    gradient of the uniform mean of d_i^2 / 2, times N / sum_j max(|d_j|, 1). Exact, per parameter.

    Exact in exact arithmetic; here per-sample (batch 1) and batched (batch 40) evaluations, in
    float64, each compared within its derived bound (tests/float_bounds.py) of the common value
    (1 / S) sum_i d_i dq_i/dtheta, S = sum_j max(|d_j|, 1). The ReLU's derivative is the exact one in
    every evaluation: each pre-activation is checked to be farther from 0 than its rounding bound."""
    torch.manual_seed(5)
    critic = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    x, y = torch.randn(40, 4).double(), (torch.randn(40, 1) * 4).double()
    d = (critic(x) - y).detach().reshape(-1)
    assert (d.abs() > 1).any() and (d.abs() < 1).any()
    p = d.abs().clamp(min=1)
    p = p / p.sum()
    per_sample = [
        torch.autograd.grad(F.huber_loss(critic(x[i : i + 1]), y[i : i + 1]), list(critic.parameters()))
        for i in range(40)
    ]
    expected = [sum(p[i] * per_sample[i][k] for i in range(40)) for k in range(4)]
    uniform = torch.autograd.grad(0.5 * ((critic(x) - y) ** 2).mean(), list(critic.parameters()))
    scale = 40 / d.abs().clamp(min=1).sum()

    def e(t):
        return Enc.exact(t.detach().numpy(), U64)

    W1, b1, W2, b2 = (e(t) for t in critic.parameters())
    xe, ye = e(x), e(y)
    z = xe @ W1.T + b1  # [40, 8]
    assert (np.abs(z.centre) > 2 * z.bound).all()  # every evaluation's ReLU takes the exact branch
    on = Enc.exact((z.centre > 0).astype(np.float64), U64)  # 0/1: multiplying by it is exact
    h = z * on
    de = (h @ W2.T)[:, 0] + b2 - ye[:, 0]  # d_i
    m = de.abs().clamp(1.0, None)  # max(|d_i|, 1)
    S = m.sum()
    g = de.clamp(-1.0, 1.0)  # the Huber loss's gradient in q
    dz = W2 * on  # dq_i / dz_i, [40, 8]
    jac = [dz[:, :, None] * xe[:, None, :], dz, h, Enc.exact(np.ones((40, 1)), U64)]  # dq_i / d(W1, b1, W2, b2)
    p_e = m / S
    c = de * Enc.constant(1 / 40, U64)  # the uniform loss's gradient in q_i: d_i / 40
    for k, (ex, un) in enumerate(zip(expected, uniform)):
        j = jac[k].reshape(40, *ex.shape)
        shape = (40,) + (1,) * ex.dim()
        lhs = (p_e.reshape(*shape) * (g.reshape(*shape) * j)).sum(0)  # sum_i p_i (per-sample gradient)
        rhs = (Enc.exact(40.0, U64) / S) * (c.reshape(*shape) * j).sum(0)  # scale * batched gradient
        # Autograd's chain adds a few roundings beyond the formula's (the mean's 1/40, pow's 2, 0.5).
        agree(ex.numpy(), (scale * un).numpy(), lhs.rounds(6), rhs.rounds(6), what=f"parameter {k}")


def test_replay_max_priority_resets_to_the_largest_stored():
    buf = ReplayBuffer(64, 2, 1, prioritized=True, alpha=0.4)
    z = np.zeros((8, 2), np.float32)
    buf.extend(z, np.zeros((8, 1), np.float32), np.zeros(8, np.float32), z, np.zeros(8, bool), np.zeros(8, bool))
    b = buf.sample(8)
    ids = np.unique(b.indices.numpy())
    buf.update_priorities(ids, np.full(len(ids), 1000.0))  # one huge early error...
    buf.update_priorities(np.arange(8), np.full(8, 1.0))  # ...since forgotten
    buf.extend(
        z[:1], np.zeros((1, 1), np.float32), np.zeros(1, np.float32), z[:1], np.zeros(1, bool), np.zeros(1, bool)
    )
    # Without the reset, the new transition enters at priority 1000: P = 1000^0.4 / (8 + 1000^0.4).
    share = lambda: np.mean(buf.sample(4000).indices.numpy() == 8)  # noqa: E731
    assert share() > 0.6
    buf.update_priorities([8], [1.0])
    buf.reset_max_priority()
    buf.extend(
        z[:1], np.zeros((1, 1), np.float32), np.zeros(1, np.float32), z[:1], np.zeros(1, bool), np.zeros(1, bool)
    )
    assert 0.05 < np.mean(buf.sample(4000).indices.numpy() == 9) < 0.2  # priority 1 of 10: ~0.1
    with pytest.raises(ValueError, match="prioritized=True"):
        ReplayBuffer(8, 2, 1).reset_max_priority()


def test_checkpoint_round_trip_keeps_encoder_and_value_range_and_old_checkpoints_load():
    a = _td7(hard_target_interval=2)
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        a.update(_batch(g))
    state = a.state_dict()
    assert {"encoder", "encoder_opt", "value_range", "value_seen"} <= set(state)
    b = _td7(hard_target_interval=2)
    b.load_state_dict(state)
    c = copy.deepcopy(a)
    for _ in range(3):  # one more target update included
        bb = _batch(g)
        assert a.update(bb)["critic_loss"] == b.update(bb)["critic_loss"] == c.update(bb)["critic_loss"]
    for x in (b, c):
        assert torch.equal(_flat(a.encoder), _flat(x.encoder)) and torch.equal(a.value_range, x.value_range)
        assert torch.equal(_flat(a.actor_target), _flat(x.actor_target))
    bad = dict(state, value_range=torch.zeros(3))
    with pytest.raises(ValueError, match="value_range"):
        b.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing keys.*encoder"):
        b.load_state_dict({k: v for k, v in state.items() if k != "encoder"})
    # A plain DDPG agent's state has none of the new keys, as before the switches existed.
    plain = DDPGAgent.from_dims(OBS, ACT, DDPGConfig(hidden=(8,)))
    assert set(plain.state_dict()) == {
        "actor",
        "critics",
        "actor_target",
        "critic_targets",
        "actor_opt",
        "critic_opt",
        "n_updates",
        "generator",
    }


def test_config_refuses_switches_that_cannot_combine():
    with pytest.raises(ValueError, match="sale.*hard_target_interval"):
        DDPGConfig(sale=True).validate()
    with pytest.raises(ValueError, match="lap.*prioritized"):
        DDPGConfig(lap=True).validate()
    with pytest.raises(ValueError, match="sale.*critic_layer_norm"):
        DDPGConfig.preset("td7", critic_layer_norm=True)
    with pytest.raises(ValueError, match="policy_checkpoints.*obs_normalization"):
        DDPGConfig.preset("td7", obs_normalization=True)
    for field, value in [("sale_dim", 0), ("encoder_lr", -1.0), ("hard_target_interval", -1), ("value_clip", 1)]:
        with pytest.raises(ValueError, match=field):
            DDPGConfig.preset("td7", **{field: value})
    with pytest.raises(ValueError, match="no custom actor"):
        DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("td7", **SMALL), actor=Actor(OBS, ACT, (8,)))
    with pytest.raises(ValueError, match="sale needs"):
        DDPGAgent(Actor(OBS, ACT, (8,)), [torch.nn.Linear(1, 1)], DDPGConfig.preset("td7", **SMALL))
    with pytest.raises(ValueError, match="sale is False"):
        DDPGAgent(Actor(OBS, ACT, (8,)), [torch.nn.Linear(1, 1)], DDPGConfig(), encoder=Encoder(OBS, ACT, 4, 4))


@pytest.mark.parametrize(
    "switch", [dict(lap=True, prioritized=True), dict(value_clip=True), dict(hard_target_interval=10), "td7"]
)
def test_the_cpp_update_steps_aside_for_td7s_switches(switch):
    cfg = (
        DDPGConfig.preset("td7", update_backend="cpp", **SMALL)
        if switch == "td7"
        else DDPGConfig(hidden=(16, 16), update_backend="cpp", **switch)
    )
    a = DDPGAgent.from_dims(OBS, ACT, cfg)
    g = torch.Generator().manual_seed(7)
    for _ in range(cfg.policy_delay):  # the first actor step creates the optimizers' state, on autograd
        a.update(_batch(g))
    assert why_not(a) is not None
    with pytest.raises(ValueError, match="update_backend='cpp'"):
        a.update(_batch(g))
    a.config.update_backend = "auto"
    assert a.mlp_updater() is None and np.isfinite(a.update(_batch(g))["critic_loss"])


def test_td7_policy_exports_with_its_encoder_and_runs_in_the_runtime(tmp_path):
    import pydpg
    from pydpg.deploy.export import export_policy

    a = _td7()
    g = torch.Generator().manual_seed(8)
    for _ in range(3):
        a.update(_batch(g))
    a.save_policy_checkpoint(1234)  # what is exported is the checkpoint: make it the trained actor
    assert all(
        torch.equal(x, y) for x, y in zip(a.checkpoint_actor.state_dict().values(), a.actor.state_dict().values())
    )
    low, high = -2 * np.ones(ACT), 3 * np.ones(ACT)
    with pytest.raises(ValueError, match=f"obs_dim={OBS + 1}"):
        export_policy(a, tmp_path / "bad.pt", action_low=low, action_high=high, obs_dim=OBS + 1)
    res = export_policy(a, tmp_path / "td7.pt", action_low=low, action_high=high, obs_dim=OBS, training_steps=5000)
    # The file dates the policy by its checkpoint, not by how long the run went on after it.
    assert (res.metadata["training_steps"], res.metadata["policy_step"]) == (5000, 1234)
    assert str(res).endswith("the policy is the checkpoint taken at step 1234 of the run's 5000")
    policy = pydpg.Policy(str(tmp_path / "td7.pt"))
    obs = torch.randn(16, OBS, generator=g)
    want = low + (a.actor(obs).detach().numpy() + 1) * (high - low) / 2
    got = np.stack([policy.act(o) for o in obs.numpy()])
    # The runtime row by row against the eager actor's batch of 16 scaled in float64: within the
    # float32 rounding bound of the file's evaluation plus that of this one (pydpg.deploy.rounding).
    _, file_bound = rounding_bound(tmp_path / "td7.pt", obs.numpy())
    _, want_bound = rounding_bound(tmp_path / "td7.pt", obs.numpy(), float32_output=False)
    ok, i, d, allowed = within(got, want, file_bound + want_bound)
    assert ok, f"{res}: |diff| {d:.3g} > {allowed:.3g} at {i}"
    # The runtime runs TD7's actor on its allocation-free mlp backend (tests/test_runtime.py runs
    # every runtime test on a TD7 policy too); the export says so, and the runtime agrees.
    assert res.runtime_backend == policy.backend == "mlp" and "mlp backend" in str(res)
    assert res.metadata["network"]["kind"] == "sale"


# ---------------------------------------------------------------------------- policy checkpoints
def test_policy_checkpoint_assessment_follows_td7():
    pc = PolicySnapshots()
    assert pc.episode_ended(1e9) == (False, False) and pc.best_min_return == -math.inf  # warm-up: not assessed
    assert pc.episode_ended(-50.0) == (True, True)  # the first assessment always beats -inf
    assert pc.best_min_return == -50.0
    assert pc.episode_ended(-80.0) == (True, False)  # worse: stop assessing, train, keep the checkpoint
    assert pc.episode_ended(-50.0) == (True, True)  # as good: becomes the checkpoint (TD7 compares <)
    assert pc.episode_ended(10.0) == (True, True) and pc.best_min_return == 10.0
    pc.updates_made(0, LATE_AFTER_UPDATES)  # TD7 switches just before update LATE_AFTER_UPDATES + 1
    assert pc.episodes_per_assessment == 1
    pc.updates_made(LATE_AFTER_UPDATES, LATE_AFTER_UPDATES + 5)
    assert pc.episodes_per_assessment == EPISODES_LATE and pc.best_min_return == 10.0 * 0.9  # the same float64 product
    for k in range(EPISODES_LATE - 1):  # late: a policy is assessed on 20 episodes...
        assert pc.episode_ended(12.0 + k) == (False, False)
    assert pc.episode_ended(9.5) == (True, True) and pc.best_min_return == 9.5  # ...its minimum is its score
    assert pc.episode_ended(20.0) == (False, False)
    assert pc.episode_ended(9.0) == (True, False) and pc.episodes == 0  # below the bar: cut short
    state = pc.state_dict()
    fresh = PolicySnapshots()
    fresh.load_state_dict(state)
    assert fresh == pc
    with pytest.raises(ValueError, match="expected keys"):
        fresh.load_state_dict({**state, "extra": 1})
    # A run checkpointed before the checkpoint's step was kept still resumes; its step is unknown.
    older = {k: v for k, v in state.items() if k != "saved_at_step"}
    fresh.load_state_dict(older)
    assert fresh.saved_at_step is None and PolicySnapshots().saved_at_step == 0
    for bad in (-3, "12", 1.0, True):
        with pytest.raises(ValueError, match="saved_at_step must be an env step"):
            fresh.load_state_dict({**state, "saved_at_step": bad})


def _checkpointed_trainer(out, total=900, **kw):
    import toy_env

    from pydpg.train.config import TrainConfig
    from pydpg.train.trainer import Trainer

    cfg = DDPGConfig.preset(
        "td7",
        hidden=(16, 16),
        sale_dim=8,
        batch_size=16,
        buffer_size=5000,
        learning_starts=100,
        hard_target_interval=40,
        **kw,
    )
    tc = TrainConfig(
        env_id=toy_env.ID, n_envs=1, total_steps=total, eval_every=300, eval_episodes=2, checkpoint_every=400, seed=3
    )
    return Trainer(cfg, tc, out_dir=out, tensorboard=False)


def test_updates_wait_for_episode_ends_and_evaluation_uses_the_checkpoint(tmp_path):
    tr = _checkpointed_trainer(tmp_path)
    ends, grads = [], []
    orig_insert = tr.learner.insert

    def insert(chunk):
        orig_insert(chunk)
        ends.append(bool(chunk.returns))

    tr.learner.insert = insert
    orig_update = tr.learner.update

    def update():
        before = tr.n_grad
        ran = orig_update()
        grads.append((tr.step, before, tr.n_grad))
        return ran

    tr.learner.update = update
    # LAP's wiring: batches reach the update without weights, priorities go back as the agent gave
    # them (>= 1, nothing added), and the maximum priority is reset at each hard target update.
    calls = {"saves": 0, "resets": 0, "targets": 0, "weighted": 0, "priorities": []}
    agent_update, save, reset = tr.agent.update, tr.agent.save_policy_checkpoint, tr.buffer.reset_max_priority
    set_priorities = tr.buffer.update_priorities

    def spy_update(batch):
        calls["weighted"] += batch.weights is not None
        info = agent_update(batch)
        calls["targets"] += info["targets_updated"]
        return info

    def spy_save(step):
        calls["saves"] += 1
        calls.setdefault("saved_at", []).append((step, tr.step))
        save(step)

    def spy_reset():
        calls["resets"] += 1
        reset()

    def spy_priorities(ids, p):
        calls["priorities"].append(torch.as_tensor(p).clone())
        set_priorities(ids, p)

    tr.agent.update, tr.agent.save_policy_checkpoint = spy_update, spy_save
    tr.buffer.reset_max_priority, tr.buffer.update_priorities = spy_reset, spy_priorities
    initial = _flat(tr.agent.actor).clone()
    tr.run(stop_at=600)
    # Past the warm-up, updates run only on steps that ended an episode, and then all the owed ones.
    bursts = [(s, b, a) for (s, b, a), end in zip(grads, ends) if a > b]
    assert bursts and all(end for (s, b, a), end in zip(grads, ends) if a > b)
    assert all(a == s - 100 for s, b, a in bursts)
    assert calls["weighted"] == 0 and calls["targets"] == tr.n_grad // 40 == calls["resets"] > 0
    p = torch.cat(calls["priorities"])
    assert len(p) == 16 * tr.n_grad and p.min() == 1.0
    a = tr.agent
    # Checkpoints were taken, of trained actors; evaluation runs the last one, exploration the actor.
    assert calls["saves"] > 0 and not torch.equal(_flat(a.checkpoint_actor), initial)
    assert not torch.equal(_flat(a.checkpoint_actor), _flat(a.actor))
    # Each is dated by the step that ended its assessment (one env: one step per chunk), the step
    # at which the updates owed then ran; the export reports the last one's, behind the run's.
    assert all(step == now + 1 for step, now in calls["saved_at"])
    assert {step for step, _ in calls["saved_at"]} <= {s for s, b, a in bursts}
    assert a.checkpoints.saved_at_step == calls["saved_at"][-1][0] < tr.step
    from pydpg.deploy.export import export_policy

    res = export_policy(tr, tmp_path / "td7.pt", verbose=False)
    assert (res.metadata["training_steps"], res.metadata["policy_step"]) == (tr.step, a.checkpoints.saved_at_step)
    obs = np.zeros((4, 3), np.float32)
    want = a.checkpoint_actor(torch.as_tensor(obs)).numpy()
    assert np.array_equal(tr.policy(obs), want) and not np.array_equal(a.act(obs), want)
    from pydpg.deploy.export import _resolve_actor

    assert _resolve_actor(a) is a.checkpoint_actor and _resolve_actor(tr) is a.checkpoint_actor
    with pytest.raises(ValueError, match="policy_checkpoints needs one local env.*n_envs=2"):
        import toy_env

        from pydpg.train.config import TrainConfig
        from pydpg.train.trainer import Trainer

        Trainer(
            DDPGConfig.preset("td7", **SMALL),
            TrainConfig(env_id=toy_env.ID, n_envs=2, total_steps=10),
            tensorboard=False,
        )


def test_resume_with_policy_checkpoints_is_exact(tmp_path):
    from test_trainer import _resume_matches

    ref, resumed = _resume_matches(tmp_path, lambda out: _checkpointed_trainer(out, total=1000))
    assert ref.agent.checkpoints == resumed.agent.checkpoints
    assert torch.equal(_flat(ref.agent.checkpoint_actor), _flat(resumed.agent.checkpoint_actor))


def test_adam_beta1_reaches_every_optimizer_the_encoders_included():
    a = _td7(adam_beta1=0.5)
    assert {opt.param_groups[0]["betas"] for opt in (a.actor_opt, a.critic_opt, a.encoder_opt)} == {(0.5, 0.999)}
