"""pydpg's update against Stable-Baselines3's, step for step, from the same weights on the same batches.

The theory tests pin the update to its equations; these pin it to a widely used implementation, so
a learning curve that differs from SB3's cannot come from the update itself (critic target, critic
loss, DPG actor step, Polyak, TD3's twin critics and actor delay). Only the optimizer kernels differ
(pydpg's fused Adam against SB3's default Adam), which is float rounding: after 40 updates of 256-256
nets the largest weight difference measured was 3e-8, while ignoring ``done`` (the bug the last test
plants) moves the critic by 3e-3. The tolerances sit between the two.

SB3 comes with the ``test`` extra (it is a peer, never a runtime dependency).
"""

import numpy as np
import pytest
import torch
from torch import nn

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.type_aliases import ReplayBufferSamples  # noqa: E402

from pydpg.agent import DDPG  # noqa: E402
from pydpg.batch import Batch  # noqa: E402
from pydpg.config import DDPGConfig  # noqa: E402

torch.set_num_threads(1)
ENV = "HalfCheetah-v5"  # 17-dim observations, 6-dim actions in [-1, 1]
OBS, ACT = 17, 6
UPDATES = 40
BATCH = 128


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


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
        out.append(Batch(obs=torch.randn(BATCH, OBS, generator=g), action=torch.rand(BATCH, ACT, generator=g) * 2 - 1,
                         reward=torch.randn(BATCH, 1, generator=g), next_obs=torch.randn(BATCH, OBS, generator=g),
                         done=(torch.rand(BATCH, 1, generator=g) < 0.2).float(),
                         discount=torch.full((BATCH, 1), 0.99)))
    return out


def _pair(td3: bool, backend: str = "auto"):
    """An SB3 model and a pydpg agent with identical weights (online and target) and settings.
    ``backend``: pydpg's ``update_backend`` (its C++ update takes over from the second update)."""
    common = dict(learning_rate=3e-4, batch_size=BATCH, tau=0.005, gamma=0.99, learning_starts=0,
                  policy_kwargs={"net_arch": [256, 256]}, device="cpu", seed=0, buffer_size=1000)
    if td3:
        # Target smoothing draws noise from two different RNGs, so it is off on both sides; the
        # other two switches (twin critics, actor delay 2) are compared.
        model = sb3.TD3("MlpPolicy", ENV, target_policy_noise=0.0, policy_delay=2, **common)
        cfg = DDPGConfig(twin_critics=True, policy_delay=2, target_policy_noise=0.0, batch_size=BATCH,
                         update_backend=backend)
    else:
        model = sb3.DDPG("MlpPolicy", ENV, **common)
        cfg = DDPGConfig(batch_size=BATCH, update_backend=backend)
    model.set_logger(configure(None, []))
    agent = DDPG.from_dims(OBS, ACT, cfg)
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


def _assert_close(sb3_module: nn.Module, ours: nn.Module, what: str) -> None:
    for i, (s, o) in enumerate(zip(_linears(sb3_module), _linears(ours))):
        for name in ("weight", "bias"):
            a, b = getattr(s, name).detach(), getattr(o, name).detach()
            torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-7, msg=lambda m: f"{what} layer {i} {name}: {m}")


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("td3", [False, True], ids=["ddpg", "td3"])
def test_update_matches_sb3(td3, backend):
    model, agent = _pair(td3, backend)
    start = [p.detach().clone() for p in agent.actor.parameters()]
    batches = _batches(UPDATES)
    _run_sb3(model, batches)
    for b in batches:
        agent.update(b)

    # The weights moved (so agreement is not two no-ops agreeing) ...
    moved = max((p.detach() - s).abs().max().item() for p, s in zip(agent.actor.parameters(), start))
    assert moved > 1e-3
    # ... and moved the same way on both sides, online and target, actor and every critic.
    _assert_close(model.actor, agent.actor, "actor")
    _assert_close(model.actor_target, agent.actor_target, "actor target")
    for i in range(len(agent.critics)):
        _assert_close(model.critic.q_networks[i], agent.critics[i], f"critic {i}")
        _assert_close(model.critic_target.q_networks[i], agent.critic_targets[i], f"critic target {i}")
    assert agent.n_updates == model._n_updates == UPDATES
    assert (agent.mlp_updater() is not None) == (backend == "cpp")


def test_parity_check_detects_a_wrong_target():
    """The comparison above is sharp enough to see a one-character bug: bootstrapping through
    terminations (done ignored) makes the weights differ beyond the tolerance."""
    model, agent = _pair(td3=False)
    batches = _batches(UPDATES)
    _run_sb3(model, batches)
    for b in batches:
        agent.update(b._replace(done=torch.zeros_like(b.done)))
    with pytest.raises(AssertionError):
        _assert_close(model.critic.q_networks[0], agent.critics[0], "critic")


def test_parity_for_the_actions_both_act_with():
    """Noiseless actions from the copied weights agree (same tanh-squashed MLP on both sides)."""
    model, agent = _pair(td3=False)
    obs = np.random.default_rng(0).standard_normal((32, OBS)).astype(np.float32)
    ours = agent.act(obs)
    theirs = model.policy.actor(torch.as_tensor(obs)).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
