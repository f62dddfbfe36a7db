"""The C++ update (csrc/train/mlp_update.*, pydpg.core.mlp_update) against the autograd update it replaces.

The autograd path is the reference that test_theory.py pins to the equations and
test_peer_parity.py pins to SB3. Here the C++ path must produce the same gradients (its hand-written
backward against autograd's, per parameter), the same steps over many updates, and the same
statistics, in every configuration it accepts; it must step aside (or, with
``update_backend="cpp"``, say why) for every one it does not; and it must refuse bad input by name.

Tolerances: the two paths are two different computations of the same numbers (another summation
order in every product and every batch sum, a hand-written backward pass), so no measured figure
may stand for "equal". Each update is compared against tests/update_bounds.py: from the state both
start from (the autograd agent is set to the C++ agent's state before every update) and the batch,
a centre and a bound on |float32 evaluation - centre| for every gradient, parameter, Adam moment,
target and statistic, valid for any summation order; both paths must lie within it. Over many
updates no such bound is practical (Adam divides by sqrt(v) + eps, and the differences grow), hence
the step-by-step comparison. The bound is sharp enough to matter:
``test_bound_sees_a_dropped_gradient_term`` drops one term of the gradient (the ReLU mask, the tanh
derivative, the importance weights, the 2 of the square) on the autograd side and sees the result
fall outside it.
"""

import copy
import dataclasses
import pickle

import pytest
import torch
import update_bounds as ub
from torch import nn

from pydpg import _core
from pydpg.core.agent import DDPGAgent
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
from pydpg.core.mlp_update import MlpUpdater, why_not

OBS, ACT = 11, 3


def _batch(g: torch.Generator, n: int = 64, weights: bool = False) -> Batch:
    return Batch(
        obs=torch.randn(n, OBS, generator=g),
        action=torch.rand(n, ACT, generator=g) * 2 - 1,
        reward=torch.randn(n, 1, generator=g),
        next_obs=torch.randn(n, OBS, generator=g),
        done=(torch.rand(n, 1, generator=g) < 0.2).float(),
        discount=torch.full((n, 1), 0.99),
        weights=torch.rand(n, 1, generator=g) + 0.5 if weights else None,
    )


def _pair(**cfg):
    """An agent on the C++ update and an exact copy on autograd, both past the first two updates
    (which create the optimizers' state on the autograd path)."""
    ub.assert_float32_arithmetic()
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(OBS, ACT, DDPGConfig(update_backend="cpp", **cfg))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        agent.update(_batch(g))
    ref = copy.deepcopy(agent)
    ref.config = dataclasses.replace(agent.config, update_backend="torch")
    return agent, ref, g


def _tensors(a: DDPGAgent) -> list[torch.Tensor]:
    return [
        *a.actor.parameters(),
        *a.critics.parameters(),
        *a.actor_target.parameters(),
        *a.critic_targets.parameters(),
    ]


def _opt_state(a: DDPGAgent) -> list[torch.Tensor]:
    return [v for o in (a.actor_opt, a.critic_opt) for s in o.state.values() for v in s.values()]


_moments = ub.adam_moments


def _sync(src: DDPGAgent, dst: DDPGAgent) -> None:
    ub.sync(src, dst, _tensors)


def _results(a: DDPGAgent, out: dict, bound: dict) -> dict:
    """What one update produced, under update_bounds' names."""
    got = {
        "critic_grads": [p.grad for p in a.critics.parameters()],
        "critics": list(a.critics.parameters()),
        "critic_exp_avg": _moments(a.critic_opt, "exp_avg"),
        "critic_exp_avg_sq": _moments(a.critic_opt, "exp_avg_sq"),
        "critic_loss": out["critic_loss"],
        "q_mean": out["q_mean"],
        "td_errors": out["td_errors"],
        "actor": list(a.actor.parameters()),
        "actor_exp_avg": _moments(a.actor_opt, "exp_avg"),
        "actor_exp_avg_sq": _moments(a.actor_opt, "exp_avg_sq"),
        "actor_target": list(a.actor_target.parameters()),
        "critic_targets": list(a.critic_targets.parameters()),
    }
    if "actor_grads" in bound:  # the actor stepped
        got.update(actor_grads=[p.grad for p in a.actor.parameters()], actor_loss=out["actor_loss"])
    return got


def _step(agent: DDPGAgent, ref: DDPGAgent, b: Batch) -> tuple[dict, dict, dict]:
    """One update of both agents from the same state (ref <- agent first): every result of each within
    the rounding bound of the centre (update_bounds), so the two within twice the bound of each other."""
    _sync(agent, ref)
    bound = ub.update_bound(ub.State.of_agent(agent), b, ub.peek_target_noise(agent, b))
    out, want = agent.update(b), ref.update(b)
    ub.check(_results(agent, out, bound), bound, "C++ update: ")
    ub.check(_results(ref, want, bound), bound, "autograd update: ")
    return out, want, bound


CONFIGS = {
    "ddpg": {},
    "td3": DDPGConfig.presets()["td3"],
    "paper": dict(hidden=(40, 30), final_init=3e-3, critic_l2=1e-2, actor_lr=1e-4, critic_lr=1e-3, tau=1e-3),
    "deep": dict(hidden=(32, 48, 16)),
    "one-hidden": dict(hidden=(24,)),
}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("weights", [False, True], ids=["uniform", "per-weights"])
def test_gradients_equal_autograd(name, weights):
    """One update from identical states (two for TD3's delayed actor, each from identical states):
    every parameter's gradient, the loss, Q and the TD errors, the new parameters, Adam moments and
    targets."""
    agent, ref, g = _pair(**CONFIGS[name])
    for _ in range(agent.config.policy_delay):  # so that the actor step runs on the last call
        _step(agent, ref, _batch(g, weights=weights))
    assert agent.mlp_updater() is not None and ref.mlp_updater() is None
    for q in [*ref.actor.parameters(), *ref.critics.parameters()]:
        assert q.grad.abs().max().item() > 0  # the comparison is not of zeros


@pytest.mark.parametrize("name", ["ddpg", "td3"])
@pytest.mark.parametrize("portable", [False, True], ids=["mkl", "aten"])
def test_many_updates_track_autograd(name, portable, monkeypatch):
    """60 updates, batch sizes changing (the C++ scratch grows and is reused): at every update, from
    the same state, weights, targets and Adam state within the rounding bound, and the same noise
    drawn. ``portable``: the ATen GEMM that a torch build without MKL uses."""
    if portable:
        real = MlpUpdater.__init__
        monkeypatch.setattr(MlpUpdater, "__init__", lambda self, agent: real(self, agent, portable=True))
    agent, ref, g = _pair(**CONFIGS[name])
    for i in range(60):
        _step(agent, ref, _batch(g, n=(1, 7, 64, 200)[i % 4]))
    assert agent.mlp_updater()._core.kernels == ("aten addmm" if portable else "mkl sgemm")
    assert agent.n_updates == ref.n_updates == 62
    assert torch.equal(agent.generator.get_state(), ref.generator.get_state())  # RNG state: the same noise drawn


def test_lr_changes_are_read_every_update():
    """A scheduler (or a user) changing param_groups' lr: the C++ update uses the new rate."""
    agent, ref, g = _pair()
    for a in (agent, ref):
        a.actor_opt.param_groups[0]["lr"] = 1e-2
        a.critic_opt.param_groups[0]["lr"] = 0.0
    b = _batch(g)
    state = ub.State.of_agent(agent)
    stale = ub.update_bound(dataclasses.replace(state, actor_opt=dataclasses.replace(state.actor_opt, lr=3e-4)), b)
    before = [p.clone() for p in agent.critics.parameters()]
    _step(agent, ref, b)  # within the bound of a step at the new rates, which it reads from the param groups
    # lr 0: the step is p - 0 * (...) = p, no rounding at all, so exactly the old weights.
    assert all(torch.equal(p, q) for p, q in zip(before, agent.critics.parameters()))
    with pytest.raises(AssertionError):  # and outside that of a step at the old actor rate
        ub.check({"actor": list(agent.actor.parameters())}, stale)


@pytest.mark.parametrize("name", ["ddpg", "td3", "deep"])
def test_bound_holds_for_another_row_order(name):
    """Soundness beyond the two paths: autograd on the batch with its rows reversed (every batch sum
    of the gradients, the loss and the means in another order; the same smoothing noise per row)
    lands within the bound of the update on the batch as it is."""
    agent, ref, g = _pair(**CONFIGS[name])
    for _ in range(agent.config.policy_delay):
        b = _batch(g, weights=True)
        _sync(agent, ref)
        noise = ub.peek_target_noise(agent, b)
        bound = ub.update_bound(ub.State.of_agent(agent), b, noise)
        out = agent.update(b)
        flipped = Batch(*(None if t is None else t.flip(0) for t in b))

        def flipped_noise(batch, real=ref.target_noise):
            drawn = real(batch)  # drawn as usual (the generator advances), then paired with the same rows
            return None if drawn is None else noise.flip(0)

        ref.target_noise = flipped_noise
        want = ref.update(flipped)
        want["td_errors"] = want["td_errors"].flip(0)
        ub.check(_results(agent, out, bound), bound, "C++ update: ")
        ub.check(_results(ref, want, bound), bound, "autograd, rows reversed: ")
        del ref.target_noise


# ------------------------------------------------------------------ the bound is sharp
class _StraightThroughReLU(nn.Module):
    """relu forward, the identity backward: the ReLU mask dropped from the gradient."""

    def forward(self, x):
        return x + (torch.relu(x) - x).detach()


def _plant(ref: DDPGAgent, bug: str, b: Batch) -> Batch:
    """Make the autograd agent compute its update with one term of the gradient dropped."""
    if bug == "relu_mask":
        for net in (ref.actor.net, *(c.net for c in ref.critics)):
            for i, m in enumerate(net):
                if isinstance(m, nn.ReLU):
                    net[i] = _StraightThroughReLU()
    elif bug == "tanh_derivative":
        net = ref.actor.net
        ref.actor.forward = lambda obs: (lambda z: z + (torch.tanh(z) - z).detach())(net(obs))
    elif bug == "importance_weights":
        return b._replace(weights=None)
    elif bug == "square_factor":  # mean w (Q - y)^2 / 2: its gradient w (Q - y) / B, the 2 dropped

        def halved(batch, noise=None):
            loss, info = DDPGAgent.critic_loss(ref, batch, noise)
            return loss / 2, info

        ref.critic_loss = halved
    return b


BUGS = {
    "relu_mask": ("critic_grads", "actor_grads"),
    "tanh_derivative": ("actor_grads",),
    "importance_weights": ("critic_grads",),
    "square_factor": ("critic_grads",),
}


# "paper" is left out for the tanh derivative: its near-zero last layer (final_init 3e-3) keeps
# |mu(s)| < 0.005, so 1 - a^2 > 0.99997 and dropping it moves the actor's gradient by ~1e-9, which no
# float32 comparison can see. Everywhere else each bug lands outside the bound.
BUG_CASES = [(bug, name) for bug in BUGS for name in CONFIGS if (bug, name) != ("tanh_derivative", "paper")]


@pytest.mark.parametrize("bug, name", BUG_CASES)
def test_bound_sees_a_dropped_gradient_term(bug, name):
    """The comparison is sharp: the gradient with one term dropped (computed by autograd on the same
    state) differs from the C++ update's by more than twice the bound somewhere, while the C++
    update lies within it."""
    agent, ref, g = _pair(**CONFIGS[name])
    if agent.config.policy_delay > 1:
        _step(agent, ref, _batch(g, weights=True))  # the next update steps the actor too
    b = _batch(g, weights=True)
    _sync(agent, ref)
    bound = ub.update_bound(ub.State.of_agent(agent), b, ub.peek_target_noise(agent, b))
    out = agent.update(b)
    ub.check(_results(agent, out, bound), bound, "C++ update: ")
    ref.update(_plant(ref, bug, b))
    got = {
        "critic_grads": [p.grad for p in ref.critics.parameters()],
        "actor_grads": [p.grad for p in ref.actor.parameters()],
    }
    want = {
        "critic_grads": [p.grad for p in agent.critics.parameters()],
        "actor_grads": [p.grad for p in agent.actor.parameters()],
    }
    ratio = max(ub.pair_ratio(x, y, iv) for key in BUGS[bug] for x, y, iv in zip(got[key], want[key], bound[key]))
    assert ratio > 1, f"{bug}: the gradient with the term dropped is within the bound (|diff| / 2 bound {ratio:.3g})"


def test_hard_target_update_copies_exactly():
    """tau = 1 (a hard target update) copies the online networks into the targets bit for bit, as
    torch.lerp does."""
    agent, _, g = _pair(tau=1.0)
    agent.update(_batch(g))
    for p, q in zip(
        [*agent.actor.parameters(), *agent.critics.parameters()],
        [*agent.actor_target.parameters(), *agent.critic_targets.parameters()],
    ):
        assert torch.equal(p, q)  # weight 1: o - (o - t) * 0 = o, no rounding at all: a copy


def test_checkpoint_resume_is_exact_on_the_cpp_path():
    """A state_dict round trip mid-run (the optimizers' state tensors are replaced): the resumed agent
    rebinds the C++ update and continues bit for bit as the uninterrupted one."""
    agent, _, g = _pair(**CONFIGS["td3"])
    old = agent.mlp_updater()
    agent, resumed, saved = ub.resumed_run(
        agent, lambda: DDPGAgent.from_dims(OBS, ACT, agent.config), [_batch(g) for _ in range(12)], 5
    )
    assert resumed.mlp_updater() is not None and resumed.mlp_updater() is not old
    # The same C++ kernels on the same numbers, shapes and (64-byte aligned) layouts, threads alike:
    # the same computation, so bit for bit.
    assert all(
        torch.equal(p, q) for p, q in zip(_tensors(agent) + _opt_state(agent), _tensors(resumed) + _opt_state(resumed))
    )
    # load_state_dict into the running agent itself: the old binding is dropped, not written through.
    agent.load_state_dict(saved)
    assert agent.mlp_updater() is not old


def test_copies_rebind():
    agent, _, g = _pair()
    for clone in (copy.deepcopy(agent), pickle.loads(pickle.dumps(agent))):
        clone.update(_batch(g))
        assert clone.mlp_updater() is not None and clone.mlp_updater() is not agent.mlp_updater()
        assert clone.mlp_updater().agent is clone


# ------------------------------------------------------------------ when it steps aside
def _custom_actor():
    return nn.Sequential(nn.Linear(OBS, 16), nn.Tanh(), nn.Linear(16, ACT), nn.Tanh())


@pytest.mark.parametrize(
    "case, reason",
    [
        ("layer_norm", "LayerNorm"),
        ("custom_actor", "not pydpg.core.networks.Actor"),
        ("foreach_adam", "not a plain fused Adam"),
        ("amsgrad", "not a plain fused Adam"),
        ("float64", "float32"),
    ],
)
def test_unsupported_agents_take_autograd(case, reason):
    def build(backend):
        torch.manual_seed(0)
        cfg = DDPGConfig(update_backend=backend, critic_layer_norm=case == "layer_norm")
        a = DDPGAgent.from_dims(OBS, ACT, cfg, actor=_custom_actor() if case == "custom_actor" else None)
        if case in ("foreach_adam", "amsgrad"):
            kw = {"foreach": True} if case == "foreach_adam" else {"fused": True, "amsgrad": True}
            a.actor_opt = torch.optim.Adam(a.actor.parameters(), lr=3e-4, **kw)
        if case == "float64":
            for m in (a.actor, a.actor_target, a.critics, a.critic_targets):
                m.double()
        return a

    g = torch.Generator().manual_seed(1)
    auto, ref = build("auto"), build("torch")
    for _ in range(3):
        b = _batch(g)
        if case == "float64":
            b = Batch(*(None if t is None else t.double() for t in b))
        out, want = auto.update(b), ref.update(b)
        assert out["critic_loss"] == want["critic_loss"]  # the very same autograd computation
    assert auto.mlp_updater() is None and reason in why_not(auto)
    strict = build("cpp")
    strict.update(b)  # the first update creates the optimizers' state, on autograd
    with pytest.raises(ValueError, match=f"update_backend='cpp'.*{reason}"):
        strict.update(b)


@pytest.mark.parametrize("case", ["forward_hook", "global_hook", "frozen", "autocast"])
def test_runtime_changes_take_autograd(case):
    """Set after the C++ update is bound: it notices before the next update."""
    agent, ref, g = _pair()
    agent.config = dataclasses.replace(agent.config, update_backend="auto")
    seen = []
    undo = None
    if case == "forward_hook":
        undo = agent.critic.net[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    elif case == "global_hook":
        undo = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(1))
    elif case == "frozen":
        agent.actor.net[0].weight.requires_grad_(False)
    try:
        if case == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert agent.mlp_updater() is None
                assert agent._updater.runtime_issue() == "CPU autocast is on"
            assert agent.mlp_updater() is not None
            return
        assert agent.mlp_updater() is None and agent._updater.runtime_issue()
        frozen_before = agent.actor.net[0].weight.clone()
        agent.update(_batch(g))
        if case == "frozen":
            assert torch.equal(agent.actor.net[0].weight, frozen_before)  # no gradient, no step: untouched
        else:
            assert seen  # the hook ran: autograd did the update
    finally:
        if undo is not None:
            undo.remove()
    if case != "frozen":
        assert agent.mlp_updater() is not None  # hook gone: back on the C++ path


# ------------------------------------------------------------------ bad input
def test_bad_batches_are_refused_by_name():
    agent, _, g = _pair()
    good = _batch(g)
    cases = [
        (good._replace(obs=good.obs.double()), "obs must be a float32"),
        (good._replace(action=good.action[:, :2]), r"action has shape \[64, 2\], expected \[64, 3\]"),
        (good._replace(reward=good.reward[:10]), "reward has shape"),
        (good._replace(done=good.done.reshape(-1)), "done has shape"),
        (good._replace(weights=torch.ones(64)), "weights has shape"),
        (good._replace(obs=good.obs[:0], action=good.action[:0]), "batch size 0"),
        (good._replace(obs=good.obs[:, 0]), "obs must be a 2-D"),
    ]
    before = [p.clone() for p in _tensors(agent)]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            agent.update(bad)
    assert all(torch.equal(p, q) for p, q in zip(before, _tensors(agent)))  # refused before any arithmetic: untouched
    out = agent.update(good._replace(obs=good.obs.t().contiguous().t()))  # non-contiguous: copied
    assert out["critic_loss"] == out["critic_loss"]


def test_non_finite_batches_give_non_finite_losses_not_crashes():
    agent, ref, g = _pair()
    b = _batch(g)
    bad = b._replace(reward=torch.where(torch.arange(64)[:, None] == 3, float("nan"), b.reward))
    out, want = agent.update(bad), ref.update(bad)
    assert out["critic_loss"] != out["critic_loss"] and want["critic_loss"] != want["critic_loss"]
    inf = b._replace(next_obs=torch.full_like(b.next_obs, float("inf")))
    agent.update(inf)  # completes; the agent is now as broken as autograd's would be


def test_constructor_refuses_mismatched_tensors():
    agent, _, _ = _pair()
    u = agent.mlp_updater()
    actor = [p.detach() for p in agent.actor.parameters()]
    target = [p.detach() for p in agent.actor_target.parameters()]
    critics = [[p.detach() for p in c.parameters()] for c in agent.critics]
    targets = [[p.detach() for p in c.parameters()] for c in agent.critic_targets]
    from pydpg.core.mlp_update import _adam_tensors

    aopt, copt = _adam_tensors(agent.actor_opt), _adam_tensors(agent.critic_opt)
    make = _core.MlpUpdate
    assert u._core.kernels in ("mkl sgemm", "aten addmm")
    with pytest.raises(ValueError, match="weight, bias pairs"):
        make(actor[:-1], target, critics, targets, aopt, copt)
    with pytest.raises(ValueError, match="actor target layer 1 weight has shape"):
        make(actor, [target[0], target[1], target[2][:, :5].contiguous(), *target[3:]], critics, targets, aopt, copt)
    with pytest.raises(ValueError, match="critic 0 layer 2 has 3 outputs, expected 1"):
        make(actor, target, [critics[0][:4] + actor[4:]], targets, aopt, copt)
    with pytest.raises(ValueError, match="one or two critics"):
        make(actor, target, critics * 3, targets * 3, aopt, copt)
    with pytest.raises(ValueError, match="actor optimizer parameter 0 exp_avg has shape"):
        make(actor, target, critics, targets, {**aopt, "exp_avg": [torch.zeros(2)] + aopt["exp_avg"][1:]}, copt)
    with pytest.raises(ValueError, match="must be contiguous"):
        make(
            actor,
            target,
            critics,
            targets,
            aopt,
            {**copt, "grad": [copt["grad"][0].t().contiguous().t()] + copt["grad"][1:]},
        )
    with pytest.raises(ValueError, match="critic_opt has no 'eps'"):
        make(actor, target, critics, targets, aopt, {k: v for k, v in copt.items() if k != "eps"})
    with pytest.raises(TypeError, match="must be a torch tensor"):
        make([1.0, 2.0], target, critics, targets, aopt, copt)
    with pytest.raises(TypeError, match=r"actor\[0\]: .*detach"):
        make(list(agent.actor.parameters()), target, critics, targets, aopt, copt)
    with pytest.raises(ValueError, match="action_bound must be positive"):
        make(actor, target, critics, targets, aopt, copt, float("nan"))


def test_update_backend_is_validated():
    with pytest.raises(ValueError, match="update_backend must be one of"):
        DDPGConfig(update_backend="jax").validate()
