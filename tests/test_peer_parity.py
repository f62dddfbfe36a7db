"""pydpg's update against Stable-Baselines3's, step for step, from the same weights on the same batches.

The theory tests pin the update to its equations; these pin it to a widely used implementation, so
a learning curve that differs from SB3's cannot come from the update itself (critic target, critic
loss, DPG actor step, Polyak, TD3's twin critics and actor delay). The two are different
computations of the same numbers (SB3's single-tensor Adam against pydpg's fused one, its mse_loss
against pydpg's weighted mean, its Polyak t (1 - tau) + tau o against torch.lerp, and with
``backend="cpp"`` pydpg's hand-written backward pass), so no measured tolerance may stand for
"equal": before every update SB3 is given pydpg's state (weights, targets, Adam moments), and both
results must lie within tests/update_bounds.py's bound of the same centre, a bound on float32
rounding valid for any summation order. Over many updates no such bound is practical (Adam divides
by sqrt(v) + eps, and differences grow), hence the step-by-step comparison. Ignoring ``done`` (the
bug the last update test plants) lands far outside it.

SB3 comes with the ``test`` extra (it is a peer, never a runtime dependency).
"""

import numpy as np
import pytest
import torch
from torch import nn

sb3 = pytest.importorskip("stable_baselines3")
import update_bounds as ub  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.type_aliases import ReplayBufferSamples  # noqa: E402

from pydpg.core.agent import DDPGAgent  # noqa: E402
from pydpg.core.batch import Batch  # noqa: E402
from pydpg.core.config import DDPGConfig  # noqa: E402

torch.set_num_threads(1)
ENV = "HalfCheetah-v5"  # 17-dim observations, 6-dim actions in [-1, 1]
OBS, ACT = 17, 6
UPDATES = 40
BATCH = 128


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _params(module: nn.Module) -> list[torch.Tensor]:
    """[W0, b0, W1, b1, ...] of a module's Linear layers, the order update_bounds uses."""
    return [t for m in _linears(module) for t in (m.weight, m.bias)]


def _copy_weights(src: nn.Module, dst: nn.Module) -> None:
    a, b = _linears(src), _linears(dst)
    assert [l.weight.shape for l in a] == [l.weight.shape for l in b]
    with torch.no_grad():
        for s, d in zip(a, b):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)


def _batches(n: int, seed: int = 0) -> list[Batch]:
    """Transitions with some terminations, rewards of either sign, actions inside the box."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(
            Batch(
                obs=torch.randn(BATCH, OBS, generator=g),
                action=torch.rand(BATCH, ACT, generator=g) * 2 - 1,
                reward=torch.randn(BATCH, 1, generator=g),
                next_obs=torch.randn(BATCH, OBS, generator=g),
                done=(torch.rand(BATCH, 1, generator=g) < 0.2).float(),
                discount=torch.full((BATCH, 1), 0.99),
            )
        )
    return out


def _pair(td3: bool, backend: str = "auto"):
    """An SB3 model and a pydpg agent with identical weights (online and target) and settings.
    ``backend``: pydpg's ``update_backend`` (its C++ update takes over from the second update)."""
    ub.assert_float32_arithmetic()
    common = dict(
        learning_rate=3e-4,
        batch_size=BATCH,
        tau=0.005,
        gamma=0.99,
        learning_starts=0,
        policy_kwargs={"net_arch": [256, 256]},
        device="cpu",
        seed=0,
        buffer_size=1000,
    )
    if td3:
        # Target smoothing draws noise from two different RNGs, so it is off on both sides; the
        # other two switches (twin critics, actor delay 2) are compared.
        model = sb3.TD3("MlpPolicy", ENV, target_policy_noise=0.0, policy_delay=2, **common)
        cfg = DDPGConfig(
            twin_critics=True, policy_delay=2, target_policy_noise=0.0, batch_size=BATCH, update_backend=backend
        )
    else:
        model = sb3.DDPG("MlpPolicy", ENV, **common)
        cfg = DDPGConfig(batch_size=BATCH, update_backend=backend)
    model.set_logger(configure(None, []))
    agent = DDPGAgent.from_dims(OBS, ACT, cfg)
    _copy_weights(model.actor, agent.actor)
    _copy_weights(model.actor_target, agent.actor_target)
    for i, q in enumerate(agent.critics):
        _copy_weights(model.critic.q_networks[i], q)
        _copy_weights(model.critic_target.q_networks[i], agent.critic_targets[i])
    return model, agent


def _run_sb3(model, batches: list[Batch]) -> None:
    it = iter(batches)

    def sample(batch_size, env=None):  # SB3's train() draws from its buffer; hand it ours instead
        b = next(it)
        return ReplayBufferSamples(b.obs, b.action, b.next_obs, b.done, b.reward)

    model.replay_buffer.sample = sample
    for _ in batches:
        model.train(gradient_steps=1, batch_size=BATCH)


def _networks(model, agent) -> dict:
    """Each side's tensors under update_bounds' names: (pydpg's, SB3's) parameters and Adam state."""
    n = len(agent.critics)
    sides = {
        "pydpg": dict(
            actor=_params(agent.actor),
            critics=[t for c in agent.critics for t in _params(c)],
            actor_target=_params(agent.actor_target),
            critic_targets=[t for c in agent.critic_targets for t in _params(c)],
        ),
        "SB3": dict(
            actor=_params(model.actor),
            critics=[t for q in model.critic.q_networks[:n] for t in _params(q)],
            actor_target=_params(model.actor_target),
            critic_targets=[t for q in model.critic_target.q_networks[:n] for t in _params(q)],
        ),
    }
    opts = {"pydpg": (agent.actor_opt, agent.critic_opt), "SB3": (model.actor.optimizer, model.critic.optimizer)}
    for side, (aopt, copt) in opts.items():
        for net, opt in (("actor", aopt), ("critic", copt)):
            params = sides[side]["actor" if net == "actor" else "critics"]
            assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(params)
            assert all(p is q for p, q in zip(opt.param_groups[0]["params"], params))  # module order
            for key in ("exp_avg", "exp_avg_sq", "step"):
                sides[side][f"{net}_{key}"] = [opt.state[p][key] for p in params] if opt.state else None
    return sides


def _sync(agent, model) -> None:
    """SB3's weights, targets and Adam moments <- pydpg's (in place); the Adam step counts must agree."""
    ours, theirs = _networks(model, agent).values()
    with torch.no_grad():
        for key, mine in ours.items():
            if key.endswith("_step") or mine is None:
                assert (mine is None) == (theirs[key] is None), key  # both optimizers have state, or neither
                if mine is not None:  # whole-number counts, + 1 per step on both sides: exact
                    assert [float(s) for s in mine] == [float(s) for s in theirs[key]], key
                continue
            for p, q in zip(mine, theirs[key]):
                q.copy_(p)


def _results(tensors: dict) -> dict:
    """The tensors one update writes (SB3's critics' .grad also holds the actor loss's: not compared)."""
    keys = [
        "critics",
        "critic_exp_avg",
        "critic_exp_avg_sq",
        "actor",
        "actor_exp_avg",
        "actor_exp_avg_sq",
        "actor_target",
        "critic_targets",
    ]
    return {k: tensors[k] for k in keys if tensors[k] is not None}  # None: no Adam state yet (TD3's actor)


def _step(model, agent, b: Batch, planted: Batch = None) -> dict:
    """One update on each side from pydpg's state, SB3's on ``b``, pydpg's on ``planted`` when given
    (else ``b``); each result within the bound of ``b``'s update (pydpg's unless planted). Returns
    the bound."""
    _sync(agent, model)
    bound = ub.update_bound(ub.State.of_agent(agent), b)  # no target smoothing on either side: no noise
    _run_sb3(model, [b])
    agent.update(b if planted is None else planted)
    sides = _networks(model, agent)
    ub.check(_results(sides["SB3"]), bound, "SB3: ")
    if planted is None:
        ub.check(_results(sides["pydpg"]), bound, "pydpg: ")
    return bound


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("td3", [False, True], ids=["ddpg", "td3"])
def test_update_matches_sb3(td3, backend):
    model, agent = _pair(td3, backend)
    start = [p.detach().clone() for p in agent.actor.parameters()]
    for b in _batches(UPDATES):
        _step(model, agent, b)  # each update, from the same state, within the rounding bound on both sides

    # The weights moved (so agreement is not two no-ops agreeing).
    moved = max((p.detach() - s).abs().max().item() for p, s in zip(agent.actor.parameters(), start))
    assert moved > 1e-3
    assert agent.n_updates == model._n_updates == UPDATES
    assert (agent.mlp_updater() is not None) == (backend == "cpp")


def test_parity_check_detects_a_wrong_target():
    """The comparison above is sharp enough to see a one-character bug: bootstrapping through
    terminations (done ignored) puts pydpg's critic outside the bound around SB3's update."""
    model, agent = _pair(td3=False)
    batches = _batches(4)
    for b in batches[:3]:
        _step(model, agent, b)  # a few correct updates first: Adam's first steps are nearly sign(g)
    b = batches[3]
    bound = _step(model, agent, b, planted=b._replace(done=torch.zeros_like(b.done)))
    with pytest.raises(AssertionError, match="critics"):
        ub.check({"critics": _networks(model, agent)["pydpg"]["critics"]}, bound)


def test_parity_for_the_actions_both_act_with():
    """Noiseless actions from the copied weights agree (same tanh-squashed MLP on both sides): each
    within the forward rounding bound of the same centre."""
    model, agent = _pair(td3=False)
    obs = np.random.default_rng(0).standard_normal((32, OBS)).astype(np.float32)
    ours = agent.act(obs)
    theirs = model.policy.actor(torch.as_tensor(obs)).detach().numpy()
    bound = ub.forward_bound(agent.actor, obs)
    ub.check({"action": ours}, {"action": bound}, "pydpg: ")
    ub.check({"action": theirs}, {"action": bound}, "SB3: ")
