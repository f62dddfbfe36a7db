"""When two float32 evaluations of one CrossQ update are "equal up to rounding": a sound bound.

CrossQ's update (``--preset crossq``: batch renormalization in front of every Linear, no target
networks, the critic's target from one joint training-mode pass over [(s, a); (s', mu(s'))]) runs
on the C++ update (csrc/train/mlp_update.cpp) and on autograd (pydpg/core/agent.py). They compute
the same numbers by different formulas: the C++ side normalizes as x_hat r weight + (d weight +
bias) with its batch sums in double, torch's fused batch norm as x (weight / std) + (bias - mean
weight / std) and then the renormalization's addcmul, and each has its own backward pass through the
batch statistics. As tests/update_bounds.py does for DDPG and TD3, this module computes, in float64
from the state both start from, a centre and a bound on |float32 evaluation - centre| for every
gradient, parameter, Adam moment, running statistic and loss of one update, valid for any summation
order and for both formulas.

How: tests/float_bounds.py's ``Enc`` (forward error analysis carried with the values: any order and
grouping of a polynomial in its atoms errs by at most gamma_k times the polynomial on the atoms'
magnitudes; non-polynomial steps close a segment through their Lipschitz constants), applied to
the update step by step:

* a normalization in training mode: the batch mean and the variance (two passes on both sides, the
  mean and then the sum of squared deviations: torch's batch_norm_cpu_collect_stats_contiguous_impl
  in aten/src/ATen/native/cpu/batch_norm_kernel.cpp accumulates both in double, as the C++ update
  does), 1/std (rsqrt within 4 ulps: torch's 1/sqrt in float, the C++ one's in double and rounded),
  std (torch: the reciprocal of 1/std; C++: a square root), the running std, r and d (clamped; the
  clamp limits' own float32 rounding added) are atoms; where the two sides evaluate different
  polynomials (the output, the bias gradient, the input gradient, the batch variance fed to the
  running one), each side's formula gets its own enclosure and ``widen`` covers both; ``EXTRA``
  more roundings on every path cover other groupings of the same monomials;
* a ReLU is 1-Lipschitz; its backward mask is exact where the pre-activation's sign is decided by
  the bound and an atom of error 1 where it is not;
* tanh and its derivative, Adam: tests/update_bounds.py's (``tanh``, ``tanh_backward``, ``adam_step``).

Assumptions: those of update_bounds (IEEE float32, round to nearest, no reduced-precision products)
and float_bounds (rsqrt within 4 ulps). Only the CrossQ combination is modelled: BatchRenorm before
every Linear of the ``Actor`` and each ``Critic``, no target networks, twin or single critics, TD3's
target smoothing noise, PER weights, fused Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import update_bounds as ub
from float_bounds import U32, Enc
from threadpoolctl import threadpool_limits

from pydpg.core.networks import BatchRenorm

U = U32
EXTRA = 4  # roundings allowed on every path beyond the formula as written here (other groupings)


def _x(a) -> Enc:
    return Enc.exact(np.asarray(a, dtype=np.float64), U)


def _iv(e: Enc) -> ub.IV:
    return ub.IV(np.asarray(e.centre, dtype=np.float64), np.asarray(e.bound, dtype=np.float64) * ub.SLACK)


def _enc(iv: ub.IV) -> Enc:
    return Enc.atom(iv.v, iv.e, U)


def _cover(*encs: Enc) -> Enc:
    """One atom covering several formulas' evaluations of the same quantity."""
    out = encs[0].rounds(EXTRA)
    for e in encs[1:]:
        out = out.widen(e.rounds(EXTRA))
    return out


@dataclass
class Norm:
    """One BatchRenorm's parameters (Enc: exact, or carrying an Adam step's bound) and state."""

    w: Enc
    b: Enc
    rm: Enc
    rv: Enc
    steps: int
    momentum: float
    warmup: int
    eps: float
    r_max: float
    d_max: float


@dataclass
class Net:
    """A normalized MLP: per layer its Norm and its Linear's W [out, in] and b."""

    norms: list
    W: list
    b: list

    @staticmethod
    def of(module: torch.nn.Module) -> "Net":
        norms = [
            Norm(
                _x(ub._f64(m.weight)),
                _x(ub._f64(m.bias)),
                _x(ub._f64(m.running_mean)),
                _x(ub._f64(m.running_var)),
                int(m.steps),
                m.momentum,
                m.warmup,
                m.eps,
                m.r_max,
                m.d_max,
            )
            for m in module.modules()
            if isinstance(m, BatchRenorm)
        ]
        lin = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        assert len(norms) == len(lin) > 0
        return Net(norms, [_x(ub._f64(m.weight)) for m in lin], [_x(ub._f64(m.bias)) for m in lin])

    def params(self) -> list:
        """Module order: per layer the normalization's weight and bias, then the Linear's."""
        return [p for nm, W, b in zip(self.norms, self.W, self.b) for p in (nm.w, nm.b, W, b)]

    def with_params(self, params: list, stats: Optional[list] = None) -> "Net":
        """The same network with new parameters (module order) and, given, new running statistics."""
        norms = []
        for i, nm in enumerate(self.norms):
            rm, rv = (stats[2 * i], stats[2 * i + 1]) if stats is not None else (nm.rm, nm.rv)
            norms.append(Norm(params[4 * i], params[4 * i + 1], rm, rv, *_rest(nm)))
        return Net(norms, params[2::4], params[3::4])


def _rest(nm: Norm) -> tuple:
    return nm.steps, nm.momentum, nm.warmup, nm.eps, nm.r_max, nm.d_max


def _mask(z: Enc) -> Enc:
    """The ReLU's backward mask (z > 0): exact where every evaluation's sign agrees, else an atom of error 1."""
    c, e = z.centre, z.bound
    decided = (c - 2 * e > 0) | (c + 2 * e <= 0)
    return Enc.atom((c > 0).astype(np.float64), np.where(decided, 0.0, 1.0), U)


@dataclass
class Saved:
    """What a training-mode normalization keeps for its backward pass."""

    x: Enc
    xc: Enc  # x - mean
    inv: Enc  # 1 / std
    r: Enc
    d: Enc


def normalize_train(x: Enc, nm: Norm) -> tuple[Enc, Saved, Enc, Enc]:
    """The layer's training forward: (output u, what its backward needs, new running mean, new running var)."""
    F = x.centre.shape[1]
    mean = x.mean(0).closed()
    var = (x - mean).square().mean(0).closed()  # two passes, on both sides (module docstring)
    eps = Enc.constant(nm.eps, U)
    inv = (var + eps).rsqrt()
    std = (var + eps).sqrt().widen(1.0 / inv)  # C++: sqrt(var + eps); torch: (1 / std).reciprocal()
    if nm.steps >= nm.warmup:
        running_std = (nm.rv + eps).sqrt()
        lo = 1.0 / nm.r_max
        # The clamps' limits as each side rounds them (1/3 in double or float32): one ulp more.
        r = (std / running_std).clamp(lo, nm.r_max).closed()
        r = Enc.atom(r.centre, r.bound + 2 * U * max(lo, nm.r_max), U)
        d = ((mean - nm.rm) / running_std).clamp(-nm.d_max, nm.d_max).closed()
        d = Enc.atom(d.centre, d.bound + 2 * U * nm.d_max, U)
    else:  # warmup: exactly 1 and 0
        r, d = _x(np.ones(F)), _x(np.zeros(F))
    mom = Enc.constant(nm.momentum, U)
    batch_var = _cover(((1.0 / inv).square() - eps).clamp(0.0, None), var)  # torch's, the C++ one's
    new_rm = _cover(nm.rm + mom * (mean - nm.rm))
    new_rv = _cover(nm.rv + mom * (batch_var - nm.rv))
    xc = x - mean
    cpp = (xc * inv) * (r * nm.w) + (d * nm.w + nm.b)
    alpha = inv * nm.w
    y0 = x * alpha + (nm.b - mean * alpha)
    torch_ = y0 * r + (d * nm.w + nm.b * (1.0 - r))
    return _cover(cpp, torch_), Saved(x, xc, inv, r, d), new_rm, new_rv


def normalize_eval(x: Enc, nm: Norm) -> tuple[Enc, Enc]:
    """Evaluation mode: ((x - running_mean) rsqrt(running_var + eps) weight + bias, weight / std)."""
    scale = (nm.rv + Enc.constant(nm.eps, U)).rsqrt() * nm.w
    return _cover((x - nm.rm) * scale + nm.b), _cover(scale)


def _plus_bias(u: Enc, W: Enc, b: Enc) -> Enc:
    return u @ W.T + b


@dataclass
class Pass:
    z: list  # pre-activations per layer
    u: list  # each Linear's input (the normalization's output)
    saved: list  # training mode: per layer Saved; evaluation mode: per layer the column scale
    stats: list  # training mode: [new rm, new rv] per layer, flat
    out: Enc


def forward(net: Net, x: Enc, train: bool, tanh_out: bool = False) -> Pass:
    zs, us, saved, stats = [], [], [], []
    h = x
    last = len(net.W) - 1
    for l, (nm, W, b) in enumerate(zip(net.norms, net.W, net.b)):
        if train:
            u, s, rm, rv = normalize_train(h, nm)
            stats += [rm, rv]
        else:
            u, s = normalize_eval(h, nm)
        us.append(u)
        saved.append(s)
        z = _plus_bias(u, W, b).closed()
        zs.append(z)
        h = z.relu() if l < last else z
    out = _enc(ub.tanh(_iv(h))) if tanh_out else h
    return Pass(zs, us, saved, stats, out)


def _norm_backward(g: Enc, s: Saved, w: Enc, want_dx: bool) -> tuple[Enc, Enc, Optional[Enc]]:
    """(weight gradient, bias gradient, input gradient) of a training-mode normalization, g at its output."""
    n = g.centre.shape[0]
    xhat = s.xc * s.inv
    sg = g.sum(0)
    sgx = (g * xhat).sum(0)
    # C++: r sum(g x_hat) + d sum(g), sum(g); torch: sum(x_c g r) / std + d sum(g), sum(g r) + (1 - r) sum(g).
    dy0 = g * s.r
    wg = _cover(s.r * sgx + s.d * sg, (s.xc * dy0).sum(0) * s.inv + s.d * sg)
    bg = _cover(sg, dy0.sum(0) + (1.0 - s.r) * sg)
    if not want_dx:
        return wg, bg, None
    cpp = (g - sg.div_exact(n) - xhat * sgx.div_exact(n)) * (s.r * w * s.inv)
    torch_ = (dy0 - s.xc * ((s.xc * dy0).sum(0) * s.inv * s.inv).div_exact(n) - dy0.sum(0).div_exact(n)) * s.inv * w
    return wg, bg, _cover(cpp, torch_)


def backward(net: Net, p: Pass, d: Enc, train: bool, dx_cols: Optional[slice] = None) -> tuple[list, Optional[Enc]]:
    """The parameters' gradients (module order; training mode) and, with dx_cols, the gradient at
    those input columns (evaluation mode) for d at the output's pre-activation."""
    L = len(net.W)
    grads: list = [None] * (4 * L)
    g = d
    for l in range(L - 1, -1, -1):
        if train:
            grads[4 * l + 2] = _cover(g.T @ p.u[l])
            grads[4 * l + 3] = _cover(g.sum(0))
        if l == 0 and not train:
            du = g @ net.W[0][:, dx_cols]
            return grads, _cover(du * p.saved[0][dx_cols])
        du = g @ net.W[l]
        if train:
            wg, bg, dh = _norm_backward(du, p.saved[l], net.norms[l].w, want_dx=l > 0)
            grads[4 * l], grads[4 * l + 1] = wg, bg
        else:
            dh = _cover(du * p.saved[l])
        if l > 0:
            g = _cover(dh * _mask(p.z[l - 1]))
    return grads, None


@dataclass
class State:
    actor: Net
    critics: list
    actor_opt: ub.Adam
    critic_opt: ub.Adam
    action_bound: float
    policy_delay: int
    n_updates: int

    @staticmethod
    def of_agent(agent) -> "State":
        return State(
            Net.of(agent.actor),
            [Net.of(c) for c in agent.critics],
            ub.Adam.of(agent.actor_opt),
            ub.Adam.of(agent.critic_opt),
            float(agent.action_bound),
            int(agent.config.policy_delay),
            int(agent.n_updates),
        )


def update_bound(state: State, batch, noise: Optional[torch.Tensor] = None) -> dict:
    """Centre and bound of everything one CrossQ ``update(batch)`` from ``state`` produces: the keys of
    update_bounds.update_bound without targets, and ``critic_stats`` / ``actor_stats`` (each
    normalization's running mean and var, in module order)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _update_bound(state, batch, noise)


def _adam(params: list, grads: list, opt: ub.Adam) -> tuple[list, list, list]:
    new, ms, vs = [], [], []
    for k, (p, g) in enumerate(zip(params, grads)):
        assert not p.bound.any()  # the state's parameters are the exact float32 numbers
        np_, m1, v1 = ub.adam_step(p.centre, _iv(g), opt.exp_avg[k], opt.exp_avg_sq[k], opt.steps[k], opt)
        new.append(np_), ms.append(m1), vs.append(v1)
    return new, ms, vs


def _update_bound(state: State, batch, noise) -> dict:
    obs, action, reward, next_obs, done, discount = (ub._f64(t) for t in batch[:6])
    B = obs.shape[0]
    w = ub._f64(batch.weights) if batch.weights is not None else np.ones((B, 1))
    out: dict = {}

    # a' = clamp(mu(s') + noise), the actor in evaluation mode; the joint batch [(s, a); (s', a')].
    a_next = forward(state.actor, _x(next_obs), train=False, tanh_out=True).out
    if noise is not None:
        a_next = (a_next + _x(ub._f64(noise))).clamp(-state.action_bound, state.action_bound)
    joint = Enc.atom(
        np.concatenate([np.concatenate([obs, action], 1), np.concatenate([next_obs, a_next.centre], 1)]),
        np.concatenate(
            [
                np.zeros((B, obs.shape[1] + action.shape[1])),
                np.concatenate([np.zeros_like(next_obs), a_next.closed().bound], 1),
            ]
        ),
        U,
    )
    passes = [forward(c, joint, train=True) for c in state.critics]
    qs = [p.out for p in passes]
    nq = [q[B:].closed() for q in qs]
    next_q = (
        nq[0]
        if len(nq) == 1
        else Enc.atom(np.minimum(nq[0].centre, nq[1].centre), np.maximum(nq[0].bound, nq[1].bound), U)
    )
    y = (_x(reward) + _x(discount * (1.0 - done)) * next_q).closed()
    tds = [q[:B] - y for q in qs]
    squares = sum((td.square() for td in tds), _x(np.zeros((B, 1))))
    out["critic_loss"] = _cover((squares * _x(w)).mean().rounds(2))
    out["q_mean"] = _cover(qs[0][:B].mean())
    out["td_errors"] = tds[0].abs()[:, 0]
    grads_all, new_params, ms, vs, stats = [], [], [], [], []
    k = 0
    for net, p, td in zip(state.critics, passes, tds):
        g_top = (td * _x(2.0 * w)).div_exact(B).rounds(2)
        g_full = Enc.atom(
            np.concatenate([g_top.centre, np.zeros((B, 1))]),
            np.concatenate([g_top.closed().bound, np.zeros((B, 1))]),
            U,
        )
        grads, _ = backward(net, p, g_full, train=True)
        opt = state.critic_opt
        sub = ub.Adam(opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay)
        n = len(grads)
        sub.exp_avg, sub.exp_avg_sq, sub.steps = opt.exp_avg[k : k + n], opt.exp_avg_sq[k : k + n], opt.steps[k : k + n]
        new, m1, v1 = _adam(net.params(), grads, sub)
        k += n
        grads_all += grads
        new_params.append(new)
        ms += m1
        vs += v1
        stats.append(p.stats)
    out.update(
        critic_grads=[_iv(g) for g in grads_all],
        critics=[p for c in new_params for p in c],
        critic_exp_avg=ms,
        critic_exp_avg_sq=vs,
        critic_stats=[_iv(s) for c in stats for s in c],
    )
    out["critic_loss"] = _iv(out["critic_loss"])
    out["q_mean"] = _iv(out["q_mean"])
    out["td_errors"] = _iv(out["td_errors"])

    if (state.n_updates + 1) % state.policy_delay != 0:
        out.update(
            actor=[_iv(p) for p in state.actor.params()],
            actor_exp_avg=[ub.IV.exact(m) for m in state.actor_opt.exp_avg],
            actor_exp_avg_sq=[ub.IV.exact(v) for v in state.actor_opt.exp_avg_sq],
            actor_stats=[_iv(s) for nm in state.actor.norms for s in (nm.rm, nm.rv)],
        )
        return out
    # The actor step: the actor in training mode on s, the just-stepped first critic (new parameters
    # and running statistics) in evaluation mode; dJ/dQ = -1/B, back to the action columns, through tanh.
    critic = state.critics[0].with_params([_enc(p) for p in new_params[0]], stats[0])
    fa = forward(state.actor, _x(obs), train=True, tanh_out=True)
    z = Enc.atom(
        np.concatenate([obs, fa.out.centre], 1),
        np.concatenate([np.zeros_like(obs), fa.out.closed().bound], 1),
        U,
    )
    fc = forward(critic, z, train=False)
    out["actor_loss"] = _iv(_cover(-(fc.out.mean())))
    d_q = Enc.atom(np.full((B, 1), -1.0 / B), np.full((B, 1), U / B), U)
    _, d_a = backward(critic, fc, d_q, train=False, dx_cols=slice(obs.shape[1], None))
    d_z = _enc(ub.tanh_backward(_iv(d_a), _iv(fa.out)))
    actor_grads, _ = backward(state.actor, fa, d_z, train=True)
    new_actor, am, av = _adam(state.actor.params(), actor_grads, state.actor_opt)
    out.update(
        actor_grads=[_iv(g) for g in actor_grads],
        actor=new_actor,
        actor_exp_avg=am,
        actor_exp_avg_sq=av,
        actor_stats=[_iv(s) for s in fa.stats],
    )
    return out
