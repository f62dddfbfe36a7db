"""Environments: id and space checks, action scaling, evaluation, exact env-state capture, the
observation normalizer."""

import os
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import toy_env  # noqa: F401  (registers the toy envs)
from float_bounds import U32, U64, Enc, gamma, variance

from pydpg.common.envs import (
    MUJOCO_TASKS,
    check_env_id,
    evaluate,
    get_env_state,
    is_capturable,
    make_env,
    make_vec_env,
    scale_action,
    set_env_state,
    unscale_action,
)
from pydpg.core.normalizer import RunningNormalizer

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------- ids and spaces
@pytest.mark.parametrize(
    "bad, expected", [("HalfCheeta-v5", "HalfCheetah-v5"), ("hopper", "Hopper-v5"), ("Walker2d-v9", "Walker2d-v5")]
)
def test_unknown_env_id_names_close_matches(bad, expected):
    with pytest.raises(ValueError, match=re.escape(repr(expected))) as e:
        check_env_id(bad)
    assert "unknown environment id" in str(e.value)
    with pytest.raises(ValueError, match="unknown environment id"):
        make_env(bad)


def test_unknown_env_id_without_matches_points_to_registry():
    with pytest.raises(ValueError, match="pprint_registry"):
        check_env_id("Zzzqqq-v0")
    with pytest.raises(ValueError, match="non-empty string"):
        check_env_id("")


@pytest.mark.parametrize("env_id", ["CartPole-v1", "PydpgToyDiscrete-v0"])
def test_discrete_action_space_is_refused(env_id):
    with pytest.raises(ValueError, match=r"Discrete action space.*continuous Box"):
        make_env(env_id)
    with pytest.raises(ValueError, match="Discrete"):
        make_vec_env(env_id, 2)


def test_unbounded_action_space_is_refused():
    with pytest.raises(ValueError, match="unbounded action Box"):
        make_env("PydpgToyUnbounded-v0")


def test_every_mujoco_v5_task_is_accepted():
    for env_id in MUJOCO_TASKS:
        env = make_env(env_id)
        assert isinstance(env.action_space, gym.spaces.Box) and is_capturable(env)
        env.close()


# ---------------------------------------------------------------------------------------- scaling
def test_scale_action_maps_unit_box_onto_env_box():
    low, high = np.array([-2.0, 0.0, -0.4], np.float32), np.array([4.0, 1.0, 0.4], np.float32)
    # Exact for these boxes: low + {0, 1/2, 1} (high - low) in float64 are sums of float32 numbers that
    # float64 holds exactly (and -0.4 + 0.8 is float32's 0.4), rounded to float32 without change.
    np.testing.assert_array_equal(scale_action(np.array([-1.0, -1.0, -1.0]), low, high), low)
    np.testing.assert_array_equal(scale_action(np.array([1.0, 1.0, 1.0]), low, high), high)
    np.testing.assert_array_equal(scale_action(np.zeros(3), low, high), (low + high) / 2)
    # Out-of-range inputs (a custom unsquashed actor) are clipped first: exactly the clipped inputs' actions.
    out = scale_action(np.array([5.0, -7.0, 0.5]), low, high)
    np.testing.assert_array_equal(out, scale_action(np.array([1.0, -1.0, 0.5]), low, high))
    assert out[0] == 4.0 and out[1] == 0.0 and low[2] <= out[2] <= high[2]
    a = np.random.default_rng(0).uniform(-1, 1, (10, 3))
    env = scale_action(a, low, high)
    # The round trip loses the float32 rounding of the env action (at most its float32 spacing), over the
    # half-width, then unscale's own float32 rounding (<= 2^-25 below 1) and a few float64 roundings.
    allowed = np.spacing(np.abs(env)) / ((high.astype(np.float64) - low) / 2) + 2.0**-25 + gamma(6, U64) * 8
    assert np.all(np.abs(unscale_action(env, low, high) - a) <= allowed)
    assert env.dtype == np.float32  # the env's dtype


# ---------------------------------------------------------------------------------------- evaluation
def test_evaluate_is_seeded_and_counts_episodes():
    env = make_env("InvertedPendulum-v5")
    w = np.random.default_rng(1).normal(size=4)
    policy = lambda obs: np.tanh(np.array([obs @ w]))  # noqa: E731
    a = evaluate(policy, env, 3, seed=7)
    b = evaluate(policy, env, 3, seed=7)
    c = evaluate(policy, env, 3, seed=8)
    assert len(a.returns) == 3 and np.array_equal(a.returns, b.returns) and np.array_equal(a.lengths, b.lengths)
    assert not np.array_equal(a.returns, c.returns)
    assert a.mean == np.mean(a.returns) and a.std == np.std(a.returns)  # the same numpy calls
    # InvertedPendulum-v5: reward 1 per step that does not terminate.
    assert np.all((a.returns == a.lengths) | (a.returns == a.lengths - 1))
    with pytest.raises(ValueError, match="episodes"):
        evaluate(policy, env, 0)


def test_evaluate_applies_the_env_box():
    env = make_env(toy_env.ID)  # action Box [-2, 4]; reward = t + action[0]
    r = evaluate(lambda obs: np.ones(2), env, 1, seed=0)
    t = r.lengths[0]
    assert r.returns[0] == t * (t + 1) / 2 + 4.0 * t  # float64 sums of the integers k + 4: exact


# ---------------------------------------------------------------------------------------- env state
def _rollout(env, actions, resets):
    out = []
    for a in actions:
        obs, r, te, tr, _ = env.step(a)
        out.append((obs.copy(), r, te, tr))
        if te or tr:
            out.append(("reset", env.reset()[0].copy()))
            resets.append(1)
    return out


@pytest.mark.parametrize("env_id", MUJOCO_TASKS)
def test_mujoco_state_capture_is_exact(env_id):
    """A restored env continues bit for bit: observations, rewards, flags and later resets."""
    a = make_env(env_id)
    a.reset(seed=3)
    rng = np.random.default_rng(0)
    actions = rng.uniform(a.action_space.low, a.action_space.high, (220, *a.action_space.shape))
    _rollout(a, actions[:41], [])
    state = get_env_state(a)
    resets_a, resets_b = [], []
    ref = _rollout(a, actions[41:], resets_a)
    b = make_env(env_id)
    b.reset(seed=12345)  # a different episode: everything must come from the state
    set_env_state(b, state)
    got = _rollout(b, actions[41:], resets_b)
    assert len(ref) == len(got)
    for x, y in zip(ref, got):
        assert all(np.array_equal(u, v) for u, v in zip(x, y)), env_id
    a.close()
    b.close()


def test_time_limit_counter_is_restored():
    a = make_env("InvertedPendulum-v5")
    a.reset(seed=0)
    for _ in range(3):
        a.step(np.zeros(1, np.float32))
    st = get_env_state(a)
    b = make_env("InvertedPendulum-v5")
    b.reset(seed=0)
    set_env_state(b, st)
    assert b._elapsed_steps == 3  # TimeLimit is the outermost wrapper of gym.make


def test_custom_state_protocol_and_uncapturable_envs():
    a = make_env(toy_env.ID)
    a.reset(seed=0)
    a.step(np.zeros(2, np.float32))
    st = get_env_state(a)
    b = make_env(toy_env.ID)
    b.reset(seed=1)
    set_env_state(b, st)
    assert np.array_equal(a.step(np.zeros(2, np.float32))[0], b.step(np.zeros(2, np.float32))[0])
    n = make_env("PydpgToyNoState-v0")
    n.reset(seed=0)
    assert not is_capturable(n) and get_env_state(n) is None
    with pytest.raises(ValueError, match="not a MuJoCo env"):
        set_env_state(make_env(toy_env.ID), get_env_state(make_env("InvertedPendulum-v5")))


# ---------------------------------------------------------------------------------------- custom MJCF and vector envs
def test_custom_mjcf_model_through_xml_file(tmp_path, monkeypatch):
    from gymnasium.envs.mujoco import inverted_pendulum_v5

    src = os.path.join(os.path.dirname(inverted_pendulum_v5.__file__), "assets", "inverted_pendulum.xml")
    xml = open(src).read()
    assert 'fromto="0 0 0 0.001 0 0.6"' in xml
    longer = xml.replace('fromto="0 0 0 0.001 0 0.6"', 'fromto="0 0 0 0.001 0 1.2"')
    (tmp_path / "long_pole.xml").write_text(longer)
    monkeypatch.chdir(tmp_path)
    # A plain relative path means the user's file, not one in Gymnasium's assets folder.
    env = make_env("InvertedPendulum-v5", {"xml_file": "long_pole.xml"})
    ref = make_env("InvertedPendulum-v5")
    assert env.unwrapped.fullpath == str(tmp_path / "long_pole.xml")
    geom = lambda e: e.unwrapped.model.geom_size.copy()  # noqa: E731
    assert not np.array_equal(geom(env), geom(ref))
    vec = make_vec_env("InvertedPendulum-v5", 2, {"xml_file": "long_pole.xml"})
    assert all(e.unwrapped.fullpath == str(tmp_path / "long_pole.xml") for e in vec.envs)
    with pytest.raises(OSError):
        make_env("InvertedPendulum-v5", {"xml_file": "./missing.xml"})


def test_vector_env_from_an_env_instance():
    inst = gym.make("InvertedPendulum-v5")
    vec = make_vec_env(inst, 3)
    assert vec.num_envs == 3 and vec.envs[0] is inst
    assert vec.autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP
    vec.close()


# ---------------------------------------------------------------------------------------- normalizer
def _chan_merges(chunks, count0: float) -> tuple[Enc, Enc]:
    """RunningNormalizer.update's float64 arithmetic as enclosures (tests/float_bounds.py): the
    statistics it ends with are within their bounds of the exact merge of the (0, 1, count0) prior
    with the data, whatever order torch sums each chunk in."""
    mean, var, count = Enc.exact(np.zeros(3), U64), Enc.exact(np.ones(3), U64), Enc.exact(count0, U64)
    for chunk in chunks:
        x = Enc.exact(chunk, U64)
        n = float(len(chunk))
        delta = x.mean(0).closed() - mean
        total = (count + n).closed()
        m2 = var * count + variance(x, 0) * n + delta.square() * count * n / total
        mean, var, count = (mean + delta * n / total).closed(), (m2 / total).closed(), total
    return mean, var


def _prior_gap(data: np.ndarray, count0: float) -> tuple[np.ndarray, np.ndarray]:
    """How far the exact merge of the (mean 0, var 1, count0) prior with the data is from the data's
    own mean and variance: |count0 (mu - 0)| / (N + count0) for the mean, and for the variance
    count0 (1 + (|mu| + |mu_merged|)^2 + v) / N + (mean gap)^2 (Chan's merge, written out)."""
    n, mu, v = len(data), np.abs(data).max(0), (data**2).max(0)  # generous upper bounds on |mean|, var
    gap_mean = count0 * mu / n
    return gap_mean, count0 * (1 + (2 * mu) ** 2 + v) / n + gap_mean**2


def test_normalizer_matches_numpy_statistics():
    rng = np.random.default_rng(0)
    data = rng.normal([3.0, -1.0, 100.0], [2.0, 0.1, 50.0], size=(1000, 3))
    # A negligible pseudo-count makes the parallel update comparable with the two-pass statistics.
    exact = RunningNormalizer(3, initial_count=1e-12)
    norm = RunningNormalizer(3)  # SB3's 1e-4 pseudo-count of the initial (0, 1) statistics
    chunks = np.array_split(data, [1, 5, 100, 101, 600])  # uneven batches, including size 1
    for chunk in chunks:
        exact.update(chunk)
        norm.update(chunk)
    # The merge (torch) and numpy's two-pass statistics are different computations of nearly the same
    # numbers: each within its float64 bound, plus the pseudo-count's exact effect.
    data_e = Enc.exact(data, U64)
    data_mean, data_var = data_e.mean(0), variance(data_e, 0)
    for normalizer, count0 in ((exact, 1e-12), (norm, 1e-4)):
        mean_e, var_e = _chan_merges(chunks, count0)
        gap_mean, gap_var = _prior_gap(data, count0)
        assert np.all(np.abs(normalizer.mean.numpy() - data.mean(0)) <= mean_e.bound + data_mean.bound + gap_mean)
        assert np.all(np.abs(normalizer.var.numpy() - data.var(0)) <= var_e.bound + data_var.bound + gap_var)
    # 1e-4 plus six float64 additions of the chunk sizes.
    assert abs(float(norm.count) - (1000 + 1e-4)) <= gamma(6, U64) * 1000
    y = norm.normalize(data).numpy()
    assert y.dtype == np.float32
    # y = (float32(x) - float32(mean)) / float32(sqrt(var + eps)), clipped at 10, then numpy's float32
    # mean and std: within their float32 bounds of the exact mean and std of those normalized values,
    # which are within the derived offsets of 0 and 1 (the prior, eps, float32 rounding of x and stats).
    x32, m32 = data.astype(np.float32), norm.mean.numpy().astype(np.float32)
    s32 = torch.sqrt(norm.var + norm.eps).float().numpy()
    assert np.abs(y).max() < norm.clip  # the clip does nothing here
    ye = (Enc.exact(x32, U32) - Enc.exact(m32, U32)) / Enc.exact(s32, U32)
    y_mean, y_std = ye.mean(0), variance(ye, 0).sqrt()
    gap_mean, gap_var = _prior_gap(data, 1e-4)
    mean_e, var_e = _chan_merges(chunks, 1e-4)
    v = data.var(0)
    off_mean = (U32 * np.abs(data).mean(0) + gap_mean + mean_e.bound + data_mean.bound + U32 * np.abs(m32)) / s32
    off_std = 1.01 * (
        (gap_var + var_e.bound + data_var.bound + norm.eps) / (2 * v) + U32 * np.sqrt((data**2).mean(0) / v) + U32
    )
    assert np.all(np.abs(y.mean(0)) <= y_mean.bound + off_mean)
    assert np.all(np.abs(y.std(0) - 1) <= y_std.bound + off_std)


def test_normalizer_clips_and_round_trips():
    norm = RunningNormalizer(2, clip=5.0)
    norm.update(np.array([[0.0, 0.0], [2.0, 2.0]]))
    out = norm(torch.tensor([[1e6, -1e6]]))
    assert out.tolist() == [[5.0, -5.0]]
    again = RunningNormalizer.from_dict(norm.to_dict())
    x = torch.randn(4, 2)
    assert torch.equal(again(x), norm(x)) and again.clip == 5.0 and again.eps == norm.eps
    # The exporter bakes it into TorchScript: forward must script.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.script
        scripted = torch.jit.script(norm)
    assert torch.equal(scripted(x), norm(x))
    with pytest.raises(ValueError):
        RunningNormalizer(2, clip=0)
