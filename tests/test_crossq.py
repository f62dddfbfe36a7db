"""CrossQ's switches (Bhatt et al. 2024): batch renormalization in every layer, no target networks,
and the one forward pass of (s, a) and (s', mu(s')) through the critic."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from policy_helpers import scramble_batch_renorm
from pydpg.agent import DDPG
from pydpg.batch import Batch
from pydpg.config import DDPGConfig
from pydpg.mlp_update import why_not
from pydpg.networks import BatchRenorm

OBS, ACT = 5, 2
SMALL = dict(hidden=(16, 16), critic_hidden=(24, 24), batch_renorm_warmup=3)


def _batch(g: torch.Generator, n: int = 32) -> Batch:
    return Batch(obs=torch.randn(n, OBS, generator=g) * 2 + 1, action=torch.rand(n, ACT, generator=g) * 2 - 1,
                 reward=torch.randn(n, 1, generator=g), next_obs=torch.randn(n, OBS, generator=g) - 1,
                 done=(torch.rand(n, 1, generator=g) < 0.2).float(), discount=torch.full((n, 1), 0.99),
                 weights=None)


def _crossq(**kw) -> DDPG:
    torch.manual_seed(0)
    return DDPG.from_dims(OBS, ACT, DDPGConfig.preset("crossq", **{**SMALL, **kw}))


def _layers(module) -> list[BatchRenorm]:
    return [m for m in module.modules() if isinstance(m, BatchRenorm)]


def _buffers(module) -> list[torch.Tensor]:
    return [b.clone() for b in module.buffers()]


# ---------------------------------------------------------------------------- the layer
def test_batch_renorm_is_batch_norm_during_warmup_and_moves_its_running_statistics():
    torch.manual_seed(1)
    brn = BatchRenorm(4, momentum=0.1, warmup=10)
    with torch.no_grad():
        brn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        brn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 3.0]))
    x = torch.randn(64, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + torch.tensor([0.0, -5.0, 2.0, 7.0])
    out = brn(x)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(var + 1e-3) * brn.weight + brn.bias)
    torch.testing.assert_close(brn.running_mean, 0.1 * mean)
    torch.testing.assert_close(brn.running_var, 0.9 + 0.1 * var)
    assert int(brn.steps) == 1


def test_after_warmup_the_value_is_the_running_normalization_and_the_gradient_the_batchs():
    """Ioffe 2017: with r and d inside their bounds, a training forward's value equals the
    evaluation forward's (x - mean) / std with the running statistics, while the gradient still
    flows through the batch statistics: the batch's normalized sum does not depend on a shift of
    every row (zero gradient), which a plain running-statistics normalization's would."""
    torch.manual_seed(2)
    brn = BatchRenorm(3, momentum=0.05, warmup=0)
    x = torch.randn(128, 3) * 1.5 + 0.3
    with torch.no_grad():  # running statistics near the batch's: r in (1/3, 3), |d| < 5
        brn.running_mean.copy_(torch.tensor([0.1, 0.5, 0.2]))
        brn.running_var.copy_(torch.tensor([2.0, 3.0, 1.5]))
    want = brn.eval()(x)
    brn.train()
    xg = x.clone().requires_grad_(True)
    out = brn(xg)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert xg.grad.abs().max() < 1e-4  # batch statistics: the column sums are constant
    xe = x.clone().requires_grad_(True)
    brn.eval()(xe).sum().backward()
    assert xe.grad.abs().min() > 0.1  # the running normalization has no such invariance


def test_r_and_d_are_constants_of_the_gradient_and_renormalization_starts_after_warmup_forwards():
    """Ioffe 2017, Algorithm 1: r and d are treated as constants by backpropagation (a nonlinear loss
    sees the difference: with r live, d(x_hat * r) would not be r * d(x_hat)). The first ``warmup``
    training forwards are plain batch norm, the next one renormalizes."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 3, generator=g) * 2 + 1
    brn = BatchRenorm(3, momentum=0.0, warmup=2)  # momentum 0: the running statistics stay where put
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

    for step, renorm in ((0, False), (1, False), (2, True), (3, True)):
        xg, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        weight, bias = brn.weight.detach().clone().requires_grad_(True), brn.bias.detach().clone().requires_grad_(True)
        brn.zero_grad()
        out, want = brn(xg), reference(xr, renorm, weight, bias)
        torch.testing.assert_close(out, want, msg=f"forward {step}")
        (out ** 2).sum().backward()
        (want ** 2).sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad, msg=f"gradient {step}")
        torch.testing.assert_close(brn.weight.grad, weight.grad, msg=f"weight gradient {step}")
        torch.testing.assert_close(brn.bias.grad, bias.grad, msg=f"bias gradient {step}")
    assert int(brn.steps) == 4


def test_r_and_d_are_clipped_when_the_batch_is_far_from_the_running_statistics():
    brn = BatchRenorm(1, warmup=0)
    with torch.no_grad():
        brn.running_var.fill_(100.0)  # std 10: a batch of std ~1 would give r ~0.1, clipped to 1/3
        brn.running_mean.fill_(-100.0)  # d ~ 10, clipped to 5
    x = torch.randn(256, 1, generator=torch.Generator().manual_seed(3))
    out = brn(x)
    mean, std = x.mean(0), torch.sqrt(x.var(0, unbiased=False) + 1e-3)
    torch.testing.assert_close(out, (x - mean) / std / 3.0 + 5.0)


def test_evaluation_mode_is_a_fixed_row_wise_map_that_changes_nothing():
    brn = BatchRenorm(4, warmup=0)
    brn(torch.randn(32, 4))
    brn.eval()
    before = _buffers(brn)
    x = torch.randn(8, 4)
    rows = torch.cat([brn(x[i:i + 1]) for i in range(8)])
    torch.testing.assert_close(brn(x), rows)
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
    torch.testing.assert_close(info["target"], y_want)
    torch.testing.assert_close(info["q_mean"], both[:32, 0].mean())
    joint_input = torch.cat([torch.cat([b.obs, b.action], -1), torch.cat([b.next_obs, next_a], -1)])
    torch.testing.assert_close(first.running_mean, torch.lerp(mean_before, joint_input.mean(0), 0.01))
    # Apart, (s, a) alone would be normalized with other statistics: the joint pass is not a detail.
    with torch.no_grad():
        alone = copy.deepcopy(a.critic).train()(b.obs, b.action)
    assert not torch.allclose(alone, both[:32, :1], atol=1e-3)
    # The target is held constant: the loss's gradient is the TD error's through Q(s, a) only.
    assert not info["target"].requires_grad


def test_an_update_trains_in_train_mode_and_leaves_every_network_in_evaluation_mode():
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
    np.testing.assert_allclose(batch_act, np.stack([a.act(o) for o in obs]), atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(before, _buffers(a.actor)))


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


def test_the_cpp_update_steps_aside_and_says_why():
    assert "target_networks" in why_not(_crossq(batch_renorm=False))
    assert "batch_renorm" in why_not(_crossq(target_networks=True))
    a = _crossq(update_backend="cpp", policy_delay=1)
    a.update(_batch(torch.Generator().manual_seed(7)))  # the first steps are autograd's, creating Adam's state
    with pytest.raises(ValueError, match="batch_renorm"):
        a.update(_batch(torch.Generator().manual_seed(8)))


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
    bad = [dict(hard_target_interval=250), dict(value_clip=True), dict(sale=True, hard_target_interval=1),
           dict(critic_layer_norm=True), dict(adam_beta1=1.0), dict(adam_beta1=-0.1),
           dict(batch_renorm_momentum=0.0), dict(batch_renorm_momentum=float("nan")), dict(batch_renorm_warmup=-1),
           dict(batch_renorm_warmup=1.5), dict(critic_hidden=(0, 4)), dict(critic_hidden="wide"),
           dict(batch_renorm="yes"), dict(target_networks=0)]
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
    from pydpg.export import export_policy

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
    # MKL, tanh's kernels may differ in the last bit, which this net does not amplify past 1e-6.
    exact = "sgemm: mkl, tanh: mkl vml" in policy.kernels
    check = np.testing.assert_array_equal if exact else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6))
    check(got, np.stack([ts.act(o) for o in rows]))
    check(policy.act(rows), ts.act(rows))
    with torch.no_grad():
        want = low + (a.actor(obs).double().numpy() + 1) * (high - low) / 2
    assert np.max(np.abs(got - want)) <= 1e-5, res


def test_distributed_workers_act_with_the_learners_running_statistics():
    """A Ray worker rebuilds the actor from the config and loads the broadcast state dict: the
    batch renormalization statistics travel with the weights, and the worker acts in evaluation
    mode, exactly as the learner would."""
    from pydpg.distributed import _Acting, _cpu_agent

    a = _crossq()
    g = torch.Generator().manual_seed(11)
    for _ in range(6):
        a.update(_batch(g))

    class Worker(_Acting):
        def __init__(self):
            self.agent, self.version, self.norm = _cpu_agent(a.config.to_dict(), OBS, ACT), None, None

    w = Worker()
    w._load({"actor": {k: v.detach().cpu().numpy() for k, v in a.actor.state_dict().items()}, "norm": None,
             "version": 1})
    obs = np.random.default_rng(3).standard_normal((9, OBS)).astype(np.float32)
    assert not w.agent.actor.training
    np.testing.assert_array_equal(w.agent.act(obs), a.act(obs))


def test_training_the_wide_critic_on_a_cpu_says_what_it_costs(capsys):
    """The preset's 2048-2048 critic is a GPU's setting; a CPU run says so once, at its start, with
    the measured alternative. A 256-wide critic trains without the note."""
    import toy_env
    from pydpg.trainer import TrainConfig, Trainer

    toy_env.register()
    for width, noted in ((1024, True), (256, False)):
        cfg = DDPGConfig.preset("crossq", hidden=(8,), critic_hidden=(width,), learning_starts=10)
        tr = Trainer(cfg, TrainConfig(env_id=toy_env.ID, total_steps=3, eval_every=0, seed=0), verbose=True,
                     tensorboard=False, progress=False)
        try:
            tr.run()
        finally:
            tr.close()
        err = capsys.readouterr()
        assert ("critic_hidden=[256,256]" in err.out + err.err) == noted, (width, err)
