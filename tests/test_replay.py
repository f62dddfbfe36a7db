"""pydpg.ReplayBuffer: storage, samplers, n-step returns, persistence, threads, and bad input."""

import os
import threading

import numpy as np
import pytest
import torch
from float_bounds import U32, U64
from float_bounds import gamma as gamma_k
from scipy import stats

import pydpg
from pydpg import ReplayBuffer
from pydpg.core.replay import FormatError


def transition(i, obs_dim=3, act_dim=2):
    """A transition whose every field encodes its insertion number i, so a sample can be traced."""
    obs = np.full(obs_dim, i, np.float32)
    action = np.full(act_dim, i + 0.5, np.float32)
    return obs, action, float(i), obs + 1000, False, False


def fill(buf, n, start=0):
    for i in range(start, start + n):
        buf.add(*transition(i, buf.obs_shape[0], buf.action_shape[0]))


# ---------------------------------------------------------------- storage and uniform sampling


def test_repr_len_capacity_clear():
    buf = ReplayBuffer(10, 3, 2, seed=0)
    assert len(buf) == 0 and buf.capacity == 10
    fill(buf, 4)
    r = repr(buf)
    assert "size=4" in r and "capacity=10" in r and "bytes=" in r
    assert buf.nbytes >= 10 * (3 + 2 + 1 + 3 + 2) * 4
    buf.clear()
    assert len(buf) == 0
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)


def test_sample_fields_and_layout():
    buf = ReplayBuffer(100, 3, 2, gamma=0.9, seed=0)
    fill(buf, 50)
    b = buf.sample(64)
    assert isinstance(b, pydpg.Batch)
    assert b.obs.shape == (64, 3) and b.action.shape == (64, 2) and b.next_obs.shape == (64, 3)
    assert b.reward.shape == b.done.shape == b.discount.shape == (64, 1)
    assert all(t.dtype == torch.float32 for t in b[:6])
    i = b.reward[:, 0]
    # Stored numbers come back unchanged (small integers and halves, exact in float32): bit for bit.
    assert torch.equal(b.obs, i[:, None].expand(64, 3))
    assert torch.equal(b.action, i[:, None].expand(64, 2) + 0.5)
    assert torch.equal(b.next_obs, b.obs + 1000)
    assert torch.all(b.done == 0) and torch.equal(b.discount, torch.full((64, 1), 0.9))  # float32(0.9)
    assert b.weights is None and b.indices is None


def test_get_reads_stored_transitions_by_id_oldest_first():
    buf = ReplayBuffer(10, 3, 2, gamma=0.9, seed=0)
    assert buf.get().obs.shape == (0, 3)  # empty: an empty batch, not an error
    fill(buf, 25)  # wrapped around: ids 15..24 are left
    every = buf.get()
    assert torch.equal(every.reward[:, 0], torch.arange(15, 25, dtype=torch.float32))
    assert torch.equal(every.next_obs, every.obs + 1000)
    some = buf.get(np.array([24, 15, 20]))
    assert torch.equal(some.reward[:, 0], torch.tensor([24.0, 15.0, 20.0]))
    assert torch.equal(buf.get(torch.tensor([16])).action, torch.full((1, 2), 16.5))
    assert buf.get([]).obs.shape == (0, 3)
    before = buf.sample(4)
    buf.get()  # draws nothing: the sampler's stream is where it was
    fill(buf, 0)
    again = ReplayBuffer(10, 3, 2, gamma=0.9, seed=0)
    fill(again, 25)
    again.sample(4)
    assert torch.equal(buf.sample(4).reward, again.sample(4).reward) and before.reward.shape == (4, 1)


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.array([14]), "stale"),
        (np.array([25]), "never stored"),
        (np.array([-1]), "never stored"),
        (np.array([[15]]), "shape"),
        (np.array([15.5]), "indices"),
        ("15", "indices"),
    ],
)
def test_get_rejects_ids_it_does_not_hold(ids, message):
    buf = ReplayBuffer(10, 3, 2, seed=0)
    fill(buf, 25)
    with pytest.raises((ValueError, TypeError), match=message):
        buf.get(ids)


def test_multidimensional_shapes():
    buf = ReplayBuffer(10, (2, 3), (2, 2), seed=0)
    obs = np.arange(6, dtype=np.float32).reshape(2, 3)
    buf.add(obs, np.ones((2, 2)), 1.0, obs * 2, False, False)
    b = buf.sample(4)
    assert b.obs.shape == (4, 2, 3) and b.action.shape == (4, 2, 2)
    assert torch.equal(b.next_obs[0], torch.from_numpy(obs * 2))


def test_ring_wraps_around_and_keeps_the_newest():
    buf = ReplayBuffer(5, 3, 2, seed=1)
    fill(buf, 12)
    assert len(buf) == 5 and buf.total_added == 12
    seen = set(buf.sample(2000).reward[:, 0].int().tolist())
    assert seen == {7, 8, 9, 10, 11}


def test_uniform_sampling_is_uniform():
    n, draws = 50, 100_000
    buf = ReplayBuffer(n, 3, 2, seed=123)
    fill(buf, n)
    counts = np.bincount(buf.sample(draws).reward[:, 0].int().numpy(), minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_same_seed_same_batches_and_different_seed_differs():
    a, b, c = (ReplayBuffer(100, 3, 2, seed=s) for s in (7, 7, 8))
    for buf in (a, b, c):
        fill(buf, 100)
    for _ in range(3):
        x, y, z = a.sample(32), b.sample(32), c.sample(32)
        assert torch.equal(x.obs, y.obs)
    assert not torch.equal(x.obs, z.obs)


def test_extend_stores_rows_in_order_from_numpy_and_torch():
    buf = ReplayBuffer(10, 3, 2, seed=0)
    obs = np.arange(12, dtype=np.float64).reshape(4, 3)  # float64: converted once
    buf.extend(
        obs,
        torch.ones(4, 2, dtype=torch.int32),
        torch.arange(4),
        obs + 1,
        np.array([0, 0, 1, 0], bool),
        torch.zeros(4, dtype=torch.bool),
    )
    assert len(buf) == 4
    b = buf.sample(200)
    rows = {int(r): (o.tolist(), d) for r, o, d in zip(b.reward[:, 0], b.obs, b.done[:, 0])}
    assert rows[2] == ([6.0, 7.0, 8.0], 1.0) and rows[0] == ([0.0, 1.0, 2.0], 0.0)


def test_non_contiguous_and_fortran_input_is_copied_correctly():
    buf = ReplayBuffer(10, 3, 2, seed=0)
    big = np.arange(24, dtype=np.float32).reshape(4, 6)
    obs = big[:, ::2]  # strided view
    assert not obs.flags.c_contiguous
    act = np.asfortranarray(np.arange(8, dtype=np.float32).reshape(4, 2))
    buf.extend(obs, act, np.arange(4, dtype=np.float32), obs, np.zeros(4, bool), np.zeros(4, bool))
    b = buf.sample(100)
    for r, o, a in zip(b.reward[:, 0].int().tolist(), b.obs, b.action):
        assert o.tolist() == obs[r].tolist() and a.tolist() == act[r].tolist()
    tensor_view = torch.arange(30.0).reshape(5, 6)[1, ::2]  # non-contiguous torch view
    buf.add(tensor_view, [1, 2], 9.0, tensor_view, False, False)
    assert len(buf) == 5


def test_truncation_keeps_done_zero_and_termination_sets_it():
    buf = ReplayBuffer(10, 1, 1, seed=0)
    buf.add([0.0], [0.0], 0.0, [1.0], False, True)  # time limit: still bootstraps
    buf.add([1.0], [0.0], 1.0, [2.0], True, False)  # terminal
    b = buf.sample(100)
    done_by_reward = {int(r): float(d) for r, d in zip(b.reward[:, 0], b.done[:, 0])}
    assert done_by_reward == {0: 0.0, 1: 1.0}


def test_sample_to_device_moves_the_whole_block():
    buf = ReplayBuffer(10, 3, 2, prioritized=True, seed=0)
    fill(buf, 5)
    b = buf.sample(8, device="cpu")
    assert b.obs.device.type == "cpu" and b.weights.shape == (8, 1)


# ---------------------------------------------------------------- prioritized replay


def test_per_frequencies_follow_priority_to_the_alpha():
    n, alpha = 8, 0.7
    buf = ReplayBuffer(n, 3, 2, prioritized=True, alpha=alpha, seed=5)
    fill(buf, n)
    priorities = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 0.2, 5.0, 0.05])
    b = buf.sample(n)
    buf.update_priorities(torch.arange(n), priorities)  # ids are insertion numbers 0..n-1
    draws = 80_000
    b = buf.sample(draws, beta=0.5)
    ids = b.indices.numpy()
    counts = np.bincount(ids, minlength=n)
    expected = priorities**alpha / np.sum(priorities**alpha)
    assert stats.chisquare(counts, expected * draws).pvalue > 1e-3
    # Importance weights: (N P(i))^-beta normalised by the largest weight in the buffer.
    p = expected[ids]
    w = (n * p) ** -0.5 / ((n * expected.min()) ** -0.5)
    # The buffer computes (p_i^alpha / min p^alpha)^-beta in C++ double (pow within 1 ulp) and rounds it
    # to float32; this numpy formula takes other float64 steps (pow, a sum, divisions: within 32 ulps,
    # relative 64 u64, together). Relative bound: one float32 rounding plus those.
    np.testing.assert_allclose(b.weights[:, 0].numpy(), w, rtol=U32 + 96 * U64, atol=0)
    # The largest weight is pow(p / min p, -beta) with p / min p >= 1 (a correctly rounded quotient
    # of p >= min p): at most 1, and float32 keeps 1 as 1.
    assert b.weights.max() <= 1.0
    # The returned rows are the transitions the ids name.
    np.testing.assert_array_equal(b.reward[:, 0].numpy(), ids.astype(np.float32))


def test_per_new_items_get_the_max_priority_seen():
    buf = ReplayBuffer(4, 3, 2, prioritized=True, alpha=1.0, seed=0)
    fill(buf, 2)
    buf.update_priorities([0, 1], [0.5, 4.0])
    fill(buf, 1, start=2)  # enters with priority 4.0
    counts = np.bincount(buf.sample(60_000).indices.numpy(), minlength=3)
    # A statistical check of a seeded draw (60k samples: std of a share <= 0.002, so 0.01 is 5 sigma).
    np.testing.assert_allclose(counts / counts.sum(), [0.5 / 8.5, 4 / 8.5, 4 / 8.5], atol=0.01)


def test_per_never_returns_out_of_range_or_zero_priority_items():
    # TorchRL #2230: float32 sum trees drifted and returned index >= size or zero-priority items.
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(1000, 3, 2, prioritized=True, alpha=0.6, seed=1)
    fill(buf, 37)  # a size that is not a power of two; the rest of the tree is empty
    for _ in range(300):
        b = buf.sample(256, beta=0.4)
        ids = b.indices.numpy()
        assert ids.min() >= 0 and ids.max() < 37
        pr = np.where(rng.random(256) < 0.3, 0.0, rng.exponential(1e3, 256) * rng.random(256) ** 20)
        buf.update_priorities(b.indices, pr)
    # Extreme dynamic range: one huge priority, the rest tiny.
    pr = np.full(37, 1e-12)
    pr[3] = 1e12
    buf.update_priorities(np.arange(37), pr)
    ids = buf.sample(4096).indices.numpy()
    assert ids.max() < 37 and np.all(np.isin(ids, np.arange(37)))


def test_per_stratified_sampling_spans_the_mass():
    buf = ReplayBuffer(64, 3, 2, prioritized=True, alpha=1.0, seed=0)
    fill(buf, 64)
    ids = buf.sample(64).indices.numpy()
    # With equal priorities each of the 64 strata holds exactly one item: every item once.
    assert sorted(ids.tolist()) == list(range(64))


def test_update_priorities_rejects_bad_ids_and_values():
    buf = ReplayBuffer(4, 3, 2, prioritized=True, seed=0)
    fill(buf, 6)  # ids 0 and 1 have been overwritten
    with pytest.raises(ValueError, match="stale"):
        buf.update_priorities([1], [1.0])
    with pytest.raises(ValueError, match="never returned"):
        buf.update_priorities([6], [1.0])
    with pytest.raises(ValueError, match="never returned"):
        buf.update_priorities([-1], [1.0])
    with pytest.raises(ValueError, match="priorities"):
        buf.update_priorities([2, 3], [1.0, float("nan")])
    with pytest.raises(ValueError, match="priorities"):
        buf.update_priorities([2], [-1.0])
    with pytest.raises(ValueError, match="priorities has shape"):
        buf.update_priorities([2, 3], [1.0])
    with pytest.raises(TypeError, match="indices"):
        buf.update_priorities(["a"], [1.0])
    with pytest.raises(ValueError, match="prioritized=True"):
        ReplayBuffer(4, 3, 2).update_priorities([0], [1.0])
    buf.update_priorities([2, 3], [0.0, 1.0])  # zero is floored, never unsampleable
    assert 2 in set(buf.sample(20_000).indices.tolist())


# ---------------------------------------------------------------- n-step returns


def nstep_reference(episodes_per_env, n, gamma):
    """Plain-Python n-step transitions: for each env's stream of (obs, reward, next_obs, term, trunc)
    the return over the next k <= n rewards of the same episode (and, last, sum_k gamma^k |r|, the
    magnitude its rounding bound scales with)."""
    out = []
    for stream in episodes_per_env:
        for t, (obs, _, _, _, _) in enumerate(stream):
            ret, mag, k = 0.0, 0.0, 0
            while True:
                _, r, nxt, term, trunc = stream[t + k]
                ret += gamma**k * r
                mag += gamma**k * abs(r)
                k += 1
                if term or trunc or k == n:
                    out.append((obs, ret, nxt, float(term), gamma**k, mag))
                    break
    return sorted(out)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_nstep_matches_reference_over_episode_ends_and_parallel_envs(n):
    gamma, n_envs, steps = 0.9, 3, 40
    rng = np.random.default_rng(n)
    buf = ReplayBuffer(10_000, 1, 1, n_step=n, gamma=gamma, seed=0)
    streams = [[] for _ in range(n_envs)]
    counter = 0
    for step in range(steps):
        obs = np.arange(counter, counter + n_envs, dtype=np.float32)[:, None]
        counter += n_envs
        reward = rng.normal(size=n_envs).astype(np.float32)
        u = rng.random(n_envs)
        term, trunc = u < 0.1, (u >= 0.1) & (u < 0.2)
        if step == steps - 1:
            trunc |= ~term  # close every episode so nothing is left pending
        nxt = obs + 0.25
        buf.extend(obs, np.zeros((n_envs, 1)), reward, nxt, term, trunc)
        for e in range(n_envs):
            streams[e].append((float(obs[e, 0]), float(reward[e]), float(nxt[e, 0]), term[e], trunc[e]))
    assert buf.pending == 0
    expected = nstep_reference(streams, n, gamma)
    assert len(buf) == len(expected)
    # Every stored row once, via PER-free exhaustive read: sample many and deduplicate by obs.
    b = buf.sample(200_000)
    got = {}
    for o, r, nx, d, g in zip(
        b.obs[:, 0].tolist(),
        b.reward[:, 0].tolist(),
        b.next_obs[:, 0].tolist(),
        b.done[:, 0].tolist(),
        b.discount[:, 0].tolist(),
    ):
        got[o] = (o, r, nx, d, g)
    assert len(got) == len(expected)
    for e, g in zip(expected, sorted(got.values())):
        assert e[0] == g[0] and e[2] == g[2] and e[3] == g[3]
        # The buffer sums gamma^k r in C++ double (gamma^k by repeated products) and stores it as
        # float32; the reference sums in Python float64 with pow: one float32 rounding of the return
        # plus float64 roundings of both sums (k <= n terms, gamma^k within n + 1 roundings).
        assert abs(g[1] - e[1]) <= U32 * abs(e[1]) * (1 + U32) + 2 * gamma_k(2 * n + 4, U64) * e[5] * (1 + U32)
        assert abs(g[4] - e[4]) <= U32 * e[4] + 2 * gamma_k(n + 2, U64) * e[4]


def test_nstep_across_ring_wrap_around():
    n, gamma = 3, 0.5
    buf = ReplayBuffer(4, 1, 1, n_step=n, gamma=gamma, seed=0)
    for t in range(10):  # one long episode, no end: rows emitted with n-step lag, ring wraps
        buf.add([float(t)], [0.0], 1.0, [t + 1.0], False, False)
    assert buf.pending == n - 1 and len(buf) == 4
    b = buf.sample(500)
    rows = set(zip(b.obs[:, 0].tolist(), b.next_obs[:, 0].tolist(), b.reward[:, 0].tolist()))
    assert rows == {(float(t), t + 3.0, 1.75) for t in range(4, 8)}
    assert torch.equal(b.discount, torch.full_like(b.discount, gamma**3))  # 0.125: exact in any float


def test_nstep_env_ids_keep_streams_apart():
    buf = ReplayBuffer(100, 1, 1, n_step=2, gamma=1.0, seed=0)
    # env 1 reports alone (env 0 is in its autoreset step and is skipped), then both.
    buf.extend([[10.0]], [[0.0]], [1.0], [[11.0]], [False], [False], env_ids=[1])
    buf.extend([[0.0], [11.0]], [[0.0], [0.0]], [5.0, 2.0], [[1.0], [12.0]], [False, True], [False, False])
    b = buf.sample(300)
    rows = set(zip(b.obs[:, 0].tolist(), b.reward[:, 0].tolist(), b.next_obs[:, 0].tolist()))
    assert rows == {(10.0, 3.0, 12.0), (11.0, 2.0, 12.0)}
    assert buf.pending == 1  # env 0's first step waits for its second reward


def test_end_episode_closes_one_env_like_a_truncation():
    """An episode that ends outside the buffer's view (an env restarted by its owner) must not have
    its open returns completed by the next episode's rewards."""
    buf = ReplayBuffer(100, 1, 1, n_step=3, gamma=0.5, seed=0)
    for t in range(2):  # env 0 and env 1, two steps each: all four still open
        buf.extend(
            [[float(t)], [100.0 + t]], [[0.0], [0.0]], [1.0, 1.0], [[t + 1.0], [101.0 + t]], [False] * 2, [False] * 2
        )
    assert len(buf) == 0 and buf.pending == 4
    buf.end_episode(0)
    assert len(buf) == 2 and buf.pending == 2  # env 1 untouched
    b = buf.sample(200)
    rows = set(
        zip(
            b.obs[:, 0].tolist(),
            b.reward[:, 0].tolist(),
            b.next_obs[:, 0].tolist(),
            b.discount[:, 0].tolist(),
            b.done[:, 0].tolist(),
        )
    )
    assert rows == {(0.0, 1.5, 2.0, 0.25, 0.0), (1.0, 1.0, 2.0, 0.5, 0.0)}
    # env 0's next transition starts a new return: nothing of the old episode reaches it.
    buf.add([50.0], [0.0], 7.0, [51.0], True, False)
    b = buf.sample(500)
    rows = set(
        zip(
            b.obs[:, 0].tolist(),
            b.reward[:, 0].tolist(),
            b.next_obs[:, 0].tolist(),
            b.discount[:, 0].tolist(),
            b.done[:, 0].tolist(),
        )
    )
    assert (50.0, 7.0, 51.0, 0.5, 1.0) in rows and len(rows) == 3
    buf.end_episode(0)  # nothing open: a no-op
    buf.end_episode(7)  # an env never seen: a no-op
    assert len(buf) == 3
    with pytest.raises(ValueError, match="env_id"):
        buf.end_episode(-1)
    with pytest.raises(TypeError):
        buf.end_episode("0")
    one = ReplayBuffer(10, 1, 1, seed=0)  # n_step 1 keeps nothing open
    one.add([0.0], [0.0], 1.0, [1.0], False, False)
    one.end_episode(0)
    assert len(one) == 1 and one.pending == 0


def test_sampling_only_pending_transitions_says_so():
    buf = ReplayBuffer(10, 1, 1, n_step=3, seed=0)
    buf.add([0.0], [0.0], 1.0, [1.0], False, False)
    with pytest.raises(ValueError, match="n-step"):
        buf.sample(1)


# ---------------------------------------------------------------- persistence


def roundtrip(tmp_path, buf):
    path = tmp_path / "buf.bin"
    buf.save(path)
    return ReplayBuffer.load(path), path


@pytest.mark.parametrize("prioritized", [False, True])
def test_save_load_restores_contents_priorities_rng_and_pending(tmp_path, prioritized):
    buf = ReplayBuffer(16, (2, 2), 2, prioritized=prioritized, n_step=3, gamma=0.8, seed=3)
    for i in range(40):
        buf.extend(
            np.full((2, 2, 2), i, np.float32),
            np.zeros((2, 2)),
            [i, -i],
            np.full((2, 2, 2), i + 1),
            [i % 7 == 0, False],
            [False, i % 5 == 0],
        )
    if prioritized:
        b = buf.sample(8)
        buf.update_priorities(b.indices, np.arange(1, 9, dtype=np.float64))
    buf.sample(5)  # advance the RNG
    loaded, _ = roundtrip(tmp_path, buf)
    assert (len(loaded), loaded.capacity, loaded.obs_shape, loaded.n_step, loaded.pending) == (
        len(buf),
        buf.capacity,
        buf.obs_shape,
        buf.n_step,
        buf.pending,
    )
    assert loaded.prioritized == prioritized and loaded.gamma == 0.8  # stored as a binary double: unchanged
    for _ in range(3):
        x, y = buf.sample(32), loaded.sample(32)
        for a, b in zip(x, y):
            assert (a is None and b is None) or torch.equal(a, b)
    # Open n-step returns continue identically after the load.
    for target in (buf, loaded):
        target.extend(
            np.zeros((2, 2, 2)), np.zeros((2, 2)), [1.0, 1.0], np.zeros((2, 2, 2)), [True, True], [False, False]
        )
    assert len(buf) == len(loaded) and buf.pending == loaded.pending == 0
    assert torch.equal(buf.sample(64).reward, loaded.sample(64).reward)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    buf = ReplayBuffer(8, 3, 2, seed=0)
    fill(buf, 8)
    path = tmp_path / "b.bin"
    buf.save(path)
    buf.save(path)  # overwrite in place
    assert os.listdir(tmp_path) == ["b.bin"]
    with pytest.raises(OSError):
        buf.save(tmp_path / "missing_dir" / "b.bin")
    assert os.listdir(tmp_path) == ["b.bin"]


def test_load_rejects_missing_foreign_truncated_corrupt_and_versioned_files(tmp_path):
    buf = ReplayBuffer(8, 3, 2, prioritized=True, seed=0)
    fill(buf, 8)
    path = tmp_path / "b.bin"
    buf.save(path)
    data = path.read_bytes()

    with pytest.raises(FileNotFoundError):
        ReplayBuffer.load(tmp_path / "nope.bin")
    bad = tmp_path / "bad.bin"
    cases = {
        b"": "truncated",
        b"hello world, not a buffer": "not a pydpg ReplayBuffer",
        data[:20]: "truncated",
        data[: len(data) // 2]: "truncated",
        data[:-1]: "truncated",
        data + b"x": "corrupt",
        data[:8] + (99).to_bytes(4, "little") + data[12:]: "format version 99",
    }
    for i in (40, len(data) // 2, len(data) - 20):  # one flipped byte in header, rows, priorities
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        cases[bytes(flipped)] = "corrupt|truncated"
    for blob, message in cases.items():
        bad.write_bytes(blob)
        with pytest.raises(FormatError, match=message):
            ReplayBuffer.load(bad)
    assert issubclass(FormatError, ValueError)
    with pytest.raises(OSError):
        ReplayBuffer.load(tmp_path)  # a directory


def test_loaded_buffer_of_other_shape_is_reported_by_its_shapes(tmp_path):
    small = ReplayBuffer(4, 5, 1, seed=0)
    fill(small, 2)
    loaded, _ = roundtrip(tmp_path, small)
    assert loaded.obs_shape == (5,) and loaded.action_shape == (1,)
    with pytest.raises(ValueError, match=r"obs has shape \(3,\), expected \(5,\)"):
        loaded.add(*transition(0))


# ---------------------------------------------------------------- threads


def test_concurrent_writers_and_sampler_never_see_torn_transitions():
    buf = ReplayBuffer(2048, 16, 4, seed=0)
    stop = threading.Event()
    errors = []

    def writer(wid):
        rng = np.random.default_rng(wid)
        while not stop.is_set():
            k = int(rng.integers(1, 64))
            v = rng.integers(0, 1_000_000, size=k).astype(np.float32)
            obs = np.repeat(v[:, None], 16, 1)
            buf.extend(obs, np.repeat(v[:, None], 4, 1), v, obs + 1, np.zeros(k, bool), np.zeros(k, bool))
            buf.add(obs[0], obs[0, :4], float(v[0]), obs[0] + 1, False, False)

    def sampler():
        try:
            for _ in range(400):
                if len(buf) == 0:
                    continue
                b = buf.sample(128)
                v = b.reward
                assert torch.equal(b.obs, v.expand(-1, 16)), "torn obs"
                assert torch.equal(b.action, v.expand(-1, 4)), "torn action"
                assert torch.equal(b.next_obs, v.expand(-1, 16) + 1), "torn next_obs"
        except AssertionError as e:
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)] + [threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(buf) == 2048


def test_concurrent_per_sample_and_update():
    buf = ReplayBuffer(512, 2, 1, prioritized=True, seed=0)
    fill_rows = np.zeros((512, 2), np.float32)
    buf.extend(fill_rows, np.zeros((512, 1)), np.zeros(512), fill_rows, np.zeros(512, bool), np.zeros(512, bool))
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                b = buf.sample(64, beta=0.6)
                assert b.indices.max() < 512
                buf.update_priorities(b.indices, rng.random(64))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(capacity=0), ValueError, "capacity"),
        (dict(capacity=-5), ValueError, "capacity"),
        (dict(capacity=2.5), TypeError, "capacity"),
        (dict(capacity=True), TypeError, "capacity"),
        (dict(obs_shape=0), ValueError, "obs_shape"),
        (dict(obs_shape=()), TypeError, "obs_shape"),
        (dict(obs_shape="17"), TypeError, "obs_shape"),
        (dict(action_shape=(2, -1)), ValueError, "action_shape"),
        (dict(alpha=-0.1), ValueError, "alpha"),
        (dict(alpha=float("nan")), ValueError, "alpha"),
        (dict(gamma=1.5), ValueError, "gamma"),
        (dict(gamma="x"), TypeError, "gamma"),
        (dict(n_step=0), ValueError, "n_step"),
        (dict(n_step=1.0), TypeError, "n_step"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, message):
    args = dict(capacity=10, obs_shape=3, action_shape=2) | kwargs
    with pytest.raises(error, match=message):
        ReplayBuffer(**args)


def test_impossible_capacity_names_the_bytes():
    with pytest.raises(MemoryError, match="bytes"):
        ReplayBuffer(10**15, 1000, 10)
    with pytest.raises(MemoryError):
        ReplayBuffer(2**62, 100, 10)


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("obs", np.zeros(4), ValueError, r"obs has shape \(4,\), expected \(3,\)"),
        ("obs", np.zeros((1, 3)), ValueError, r"obs has shape \(1, 3\), expected \(3,\)"),
        ("action", np.zeros(3), ValueError, r"action has shape \(3,\), expected \(2,\)"),
        ("next_obs", np.zeros(2), ValueError, "next_obs has shape"),
        ("obs", np.array([0, 1, np.nan]), ValueError, "obs contains NaN"),
        ("action", np.array([np.inf, 0]), ValueError, "action contains NaN or Inf"),
        ("next_obs", np.array([0, -np.inf, 0]), ValueError, "next_obs contains NaN"),
        ("reward", float("nan"), ValueError, "reward contains NaN"),
        ("reward", np.zeros(2), ValueError, "reward has shape"),
        ("reward", "1.0", TypeError, "reward must hold real numbers"),
        ("obs", np.zeros(3, complex), TypeError, "obs must hold real numbers, got dtype complex"),
        ("obs", np.array(["a", "b", "c"]), TypeError, "obs must hold real numbers"),
        ("obs", None, TypeError, "obs must be an array"),
        ("obs", object(), TypeError, "obs must hold real numbers"),
        ("terminated", 0.5, ValueError, "terminated must be boolean"),
        ("truncated", "yes", TypeError, "truncated"),
        ("obs", torch.zeros(3, requires_grad=True), TypeError, "obs must be a NumPy array"),
    ],
)
def test_add_rejects_bad_input_by_name(field, value, error, message):
    buf = ReplayBuffer(10, 3, 2, seed=0)
    args = dict(
        obs=np.zeros(3), action=np.zeros(2), reward=0.0, next_obs=np.zeros(3), terminated=False, truncated=False
    )
    args[field] = value
    with pytest.raises(error, match=message):
        buf.add(**args)
    assert len(buf) == 0


def test_add_accepts_scalars_of_every_kind():
    buf = ReplayBuffer(10, 3, 2, seed=0)
    for reward, term in [
        (1, 0),
        (np.float32(2.0), np.bool_(False)),
        (np.array(3.0), np.array(1)),
        (torch.tensor(4.0), torch.tensor(False)),
        ([5.0], 1.0),
    ]:
        buf.add(np.zeros(3), np.zeros(2), reward, np.zeros(3), term, False)
    assert len(buf) == 5
    assert set(buf.sample(300).reward[:, 0].tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_extend_rejects_mismatched_batches_and_stores_nothing():
    buf = ReplayBuffer(10, 3, 2, seed=0)
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    f = np.zeros(4, bool)
    bad_calls = [
        ((z(4, 3), z(3, 2), z(4), z(4, 3), f, f), ValueError, r"action has shape \(3, 2\), expected \(4, 2\)"),
        ((z(4, 3), z(4, 2), z(5), z(4, 3), f, f), ValueError, "reward has shape"),
        ((z(4, 3), z(4, 2), z(4), z(4, 3), np.zeros(3, bool), f), ValueError, "terminated has shape"),
        ((z(3), z(4, 2), z(4), z(4, 3), f, f), ValueError, r"obs has shape \(3,\), expected \(N, 3"),
        ((z(4, 3), z(4, 2), np.array([0, 0, 0, np.nan]), z(4, 3), f, f), ValueError, "reward contains NaN"),
    ]
    for args, error, message in bad_calls:
        with pytest.raises(error, match=message):
            buf.extend(*args)
    with pytest.raises(ValueError, match="env_ids has shape"):
        buf.extend(z(4, 3), z(4, 2), z(4), z(4, 3), f, f, env_ids=[0, 1])
    with pytest.raises(ValueError, match="env_ids"):
        buf.extend(z(4, 3), z(4, 2), z(4), z(4, 3), f, f, env_ids=[0, 1, 2, -3])
    assert len(buf) == 0
    buf.extend(z(0, 3), z(0, 2), z(0), z(0, 3), np.zeros(0, bool), np.zeros(0, bool))  # empty is fine
    assert len(buf) == 0


@pytest.mark.parametrize(
    "batch_size, error, message",
    [
        (0, ValueError, "batch_size"),
        (-3, ValueError, "batch_size"),
        (2.0, TypeError, "batch_size"),
        (True, TypeError, "batch_size"),
        ("8", TypeError, "batch_size"),
        (2**70, ValueError, "batch_size"),
    ],
)
def test_sample_rejects_bad_batch_size(batch_size, error, message):
    buf = ReplayBuffer(10, 3, 2, seed=0)
    fill(buf, 3)
    with pytest.raises(error, match=message):
        buf.sample(batch_size)


def test_sample_rejects_bad_beta_and_huge_batches():
    buf = ReplayBuffer(10, 3, 2, prioritized=True, seed=0)
    fill(buf, 3)
    with pytest.raises(ValueError, match="beta"):
        buf.sample(4, beta=-1.0)
    with pytest.raises(ValueError, match="beta"):
        buf.sample(4, beta=float("inf"))
    with pytest.raises(MemoryError):
        buf.sample(2**55)
    assert buf.sample(np.int64(3)).obs.shape == (3, 3)  # NumPy integers are integers
