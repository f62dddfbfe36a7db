"""Numerical checks of docs/theory.md on a linear-quadratic problem with closed forms (tests/lq.py).

Section numbers refer to docs/theory.md. The last three tests run pydpg's own DDPG code paths
(``DDPG.actor_loss`` and ``DDPG.critic_target``) with a linear actor and the exact critic Q^mu,
which pins the equations to the code users run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lq  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prob():
    return lq.example_problem()


@pytest.fixture(scope="module")
def K():
    return lq.example_gain()


def rel(x, y) -> float:
    return float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / np.linalg.norm(np.asarray(y)))


# --------------------------------------------------------------------------------------------
# The closed forms themselves (sanity: they describe the MDP that is simulated)
# --------------------------------------------------------------------------------------------


def test_closed_forms_match_simulation(prob, K):
    assert lq.is_stable(prob, K)
    rng = np.random.default_rng(0)
    n = 4000
    for sigma in (0.0, 0.3):
        ret = np.zeros(n)
        for t, _s, _a, _e, r in lq.rollouts(prob, K, sigma, n, rng):
            ret += prob.gamma**t * r
        se = ret.std() / np.sqrt(n)
        assert abs(ret.mean() - lq.performance(prob, K, sigma)) < 4 * se
    # Sigma_rho: the normalised discounted state distribution has second moment (1-gamma) Sigma_rho.
    s = lq.sample_rho(prob, K, 50_000, rng)
    assert rel(s.T @ s / len(s), (1 - prob.gamma) * lq.state_moment(prob, K)) < 0.03


def test_q_function_satisfies_bellman_equation(prob, K):
    """Q^mu(s,a) = r(s,a) + gamma Q^mu(s', mu(s')) for arbitrary (s, a), to float64 precision."""
    rng = np.random.default_rng(1)
    s = rng.standard_normal((64, prob.n))
    a = rng.standard_normal((64, prob.m))
    s2 = s @ prob.A.T + a @ prob.B.T
    r = -(np.einsum("ni,ij,nj->n", s, prob.Q, s) + np.einsum("ni,ij,nj->n", a, prob.R, a))
    q = lq.q_value(prob, K, s, a)
    assert rel(r + prob.gamma * lq.q_value(prob, K, s2, s2 @ K.T), q) < 1e-12
    # and V(s) = Q(s, mu(s)) = -s^T P s
    v = -np.einsum("ni,ij,nj->n", s, lq.value_matrix(prob, K), s)
    assert rel(lq.q_value(prob, K, s, s @ K.T), v) < 1e-12


# --------------------------------------------------------------------------------------------
# Section 3: the deterministic policy gradient theorem
# --------------------------------------------------------------------------------------------


def test_dpg_equals_finite_difference_gradient(prob, K):
    """grad_K J = sum_t gamma^t E[grad_a Q(s_t, K s_t) s_t^T] = -2 E_K Sigma_rho  vs central FD of J(K)."""
    G = lq.dpg(prob, K)
    F = lq.fd_gradient(lambda k: lq.performance(prob, k), K, h=1e-5)
    assert rel(G, F) <= 1e-6
    # The same expectation, written out over states: E_{rho}[grad_a Q(s, Ks) s^T] with the *closed
    # form* second moment, i.e. grad_a Q from tests/lq.py rather than the gain E_K.
    L = np.linalg.cholesky(lq.state_moment(prob, K))
    # rows of L^T span Sigma_rho exactly: sum_i l_i l_i^T = Sigma_rho
    S = L.T
    G2 = sum(np.outer(g, s) for g, s in zip(lq.grad_a_q(prob, K, S, S @ K.T), S))
    assert rel(G2, F) <= 1e-6


def test_dpg_at_the_optimum_vanishes(prob, K):
    """Sanity: policy iteration on the closed form converges to a K* where the DPG is ~0."""
    Kc = K.copy()
    for _ in range(100):
        P = lq.value_matrix(prob, Kc)
        Kc = -np.linalg.solve(prob.R + prob.gamma * prob.B.T @ P @ prob.B, prob.gamma * prob.B.T @ P @ prob.A)
    assert np.linalg.norm(lq.dpg(prob, Kc)) < 1e-9 * np.linalg.norm(lq.dpg(prob, K))
    assert lq.performance(prob, Kc) > lq.performance(prob, K)


# --------------------------------------------------------------------------------------------
# Section 4: DPG as the sigma -> 0 limit of the stochastic policy gradient
# --------------------------------------------------------------------------------------------

SIGMAS = np.array([1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001])


def test_stochastic_gradient_closed_form_matches_fd(prob, K):
    for sigma in (1.0, 0.3, 0.01):
        F = lq.fd_gradient(lambda k: lq.performance(prob, k, sigma), K, h=1e-5)
        assert rel(lq.spg(prob, K, sigma), F) <= 1e-6


def test_stochastic_gradient_bias_shrinks_like_sigma_squared(prob, K):
    G = lq.dpg(prob, K)
    bias = np.array([np.linalg.norm(lq.spg(prob, K, s) - G) for s in SIGMAS])
    slope = np.polyfit(np.log(SIGMAS), np.log(bias), 1)[0]
    assert abs(slope - 2.0) < 1e-6
    assert bias[-1] / np.linalg.norm(G) < 1e-5  # converges to the DPG (3e-6 at sigma = 1e-3)
    # exact form of the bias: sigma^2 * C
    C = lq.spg_bias_coefficient(prob, K)
    for s in SIGMAS:
        assert rel(lq.spg(prob, K, s) - G, s**2 * C) < 1e-8


def test_likelihood_ratio_estimate_unbiased_and_variance_grows(prob, K):
    """REINFORCE (returns-to-go, no baseline) is unbiased for grad J_sigma, but Var ~ 1/sigma^2.

    Common random numbers (same seed per sigma) make the variance ratio a tight estimate.
    """
    n = 4000
    G = lq.dpg(prob, K)
    var = {}
    for sigma in (0.3, 0.1, 0.01):
        g = lq.reinforce_samples(prob, K, sigma, n, np.random.default_rng(7))
        mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(n)
        assert np.all(np.abs(mean - lq.spg(prob, K, sigma)) < 4.5 * se)
        var[sigma] = g.reshape(n, -1).var(0, ddof=1).sum()
    slope = np.log(var[0.01] / var[0.1]) / np.log(0.01 / 0.1)
    assert -2.2 < slope < -1.8
    # The DPG estimate from the same number of rollouts (true critic) has sigma-free, far smaller variance.
    d = lq.dpg_samples(prob, K, n, np.random.default_rng(7))
    assert np.all(np.abs(d.mean(0) - G) < 4.5 * d.std(0, ddof=1) / np.sqrt(n))
    assert d.reshape(n, -1).var(0, ddof=1).sum() < var[0.3] / 10


# --------------------------------------------------------------------------------------------
# Sections 2-3 pinned to pydpg: a linear actor and the exact critic plugged into pydpg.agent.DDPG
# --------------------------------------------------------------------------------------------


class LinearActor(nn.Module):
    """mu_K(s) = K s with K as the only parameter."""

    def __init__(self, K: np.ndarray, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(K, dtype=dtype).clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs @ self.weight.T


class ExactLQCritic(nn.Module):
    """Q^{mu_K}(s, a) = -(s^T Q s + a^T R a) - gamma (As+Ba)^T P (As+Ba), initialised at P = P_K.

    P is the critic's parameter (the natural LQ critic class; it also gives DDPG's critic optimizer
    something to hold). The model (A, B, Q, R) is fixed.
    """

    def __init__(self, p: lq.LQProblem, K: np.ndarray, dtype: torch.dtype):
        super().__init__()
        for name, val in dict(A=p.A, B=p.B, Q=p.Q, R=p.R).items():
            self.register_buffer(name, torch.as_tensor(val, dtype=dtype).clone())
        self.P = nn.Parameter(torch.as_tensor(lq.value_matrix(p, K), dtype=dtype).clone())
        self.gamma = p.gamma

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        s2 = obs @ self.A.T + action @ self.B.T
        r = -((obs @ self.Q) * obs).sum(-1) - ((action @ self.R) * action).sum(-1)
        return (r - self.gamma * ((s2 @ self.P) * s2).sum(-1)).unsqueeze(-1)


def make_agent(p: lq.LQProblem, K: np.ndarray, dtype: torch.dtype):
    from pydpg.agent import DDPG
    from pydpg.config import DDPGConfig

    actor, critic = LinearActor(K, dtype), ExactLQCritic(p, K, dtype)
    return DDPG.from_dims(p.n, p.m, DDPGConfig(), actor=actor, critic=critic, device="cpu"), actor


def test_pydpg_actor_loss_gradient_is_the_dpg(prob, K):
    """grad of DDPG.actor_loss = -(1/N) sum grad_a Q(s, mu(s)) grad_K mu(s)  ~  -(1-gamma) grad J."""
    agent, actor = make_agent(prob, K, torch.float64)
    s = lq.sample_rho(prob, K, 50_000, np.random.default_rng(3))
    agent.actor_loss(torch.as_tensor(s)).backward()
    g = -actor.weight.grad.detach().numpy()
    G = lq.dpg(prob, K)
    cosine = float((g * G).sum() / (np.linalg.norm(g) * np.linalg.norm(G)))
    assert cosine >= 0.999
    # the mean over the *normalised* distribution differs from grad J by the mass 1/(1-gamma)
    assert rel(g / (1 - prob.gamma), G) < 0.05


def _transitions(p: lq.LQProblem, K: np.ndarray, n: int, rng: np.random.Generator):
    s = lq.sample_rho(p, K, n, rng)
    a = s @ K.T + rng.standard_normal((n, p.m))  # any action: Q^mu is defined for all (s, a)
    s2 = s @ p.A.T + a @ p.B.T
    r = -(np.einsum("ni,ij,nj->n", s, p.Q, s) + np.einsum("ni,ij,nj->n", a, p.R, a))
    return s, a, r, s2


def _batch(dtype, obs, action, reward, next_obs, done, discount):
    from pydpg.batch import Batch

    t = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    return Batch(t(obs), t(action), t(reward).reshape(-1, 1), t(next_obs), t(done).reshape(-1, 1),
                 t(discount).reshape(-1, 1))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_pydpg_critic_target_satisfies_bellman(prob, K, dtype, tol):
    """y = r + gamma (1-done) Q'(s', mu'(s')) equals Q^mu(s, a) on sampled transitions."""
    agent, _ = make_agent(prob, K, dtype)
    n = 4096
    s, a, r, s2 = _transitions(prob, K, n, np.random.default_rng(4))
    batch = _batch(dtype, s, a, r, s2, np.zeros(n), np.full(n, prob.gamma))
    with torch.no_grad():
        y = agent.critic_target(batch)
    assert tuple(y.shape) == (n, 1)
    # the truth at the (possibly rounded) inputs the agent actually saw
    s_in, a_in = (x.double().numpy() for x in (batch.obs, batch.action))
    q = lq.q_value(prob, K, s_in, a_in)
    assert rel(y.double().numpy()[:, 0], q) <= tol


def test_pydpg_critic_target_terminal_and_n_step(prob, K):
    """done masks the bootstrap; discount = gamma^2 with a 2-step reward keeps the Bellman identity."""
    agent, _ = make_agent(prob, K, torch.float64)
    n = 512
    s, a, r0, s1 = _transitions(prob, K, n, np.random.default_rng(5))
    a1 = s1 @ K.T
    r1 = -(np.einsum("ni,ij,nj->n", s1, prob.Q, s1) + np.einsum("ni,ij,nj->n", a1, prob.R, a1))
    s2 = s1 @ prob.A.T + a1 @ prob.B.T
    two_step = _batch(torch.float64, s, a, r0 + prob.gamma * r1, s2, np.zeros(n), np.full(n, prob.gamma**2))
    terminal = _batch(torch.float64, s, a, r0, s1, np.ones(n), np.full(n, prob.gamma))
    with torch.no_grad():
        y2 = agent.critic_target(two_step).numpy()[:, 0]
        yt = agent.critic_target(terminal).numpy()[:, 0]
    assert rel(y2, lq.q_value(prob, K, s, a)) <= 1e-9
    np.testing.assert_allclose(yt, r0, rtol=0, atol=1e-12)


def test_pydpg_soft_update_is_polyak_average(prob, K):
    """theta' <- tau theta + (1-tau) theta' applied k times: theta'_k = theta + (1-tau)^k (theta'_0 - theta)."""
    from pydpg.agent import DDPG
    from pydpg.config import DDPGConfig

    tau, k = 0.1, 7
    actor, critic = LinearActor(K, torch.float64), ExactLQCritic(prob, K, torch.float64)
    agent = DDPG.from_dims(prob.n, prob.m, DDPGConfig(tau=tau), actor=actor, critic=critic, device="cpu")
    K_new = K + 0.5
    P0 = critic.P.detach().clone()
    with torch.no_grad():
        actor.weight.copy_(torch.as_tensor(K_new))
        critic.P.mul_(2.0)
    for _ in range(k):
        agent.soft_update()
    decay = (1 - tau) ** k
    np.testing.assert_allclose(agent.actor_target.weight.numpy(), K_new + decay * (K - K_new), rtol=1e-12)
    np.testing.assert_allclose(agent.critic_targets[0].P.numpy(), (2.0 + decay * (1.0 - 2.0)) * P0.numpy(),
                               rtol=1e-12)
