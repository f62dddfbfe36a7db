"""Numerical checks of docs/theory.md on a linear-quadratic problem with closed forms (tests/lq.py).

Section numbers refer to docs/theory.md. The last three tests run pydpg's own DDPG code paths
(``DDPGAgent.actor_loss`` and ``DDPGAgent.critic_target``) with a linear actor and the exact critic Q^mu,
which pins the equations to the code users run.

Tolerances. An identity of the closed forms (Bellman, the sigma^2 law of the bias, Polyak's closed
form, pydpg's target against Q^mu) is checked against a bound derived from the computation
(tests/float_bounds.py): every product and sum within its float64 (or float32) rounding bound, and
each Lyapunov solution within ||L^-1|| ||residual|| of the exact one (``lyap_error``), the residual
evaluated here with its own rounding bound. Statistical checks (a seeded Monte Carlo mean within 4
or 4.5 standard errors) and finite differences (central, h = 1e-5: truncation ~h^2, a property of
the exact function, plus rounding ~1e-10 relative) keep fixed thresholds far above any rounding.
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
from float_bounds import U32, U64, Enc, agree, gamma  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prob():
    return lq.example_problem()


@pytest.fixture(scope="module")
def K():
    return lq.example_gain()


def rel(x, y) -> float:
    return float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / np.linalg.norm(np.asarray(y)))


def E(x, u=U64) -> Enc:
    return Enc.exact(np.asarray(x, dtype=np.float64), u)


def lyap_error(M: Enc, W: Enc, X: np.ndarray, gamma_: float) -> float:
    """A bound on ||X - X*||_F for a computed solution X of X* = W + gamma M X* M^T (lq._lyap), with M
    and W the exact matrices (Encs of them): the residual R = X - W - gamma M X M^T, evaluated here
    within its float64 bound, through ||L^-1||_2 = 1 / sigma_min(L), L = I - gamma M (x) M. The smallest
    singular value of the L computed here is within 4 n^2 u ||L||_2 of its own exact one (backward
    stable SVD), and that L within gamma (2 ||M|| + ||dM||) ||dM|| of the exact L."""
    Xe = E(X)
    R = Xe - W - (M @ Xe @ M.T) * gamma_
    r = float(np.linalg.norm(np.abs(R.centre) + R.bound))
    L = np.eye(M.centre.size) - gamma_ * np.kron(M.centre, M.centre)
    sv = np.linalg.svd(L, compute_uv=False)
    dm = float(np.linalg.norm(M.bound))
    smin = sv[-1] - 4 * L.shape[0] ** 2 * U64 * sv[0] - gamma_ * (2 * np.linalg.norm(M.centre) + dm) * dm
    assert smin > 0
    return r / smin


def closed_loop_enc(p: lq.LQProblem, K: np.ndarray) -> Enc:
    return E(p.A) + E(p.B) @ E(K)


def value_matrix_atom(p: lq.LQProblem, K: np.ndarray) -> Enc:
    """P_K as computed by lq.value_matrix, an atom within lyap_error of the exact P_K."""
    P = lq.value_matrix(p, K)
    W = E(p.Q) + E(K).T @ E(p.R) @ E(K)
    return Enc.atom(P, lyap_error(closed_loop_enc(p, K).T, W, P, p.gamma), U64)


def state_moment_atom(p: lq.LQProblem, K: np.ndarray, sigma: float, bb_only: bool = False) -> Enc:
    """lq.state_moment(p, K, sigma) (or, with bb_only, the solution for the right-hand side B B^T that
    lq.spg_bias_coefficient solves), within lyap_error of the exact solution."""
    M = lq.closed_loop(p, K)
    bb = E(p.B) @ E(p.B.T)
    if bb_only:
        X, W = lq._lyap(M, p.B @ p.B.T, p.gamma), bb
    else:
        # gamma sigma^2 B B^T / (1 - gamma): the scalar's three roundings and the product's, within 4 u.
        X = lq.state_moment(p, K, sigma)
        W = E(p.Sigma0) + bb * Enc.constant(p.gamma * sigma**2 / (1.0 - p.gamma), 4 * U64)
    return Enc.atom(X, lyap_error(closed_loop_enc(p, K), W, X, p.gamma), U64)


def q_enc(p: lq.LQProblem, s: Enc, a: Enc, P: Enc, A=None, B=None, Q=None, R=None, g=None) -> Enc:
    """Q(s, a) = -(s'Qs + a'Ra) - gamma (As+Ba)' P (As+Ba) over rows, as an enclosure (the model's
    matrices exact unless given, e.g. as an evaluation's rounded copies)."""
    A, B, Q, R = (E(v, s.u) if m is None else m for v, m in ((p.A, A), (p.B, B), (p.Q, Q), (p.R, R)))
    g = E(p.gamma, s.u) if g is None else g
    s2 = s @ A.T + a @ B.T
    r = -(((s @ Q) * s).sum(-1) + ((a @ R) * a).sum(-1))
    return r - g * ((s2 @ P) * s2).sum(-1)


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
    # Both sides, with P within lyap_error of P_K, are float64 evaluations of the same exact number
    # (q_value recomputes s2 and r with the very expressions above: the same bits, exact inputs here).
    P = value_matrix_atom(prob, K)
    r_e = -(((E(s) @ E(prob.Q)) * E(s)).sum(-1) + ((E(a) @ E(prob.R)) * E(a)).sum(-1))
    rhs = r_e - E(prob.gamma) * ((E(s2) @ P) * E(s2)).sum(-1)
    lhs = r_e + E(prob.gamma) * q_enc(prob, E(s2), E(s2) @ E(K.T), P)
    agree(r + prob.gamma * lq.q_value(prob, K, s2, s2 @ K.T), q, lhs, rhs, what="Bellman equation")
    # and V(s) = Q(s, mu(s)) = -s^T P s
    v = -np.einsum("ni,ij,nj->n", s, lq.value_matrix(prob, K), s)
    agree(
        lq.q_value(prob, K, s, s @ K.T),
        v,
        q_enc(prob, E(s), E(s) @ E(K.T), P),
        -((E(s) @ P) * E(s)).sum(-1),
        what="V(s) = Q(s, mu(s))",
    )


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
    # exact form of the bias: sigma^2 * C. spg - G = -2 E (X_s - X_0) and C = -2 gamma / (1 - gamma) E X_BB
    # are linear in E = dpg_gain (the same computed matrix in all three: an exact input), so the
    # identity holds for it exactly; what differs is each Lyapunov solution's error and the products'.
    C = lq.spg_bias_coefficient(prob, K)
    gain = E(lq.dpg_gain(prob, K))
    x0 = state_moment_atom(prob, K, 0.0)
    x_bb = state_moment_atom(prob, K, 0.0, bb_only=True)
    c_e = Enc.constant(-2.0 * prob.gamma / (1.0 - prob.gamma), 4 * U64) * (gain @ x_bb)
    deviation = []
    for s in SIGMAS:
        diff = (gain @ state_moment_atom(prob, K, s)).scale(-2.0) - (gain @ x0).scale(-2.0)
        agree(lq.spg(prob, K, s) - G, s**2 * C, diff, Enc.constant(s**2, U64) * c_e, what=f"bias at sigma {s}")
        bias_k = float(np.linalg.norm(diff.centre))
        deviation.append(float(np.linalg.norm(diff.bound)) + gamma(8, U64) * 2 * bias_k)  # and norm()'s rounding
    # So |bias_k - sigma_k^2 ||C*||| <= deviation_k, the exact log-log slope is 2, and the fitted slope
    # (least squares: sum_k w_k log bias_k) is off by at most sum_k |w_k| deviation_k / (bias_k - deviation_k),
    # plus polyfit's own rounding (gamma_32 of the sums' magnitude).
    x = np.log(SIGMAS)
    w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    deviation = np.array(deviation)
    assert (deviation < bias).all()
    allowed = (
        float(np.sum(np.abs(w) * deviation / (bias - deviation)))
        + gamma(32, U64) * float(np.sum(np.abs(w) * np.abs(np.log(bias)))) * 4
    )
    assert abs(slope - 2.0) <= allowed
    assert bias[-1] / np.linalg.norm(G) < 1e-5  # converges to the DPG (3e-6 at sigma = 1e-3)


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
# Sections 2-3 pinned to pydpg: a linear actor and the exact critic plugged into pydpg.core.agent.DDPGAgent
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
    from pydpg.core.agent import DDPGAgent
    from pydpg.core.config import DDPGConfig

    actor, critic = LinearActor(K, dtype), ExactLQCritic(p, K, dtype)
    return DDPGAgent.from_dims(p.n, p.m, DDPGConfig(), actor=actor, critic=critic, device="cpu"), actor


def test_pydpg_actor_loss_gradient_is_the_dpg(prob, K):
    """grad of DDPGAgent.actor_loss = -(1/N) sum grad_a Q(s, mu(s)) grad_K mu(s)  ~  -(1-gamma) grad J."""
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
    from pydpg.core.batch import Batch

    t = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype)  # noqa: E731
    return Batch(
        t(obs), t(action), t(reward).reshape(-1, 1), t(next_obs), t(done).reshape(-1, 1), t(discount).reshape(-1, 1)
    )


def _rounded(x: np.ndarray, dtype: torch.dtype, u: float) -> Enc:
    """A model matrix as an evaluation in ``dtype`` holds it: the exact float64 value, with the
    distance of its ``dtype`` copy as the bound."""
    held = torch.as_tensor(x).to(dtype).double().numpy()
    return Enc.atom(x, np.abs(held - x), u)


def _held(exact: Enc, held: np.ndarray, computed: np.ndarray, u: float) -> Enc:
    """What a batch holds: ``computed`` (a float64 evaluation within exact.bound of the exact value)
    rounded to ``held``: within exact.bound + |held - computed| of it."""
    return Enc.atom(held, exact.bound + np.abs(held - computed), u)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pydpg_critic_target_satisfies_bellman(prob, K, dtype):
    """y = r + gamma (1-done) Q'(s', mu'(s')) equals Q^mu(s, a) on sampled transitions.

    Exactly, for the exact P_K at the inputs the agent saw (s and a rounded to ``dtype``); the batch's
    r and s' were computed from the unrounded s and a, then rounded, and the critic holds A, B, Q, R,
    P, K and gamma rounded to ``dtype``: each enters as an atom within its distance of the exact value,
    so the bound holds for float32 and float64 alike, on any CPU."""
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
    u = U32 if dtype == torch.float32 else U64
    # r and s' as the batch holds them: numpy's float64 values from s, a (atoms around s_in, a_in),
    # rounded to dtype.
    s_at, a_at = Enc.atom(s_in, np.abs(s - s_in), U64), Enc.atom(a_in, np.abs(a - a_in), U64)
    r_e = -(((s_at @ E(prob.Q)) * s_at).sum(-1) + ((a_at @ E(prob.R)) * a_at).sum(-1))
    s2_e = s_at @ E(prob.A.T) + a_at @ E(prob.B.T)
    r_b = _held(r_e, batch.reward.double().numpy()[:, 0], r, u)
    s2_b = _held(s2_e, batch.next_obs.double().numpy(), s2, u)
    P = value_matrix_atom(prob, K)
    P_held = Enc.atom(P.centre, P.bound + np.abs(torch.as_tensor(P.centre).to(dtype).double().numpy() - P.centre), u)
    g = _rounded(np.float64(prob.gamma), dtype, u)
    k = _rounded(K, dtype, u)
    model = (_rounded(m, dtype, u) for m in (prob.A, prob.B, prob.Q, prob.R))
    y_e = r_b + g * q_enc(prob, s2_b, s2_b @ k.T, P_held, *model, g=g)
    agree(y.double().numpy()[:, 0], q, y_e, q_enc(prob, E(s_in), E(a_in), P), what=f"Bellman target ({dtype})")


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
    # Q(s, a) = r0 + gamma r1 + gamma^2 Q(s2, K s2) exactly (s1 = As + Ba, a1 = K s1, s2 = A s1 + B a1):
    # the batch's float64 steps and pydpg's target, and q_value, each within its derived bound.
    P = value_matrix_atom(prob, K)
    se, ae = E(s), E(a)
    s1e = se @ E(prob.A.T) + ae @ E(prob.B.T)
    a1e = s1e @ E(K.T)
    r0e = -(((se @ E(prob.Q)) * se).sum(-1) + ((ae @ E(prob.R)) * ae).sum(-1))
    r1e = -(((s1e @ E(prob.Q)) * s1e).sum(-1) + ((a1e @ E(prob.R)) * a1e).sum(-1))
    s2e = s1e @ E(prob.A.T) + a1e @ E(prob.B.T)
    y2e = (r0e + E(prob.gamma) * r1e) + Enc.constant(prob.gamma**2, U64) * q_enc(prob, s2e, s2e @ E(K.T), P)
    agree(y2, lq.q_value(prob, K, s, a), y2e, q_enc(prob, se, ae, P), what="2-step target")
    # done = 1: r + gamma * 0 * Q' = r + 0, exactly r.
    np.testing.assert_array_equal(yt, r0)


def test_pydpg_soft_update_is_polyak_average(prob, K):
    """theta' <- tau theta + (1-tau) theta' applied k times: theta'_k = theta + (1-tau)^k (theta'_0 - theta)."""
    from pydpg.core.agent import DDPGAgent
    from pydpg.core.config import DDPGConfig

    tau, k = 0.1, 7
    actor, critic = LinearActor(K, torch.float64), ExactLQCritic(prob, K, torch.float64)
    agent = DDPGAgent.from_dims(prob.n, prob.m, DDPGConfig(tau=tau), actor=actor, critic=critic, device="cpu")
    K_new = K + 0.5
    P0 = critic.P.detach().clone()
    with torch.no_grad():
        actor.weight.copy_(torch.as_tensor(K_new))
        critic.P.mul_(2.0)
    for _ in range(k):
        agent.soft_update()
    decay = (1 - tau) ** k

    # k lerps t <- t + tau (o - t) against the closed form o + (1 - tau)^k (t0 - o) (Python's pow):
    # the same exact numbers, each evaluation within its float64 bound.
    def iterated(o: Enc, t: Enc) -> Enc:
        for _ in range(k):
            t = t + E(tau) * (o - t)
        return t

    one_minus = E(1.0) - E(tau)
    powered = one_minus
    for _ in range(k - 1):
        powered = powered * one_minus
    powered = powered.rounds(2)  # pow's own algorithm: within 1 ulp of the correctly rounded product
    agree(
        agent.actor_target.weight.numpy(),
        K_new + decay * (K - K_new),
        iterated(E(K_new), E(K)),
        E(K_new) + powered * (E(K) - E(K_new)),
        what="actor target",
    )
    P0e = E(P0.numpy())
    agree(
        agent.critic_targets[0].P.numpy(),
        (2.0 + decay * (1.0 - 2.0)) * P0.numpy(),
        iterated(P0e.scale(2.0), P0e),
        (E(2.0) + powered * (E(1.0) - E(2.0))) * P0e,
        what="critic target",
    )
