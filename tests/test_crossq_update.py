"""CrossQ's update in C++ (csrc/train/mlp_update.*) against the autograd update it replaces.

``--preset crossq`` (batch renormalization in front of every Linear, no target networks, the joint
training-mode critic pass over [(s, a); (s', mu(s'))], the actor's critic in evaluation mode) runs on
the C++ update wherever the TD3 update would. The autograd path stays the reference (test_crossq.py
pins it to Ioffe's and Bhatt et al.'s formulas). Here the C++ path must give the same gradients,
running statistics, step counts, parameters and Adam moments, update after update; step aside by
name for what it does not run; and resume exactly.

Tolerances: two different computations of the same numbers, so every comparison is against the sound
bound of tests/crossq_bounds.py (a centre and a bound valid for any float32 evaluation, for the
C++ formulas and torch's), computed from the state both start from; over many updates the state is
synced before each, as tests/test_mlp_update.py does for TD3. ``test_bound_sees_a_wrong_update``
shows the bound is sharp enough to catch a normalization done wrong.
"""

from __future__ import annotations

import copy
import dataclasses

import crossq_bounds as qb
import pytest
import torch
import update_bounds as ub
from policy_helpers import scramble_batch_renorm
from test_crossq import ACT, OBS, _batch

from pydpg import _core
from pydpg.core.agent import DDPGAgent
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
from pydpg.core.mlp_update import MlpUpdater, _adam_tensors, _linear_params, _norm_params, why_not
from pydpg.core.networks import BatchRenorm

SMALL = dict(hidden=(16, 16), critic_hidden=(24, 24))


CONFIGS = {
    # r = 1, d = 0 (plain batch norm) for the whole test
    "warmup": dict(batch_renorm_warmup=100_000),
    # renormalized from the first forward, the running statistics moved far off (r and d clipped)
    "renorm": dict(batch_renorm_warmup=0),
    # one critic, no smoothing noise, the actor every step
    "single": dict(batch_renorm_warmup=0, twin_critics=False, target_policy_noise=0.0, policy_delay=1),
}


def _pair(name: str = "renorm", **extra):
    """A CrossQ agent on the C++ update and an exact copy on autograd, both past the updates that
    create the optimizers' state (on autograd)."""
    ub.assert_float32_arithmetic()
    torch.manual_seed(0)
    cfg = DDPGConfig.preset("crossq", **{**SMALL, **CONFIGS[name], **extra, "update_backend": "cpp"})
    agent = DDPGAgent.from_dims(OBS, ACT, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        scramble_batch_renorm(agent.actor, g)
        for c in agent.critics:
            scramble_batch_renorm(c, g)
    for _ in range(cfg.policy_delay):
        agent.update(_batch(g))
    ref = copy.deepcopy(agent)
    ref.config = dataclasses.replace(agent.config, update_backend="torch")
    return agent, ref, g


_moments = ub.adam_moments


def _state_tensors(a: DDPGAgent) -> list[torch.Tensor]:
    return [*a.actor.parameters(), *a.critics.parameters(), *a.actor.buffers(), *a.critics.buffers()]


def _sync(src: DDPGAgent, dst: DDPGAgent) -> None:
    """dst's parameters, running statistics, step counts and Adam moments <- src's, in place."""
    ub.sync(src, dst, _state_tensors)


def _stats(module) -> list[torch.Tensor]:
    return [t for m in module.modules() if isinstance(m, BatchRenorm) for t in (m.running_mean, m.running_var)]


def _steps(a: DDPGAgent) -> list[int]:
    return [int(m.steps) for net in (a.actor, a.critics) for m in net.modules() if isinstance(m, BatchRenorm)]


def _results(a: DDPGAgent, out: dict, bound: dict) -> dict:
    got = {
        "critic_grads": [p.grad for p in a.critics.parameters()],
        "critics": list(a.critics.parameters()),
        "critic_exp_avg": _moments(a.critic_opt, "exp_avg"),
        "critic_exp_avg_sq": _moments(a.critic_opt, "exp_avg_sq"),
        "critic_stats": [t for c in a.critics for t in _stats(c)],
        "critic_loss": out["critic_loss"],
        "q_mean": out["q_mean"],
        "td_errors": out["td_errors"],
        "actor": list(a.actor.parameters()),
        "actor_exp_avg": _moments(a.actor_opt, "exp_avg"),
        "actor_exp_avg_sq": _moments(a.actor_opt, "exp_avg_sq"),
        "actor_stats": _stats(a.actor),
    }
    if "actor_grads" in bound:
        got.update(actor_grads=[p.grad for p in a.actor.parameters()], actor_loss=out["actor_loss"])
    return got


def _step(agent: DDPGAgent, ref: DDPGAgent, b: Batch) -> dict:
    """One update of both from the same state: each result within the bound of the centre; the step
    counters equal."""
    _sync(agent, ref)
    bound = qb.update_bound(qb.State.of_agent(agent), b, ub.peek_target_noise(agent, b))
    out, want = agent.update(b), ref.update(b)
    worst = ub.check(_results(agent, out, bound), bound, "C++ update: ")
    ub.check(_results(ref, want, bound), bound, "autograd update: ")
    assert _steps(agent) == _steps(ref)
    return worst


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("weights", [False, True], ids=["uniform", "per-weights"])
def test_gradients_and_statistics_equal_autograd(name, weights):
    """One update from identical states (up to the policy delay, so that the actor steps too): every
    gradient, parameter, Adam moment, running statistic, the loss, Q and the TD errors."""
    agent, ref, g = _pair(name)
    steps = _steps(agent)
    for _ in range(agent.config.policy_delay):
        _step(agent, ref, _batch(g, weights=weights))
    assert agent.mlp_updater() is not None and ref.mlp_updater() is None
    # each critic normalization counted one joint forward per update, the actor's one per actor step
    n_actor = len([m for m in agent.actor.modules() if isinstance(m, BatchRenorm)])
    assert _steps(agent)[:n_actor] == [s + 1 for s in steps[:n_actor]]
    assert _steps(agent)[n_actor:] == [s + agent.config.policy_delay for s in steps[n_actor:]]
    for q in [*ref.actor.parameters(), *ref.critics.parameters()]:
        assert q.grad.abs().max().item() > 0  # the comparison is not of zeros


@pytest.mark.parametrize("portable", [False, True], ids=["mkl", "aten"])
def test_many_updates_track_autograd(portable, monkeypatch):
    """66 updates, batch sizes changing (the scratch grows and is reused), renormalization starting
    mid-run (warmup 20): at every update, from the same state, everything within the bound.

    Batches of 8 rows and up: on fewer, a column whose rows nearly agree is scaled by up to
    1/sqrt(eps) ~ 32 at every layer, and the bound, sound as it is, grows past use by the third
    (test_a_batch_of_one_row_updates covers that size)."""
    if portable:
        real = MlpUpdater.__init__
        monkeypatch.setattr(MlpUpdater, "__init__", lambda self, agent: real(self, agent, portable=True))
    agent, ref, g = _pair("warmup", batch_renorm_warmup=20)
    for i in range(66):
        _step(agent, ref, _batch(g, n=(8, 64, 17, 33)[i % 4], weights=i % 2 == 1))
    assert agent.mlp_updater()._core.kernels == ("aten addmm" if portable else "mkl sgemm")
    assert agent.n_updates == ref.n_updates == 69
    assert min(_steps(agent)) > 20  # renormalization ran in every layer


def test_the_default_backend_runs_crossq_in_cpp_and_the_runtime_runs_its_actor():
    """auto picks the C++ update for the preset; the exported actor (no targets) is the evaluation-mode
    network either way."""
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("crossq", **SMALL))
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        agent.update(_batch(g))
    assert why_not(agent) is None and agent.mlp_updater() is not None
    assert not agent.mlp_updater()._core.has_targets
    assert not agent.actor.training and not agent.critics.training


def test_checkpoint_resume_is_exact_on_the_cpp_path():
    """A state_dict round trip mid-run: the resumed agent rebinds the C++ update (running statistics
    and step counts included) and continues bit for bit as the uninterrupted one."""
    agent, _, g = _pair()
    agent, resumed, _ = ub.resumed_run(
        agent, lambda: DDPGAgent.from_dims(OBS, ACT, agent.config), [_batch(g) for _ in range(12)], 5
    )
    assert resumed.mlp_updater() is not None
    assert all(torch.equal(p, q) for p, q in zip(_state_tensors(agent), _state_tensors(resumed)))
    for key in ("exp_avg", "exp_avg_sq"):
        for o, r in ((agent.actor_opt, resumed.actor_opt), (agent.critic_opt, resumed.critic_opt)):
            assert all(torch.equal(p, q) for p, q in zip(_moments(o, key), _moments(r, key)))


# ------------------------------------------------------------------ the bound is sharp
def _split_critic_loss(ref: DDPGAgent):
    """The autograd critic loss with (s, a) and (s', a') through the critic in two passes: each
    normalized with its own batch's statistics (the mistake the joint pass exists to avoid)."""

    def loss(batch, noise=None):
        from pydpg.core.agent import batch_statistics

        next_action = ref.next_action(ref.actor, batch, noise)
        with batch_statistics(ref.critics, True):
            q = ref.q_values(ref.critics, batch.obs, batch.action)
            qn = ref.q_values(ref.critics, batch.next_obs, next_action)
        y = ref.bootstrap(batch, qn)
        td = q - y
        return td.square().sum(-1, keepdim=True).mean(), {
            "td_errors": td.detach()[:, 0].abs(),
            "q_mean": q.detach()[:, 0].mean(),
            "target": y,
        }

    return loss


class _DetachedStatistics(BatchRenorm):
    """Batch norm (during warmup: r = 1, d = 0) whose gradient treats the batch's mean and std as
    constants: the value and the statistics' move are the real layer's, the backward lacks its terms
    through the statistics."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        assert int(self.steps) < self.warmup
        mean = x.mean(0).detach()
        inv = torch.rsqrt(x.var(0, unbiased=False) + self.eps).detach()
        value = super().forward(x).detach()  # moves the running statistics as the real layer does
        constant_stats = (x - mean) * inv * self.weight + self.bias
        return constant_stats + (value - constant_stats).detach()


def _detach_statistics(ref: DDPGAgent) -> None:
    for net in [c.net for c in ref.critics]:
        for i, m in enumerate(net):
            if type(m) is BatchRenorm:
                d = _DetachedStatistics(m.weight.numel(), m.momentum, m.warmup, m.eps)
                d.load_state_dict(m.state_dict())
                d.weight, d.bias = m.weight, m.bias  # the optimizer's own parameters
                d.train(m.training)
                net[i] = d


@pytest.mark.parametrize("bug", ["split_pass", "detached_statistics"])
def test_bound_sees_a_wrong_update(bug):
    """Sharpness: autograd computing CrossQ wrongly on the same state lands outside twice the bound
    somewhere, while the C++ update lies within it."""
    agent, ref, g = _pair("warmup")
    b = _batch(g)
    _sync(agent, ref)
    bound = qb.update_bound(qb.State.of_agent(agent), b, ub.peek_target_noise(agent, b))
    out = agent.update(b)
    ub.check(_results(agent, out, bound), bound, "C++ update: ")
    if bug == "split_pass":
        ref.critic_loss = _split_critic_loss(ref)
    else:
        _detach_statistics(ref)
    ref.update(b)
    ratio = max(
        ub.pair_ratio(x.grad, y.grad, iv)
        for x, y, iv in zip(ref.critics.parameters(), agent.critics.parameters(), bound["critic_grads"])
    )
    assert ratio > 1, f"{bug}: within the bound (|diff| / 2 bound {ratio:.3g})"


# ------------------------------------------------------------------ when it steps aside, bad input
def test_batch_renorm_with_target_networks_takes_autograd_by_name():
    torch.manual_seed(0)
    cfg = DDPGConfig.preset("crossq", **SMALL, target_networks=True, update_backend="cpp")
    agent = DDPGAgent.from_dims(OBS, ACT, cfg)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        agent.update(_batch(g))  # the first actor step creates the optimizers' state, on autograd
    assert "batch_renorm is on with target networks" in why_not(agent)
    with pytest.raises(ValueError, match="update_backend='cpp'.*with target networks"):
        agent.update(_batch(g))


def test_a_network_left_in_training_mode_takes_autograd():
    agent, _, g = _pair()
    agent.config = dataclasses.replace(agent.config, update_backend="auto")
    assert agent.mlp_updater() is not None
    agent.critics.train()  # after binding: noticed before the next update
    assert agent.mlp_updater() is None and "training mode" in agent._updater.runtime_issue()
    agent.critics.eval()
    assert agent.mlp_updater() is not None
    agent.actor.train()  # before binding: why_not says so
    assert "the actor: layer 0 is in training mode" in why_not(agent)
    agent.actor.eval()


def test_constructor_refuses_mismatched_normalizations():
    agent, _, _ = _pair()
    actor, critics = _linear_params(agent.actor), [_linear_params(c) for c in agent.critics]
    an, cn = _norm_params(agent.actor), [_norm_params(c) for c in agent.critics]
    aopt, copt = _adam_tensors(agent.actor_opt), _adam_tensors(agent.critic_opt)
    make = _core.MlpUpdate

    def build(**kw):
        args = dict(
            actor=actor,
            actor_target=None,
            critics=critics,
            critic_targets=[],
            actor_opt=aopt,
            critic_opt=copt,
            actor_norm=an,
            critic_norms=cn,
        )
        return make(**{**args, **kw})

    assert not build().has_targets
    with pytest.raises(ValueError, match="without target networks every network must be normalized"):
        build(critic_norms=None)
    with pytest.raises(ValueError, match="normalized networks are supported without target networks only"):
        build(actor_target=actor, critic_targets=critics)
    with pytest.raises(ValueError, match="2 normalizations for 3 layers"):
        build(actor_norm=an[:2])
    with pytest.raises(ValueError, match="actor layer 1 normalization running_var has shape"):
        build(actor_norm=[an[0], {**an[1], "running_var": torch.ones(3)}, an[2]])
    with pytest.raises(ValueError, match="steps must be a scalar int64"):
        build(actor_norm=[{**an[0], "steps": torch.zeros(())}, *an[1:]])
    with pytest.raises(ValueError, match="momentum must be in"):
        build(actor_norm=[{**an[0], "momentum": float("nan")}, *an[1:]])
    with pytest.raises(ValueError, match="has no 'eps'"):
        build(actor_norm=[{k: v for k, v in an[0].items() if k != "eps"}, *an[1:]])
    with pytest.raises(ValueError, match="unknown key 'epsilon'"):
        build(actor_norm=[{**an[0], "epsilon": 1e-3}, *an[1:]])
    with pytest.raises(ValueError, match="critic_opt has an unknown key 'lr'"):
        build(critic_opt={**copt, "lr": 1e-3})
    with pytest.raises(ValueError, match="one list per critic"):
        build(critic_norms=cn[:1])
    with pytest.raises(TypeError, match="must be a dict"):
        build(actor_norm=[1, 2, 3])


def test_bad_batches_are_refused_before_any_arithmetic():
    agent, _, g = _pair()
    good = _batch(g)
    before = [t.clone() for t in _state_tensors(agent)]
    for bad, msg in [
        (good._replace(obs=good.obs.double()), "obs must be a float32"),
        (good._replace(next_obs=good.next_obs[:10]), "next_obs has shape"),
        (good._replace(obs=good.obs[:0], action=good.action[:0]), "batch size 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            agent.update(bad)
    assert all(torch.equal(p, q) for p, q in zip(before, _state_tensors(agent)))  # statistics untouched too


def test_non_finite_batches_give_non_finite_losses_not_crashes():
    agent, ref, g = _pair()
    b = _batch(g)
    bad = b._replace(reward=torch.where(torch.arange(32)[:, None] == 3, float("nan"), b.reward))
    out, want = agent.update(bad), ref.update(bad)
    assert out["critic_loss"] != out["critic_loss"] and want["critic_loss"] != want["critic_loss"]
    agent.update(b._replace(next_obs=torch.full_like(b.next_obs, float("inf"))))  # completes


def test_a_batch_of_one_row_updates():
    """One transition: the joint pass has two rows, the actor's one (its batch variance is 0, so
    x_hat = 0 and 1/std = 1/sqrt(eps)). Both paths complete with finite, matching step counts."""
    agent, ref, g = _pair()
    b = _batch(g, n=1)
    _sync(agent, ref)
    for _ in range(agent.config.policy_delay):
        out, want = agent.update(b), ref.update(b)
        assert all(map(torch.isfinite, (torch.tensor(out["critic_loss"]), torch.tensor(want["critic_loss"]))))
    assert _steps(agent) == _steps(ref)
    assert all(torch.isfinite(t).all() for t in _state_tensors(agent))
