"""The C++ update (csrc/mlp_update.*, pydpg.mlp_update) against the autograd update it replaces.

The autograd path is the reference that test_theory.py pins to the equations and
test_peer_parity.py pins to SB3. Here the C++ path must produce the same gradients (its hand-written
backward against autograd's, per parameter), the same steps over many updates, and the same
statistics, in every configuration it accepts; it must step aside (or, with
``update_backend="cpp"``, say why) for every one it does not; and it must refuse bad input by name.

Tolerances: the two paths differ only in float summation order (bias gradients, the loss mean), so
one step's gradients agree to ~1e-6 relative and 60 updates' weights to ~1e-7 absolute (measured
<= 6e-8). Dropping a term of the gradient (the ReLU mask, the tanh derivative, the importance
weights, the 2 of the square) moves them by 1e-3 or more.
"""

import copy
import dataclasses
import pickle

import pytest
import torch
from torch import nn

from pydpg import _core
from pydpg.agent import DDPG
from pydpg.batch import Batch
from pydpg.config import DDPGConfig
from pydpg.mlp_update import MlpUpdater, why_not

OBS, ACT = 11, 3


def _batch(g: torch.Generator, n: int = 64, weights: bool = False) -> Batch:
    return Batch(obs=torch.randn(n, OBS, generator=g), action=torch.rand(n, ACT, generator=g) * 2 - 1,
                 reward=torch.randn(n, 1, generator=g), next_obs=torch.randn(n, OBS, generator=g),
                 done=(torch.rand(n, 1, generator=g) < 0.2).float(),
                 discount=torch.full((n, 1), 0.99),
                 weights=torch.rand(n, 1, generator=g) + 0.5 if weights else None)


def _pair(**cfg):
    """An agent on the C++ update and an exact copy on autograd, both past the first two updates
    (which create the optimizers' state on the autograd path)."""
    torch.manual_seed(0)
    agent = DDPG.from_dims(OBS, ACT, DDPGConfig(update_backend="cpp", **cfg))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        agent.update(_batch(g))
    ref = copy.deepcopy(agent)
    ref.config = dataclasses.replace(agent.config, update_backend="torch")
    return agent, ref, g


def _tensors(a: DDPG) -> list[torch.Tensor]:
    return [*a.actor.parameters(), *a.critics.parameters(), *a.actor_target.parameters(),
            *a.critic_targets.parameters()]


def _opt_state(a: DDPG) -> list[torch.Tensor]:
    return [v for o in (a.actor_opt, a.critic_opt) for s in o.state.values() for v in s.values()]


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
    """One update from identical states: every parameter's gradient, the loss, Q and the TD errors."""
    agent, ref, g = _pair(**CONFIGS[name])
    for _ in range(agent.config.policy_delay):  # so that the actor step runs on the last call
        b = _batch(g, weights=weights)
        out, want = agent.update(b), ref.update(b)
    assert agent.mlp_updater() is not None and ref.mlp_updater() is None
    for p, q in zip([*agent.actor.parameters(), *agent.critics.parameters()],
                    [*ref.actor.parameters(), *ref.critics.parameters()]):
        scale = q.grad.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=2e-6 * scale)
    for k in ("critic_loss", "actor_loss", "q_mean"):
        assert out[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
    torch.testing.assert_close(out["td_errors"], want["td_errors"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ddpg", "td3"])
@pytest.mark.parametrize("portable", [False, True], ids=["mkl", "aten"])
def test_many_updates_track_autograd(name, portable, monkeypatch):
    """60 updates, batch sizes changing (the scratch grows and is reused): weights, targets and Adam
    state stay within float rounding of the autograd path's. ``portable``: the ATen GEMM that a
    torch build without MKL uses."""
    if portable:
        real = MlpUpdater.__init__
        monkeypatch.setattr(MlpUpdater, "__init__", lambda self, agent: real(self, agent, portable=True))
    agent, ref, g = _pair(**CONFIGS[name])
    for i in range(60):
        b = _batch(g, n=(1, 7, 64, 200)[i % 4])
        agent.update(b), ref.update(b)
    assert agent.mlp_updater()._core.kernels == ("aten addmm" if portable else "mkl sgemm")
    for p, q in zip(_tensors(agent) + _opt_state(agent), _tensors(ref) + _opt_state(ref)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=5e-7)
    assert agent.n_updates == ref.n_updates == 62
    assert torch.equal(agent.generator.get_state(), ref.generator.get_state())  # the same noise drawn


def test_lr_changes_are_read_every_update():
    """A scheduler (or a user) changing param_groups' lr: the C++ update uses the new rate."""
    agent, ref, g = _pair()
    for a in (agent, ref):
        a.actor_opt.param_groups[0]["lr"] = 1e-2
        a.critic_opt.param_groups[0]["lr"] = 0.0
    b = _batch(g)
    before = [p.clone() for p in agent.critics.parameters()]
    agent.update(b), ref.update(b)
    assert all(torch.equal(p, q) for p, q in zip(before, agent.critics.parameters()))  # lr 0: no step
    for p, q in zip(agent.actor.parameters(), ref.actor.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_hard_target_update_copies_exactly():
    """tau = 1 (a hard target update) copies the online networks into the targets bit for bit, as
    torch.lerp does."""
    agent, _, g = _pair(tau=1.0)
    agent.update(_batch(g))
    for p, q in zip([*agent.actor.parameters(), *agent.critics.parameters()],
                    [*agent.actor_target.parameters(), *agent.critic_targets.parameters()]):
        assert torch.equal(p, q)


def test_checkpoint_resume_is_exact_on_the_cpp_path():
    """A state_dict round trip mid-run (the optimizers' state tensors are replaced): the resumed agent
    rebinds the C++ update and continues bit for bit as the uninterrupted one."""
    agent, _, g = _pair(**CONFIGS["td3"])
    batches = [_batch(g) for _ in range(12)]
    for b in batches[:5]:
        agent.update(b)
    saved = copy.deepcopy(agent.state_dict())
    for b in batches[5:]:
        agent.update(b)
    resumed = DDPG.from_dims(OBS, ACT, agent.config)
    resumed.load_state_dict(saved)
    old = agent.mlp_updater()
    for b in batches[5:]:
        resumed.update(b)
    assert resumed.mlp_updater() is not None and resumed.mlp_updater() is not old
    assert all(torch.equal(p, q) for p, q in zip(_tensors(agent) + _opt_state(agent),
                                                 _tensors(resumed) + _opt_state(resumed)))
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


@pytest.mark.parametrize("case, reason", [
    ("layer_norm", "LayerNorm"),
    ("custom_actor", "not pydpg.networks.Actor"),
    ("foreach_adam", "not a plain fused Adam"),
    ("amsgrad", "not a plain fused Adam"),
    ("float64", "float32"),
])
def test_unsupported_agents_take_autograd(case, reason):
    def build(backend):
        torch.manual_seed(0)
        cfg = DDPGConfig(update_backend=backend, critic_layer_norm=case == "layer_norm")
        a = DDPG.from_dims(OBS, ACT, cfg, actor=_custom_actor() if case == "custom_actor" else None)
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
            assert torch.equal(agent.actor.net[0].weight, frozen_before)
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
    assert all(torch.equal(p, q) for p, q in zip(before, _tensors(agent)))  # nothing half-done
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
    from pydpg.mlp_update import _adam_tensors

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
        make(actor, target, critics, targets, aopt, {**copt, "grad": [copt["grad"][0].t().contiguous().t()] +
                                                     copt["grad"][1:]})
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
