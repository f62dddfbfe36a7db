"""Closed forms for a discounted linear-quadratic (LQ) control problem.

Used by ``tests/test_theory.py`` and ``docs/plot_spg_vs_dpg.py`` to check the mathematics in
``docs/theory.md`` against numbers. Everything here is plain float64 numpy/scipy.

The problem
-----------
* dynamics        s' = A s + B a                  (deterministic; a Gaussian policy adds noise)
* reward          r(s, a) = -(s^T Q s + a^T R a)
* initial state   s_0 ~ N(0, Sigma0)
* discount        gamma in (0, 1)
* policy          mu_K(s) = K s               (deterministic), or
                  pi_{K,sigma}(.|s) = N(K s, sigma^2 I)   (stochastic)

Closed forms (derived in docs/theory.md, section "A worked example")
---------------------------------------------------------------------
* ``value_matrix``  P_K solves  P = Q + K^T R K + gamma (A+BK)^T P (A+BK),  so V(s) = -s^T P s
* ``performance``   J_sigma(K) = -tr(P_K Sigma0) - sigma^2 (tr R + gamma tr(B^T P_K B)) / (1-gamma)
* ``q_value``       Q(s, a) = -(s^T Q s + a^T R a) - gamma (As+Ba)^T P_K (As+Ba) - gamma c_sigma
* ``state_moment``  Sigma_rho = sum_t gamma^t E[s_t s_t^T] solves
                    Sigma = Sigma0 + gamma (A+BK) Sigma (A+BK)^T + gamma sigma^2 B B^T / (1-gamma)
* ``dpg``           grad_K J = sum_t gamma^t E[grad_a Q(s_t, K s_t) s_t^T] = -2 E_K Sigma_rho,
                    E_K = (R + gamma B^T P B) K + gamma B^T P A
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_discrete_lyapunov


@dataclass(frozen=True)
class LQProblem:
    A: np.ndarray  # [n, n]
    B: np.ndarray  # [n, m]
    Q: np.ndarray  # [n, n] state cost, symmetric PSD
    R: np.ndarray  # [m, m] action cost, symmetric PD
    Sigma0: np.ndarray  # [n, n] covariance of s_0
    gamma: float

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def m(self) -> int:
        return self.B.shape[1]


def example_problem() -> LQProblem:
    """A fixed, non-symmetric 3-state / 2-action instance (nothing special about the numbers)."""
    A = np.array([[1.00, 0.20, 0.00], [0.00, 0.90, 0.30], [0.10, -0.20, 0.80]])
    B = np.array([[0.00, 0.10], [1.00, 0.00], [0.20, 1.00]])
    Q = np.array([[1.0, 0.2, 0.0], [0.2, 0.5, 0.1], [0.0, 0.1, 2.0]])
    R = np.array([[0.30, 0.05], [0.05, 0.60]])
    Sigma0 = np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 0.5]])
    return LQProblem(A=A, B=B, Q=Q, R=R, Sigma0=Sigma0, gamma=0.9)


def example_gain() -> np.ndarray:
    """A stabilising but clearly sub-optimal gain for ``example_problem`` (so grad J != 0)."""
    return np.array([[-0.5, -0.6, 0.0], [0.0, 0.1, -0.5]])


def closed_loop(p: LQProblem, K: np.ndarray) -> np.ndarray:
    return p.A + p.B @ K


def is_stable(p: LQProblem, K: np.ndarray) -> bool:
    """The discounted cost is finite iff sqrt(gamma) * spectral_radius(A + BK) < 1."""
    return bool(np.sqrt(p.gamma) * np.max(np.abs(np.linalg.eigvals(closed_loop(p, K)))) < 1.0)


def _lyap(M: np.ndarray, W: np.ndarray, gamma: float) -> np.ndarray:
    """X = W + gamma M X M^T, solved as a standard Lyapunov equation with sqrt(gamma) M."""
    X = solve_discrete_lyapunov(np.sqrt(gamma) * M, W)
    return 0.5 * (X + X.T)


def value_matrix(p: LQProblem, K: np.ndarray) -> np.ndarray:
    """P_K with V^{mu_K}(s) = -s^T P_K s; the same P serves the Gaussian policy (noise is additive)."""
    return _lyap(closed_loop(p, K).T, p.Q + K.T @ p.R @ K, p.gamma)


def noise_constant(p: LQProblem, K: np.ndarray, sigma: float) -> float:
    """c_sigma with V_sigma(s) = -s^T P_K s - c_sigma for the policy N(Ks, sigma^2 I)."""
    P = value_matrix(p, K)
    return sigma**2 * (np.trace(p.R) + p.gamma * np.trace(p.B.T @ P @ p.B)) / (1.0 - p.gamma)


def performance(p: LQProblem, K: np.ndarray, sigma: float = 0.0) -> float:
    """J_sigma(K) = E[sum_t gamma^t r_t]; sigma = 0 is the deterministic policy mu_K."""
    return float(-np.trace(value_matrix(p, K) @ p.Sigma0) - noise_constant(p, K, sigma))


def q_value(p: LQProblem, K: np.ndarray, s: np.ndarray, a: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Q^{pi}(s, a) for rows s [N, n], a [N, m]; returns [N]."""
    P = value_matrix(p, K)
    s2 = s @ p.A.T + a @ p.B.T
    r = -(np.einsum("ni,ij,nj->n", s, p.Q, s) + np.einsum("ni,ij,nj->n", a, p.R, a))
    return r - p.gamma * np.einsum("ni,ij,nj->n", s2, P, s2) - p.gamma * noise_constant(p, K, sigma)


def grad_a_q(p: LQProblem, K: np.ndarray, s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """grad_a Q(s, a) = -2 R a - 2 gamma B^T P (A s + B a), rows [N, m] (independent of sigma)."""
    P = value_matrix(p, K)
    s2 = s @ p.A.T + a @ p.B.T
    return -2.0 * a @ p.R - 2.0 * p.gamma * s2 @ P @ p.B


def dpg_gain(p: LQProblem, K: np.ndarray) -> np.ndarray:
    """E_K, so that grad_a Q(s, Ks) = -2 E_K s."""
    P = value_matrix(p, K)
    return (p.R + p.gamma * p.B.T @ P @ p.B) @ K + p.gamma * p.B.T @ P @ p.A


def state_moment(p: LQProblem, K: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Unnormalised discounted second moment Sigma_rho = sum_t gamma^t E[s_t s_t^T].

    rho has total mass 1/(1-gamma); (1-gamma) * Sigma_rho is the second moment of the normalised
    discounted state distribution.
    """
    W = p.Sigma0 + p.gamma * sigma**2 * (p.B @ p.B.T) / (1.0 - p.gamma)
    return _lyap(closed_loop(p, K), W, p.gamma)


def dpg(p: LQProblem, K: np.ndarray) -> np.ndarray:
    """Deterministic policy gradient  grad_K J = E_{s~rho}[grad_a Q(s, a)|_{a=Ks} s^T] = -2 E_K Sigma_rho."""
    return -2.0 * dpg_gain(p, K) @ state_moment(p, K)


def spg(p: LQProblem, K: np.ndarray, sigma: float) -> np.ndarray:
    """Exact stochastic policy gradient grad_K J_sigma of the Gaussian policy N(Ks, sigma^2 I).

    By the stochastic policy gradient theorem and Stein's lemma (Q_sigma is quadratic in a, and its
    a-gradient equals the deterministic one), grad_K J_sigma = -2 E_K Sigma_rho(sigma).
    """
    return -2.0 * dpg_gain(p, K) @ state_moment(p, K, sigma)


def spg_bias_coefficient(p: LQProblem, K: np.ndarray) -> np.ndarray:
    """C with grad J_sigma - grad J = sigma^2 C exactly (the bias is exactly quadratic in sigma)."""
    X = _lyap(closed_loop(p, K), p.B @ p.B.T, p.gamma)
    return -2.0 * p.gamma / (1.0 - p.gamma) * dpg_gain(p, K) @ X


def fd_gradient(f, K: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central finite-difference gradient of a scalar function of a matrix."""
    G = np.zeros_like(K)
    for idx in np.ndindex(*K.shape):
        E = np.zeros_like(K)
        E[idx] = h
        G[idx] = (f(K + E) - f(K - E)) / (2.0 * h)
    return G


def horizon(gamma: float, tol: float = 1e-10) -> int:
    """A truncation horizon H with gamma^H <= tol."""
    return int(np.ceil(np.log(tol) / np.log(gamma)))


def sample_rho(p: LQProblem, K: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n states from the *normalised* discounted state distribution of mu_K.

    t ~ Geometric: P(t) = (1-gamma) gamma^t, t = 0, 1, ...; then s_t = (A+BK)^t s_0, s_0 ~ N(0, Sigma0).
    """
    t = rng.geometric(1.0 - p.gamma, size=n) - 1  # numpy's geometric starts at 1
    s = rng.multivariate_normal(np.zeros(p.n), p.Sigma0, size=n)
    M = closed_loop(p, K)
    for _ in range(int(t.max())):
        live = t > 0
        s[live] = s[live] @ M.T
        t[live] -= 1
    return s


def rollouts(p: LQProblem, K: np.ndarray, sigma: float, n: int, rng: np.random.Generator, H: int | None = None):
    """Vectorised rollouts of N(Ks, sigma^2 I); yields (t, s_t, a_t, eps_t, r_t) per step."""
    H = horizon(p.gamma) if H is None else H
    s = rng.multivariate_normal(np.zeros(p.n), p.Sigma0, size=n)
    for t in range(H):
        eps = rng.standard_normal((n, p.m))
        a = s @ K.T + sigma * eps
        r = -(np.einsum("ni,ij,nj->n", s, p.Q, s) + np.einsum("ni,ij,nj->n", a, p.R, a))
        yield t, s, a, eps, r
        s = s @ p.A.T + a @ p.B.T


def reinforce_samples(
    p: LQProblem, K: np.ndarray, sigma: float, n: int, rng: np.random.Generator, H: int | None = None
) -> np.ndarray:
    """One likelihood-ratio (REINFORCE, Williams 1992) estimate of grad_K J_sigma per rollout, [n, m, n_s].

    g = sum_t grad_K log pi(a_t|s_t) * sum_{k>=t} gamma^k r_k   (returns-to-go, *no baseline*),
    grad_K log pi(a|s) = (a - Ks) s^T / sigma^2 = eps s^T / sigma.
    Rearranged as g = sum_k gamma^k r_k * sum_{t<=k} score_t so memory stays O(n).
    Truncated at H with gamma^H <= 1e-10, which is far below the Monte Carlo error.
    """
    g = np.zeros((n, p.m, p.n))
    cum_score = np.zeros((n, p.m, p.n))
    for t, s, _a, eps, r in rollouts(p, K, sigma, n, rng, H):
        cum_score += eps[:, :, None] * s[:, None, :] / sigma
        g += (p.gamma**t * r)[:, None, None] * cum_score
    return g


def dpg_samples(p: LQProblem, K: np.ndarray, n: int, rng: np.random.Generator, H: int | None = None) -> np.ndarray:
    """One DPG estimate per deterministic rollout, [n, m, n_s]: g = sum_t gamma^t grad_a Q(s_t, Ks_t) s_t^T.

    Uses the true critic, like the REINFORCE estimate uses true returns; the only randomness is s_0.
    """
    E = dpg_gain(p, K)
    g = np.zeros((n, p.m, p.n))
    for t, s, _a, _eps, _r in rollouts(p, K, 0.0, n, rng, H):
        g += p.gamma**t * (-2.0 * s @ E.T)[:, :, None] * s[:, None, :]
    return g
