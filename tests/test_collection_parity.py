"""Data collection: pydpg's trainer against Stable-Baselines3's DDPG, transition for transition, on Hopper-v5.

On Hopper-v5, SB3's DDPG with pydpg's settings (``pydpg.experiments.sb3_peer``) averaged higher over its last
100k steps than pydpg did (1231 +/- 228 against 909 +/- 130, 3 seeds each). The update is the same
as SB3's (tests/test_peer_parity.py), which leaves collection. Here both collect from the same
settings (the shipped Hopper-v5 preset through ``pydpg.train.config.resolve``, SB3 through
``sb3_peer.sb3_model``, as the benchmark's SB3 runs were made), the same env seed, the same time
limit (30 steps, so that episodes end by truncation as well as by termination), the same actor
weights, and the same random draws injected into both: one uniform warm-up action and one Gaussian
noise vector per stored transition. Nothing is updated within the horizon, so the actor stays fixed.
Then each side's replay buffer is read back and compared row by row over 3,000 transitions (1,500
warm-up, 1,500 actor + noise), across 70 terminations and 55 truncations.

What the comparison shows:

* Warm-up: every stored transition is bit-for-bit the same (obs, action, reward, next_obs, done),
  once SB3's warm-up noise is switched off (next point). The autoreset handling, the final
  observation, the time limit, termination against truncation, the observation dtype and the
  seeding of later resets all agree.
* SB3 adds the exploration noise to its warm-up actions: ``_sample_action`` computes
  ``clip(uniform + noise, -1, 1)`` before ``learning_starts`` too. pydpg, like sfujim/TD3 main.py and
  CleanRL (the references its defaults come from), acts uniformly at random without noise. This is
  the one difference of algorithm that we found. About 4% of SB3's warm-up action components land
  on a bound (twice the normal's E[max(n, 0)] = 0.1/sqrt(2*pi), over a range of 2), and a
  component's variance is 0.338 instead of 1/3.
  ``test_sb3_adds_noise_to_warmup_actions`` pins it. The parity run hands SB3 zeros as its warm-up
  noise so that both sides take the same warm-up actions.
* Actor + noise: episode ends (which transitions terminate, which are truncated) are the same, and
  every episode starts from the same observation, bit for bit. The actions agree to rounding only,
  because SB3 computes the action in other units: it turns the actor's [-1, 1] output into env units
  and back in float32 (``unscale_action`` then ``scale_action``, which rounds ``a + 1``, a change of
  at most 2**-24). It also steps the env with the float64 ``clip(a + noise)`` and stores that value
  rounded to float32, while pydpg stores the float32 action and steps with exactly that value. Within
  an episode the contact dynamics then magnify that difference by an amount no rounding analysis
  bounds, so the two trajectories are not compared float for float there. What is compared instead,
  with bounds derived from the arithmetic: the first action of the actor phase (same observation on
  both sides), and on every stored actor-phase row of each side, that its action is
  ``clip(mu(obs) + noise)`` of its own observation (pydpg.deploy.rounding bounds the actor's float32
  evaluations). Together with the bit-identical warm-up (same env, same storage) that is the claim:
  the same rule on the same draws.

Conclusion: given the same draws, the two collect the same transitions, apart from SB3's noise on
warm-up actions and float32 rounding. Apart from that warm-up noise, the two runs are the same
algorithm on the same data. The Hopper gap is within seed noise at 3 seeds: the +/- above are
population stds, and with sample stds Welch's t is 1.7 (about 3 degrees of freedom, p ~ 0.18).
Whether the warm-up noise moves Hopper's returns by itself can only be found out by runs, not by
this test.

Test-only plumbing: pydpg's warm-up RNG and noise (``VectorStepper.rng`` / ``.noise``) and SB3's
``action_space.sample`` / ``action_noise`` are replaced by scripted draws. The warm-up draws lie on
the 2**-23 grid, where SB3's float32 round trip is exact: pydpg's own draws (float32 of a float64
uniform) are finer near 0, and SB3 would round them. That rounding is no part of either algorithm.
pydpg's stored rows are read with ``ReplayBuffer.get``.
SB3 comes with the ``test`` extra.
"""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

sb3 = pytest.importorskip("stable_baselines3")
from policy_helpers import unit_box_policy  # noqa: E402
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise  # noqa: E402

from pydpg.common.envs import make_env  # noqa: E402
from pydpg.core.noise import GaussianNoise  # noqa: E402
from pydpg.deploy.rounding import rounding_bound  # noqa: E402
from pydpg.experiments.sb3_peer import sb3_model  # noqa: E402
from pydpg.train.config import resolve  # noqa: E402
from pydpg.train.trainer import Trainer  # noqa: E402

torch.set_num_threads(1)
ENV = "Hopper-v5"
SEED = 0
WARMUP = 1_500  # learning_starts: the first WARMUP transitions use uniform actions
HORIZON = 3_000  # transitions stored by each side
TIME_LIMIT = 30  # Hopper's random and untrained-actor episodes last ~10-30 steps: both kinds of ending occur
ACT = 3
# How far a stored action may be from clip(mu + noise) computed here from the same float32 mu, beyond
# the actor's own rounding: pydpg adds in float64 and rounds to float32 before clipping (2^-53 + 2^-25
# below 1 in magnitude, nothing at the clip), and SB3's float32 round trip of mu through env units moves
# it by at most 2^-24 (fl32(a + 1) - 1 is exact) before its float64 add and float32 store (the same
# 2^-53 + 2^-25). The two sides of a comparison each add theirs.
PYDPG_RULE = 2.0**-53 + 2.0**-25
SB3_RULE = 2.0**-24 + 2.0**-53 + 2.0**-25


# ---------------------------------------------------------------------------------------- scripted draws
def _draws(sigma: float):
    g = np.random.default_rng(1000 + SEED)
    warm = g.integers(-(2**23), 2**23, size=(WARMUP, ACT), endpoint=True) / 2**23
    noise = g.normal(0.0, sigma, size=(HORIZON - WARMUP, ACT))
    return warm, noise


class _ScriptedUniform:
    """Stands in for ``VectorStepper.rng``. It hands out one scripted warm-up action per stored
    transition. On an autoreset step pydpg draws an action that the vector env throws away; that
    draw gets NaN, so had it been used, the observations and then the buffer (which refuses NaN)
    would have shown it."""

    def __init__(self, draws, stepper):
        self.draws, self.stepper, self.used, self.discarded = draws, stepper, 0, 0

    def uniform(self, low, high, size):
        assert (low, high, size) == (-1.0, 1.0, (1, ACT))
        if self.stepper.autoreset.all():
            self.discarded += 1
            return np.full(size, np.nan)
        self.used += 1
        return self.draws[self.used - 1].reshape(size)


class _ScriptedGaussian(GaussianNoise):
    """pydpg's noise process with scripted draws, skipping autoreset steps as above."""

    def __init__(self, sigma, draws, stepper):
        super().__init__(ACT, sigma)
        self.draws, self.stepper, self.used, self.discarded = draws, stepper, 0, 0

    def sample(self):
        if self.stepper.autoreset.all():
            self.discarded += 1
            return np.full((1, ACT), np.nan)
        self.used += 1
        return self.draws[self.used - 1][None].copy()


class _ScriptedSB3Noise(ActionNoise):
    """SB3's action noise with the same draws. SB3 calls it in warm-up too; those calls get zeros
    so that both sides take the same warm-up actions (see the module docstring)."""

    def __init__(self, draws, model):
        super().__init__()
        self.draws, self.model, self.used, self.warmup_calls = draws, model, 0, 0

    def __call__(self):
        if self.model.num_timesteps < self.model.learning_starts:
            self.warmup_calls += 1
            return np.zeros(ACT)
        self.used += 1
        return self.draws[self.used - 1].copy()


def _spy_actions(env):
    """Record the actions ``env.step`` receives."""
    seen, step = [], env.step

    def spy(action):
        seen.append(np.array(action, dtype=np.float64))
        return step(action)

    env.step = spy
    return seen


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------------------------- reading buffers
def _stored_rows(buffer) -> dict:
    """Every transition in pydpg's buffer, in insertion order (the buffer has not wrapped)."""
    assert buffer.n_step == 1 and not buffer.prioritized and buffer.total_added == len(buffer)
    rows = {k: v.numpy() for k, v in buffer.get()._asdict().items() if v is not None}
    return {**rows, "reward": rows["reward"][:, 0], "done": rows["done"][:, 0], "discount": rows["discount"][:, 0]}


def _sb3_rows(model) -> dict:
    rb = model.replay_buffer
    assert rb.pos == HORIZON and rb.n_envs == 1
    dones, timeouts = rb.dones[:HORIZON, 0], rb.timeouts[:HORIZON, 0]
    # SB3's critic target uses dones * (1 - timeouts): 1 on termination only, as pydpg's done.
    return {
        "obs": rb.observations[:HORIZON, 0],
        "action": rb.actions[:HORIZON, 0],
        "reward": rb.rewards[:HORIZON, 0],
        "next_obs": rb.next_observations[:HORIZON, 0],
        "done": dones * (1 - timeouts),
        "episode_end": dones.astype(bool),
        "truncated": timeouts.astype(bool),
    }


# ---------------------------------------------------------------------------------------- the two runs
@pytest.fixture(scope="module")
def runs():
    config, train = resolve(
        ENV,
        agent={"learning_starts": WARMUP},
        train={"seed": SEED, "total_steps": HORIZON, "eval_every": 0},
        env_kwargs={"max_episode_steps": TIME_LIMIT},
    )
    assert config.exploration_noise == "gaussian" and config.n_step == 1 and not config.obs_normalization
    warm, noise = _draws(config.exploration_sigma)

    # pydpg. train_freq only schedules updates (collection is one env step per loop step): past the
    # horizon, no update happens and the actor stays as initialized.
    trainer = Trainer(dataclasses.replace(config, train_freq=HORIZON + 1), train, tensorboard=False)
    stepper = trainer.collector.stepper
    assert np.all(stepper.low == -1) and np.all(stepper.high == 1)
    stepper.rng = _ScriptedUniform(warm, stepper)
    stepper.noise = _ScriptedGaussian(config.exploration_sigma, noise, stepper)
    pydpg_applied = _spy_actions(trainer.vec.envs[0])
    actor_before = [p.detach().clone() for p in trainer.agent.actor.parameters()]
    trainer.run()

    # SB3, built as pydpg.experiments.sb3_peer.run_sb3 builds it, from the same config and env kwargs.
    model = sb3_model(make_env(ENV, train.env_kwargs), config, SEED)
    assert isinstance(model, sb3.DDPG) and model.learning_starts == WARMUP and model.gamma == config.gamma
    assert isinstance(model.action_noise, NormalActionNoise)
    assert np.all(model.action_noise._sigma == config.exploration_sigma)
    space = model.action_space
    # Hopper's box is [-1, 1]^3, so a scripted [-1, 1] draw is already the env-unit sample SB3 expects.
    assert np.all(space.low == -1) and np.all(space.high == 1) and space.dtype == np.float32
    draws = iter(warm.astype(np.float32))
    space.sample = lambda mask=None, probability=None: next(draws)
    model.action_noise = _ScriptedSB3Noise(noise, model)
    with torch.no_grad():
        ours, theirs = _linears(trainer.agent.actor), _linears(model.actor)
        assert [m.weight.shape for m in ours] == [m.weight.shape for m in theirs]
        for src, dst in zip(ours, theirs):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    # gradient_steps=0 is SB3's "collect only" (learn() skips train()); train_freq stays the preset's 1.
    model.gradient_steps = 0
    sb3_applied = _spy_actions(model.env.envs[0])
    model.learn(HORIZON, log_interval=None)

    return {
        "config": config,
        "warm": warm,
        "trainer": trainer,
        "model": model,
        "actor_before": actor_before,
        "pydpg": _stored_rows(trainer.buffer),
        "sb3": _sb3_rows(model),
        "pydpg_applied": np.array(pydpg_applied),
        "sb3_applied": np.array(sb3_applied),
        "time_limits": (trainer.vec.envs[0].spec.max_episode_steps, model.env.envs[0].spec.max_episode_steps),
    }


def _episode_ends(p: dict) -> np.ndarray:
    """Which of rows 0..n-2 end an episode, from pydpg's buffer, which keeps no truncation flag (a
    1-step transition needs none): those after which the next row does not start from this row's
    next observation (the last row has no next row to tell)."""
    return np.any(p["obs"][1:] != p["next_obs"][:-1], axis=1) | (p["done"][:-1] == 1)


# ---------------------------------------------------------------------------------------- tests
def test_same_settings_and_no_learning(runs):
    trainer, model = runs["trainer"], runs["model"]
    assert runs["time_limits"] == (TIME_LIMIT, TIME_LIMIT)
    assert len(trainer.buffer) == trainer.step == model.num_timesteps == HORIZON
    # Neither side updated, so the compared actor phase ran one fixed actor on both.
    assert trainer.n_grad == 0 and trainer.agent.n_updates == 0 and model._n_updates == 0
    for before, now, sb3_p in zip(runs["actor_before"], trainer.agent.actor.parameters(), model.actor.parameters()):
        assert torch.equal(before, now) and torch.equal(before, sb3_p)


def test_every_draw_is_used_once_per_transition(runs):
    stepper, noise = runs["trainer"].collector.stepper, runs["model"].action_noise
    assert stepper.rng.used == WARMUP and stepper.noise.used == HORIZON - WARMUP
    assert noise.used == HORIZON - WARMUP
    # pydpg draws (and discards) an action at every autoreset step, i.e. after each episode end
    # but the last row's. With i.i.d. draws that is harmless; the NaN it got never reached a buffer.
    ends = runs["sb3"]["episode_end"]
    assert stepper.rng.discarded + stepper.noise.discarded == int(ends[:-1].sum())
    # SB3 asks for noise on every warm-up step (the difference pinned below).
    assert noise.warmup_calls == WARMUP


def test_episode_ends_are_the_same(runs):
    p, s = runs["pydpg"], runs["sb3"]
    np.testing.assert_array_equal(p["done"], s["done"])  # termination: no bootstrapping
    ends = _episode_ends(p)
    np.testing.assert_array_equal(ends, s["episode_end"][:-1])
    # A truncation is an episode end without termination; SB3 stores it as done=1 with timeouts=1.
    np.testing.assert_array_equal(ends & (p["done"][:-1] == 0), s["truncated"][:-1])
    assert np.all(p["discount"] == np.float32(runs["config"].gamma)) and runs["model"].gamma == runs["config"].gamma
    lengths = np.diff(np.r_[-1, np.flatnonzero(s["episode_end"])])
    assert np.all(lengths[s["truncated"][s["episode_end"]]] == TIME_LIMIT)
    # Both kinds of ending, several times in each phase.
    for phase in (slice(0, WARMUP), slice(WARMUP, HORIZON)):
        assert int(s["done"][phase].sum()) >= 5 and int(s["truncated"][phase].sum()) >= 5, phase


def test_warmup_transitions_are_identical(runs):
    """Same env, same MuJoCo, same actions on the same float values: the same computation, so the
    stored transitions are compared bit for bit (SB3 keeps float64 observations, pydpg stores
    float32, and the networks of both read float32)."""
    p, s = runs["pydpg"], runs["sb3"]
    w = slice(0, WARMUP)
    for key in ("obs", "action", "reward", "next_obs", "done"):
        np.testing.assert_array_equal(p[key][w], np.asarray(s[key][w], dtype=np.float32), err_msg=key)
    # Warm-up actions are the scripted uniform draws themselves, with no noise on pydpg's side.
    np.testing.assert_array_equal(p["action"][w], runs["warm"].astype(np.float32))


def _rule(actor, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """clip(mu(obs) + noise, -1, 1) with mu evaluated here row by row, in float64 after mu."""
    with torch.no_grad():
        mu = np.stack([actor(torch.from_numpy(o[None].copy()))[0].numpy() for o in obs])
    return np.clip(mu.astype(np.float64) + noise, -1, 1)


def test_actor_phase_transitions_match(runs, tmp_path):
    """mu(obs) + noise, clipped: the same rule on both sides, in other float units (module docstring).
    Flags are compared exactly (test_episode_ends_are_the_same), episode starts bit for bit, actions
    within bounds derived from the arithmetic; the trajectories in between, which contact dynamics
    pull apart by amounts no rounding bound covers, are not compared float for float."""
    p, s = runs["pydpg"], runs["sb3"]
    a = slice(WARMUP, HORIZON)
    trainer = runs["trainer"]
    actor = trainer.agent.actor
    path = unit_box_policy(trainer.agent, tmp_path / "actor.pt", p["obs"].shape[1], ACT)
    _, noise = _draws(runs["config"].exploration_sigma)

    # Every actor-phase episode starts from the same observation: the resets draw from the same env
    # RNG, and the warm-up (compared bit for bit) left both envs in the same state.
    starts = np.flatnonzero(np.r_[True, s["episode_end"][:-1]])
    starts = starts[starts >= WARMUP]
    assert len(starts) >= 10
    np.testing.assert_array_equal(p["obs"][starts], s["obs"][starts].astype(np.float32))
    # The first actor step starts from the same observation too; the actions then differ by SB3's
    # float32 round trip and both sides' rounding of the sum, and by the actor's own rounding if the
    # two libraries' calls round differently: all derived, none measured.
    np.testing.assert_array_equal(p["obs"][WARMUP], s["obs"][WARMUP].astype(np.float32))
    _, bound = rounding_bound(path, p["obs"][WARMUP : WARMUP + 1])
    assert np.all(np.abs(p["action"][WARMUP] - s["action"][WARMUP]) <= 2 * bound[0] + PYDPG_RULE + SB3_RULE)

    # On every actor-phase row, each side's stored action is clip(mu(obs) + noise) of its own stored
    # observation and the row's noise draw (draws are handed out one per stored transition).
    for side, rows, rule in (("pydpg", p, PYDPG_RULE), ("sb3", s, SB3_RULE)):
        obs = np.asarray(rows["obs"][a], dtype=np.float32)
        _, bound = rounding_bound(path, obs)
        want = _rule(actor, obs, noise)
        got = np.asarray(rows["action"][a], dtype=np.float64)
        excess = np.abs(got - want) - (2 * bound + rule)
        assert excess.max() <= 0, f"{side}: a stored action is not clip(mu(obs) + noise) (row {int(excess.argmax())})"
    # The noise made a difference (so agreement is not the noiseless actor agreeing with itself).
    with torch.no_grad():
        mu = actor(torch.from_numpy(p["obs"][a].copy())).numpy()
    assert np.abs(p["action"][a] - mu).mean() > 0.05


def test_each_side_steps_with_the_action_it_stores(runs):
    """pydpg steps its env with exactly the float32 action it stores. SB3 does so in warm-up; in the
    actor phase it steps with the float64 clip(a + noise) and stores that value rounded to float32."""
    p, s = runs["pydpg"], runs["sb3"]
    np.testing.assert_array_equal(runs["pydpg_applied"], p["action"].astype(np.float64))
    np.testing.assert_array_equal(runs["sb3_applied"][:WARMUP], s["action"][:WARMUP].astype(np.float64))
    diff = np.abs(runs["sb3_applied"][WARMUP:] - s["action"][WARMUP:].astype(np.float64))
    # SB3 applies unscale(x) = -1 + 0.5 (x + 1) 2 in float64 (x + 1 rounds by <= 2^-53) and stores
    # float32(x), |x| <= 1 (half a float32 ulp below 1: <= 2^-25).
    assert 0 < diff.max() <= 2.0**-25 + 2.0**-53


def test_sb3_adds_noise_to_warmup_actions():
    """The difference: before learning_starts, SB3 stores and takes clip(uniform + noise, -1, 1);
    pydpg (as sfujim/TD3 and CleanRL) takes the uniform action as drawn."""
    steps = 50
    config, train = resolve(
        ENV, agent={"learning_starts": 10 * steps}, train={"seed": SEED}, env_kwargs={"max_episode_steps": TIME_LIMIT}
    )
    model = sb3_model(make_env(ENV, train.env_kwargs), config, SEED)
    model.gradient_steps = 0
    uniform = np.random.default_rng(7).integers(-(2**23), 2**23, size=(steps, ACT), endpoint=True) / 2**23
    draws = iter(uniform.astype(np.float32))
    model.action_space.sample = lambda mask=None, probability=None: next(draws)
    sigma, drawn = model.action_noise, []

    class Recorded(ActionNoise):  # SB3's own Gaussian noise, recorded
        def __call__(self):
            drawn.append(sigma())
            return drawn[-1]

    model.action_noise = Recorded()
    model.learn(steps, log_interval=None)
    stored = model.replay_buffer.actions[:steps, 0]
    assert model.num_timesteps < model.learning_starts and len(drawn) == steps
    np.testing.assert_array_equal(stored, np.clip(uniform + np.array(drawn), -1, 1).astype(np.float32))
    assert np.abs(stored - uniform).mean() > 0.05  # noise of std 0.1, not pydpg's uniform actions
