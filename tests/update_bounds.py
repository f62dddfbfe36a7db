"""When two float32 evaluations of one DDPG/TD3 update are "equal up to rounding": a sound bound.

The C++ update (csrc/train/mlp_update.cpp), the autograd update (pydpg/core/agent.py) and Stable-Baselines3's
compute the same update in different summation orders (batch shapes, BLAS kernels, a hand-written
backward pass against autograd, SB3's single-tensor Adam). No tolerance measured on one CPU holds on
the next, so the tests compare them against a bound computed here, in float64, from the networks,
the optimizer state and the batch: for every quantity a *centre* v and a bound e with |x - v| <= e
for *every* float32 evaluation x of the update, whatever its summation order. Two evaluations A and
B then agree within e_A + e_B = 2 e; the tests check each evaluation against the centre (stronger).

Derivation. u = 2^-24 (float32, round to nearest), gamma_k = k u / (1 - k u). Quantities carried
with an error (x~ is an evaluation's value, x the centre, e_x the bound on |x~ - x|):

* A Linear layer z = W h + b. Any evaluation of the n + 1 term sum errs by at most
  gamma_{n+1} (|W~| |h~| + |b~|), whatever its order (Higham, Accuracy and Stability, Lemma 3.4 /
  eq. 3.5; a fused multiply-add rounds less, never more). For a ReLU network with the centre's masks
  D_l this gives, exactly, z~_l - z_l = W_l D_{l-1} (z~_{l-1} - z_{l-1}) + s_l with the *source*
      |s_l| <= S_l = e_W |h~| + e_b + gamma_{n+1} (|W~| |h~| + |b~|) + |W_l| X_{l-1},
  e_W, e_b the parameters' own errors (the critic's, after its Adam step, in the actor step) and
  X_{l-1} = e_z on units whose sign the bound cannot decide (|relu(z~) - relu(z) - D (z~ - z)| <= e_z
  there, 0 elsewhere). Unrolled: |z~_l - z_l| <= sum_k |J_{k->l}| S_k + |J_{x->l}| e_x, with the
  per-row Jacobians J_{k->l} = W_l D_{l-1} ... W_{k+1} D_k of the centre (``MLP``). Taking |.| of
  the product, not the product of |W|'s, keeps the cancellation inside W_2 D W_1: a factor ~16 per
  256-wide layer over plain interval arithmetic.
* ReLU and the clamps are monotone and 1-Lipschitz. tanh is monotone: [z - e, z + e] is mapped, and
  a float32 tanh adds its own error, 4 ulps (8 u relative) allowed (MKL VML_HA <= 1 ulp, Sleef u10
  <= 1 ulp, glibc tanhf <= 2 ulps). min of the twin critics: max of the two e's.
* Element-wise chains add u per rounding on the sum of the operands' magnitudes (so fused
  multiply-adds are covered); a product by constants is a chain of k roundings, gamma_k |c| (|v| + e).
  Counts (the largest among the implementations read, plus one): the loss gradient 2 w (Q - y) / B
  from td = Q - y: 3 (C++: 1/B, (1/B) w, the product; autograd: mean's 1/B, * w, pow's grad * 2 td;
  SB3's mse_loss: (2/B as float) * td * grad_output), 4 allowed; the target
  r + discount (1 - done) min Q': 2 + 1; the critic loss: B * heads + 4 along any term's path.
* Backward: delta_{l-1} = D_{l-1} W_l^T delta_l. An evaluation's delta~_{l-1} - delta_{l-1} =
  D W^T (delta~_l - delta_l) + t_{l-1} with |t_{l-1}| <= D (e_W^T |delta~_l| + gamma_out |W~|^T
  |delta~_l|) plus, on undecided units (mask either way), the whole |W~^T delta~_l|; unrolled with
  the transposed Jacobians as above. The gradient at the critic's action input (the actor step) is
  W_0^T delta_0 the same way; the actor's tanh derivative delta (1 - a^2): 3 roundings on a's bound.
  A weight gradient dW = delta^T h is a dot product of length B (the batch):
      e_dW = e_delta^T |h| + |delta|^T e_h + e_delta^T e_h + gamma_B (|delta| + e_delta)^T (|h| + e_h);
  a bias gradient a sum of B terms (gamma_B).
* Adam (torch's fused CPU kernel, which both pydpg paths run, and the single-tensor Adam SB3 runs;
  ``weight_decay`` adds wd * p to the gradient first, 3 roundings, 4 allowed):
      m1 = m0 + (1 - b1)(g - m0)  e_m1 = (1 - b1) e_g + gamma_5 (|m0| + (1 - b1)(|g| + e_g + |m0|))
      v1 = b2 v0 + (1 - b2) g^2    e_v1 = (1 - b2)(2 |g| e_g + e_g^2) + gamma_5 (b2 v0 + (1 - b2)(|g| + e_g)^2)
  (at most 4 roundings in the lerp, in b1 m0 + (1 - b1) g and in the squares' chain). The step
  d = s m / (sqrt(v) / c + eps), s = lr / (1 - b1^t), c = sqrt(1 - b2^t), is monotone in m and in v
  separately, so over the box [m1 +- e_m1] x [v_lo, v_hi] (v_lo >= (b2 v0 + (1 - b2) max(|g| - e_g,
  0)^2)(1 - gamma_5) >= 0) its range is spanned by the 4 corners; then the evaluation's own rounding
  of d, rho |d|, from sqrt (8 u allowed), the division by c, + eps, * s, / denominator and the
  float32 roundings of s, c, eps (and the double pow's error in 1 - b^t); then p1 = p - d, 1 rounding.
* Polyak t + tau (o - t) (torch.lerp and the C++ one; SB3's t (1 - tau) + tau o): tau e_o +
  gamma_5 (|t| + tau (|o| + e_o + |t|)) (3 roundings in either, 4 allowed).

The centre is itself computed in float64: every rounding above uses u + 2^-52 for u, which covers
the centre's own rounding (gamma_k(u + 2^-52) >= gamma_k(u) + gamma_k(2^-53)); the Jacobians' float64
error is bounded and added; every bound is multiplied by 1 + 2^-40 for the float64 rounding of the
bound's own sums of non-negative terms (lengths < 2^12). Underflow: each operation may add 2^-126.

Assumptions: IEEE float32 arithmetic with round to nearest in every evaluation and no
reduced-precision matrix products (TF32, bf16: ``assert_float32_arithmetic`` checks torch's
float32 matmul precision "highest" and oneDNN's fp32 precision "ieee"/"none"); float32 tanh and
sqrt within 4 ulps; operands and intermediate values zero or at least 2^-126 in magnitude apart from
the underflow term above; the parameters, optimizer state, batch and target-smoothing noise the same
float32 numbers in every evaluation compared (the tests copy one state into the other before each
update). Modelled: the Linear / ReLU actor with a tanh output and the Linear / ReLU critic(s) on
[obs, action]; the DDPG / TD3 update as pydpg.core.agent's docstring writes it (the target with the min
of twin target critics, clipped target-smoothing noise, PER weights, the mean squared TD error, the
actor loss -mean Q_1(s, mu(s)) on the just-stepped critic, the policy delay, Polyak); fused or
single-tensor Adam with coupled weight decay. Not modelled: LayerNorm, batch renormalization, SALE,
LAP, value clipping, hard target updates (the C++ update refuses them).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits

U = 2.0**-24  # float32 unit roundoff, round to nearest
U64 = 2.0**-53
UE = U + 2 * U64  # one float32 rounding plus the float64 centre's own
TINY = 2.0**-126  # underflow, per operation
FN = 8 * U  # a float32 tanh's or sqrt's own relative error: 4 ulps allowed
SLACK = 1.0 + 2.0**-40  # the bound's own float64 sums may round down by (n + 2) 2^-53 relative, n < 2^12

# Rounding counts of element-wise chains: the largest among the implementations read (docstring), plus one.
K_LOSS_GRAD = 4  # 2 w (Q - y) / B from td
K_TARGET = 3  # discount * (1 - done) * Q'
K_WD = 4  # g + wd * p
K_ADAM = 5  # m1, v1
K_POLYAK = 5


def gamma(k: float) -> float:
    if not k * UE < 1:
        return math.inf
    return k * UE / (1.0 - k * UE)


@dataclass
class IV:
    """A centre v and a bound e >= 0 on |evaluation - v|, entry by entry (float64 arrays)."""

    v: np.ndarray
    e: np.ndarray

    @property
    def mag(self) -> np.ndarray:
        """A bound on |evaluation|."""
        return np.abs(self.v) + self.e

    @staticmethod
    def exact(x) -> "IV":
        x = np.asarray(x, dtype=np.float64)
        return IV(x, np.zeros_like(x))


def _f64(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        assert t.dtype == torch.float32, t.dtype
        return t.double().numpy()
    return np.asarray(t, dtype=np.float64)


def assert_float32_arithmetic() -> None:
    """The bound's arithmetic assumption: float32 matrix products are IEEE float32 (no TF32 / bf16)."""
    assert torch.get_float32_matmul_precision() == "highest", torch.get_float32_matmul_precision()
    mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    precision = getattr(mkldnn, "fp32_precision", None)
    assert precision in (None, "none", "ieee"), precision


# ------------------------------------------------------------------ element-wise pieces
def add_rounded(a: IV, b: IV, sign: float = 1.0) -> IV:
    """a + sign * b, one rounding."""
    return IV(a.v + sign * b.v, (a.e + b.e + UE * (a.mag + b.mag) + TINY) * SLACK)


def scale(a: IV, c: np.ndarray, k: int) -> IV:
    """c * a for an exact real c, evaluated as a chain of k roundings (constants' roundings included)."""
    c = np.asarray(c, dtype=np.float64)
    ac = np.abs(c)
    return IV(c * a.v, (ac * a.e + gamma(k) * ac * a.mag + 4 * k * TINY) * SLACK)


def clamp(a: IV, lo: float, hi: float) -> IV:
    """Exact in every evaluation, and 1-Lipschitz."""
    return IV(np.clip(a.v, lo, hi), a.e)


def minimum(a: IV, b: IV) -> IV:
    return IV(np.minimum(a.v, b.v), np.maximum(a.e, b.e))


def tanh(z: IV) -> IV:
    lo, mid, hi = np.tanh(z.v - z.e), np.tanh(z.v), np.tanh(z.v + z.e)
    spread = np.maximum(hi - mid, mid - lo) + 4 * U64 * (np.abs(lo) + np.abs(mid) + np.abs(hi))
    return IV(mid, (spread + FN * (np.abs(mid) + spread) + TINY) * SLACK)


def tanh_backward(d: IV, a: IV) -> IV:
    """d * (1 - a^2), a the tanh's output: a*a, 1 - ., the product (3 roundings)."""
    sq = IV(a.v * a.v, (2 * np.abs(a.v) * a.e + a.e * a.e + UE * a.mag**2 + TINY) * SLACK)
    one_minus = IV(1.0 - sq.v, (sq.e + UE * (1.0 + sq.mag) + TINY) * SLACK)
    return IV(
        d.v * one_minus.v,
        (np.abs(d.v) * one_minus.e + d.e * np.abs(one_minus.v) + d.e * one_minus.e + UE * d.mag * one_minus.mag + TINY)
        * SLACK,
    )


# ------------------------------------------------------------------ networks
def weight_gradients(d: IV, x: IV) -> tuple[IV, IV]:
    """dW = d^T x (dot products of length B) and db = sum_rows d (sums of B terms)."""
    B = d.v.shape[0]
    prop = d.e.T @ np.abs(x.v)
    if x.e.any():
        prop = prop + np.abs(d.v).T @ x.e + d.e.T @ x.e
    dW = IV(d.v.T @ x.v, (prop + gamma(B) * (d.mag.T @ x.mag) + 2 * B * TINY) * SLACK)
    db = IV(d.v.sum(0), (d.e.sum(0) + gamma(B) * d.mag.sum(0) + B * TINY) * SLACK)
    return dW, db


def concat(a: IV, b: IV) -> IV:
    return IV(np.concatenate([a.v, b.v], 1), np.concatenate([a.e, b.e], 1))


def mean(x: IV, sign: float = 1.0) -> IV:
    """sign * mean of all entries: a sum of n terms and a division (or a double accumulation)."""
    n = x.v.size
    return IV(np.asarray(sign * x.v.mean()), np.asarray((x.e.sum() + gamma(n + 1) * x.mag.sum()) / n * SLACK))


Layers = list  # [(W IV, b IV), ...] of a Linear / ReLU MLP, W [out, in]

# A per-row Jacobian is formed only below this many multiply-adds; above, its |.| is bounded by the
# product of the layers' |W| (sound, looser). Only networks with three or more wide hidden layers get there.
JACOBIAN_BUDGET = 4e7


class MLP:
    """One Linear / ReLU MLP evaluated on a batch x [B, in]: each layer's pre-activation z_l, its input
    h_l, the output (tanh'd with ``tanh_out``), each as a centre and a bound; ``backward`` then gives
    the gradients.

    How the bound is carried (module docstring): with the ReLU masks D_l of the centre, every
    evaluation satisfies exactly
        z~_l - z_l = W_l D_{l-1} (z~_{l-1} - z_{l-1}) + s_l,
        |s_l| <= S_l = e_W |h~| + e_b + gamma_{n+1} (|W~| |h~| + |b~|) + |W_l| X_{l-1},
    where X_{l-1} bounds h~ - h - D_{l-1} (z~ - z) (nonzero only on units whose sign the bound cannot
    decide: there |relu(z~) - relu(z) - D (z~ - z)| <= e_z). So z~_l - z_l = sum_k J_{k->l} s_k with
    J_{k->l} = W_l D_{l-1} ... W_{k+1} D_k (per row; the input's error enters through J_{x->l} =
    J_{0->l} W_0), and |z~_l - z_l| <= sum_k |J_{k->l}| S_k: the |.| is taken of the product, so
    the cancellation inside W_2 D W_1 is kept rather than compounded as |W_2| D |W_1|. The backward
    pass is the transpose: delta_{l-1} = D_{l-1} W_l^T delta_l, sources D (e_W^T |delta~| +
    gamma_out |W~|^T |delta~|) plus, on undecided units, the whole |W~^T delta~|."""

    def __init__(self, layers: Layers, x: IV, tanh_out: bool = False, x_cols: Optional[np.ndarray] = None):
        self.W = [W for W, _ in layers]
        self.B = x.v.shape[0]
        self.cols = np.flatnonzero(x.e.max(0) > 0) if x_cols is None else np.asarray(x_cols)
        self.xe = x.e[:, self.cols]
        self.h, self.z, self.D, self.U, self.S = [x], [], [], [], []
        self._jacs: dict = {}
        last = len(layers) - 1
        for l, (W, b) in enumerate(layers):
            h = self.h[l]
            n = W.v.shape[1]
            src = b.e + gamma(n + 1) * (h.mag @ W.mag.T + b.mag) + (2 * n + 2) * TINY
            if W.e.any():
                src = src + h.mag @ W.e.T
            if l > 0 and self.U[l - 1].any():
                src = src + (self.U[l - 1] * self.z[l - 1].e) @ np.abs(W.v).T
            self.S.append(src * SLACK)
            e = self.S[l] + sum((self._forward(k, l, self.S[k]) for k in range(l)), np.zeros_like(src))
            if self.cols.size:
                e = e + self._forward(-1, l, self.xe)
            z = IV(h.v @ W.v.T + b.v, e * SLACK)
            self.z.append(z)
            if l < last:
                self.D.append((z.v > 0).astype(np.float64))
                # undecided: z~ may be > 0 in one evaluation and <= 0 in another (fl(v -+ e) decides soundly)
                self.U.append(~((z.v - z.e > 0) | (z.v + z.e <= 0)))
                self.h.append(IV(np.maximum(z.v, 0.0), np.where(z.v + z.e <= 0, 0.0, z.e)))  # relu: 1-Lipschitz
        self.out = tanh(self.z[-1]) if tanh_out else self.z[-1]

    # -- the per-row Jacobians J_{a->b}, a = -1 for the input's columns ``cols``
    def _jac(self, a: int, b: int) -> tuple:
        """(J_{a->b} as [B, w_b, w_a], or None above the budget; the bounds of its own float64 error's
        action, forward and transposed, per unit of max S) for b >= a + 2."""
        key = (a, b)
        if key not in self._jacs:
            width = [W.shape[0] for W in (w.v for w in self.W)]
            w_in = self.cols.size if a < 0 else width[a]
            # J <- J D_m W_m, m = b-1 .. a+1, each as a batched product over the rows
            cost = sum(
                self.B * width[b] * width[m] * (w_in if m == a + 1 else width[m - 1]) for m in range(b - 1, a, -1)
            )
            J = None
            if cost <= JACOBIAN_BUDGET:
                J = self.W[b].v
                for m in range(b - 1, a, -1):
                    Wm = self.W[m].v[:, self.cols] if (m == 0 and a < 0) else self.W[m].v
                    if J.ndim == 2 and Wm.shape[1] < J.shape[0]:
                        J = J @ (self.D[m][:, :, None] * Wm)  # the smaller intermediate [B, w_m, w_{m-1}]
                    else:
                        J = (J * self.D[m][:, None, :]) @ Wm
                if a >= 0:
                    J = J * self.D[a][:, None, :]
            # J is computed in float64: |J_exact - J| <= ((1 + gamma_w(2^-53))^k - 1) |W_b| D ... |W_{a+1}|
            # (k products, inner lengths <= w), whose action on S is at most that factor times the
            # product of the |W|'s max row sums (forward) or max column sums (transposed) times max S.
            ws = [self._absW(m, a) for m in range(a + 1, b + 1)]
            c = (1 + (max(width) + 1) * 2 * U64) ** (b - a) - 1
            self._jacs[key] = (
                J,
                c * math.prod(float(w.sum(1).max()) for w in ws),
                c * math.prod(float(w.sum(0).max()) for w in ws),
            )
        return self._jacs[key]

    def _absW(self, m: int, a: int) -> np.ndarray:
        return np.abs(self.W[m].v[:, self.cols] if (m == 0 and a < 0) else self.W[m].v)

    def _forward(self, k: int, l: int, S: np.ndarray) -> np.ndarray:
        """A bound on |J_{k->l} s| for |s| <= S at level k (k = -1: the input's columns)."""
        if l == k + 1:
            return (S if k < 0 else self.D[k] * S) @ self._absW(l, k).T
        J, err, _ = self._jac(k, l)
        if J is not None:
            return np.einsum("bij,bj->bi", np.abs(J), S) + err * S.max(1, keepdims=True)
        v = (S if k < 0 else self.D[k] * S) @ self._absW(k + 1, k).T
        for m in range(k + 2, l + 1):
            v = (self.D[m - 1] * v) @ np.abs(self.W[m].v).T
        return v

    def _backward(self, k: int, l: int, T: np.ndarray) -> np.ndarray:
        """A bound on |J_{l->k}^T t| for |t| <= T at level k, l < k (l = -1: the input's columns)."""
        if l == k - 1:
            v = T @ self._absW(k, l)
            return v if l < 0 else self.D[l] * v
        J, _, err = self._jac(l, k)
        if J is not None:
            return np.einsum("bij,bi->bj", np.abs(J), T) + err * T.max(1, keepdims=True)
        v = T
        for m in range(k - 1, l - 1, -1):
            v = v @ self._absW(m + 1, m)
            if m >= 0:
                v = self.D[m] * v
        return v

    def backward(self, d: IV, weight_grads: bool = True, dx: bool = False) -> tuple[list, Optional[IV]]:
        """For the gradient d at the last layer's z: the parameters' gradients [dW0, db0, dW1, ...]
        (module order) and, with ``dx``, the gradient at the input's columns ``cols``."""
        last = len(self.W) - 1
        T = {last: d.e}
        deltas = {last: d}
        for l in range(last, 0, -1):
            W, dl = self.W[l], deltas[l]
            w = W.v.shape[0]
            p = dl.v @ W.v
            R = gamma(w) * (dl.mag @ W.mag) + 2 * w * TINY
            if W.e.any():
                R = R + dl.mag @ W.e
            e_p = dl.e @ np.abs(W.v) + R
            T[l - 1] = (self.D[l - 1] * R + self.U[l - 1] * (np.abs(p) + e_p)) * SLACK
            e = T[l - 1] + sum((self._backward(k, l - 1, T[k]) for k in range(l, last + 1)), np.zeros_like(p))
            deltas[l - 1] = IV(self.D[l - 1] * p, e * SLACK)
        grads: list = [None] * (2 * len(self.W))
        if weight_grads:
            for l in range(last + 1):
                grads[2 * l], grads[2 * l + 1] = weight_gradients(deltas[l], self.h[l])
        gx = None
        if dx:
            W0, d0 = self.W[0], deltas[0]
            w = W0.v.shape[0]
            R = gamma(w) * (d0.mag @ W0.mag[:, self.cols]) + 2 * w * TINY
            if W0.e.any():
                R = R + d0.mag @ W0.e[:, self.cols]
            e = R + sum((self._backward(k, -1, T[k]) for k in range(last + 1)), np.zeros_like(R))
            gx = IV(d0.v @ W0.v[:, self.cols], e * SLACK)
        return grads, gx


def params_of(layers: Layers) -> list:
    return [t for W, b in layers for t in (W, b)]


def layers_of(params: Sequence[IV]) -> Layers:
    return [(params[i], params[i + 1]) for i in range(0, len(params), 2)]


def linear_layers(module: torch.nn.Module) -> Layers:
    """The exact float32 parameters of a module's nn.Linear layers, in order."""
    return [
        (IV.exact(_f64(m.weight)), IV.exact(_f64(m.bias))) for m in module.modules() if isinstance(m, torch.nn.Linear)
    ]


# ------------------------------------------------------------------ optimizer and targets
@dataclass
class Adam:
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    # per parameter (module order): exp_avg, exp_avg_sq, step before this update (0: no state yet)
    exp_avg: list = field(default_factory=list)
    exp_avg_sq: list = field(default_factory=list)
    steps: list = field(default_factory=list)

    @staticmethod
    def of(opt: torch.optim.Adam) -> "Adam":
        group = opt.param_groups[0]
        assert len(opt.param_groups) == 1 and not group["amsgrad"] and not group["maximize"]
        assert not group.get("decoupled_weight_decay")
        a = Adam(float(group["lr"]), *map(float, group["betas"]), float(group["eps"]), float(group["weight_decay"]))
        for p in group["params"]:
            s = opt.state.get(p)
            if s:
                a.exp_avg.append(_f64(s["exp_avg"]))
                a.exp_avg_sq.append(_f64(s["exp_avg_sq"]))
                a.steps.append(float(s["step"]))
            else:
                a.exp_avg.append(np.zeros(tuple(p.shape)))
                a.exp_avg_sq.append(np.zeros(tuple(p.shape)))
                a.steps.append(0.0)
        return a


def adam_step(p: np.ndarray, g: IV, m0: np.ndarray, v0: np.ndarray, step: float, opt: Adam) -> tuple[IV, IV, IV]:
    """(parameter, exp_avg, exp_avg_sq) after one Adam step from exact p, m0, v0 with gradient g."""
    b1, b2, eps, lr, wd = opt.beta1, opt.beta2, opt.eps, opt.lr, opt.weight_decay
    t = step + 1.0
    if wd:
        g = IV(g.v + wd * p, (g.e + gamma(K_WD) * (g.mag + abs(wd) * np.abs(p)) + K_WD * TINY) * SLACK)
    w1, w2 = 1.0 - b1, 1.0 - b2
    am0 = np.abs(m0)
    m_mag = am0 + w1 * (g.mag + am0) if w1 < 0.5 else g.mag + (1.0 - w1) * (g.mag + am0)
    m1 = IV(m0 + w1 * (g.v - m0), (w1 * g.e + gamma(K_ADAM) * m_mag + 8 * K_ADAM * TINY) * SLACK)
    v1 = IV(
        b2 * v0 + w2 * g.v**2,
        (w2 * (2 * np.abs(g.v) * g.e + g.e**2) + gamma(K_ADAM) * (b2 * v0 + w2 * g.mag**2) + 8 * K_ADAM * TINY) * SLACK,
    )
    bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
    s, c = lr / bc1, math.sqrt(bc2)
    # The constants as each implementation computes them (double pow, then a float32 rounding): the
    # pow's own error (an ulp of b^t <= 1, relative to 1 - b^t) and the float32 rounding.
    rel_s = UE + 4 * U64 / bc1
    rel_c = UE + 4 * U64 / bc2

    def step_of(m, v):
        return s * m / (np.sqrt(v) / c + eps)

    centre = step_of(m1.v, v1.v)
    m_lo, m_hi = m1.v - m1.e, m1.v + m1.e
    # v1's range, one-sided: its terms are >= 0, so a chain of K_ADAM roundings keeps it within
    # (1 +- gamma) of b2 v0 + w2 g~^2, and g~^2 lies in [max(|g| - e_g, 0)^2, (|g| + e_g)^2].
    g_lo = np.maximum(np.abs(g.v) - g.e, 0.0)
    v_lo = np.maximum(
        np.maximum((b2 * v0 + w2 * g_lo**2) * (1 - gamma(K_ADAM)) * (1 - 2**-40) - 8 * K_ADAM * TINY, v1.v - v1.e), 0.0
    )
    v_hi = np.minimum((b2 * v0 + w2 * g.mag**2) * (1 + gamma(K_ADAM)) * SLACK + 8 * K_ADAM * TINY, v1.v + v1.e)
    corners = [step_of(m, v) for m in (m_lo, m_hi) for v in (v_lo, v_hi)]
    dev = np.max([np.abs(k - centre) for k in corners], axis=0)
    big = np.max([np.abs(k) for k in corners], axis=0)
    # Evaluation: sqrt (FN), / c~ (c's error and one rounding), + eps~ (eps's rounding and one
    # rounding): denominator off by rho_d relative; then s~ * m / den: s's error and two roundings.
    rho_d = (1 + FN) * (1 + rel_c) * (1 + UE) ** 2 / (1 - UE) - 1
    rho = (1 + rel_s) * (1 + UE) ** 2 / (1 - rho_d) - 1
    d_err = dev + rho * big + 16 * U64 * big + 8 * TINY
    new_p = IV(p - centre, (d_err + UE * (np.abs(p) + big * (1 + rho)) + TINY) * SLACK)
    return new_p, m1, v1


def polyak(t: np.ndarray, o: IV, tau: float) -> IV:
    """t + tau (o - t) from an exact target t and an online parameter o."""
    at = np.abs(t)
    mag = at + tau * (o.mag + at) if tau < 0.5 else o.mag + (1.0 - tau) * (o.mag + at)
    return IV(t + tau * (o.v - t), (tau * o.e + gamma(K_POLYAK) * mag + 8 * K_POLYAK * TINY) * SLACK)


# ------------------------------------------------------------------ the update
@dataclass
class State:
    """Everything one update reads, as exact float64 copies of the float32 numbers."""

    actor: Layers
    actor_target: Layers
    critics: list  # of Layers
    critic_targets: list
    actor_opt: Adam
    critic_opt: Adam
    tau: float
    action_bound: float
    policy_delay: int
    n_updates: int  # before this update

    @staticmethod
    def of_agent(agent) -> "State":
        return State(
            linear_layers(agent.actor),
            linear_layers(agent.actor_target),
            [linear_layers(c) for c in agent.critics],
            [linear_layers(c) for c in agent.critic_targets],
            Adam.of(agent.actor_opt),
            Adam.of(agent.critic_opt),
            float(agent.config.tau),
            float(agent.action_bound),
            int(agent.config.policy_delay),
            int(agent.n_updates),
        )


def peek_target_noise(agent, batch) -> Optional[torch.Tensor]:
    """The target-smoothing noise the agent's next update will draw, its generator left as it was."""
    saved = agent.generator.get_state()
    try:
        return agent.target_noise(batch)
    finally:
        agent.generator.set_state(saved)


def update_bound(state: State, batch, noise: Optional[torch.Tensor] = None) -> dict:
    # numpy's BLAS on one thread while a bound is computed: beside torch's own threads (and on a busy
    # machine) its two-thread products were ten times slower. Threads change only the summation
    # order of the bound's float64 sums, which SLACK covers whatever the order.
    with threadpool_limits(limits=1, user_api="blas"):
        return _update_bound(state, batch, noise)


def _update_bound(state: State, batch, noise: Optional[torch.Tensor] = None) -> dict:
    """Centre and bound of everything one ``DDPG.update(batch)`` from ``state`` produces.

    Keys: ``critic_loss``, ``q_mean``, ``td_errors``, ``critic_grads``, ``critics`` (parameters in
    module order), ``critic_exp_avg``, ``critic_exp_avg_sq``; with the actor step (this update's
    n_updates a multiple of the policy delay) also ``actor_loss``, ``actor_grads``, ``actor``,
    ``actor_exp_avg``, ``actor_exp_avg_sq``, ``actor_target``, ``critic_targets`` (flat, module order)."""
    obs, action, reward, next_obs, done, discount = (_f64(t) for t in batch[:6])
    weights = _f64(batch.weights) if batch.weights is not None else None
    B = obs.shape[0]
    out: dict = {}

    # y = r + discount * (1 - done) * min_k Q'_k(s', clamp(mu'(s') + noise))
    a_next = MLP(state.actor_target, IV.exact(next_obs), tanh_out=True).out
    if noise is not None:
        a_next = clamp(add_rounded(a_next, IV.exact(_f64(noise))), -state.action_bound, state.action_bound)
    z_next = concat(IV.exact(next_obs), a_next)
    next_qs = [MLP(ct, z_next).out for ct in state.critic_targets]
    next_q = next_qs[0] if len(next_qs) == 1 else minimum(next_qs[0], next_qs[1])
    y = add_rounded(scale(next_q, discount * (1.0 - done), K_TARGET), IV.exact(reward))

    # Online critics, the loss L = mean_i w_i sum_k (Q_k - y)^2 and its gradient 2 w (Q_k - y) / B.
    z = IV.exact(np.concatenate([obs, action], 1))
    w = weights if weights is not None else np.ones((B, 1))
    fwds = [MLP(c, z) for c in state.critics]
    tds = [add_rounded(f.out, y, -1.0) for f in fwds]
    # The loss: each term's square (exact here; its rounding is counted below), the sum over heads,
    # * w, the sum over B rows and / B: at most B * heads + 4 roundings on any term's path (the C++
    # update sums in double: fewer).
    sq_v = np.concatenate([td.v**2 for td in tds], 1)
    sq_e = np.concatenate([2 * np.abs(td.v) * td.e + td.e**2 for td in tds], 1)
    sq_mag = np.abs(sq_v) + sq_e
    out["critic_loss"] = IV(
        np.asarray((w * sq_v).sum() / B),
        np.asarray(((w * sq_e).sum() + gamma(sq_v.size + 4) * (w * sq_mag).sum()) / B * SLACK),
    )
    out["q_mean"] = mean(fwds[0].out)
    out["td_errors"] = IV(np.abs(tds[0].v[:, 0]), tds[0].e[:, 0])
    critic_grads, new_critics, m_out, v_out = [], [], [], []
    k = 0
    for layers, f, td in zip(state.critics, fwds, tds):
        grads, _ = f.backward(scale(td, 2.0 * w / B, K_LOSS_GRAD))
        critic_grads += grads
        new = []
        for p, g in zip(params_of(layers), grads):
            a = state.critic_opt
            np_, m1, v1 = adam_step(p.v, g, a.exp_avg[k], a.exp_avg_sq[k], a.steps[k], a)
            new.append(np_), m_out.append(m1), v_out.append(v1)
            k += 1
        new_critics.append(new)
    out.update(
        critic_grads=critic_grads,
        critics=[p for c in new_critics for p in c],
        critic_exp_avg=m_out,
        critic_exp_avg_sq=v_out,
    )

    if (state.n_updates + 1) % state.policy_delay != 0:
        # No actor step: the actor, its optimizer and every target are left as they were, exactly.
        out.update(
            actor=params_of(state.actor),
            actor_target=params_of(state.actor_target),
            critic_targets=[p for ct in state.critic_targets for p in params_of(ct)],
            actor_exp_avg=[IV.exact(m) for m in state.actor_opt.exp_avg],
            actor_exp_avg_sq=[IV.exact(v) for v in state.actor_opt.exp_avg_sq],
        )
        return out
    # Actor: J = -mean Q_1(s, mu(s)) on the just-stepped first critic (its parameters carry the
    # critic step's bound); dJ/dQ = -1/B (one rounding), back to the action columns, through tanh.
    obs_iv = IV.exact(obs)
    fa = MLP(state.actor, obs_iv, tanh_out=True)
    fc = MLP(layers_of(new_critics[0]), concat(obs_iv, fa.out), x_cols=np.arange(obs.shape[1], z.v.shape[1]))
    out["actor_loss"] = mean(fc.out, sign=-1.0)
    d_q = IV(np.full((B, 1), -1.0 / B), np.full((B, 1), (gamma(1) / B + TINY) * SLACK))
    _, d_a = fc.backward(d_q, weight_grads=False, dx=True)
    actor_grads, _ = fa.backward(tanh_backward(d_a, fa.out))
    a = state.actor_opt
    new_actor, am, av = [], [], []
    for k, (p, g) in enumerate(zip(params_of(state.actor), actor_grads)):
        np_, m1, v1 = adam_step(p.v, g, a.exp_avg[k], a.exp_avg_sq[k], a.steps[k], a)
        new_actor.append(np_), am.append(m1), av.append(v1)
    out.update(actor_grads=actor_grads, actor=new_actor, actor_exp_avg=am, actor_exp_avg_sq=av)
    out["actor_target"] = [polyak(t.v, o, state.tau) for t, o in zip(params_of(state.actor_target), new_actor)]
    out["critic_targets"] = [
        polyak(t.v, o, state.tau) for ct, c in zip(state.critic_targets, new_critics) for t, o in zip(params_of(ct), c)
    ]
    return out


def forward_bound(module: torch.nn.Module, obs, tanh_out: bool = True) -> IV:
    """Centre and bound of a Linear / ReLU MLP (with a tanh output) on exact inputs ``obs``."""
    return MLP(linear_layers(module), IV.exact(_f64(obs)), tanh_out).out


# ------------------------------------------------------------------ two agents from one state
def adam_moments(opt: torch.optim.Adam, key: str) -> list[torch.Tensor]:
    """One state entry (exp_avg, exp_avg_sq, step) of every parameter, in the optimizer's order."""
    return [opt.state[p][key] for p in opt.param_groups[0]["params"]]


def sync(src, dst, tensors) -> None:
    """dst's tensors (``tensors(agent)``: parameters, targets, buffers) and Adam moments <- src's, in
    place (dst keeps its own tensors), so that both update from one state. The step counters and the
    noise generator are not copied: they must already agree."""
    with torch.no_grad():
        for p, q in zip(tensors(src), tensors(dst)):
            q.copy_(p)
        for so, do in ((src.actor_opt, dst.actor_opt), (src.critic_opt, dst.critic_opt)):
            for key in ("exp_avg", "exp_avg_sq"):
                for p, q in zip(adam_moments(so, key), adam_moments(do, key)):
                    q.copy_(p)
            # step counts: whole numbers + 1 per step on both sides, exact in float32
            assert all(torch.equal(p, q) for p, q in zip(adam_moments(so, "step"), adam_moments(do, "step")))
    assert src.n_updates == dst.n_updates
    assert torch.equal(src.generator.get_state(), dst.generator.get_state())  # RNG state: the same noise to be drawn


def resumed_run(agent, fresh, batches: list, at: int):
    """``agent`` updated on every batch, and ``fresh()`` (a new agent of its config) loaded from its
    state_dict after the first ``at`` and updated on the rest: (the agent, the resumed one, the
    state_dict), to compare."""
    for b in batches[:at]:
        agent.update(b)
    saved = copy.deepcopy(agent.state_dict())
    for b in batches[at:]:
        agent.update(b)
    resumed = fresh()
    resumed.load_state_dict(saved)
    for b in batches[at:]:
        resumed.update(b)
    return agent, resumed, saved


# ------------------------------------------------------------------ comparisons
def ratio(got, bound: IV) -> float:
    """max |got - centre| / bound over the entries (inf where the bound is 0 and they differ, or NaN)."""
    g = _f64(got).reshape(np.shape(bound.v))
    d = np.abs(g - bound.v)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d == 0, 0.0, d / bound.e)
    r = np.where(np.isnan(r), np.inf, r)
    return float(r.max()) if r.size else 0.0


def pair_ratio(a, b, bound: IV) -> float:
    """max |a - b| / (2 bound): two evaluations against the sum of their bounds."""
    d = np.abs(_f64(a).reshape(np.shape(bound.v)) - _f64(b).reshape(np.shape(bound.v)))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d == 0, 0.0, d / (2 * bound.e))
    r = np.where(np.isnan(r), np.inf, r)
    return float(r.max()) if r.size else 0.0


def check(named: dict, bound: dict, what: str = "") -> dict:
    """Every tensor of ``named`` (key -> tensor or list of tensors, keys those of ``update_bound``)
    within its bound of the centre: raise AssertionError naming the worst entry otherwise. Returns
    key -> the largest |x - centre| / bound."""
    worst = {}
    for key, got in named.items():
        want = bound[key]
        gots = got if isinstance(got, (list, tuple)) else [got]
        wants = want if isinstance(want, (list, tuple)) else [want]
        assert len(gots) == len(wants), (key, len(gots), len(wants))
        r = 0.0
        for i, (x, iv) in enumerate(zip(gots, wants)):
            ri = ratio(x, iv)
            if not ri <= 1.0:
                g = _f64(x).reshape(np.shape(iv.v))
                j = np.unravel_index(int(np.nanargmax(np.where(np.isnan(g), np.inf, np.abs(g - iv.v) - iv.e))), g.shape)
                raise AssertionError(
                    f"{what}{key}[{i}] at {tuple(int(q) for q in j)}: {g[j]!r} is "
                    f"{abs(g[j] - iv.v[j]):.3g} from the centre {iv.v[j]!r}, beyond the "
                    f"rounding bound {iv.e[j]:.3g} (ratio {ri:.3g})"
                )
            r = max(r, ri)
        worst[key] = r
    return worst
