"""Sound bounds for the tests that compare two floating-point computations of the same numbers.

pydpg.deploy.rounding bounds a *policy's* actions. The tests also compare other numbers computed two ways
(a fused kernel against the formula it implements, torch against numpy, float32 against float64, a
Chan merge against a two-pass variance): this module bounds those, from the computation and the
data, never from what one machine happened to round to.

``Enc`` is a forward error analysis carried along with the values (Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., §3.1-3.4). An ``Enc`` stands for one exact real quantity X, computed
from exact inputs by a formula; it holds a float64 ``centre`` and a ``bound`` such that *every*
evaluation of that formula in the stated arithmetic (unit roundoff ``u``: float32 2^-24, float64
2^-53; any summation order, any grouping of its products and sums, FMA or not, intermediate
accumulation in a wider type included) lies within ``bound`` of X. The centre is one such evaluation
(float64, u >= 2^-53), so it lies within ``bound`` of X too. Two evaluations of formulas for the same
X therefore differ by at most the sum of their bounds (``agree``).

How the bound is carried:
- a polynomial segment (sums and products of "atoms") is evaluated with at most k roundings on any
  path, so it errs by at most gamma_k * (the same polynomial on the atoms' absolute values), whatever
  the order and grouping (Higham Lemma 3.1 and §3.1: gamma_k = k u / (1 - k u)); a sum of n terms in
  any order adds n - 1 roundings to a path, a product one, a division by an exact integer one;
- an atom's own error (a statistic, a quotient, a square root) is propagated exactly through the
  polynomial: |a'b' - ab| <= |a'| |b' - b| + |b| |a' - a|, sums add;
- a non-polynomial step (division by a computed quantity, sqrt, rsqrt) closes the segment: its
  argument's error goes through the function's Lipschitz constant on the argument's interval, plus
  the function's own rounding (division and sqrt correctly rounded; rsqrt within ``RSQRT_ULPS``);
- clamp, abs, max, min are 1-Lipschitz and exact: they pass the bound on unchanged.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from pydpg.deploy.rounding import within

U32 = 2.0**-24  # unit roundoff, round to nearest
U64 = 2.0**-53
# torch.rsqrt on CPU tensors: Sleef/MKL vectorised, not correctly rounded. MKL VML's LA mode and
# Sleef's u10 functions promise <= 4 ulps (the same allowance as csrc/deploy/rounding_bound.hpp's).
RSQRT_ULPS = 4.0


def gamma(k: float, u: float) -> float:
    """gamma_k = k u / (1 - k u): the relative error of k roundings in a row (Higham Lemma 3.1)."""
    if k * u >= 0.5:
        raise ValueError(f"gamma_{k} at u = {u} is not a bound")
    return k * u / (1.0 - k * u)


Number = Union[float, np.ndarray]


class Enc:
    """An exact quantity X (an array of them) with a float64 centre and a bound on |evaluation - X|.

    Internally a polynomial segment keeps ``prop`` (the atoms' errors propagated exactly), ``mag``
    (the segment's polynomial on upper bounds of the atoms' absolute values) and ``k`` (roundings on
    the longest path); ``bound = prop + gamma_k * mag``."""

    def __init__(self, centre, prop, mag, k: int, u: float):
        self.centre = np.asarray(centre, dtype=np.float64)
        self.prop = np.broadcast_to(np.asarray(prop, dtype=np.float64), self.centre.shape)
        self.mag = np.broadcast_to(np.asarray(mag, dtype=np.float64), self.centre.shape)
        self.k = int(k)
        self.u = float(u)

    # ------------------------------------------------------------------ construction
    @classmethod
    def exact(cls, x, u: float) -> "Enc":
        """Inputs every evaluation reads exactly (the same float32/float64 numbers)."""
        x = np.asarray(x, dtype=np.float64)
        return cls(x, 0.0, np.abs(x), 0, u)

    @classmethod
    def atom(cls, centre, bound, u: float) -> "Enc":
        """A quantity every evaluation has within ``bound`` of X (and ``centre`` within ``bound``)."""
        centre = np.asarray(centre, dtype=np.float64)
        bound = np.asarray(bound, dtype=np.float64)
        return cls(centre, bound, np.abs(centre) + 2 * bound, 0, u)  # |evaluation| <= |centre| + 2 bound

    @classmethod
    def constant(cls, value: float, u: float) -> "Enc":
        """A decimal constant (0.99, 1e-3) that an evaluation may hold rounded to its own type."""
        return cls.atom(value, abs(value) * u, u)

    def _lift(self, other) -> "Enc":
        return other if isinstance(other, Enc) else Enc.exact(other, self.u)

    # ------------------------------------------------------------------ what it promises
    @property
    def bound(self) -> np.ndarray:
        return self.prop + gamma(self.k, self.u) * self.mag

    @property
    def upper(self) -> np.ndarray:
        """An upper bound on |X| (the centre is an evaluation, within ``bound`` of X)."""
        return np.abs(self.centre) + self.bound

    def closed(self) -> "Enc":
        """The same quantity as an atom: its rounding so far becomes an input error."""
        return Enc.atom(self.centre, self.bound, self.u)

    # ------------------------------------------------------------------ polynomial steps
    def __add__(self, other) -> "Enc":
        o = self._lift(other)
        return Enc(self.centre + o.centre, self.prop + o.prop, self.mag + o.mag, max(self.k, o.k) + 1, self.u)

    __radd__ = __add__

    def __neg__(self) -> "Enc":
        return Enc(-self.centre, self.prop, self.mag, self.k, self.u)

    def __sub__(self, other) -> "Enc":
        return self + (-self._lift(other))

    def __rsub__(self, other) -> "Enc":
        return self._lift(other) + (-self)

    def __mul__(self, other) -> "Enc":
        o = self._lift(other)
        # |P'Q' - PQ| <= |P'| |Q' - Q| + |Q| |P' - P|, with |P'| <= |P| + prop_P and |P| <= upper_P.
        prop = (self.upper + self.prop) * o.prop + o.upper * self.prop
        k = self.k + o.k + (0 if _exact_power_of_two(self) or _exact_power_of_two(o) else 1)
        return Enc(self.centre * o.centre, prop, self.mag * o.mag, k, self.u)

    __rmul__ = __mul__

    def square(self) -> "Enc":
        return self * self

    def scale(self, s: float) -> "Enc":
        """Times an exact constant that every evaluation uses as is."""
        return self * Enc.exact(s, self.u)

    def div_exact(self, n: float) -> "Enc":
        """Divided by an exact number (a count): one rounding, fl(x / n) = (x / n)(1 + d)."""
        k = self.k if _powers_of_two(np.asarray(n, dtype=np.float64)) else self.k + 1
        return Enc(self.centre / n, self.prop / abs(n), self.mag / abs(n), k, self.u)

    def sum(self, axis=None, keepdims: bool = False) -> "Enc":
        n = self.centre.size if axis is None else int(np.prod([self.centre.shape[a] for a in np.atleast_1d(axis)]))
        return Enc(
            self.centre.sum(axis, keepdims=keepdims),
            self.prop.sum(axis, keepdims=keepdims),
            self.mag.sum(axis, keepdims=keepdims),
            self.k + max(n - 1, 0),
            self.u,
        )

    def mean(self, axis=None, keepdims: bool = False) -> "Enc":
        n = self.centre.size if axis is None else int(np.prod([self.centre.shape[a] for a in np.atleast_1d(axis)]))
        return self.sum(axis, keepdims).div_exact(n)

    def __matmul__(self, other) -> "Enc":
        o = self._lift(other)
        return (self[..., :, :, None] * o[..., None, :, :]).sum(-2)

    def __getitem__(self, idx) -> "Enc":
        return Enc(self.centre[idx], self.prop[idx], self.mag[idx], self.k, self.u)

    @property
    def T(self) -> "Enc":
        return Enc(self.centre.T, self.prop.T, self.mag.T, self.k, self.u)

    def rounds(self, extra: int) -> "Enc":
        """The same quantity, allowing ``extra`` more roundings on its longest path (an implementation
        that groups the same monomials with more steps: a division as a reciprocal and a product,
        autograd's separate kernels)."""
        return Enc(self.centre, self.prop, self.mag, self.k + int(extra), self.u)

    def widen(self, other: "Enc") -> "Enc":
        """One atom covering two evaluations of the same quantity by different formulas (say the
        module's mean and the reference's): this centre, and a bound covering both."""
        a, b = self.closed(), other.closed()
        return Enc.atom(a.centre, np.maximum(a.bound, b.bound), self.u)  # bounds are distances from X

    def reshape(self, *shape) -> "Enc":
        return Enc(self.centre.reshape(*shape), self.prop.reshape(*shape), self.mag.reshape(*shape), self.k, self.u)

    # ------------------------------------------------------------------ steps that close a segment
    def __truediv__(self, other) -> "Enc":
        """X / Y for a computed Y (one correctly rounded division, or a reciprocal and a product)."""
        if not isinstance(other, Enc):
            return self.div_exact(other)
        x, y = self.closed(), other.closed()
        y_min = np.abs(y.centre) - 2 * y.bound  # a lower bound on |Y| and on every |Y'|
        if not (y_min > 0).all():
            raise ValueError("the divisor's interval contains 0: no bound")
        x_up = np.abs(x.centre) + 2 * x.bound
        q = x.centre / y.centre
        # Rounding: one correctly rounded division, or a reciprocal and a product (gamma_2).
        bound = x.bound / y_min + (np.abs(x.centre) + x.bound) * y.bound / y_min**2 + gamma(2, self.u) * x_up / y_min
        return Enc.atom(q, bound, self.u)

    def __rtruediv__(self, other) -> "Enc":
        return self._lift(other) / self

    def sqrt(self) -> "Enc":
        x = self.closed()
        lo = x.centre - 2 * x.bound
        if not (lo >= 0).all():
            raise ValueError("sqrt of an interval below 0: no bound")
        # |sqrt(a') - sqrt(a)| = |a' - a| / (sqrt(a') + sqrt(a)) <= bound / (2 sqrt(lo)), or sqrt(bound).
        with np.errstate(divide="ignore", invalid="ignore"):
            lip = np.where(lo > 0, x.bound / (2 * np.sqrt(lo)), np.sqrt(x.bound))
        lip = np.minimum(lip, np.sqrt(x.bound))
        return Enc.atom(np.sqrt(x.centre), lip + self.u * np.sqrt(x.centre + 2 * x.bound), self.u)

    def rsqrt(self, ulps: float = RSQRT_ULPS) -> "Enc":
        x = self.closed()
        lo = x.centre - 2 * x.bound
        if not (lo > 0).all():
            raise ValueError("rsqrt of an interval reaching 0: no bound")
        value = 1.0 / np.sqrt(x.centre)
        # d/da a^(-1/2) = -a^(-3/2) / 2; one ulp of a result r is at most 2 u r.
        return Enc.atom(value, 0.5 * lo**-1.5 * x.bound + ulps * 2 * self.u * lo**-0.5, self.u)

    # ------------------------------------------------------------------ exact, 1-Lipschitz steps
    def _lipschitz(self, centre) -> "Enc":
        x = self.closed()
        return Enc.atom(centre, x.bound, self.u)

    def clamp(self, low: Optional[Number] = None, high: Optional[Number] = None) -> "Enc":
        x = self.closed()
        # Every evaluation lies within 2 bound of the centre: where that whole interval is beyond a
        # bound, every evaluation and X are that bound exactly.
        lo_all = np.zeros(x.centre.shape, bool) if low is None else x.centre + 2 * x.bound <= low
        hi_all = np.zeros(x.centre.shape, bool) if high is None else x.centre - 2 * x.bound >= high
        return Enc.atom(np.clip(x.centre, low, high), np.where(lo_all | hi_all, 0.0, x.bound), self.u)

    def abs(self) -> "Enc":
        return self._lipschitz(np.abs(self.centre))

    def relu(self) -> "Enc":
        return self.clamp(0.0, None)

    def amax(self, axis=-1) -> "Enc":
        x = self.closed()
        return Enc.atom(x.centre.max(axis), x.bound.max(axis), self.u)

    def amin(self, axis=-1) -> "Enc":
        x = self.closed()
        return Enc.atom(x.centre.min(axis), x.bound.max(axis), self.u)


def _exact_power_of_two(e: Enc) -> bool:
    """An exact operand whose entries are all 0 or +-2^e: a product by it rounds nothing."""
    return e.k == 0 and not np.any(e.prop) and _powers_of_two(e.centre)


def _powers_of_two(x: np.ndarray) -> bool:
    """Whether every entry is 0 or +-2^e: a product by it is exact (barring under/overflow)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    if x.size == 0:
        return True
    m, _ = np.frexp(x)
    return bool(np.all((x == 0) | (m == 0.5)))


def variance(x: Enc, axis=0, keepdims: bool = False) -> Enc:
    """The population variance mean((x - mean x)^2) as any of the usual algorithms computes it
    (two-pass, Welford's updates, or mean(x^2) - mean(x)^2): the larger of two bounds, each sound on
    its own. The two-pass formula's enclosure covers that algorithm, x's errors included. For the
    others: the textbook formula's rounding bound, gamma_{2n+4} (mean(x^2) + mean(|x|)^2), doubled
    (Chan, Golub and LeVeque (1983) bound the updating algorithm's error by n u kappa times the
    variance and the textbook one's by n u kappa^2, kappa^2 = mean(x^2) / variance >= 1), plus what
    x's own errors (at most b, per column) do to the exact variance: Var(x + e) - Var(x) =
    2 Cov(x, e) + Var(e), at most 2 std(x) b + b^2, with std(x) <= std(centre) + b (the triangle
    inequality on centred vectors)."""
    mu = x.mean(axis, keepdims=True)
    two_pass = (x - mu.closed()).square().mean(axis, keepdims=keepdims).closed()
    n = x.centre.size if axis is None else int(np.prod([x.centre.shape[a] for a in np.atleast_1d(axis)]))
    up = x.upper
    b = x.bound.max(axis, keepdims=keepdims, initial=0.0)
    textbook = (
        2 * gamma(2 * n + 4, x.u) * ((up**2).mean(axis, keepdims=keepdims) + up.mean(axis, keepdims=keepdims) ** 2)
    )
    std_c = np.sqrt(x.centre.var(axis, keepdims=keepdims)) * (1 + 2.0**-40)
    own = 2 * (std_c + b) * b + b * b
    return Enc.atom(two_pass.centre, np.maximum(two_pass.bound, (textbook + own) * (1 + 2.0**-40)), x.u)


def agree(a, b, *encs: Enc, what: str = "") -> None:
    """Assert |a - b| <= the sum of the bounds of ``encs`` (each a formula for the same quantity,
    one per evaluation compared), entry by entry (broadcast to a's shape)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    allowed = np.zeros(np.broadcast(a, b).shape)
    for e in encs:
        allowed = allowed + np.broadcast_to(e.bound, allowed.shape)
    ok, i, d, allow = within(np.broadcast_to(a, allowed.shape), np.broadcast_to(b, allowed.shape), allowed)
    assert ok, f"{what or 'values'} differ at {i}: |diff| {d:.3g} > {allow:.3g} (the derived rounding bound)"


def assert_near(got, want, allowed, what: str = "") -> None:
    """Assert |got - want| <= allowed entry by entry (the allowance derived by the caller)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    allowed = np.broadcast_to(np.asarray(allowed, dtype=np.float64), np.broadcast(got, want).shape)
    ok, i, d, allow = within(np.broadcast_to(got, allowed.shape), np.broadcast_to(want, allowed.shape), allowed)
    assert ok, f"{what or 'values'} differ at {i}: |diff| {d:.3g} > {allow:.3g}"


# Observation parity when both sides read the same mjData and run the same physics (the C++ loop links
# the mujoco wheel's own libmujoco, steps with the same ctrl from the same bit-exact state): the C++
# builder rounds its float64 value once to float32 (relative 2^-24), and sin/cos come from two
# libraries (glibc in C++, numpy in Python), each within 4 ulps of a value of magnitude <= 1, i.e. at
# most 2^-50 apart. pydpg.contract.observation.observation_error divides by max(1, |want|), so
# err <= 2^-24 (1 + 2^-50) + 2^-50 < 2^-24 + 2^-48 on every CPU.
OBS_PARITY = U32 + 2.0**-48


def obs_rounding(want: np.ndarray, transcendental: bool = True) -> np.ndarray:
    """Per entry, how far the float32 observation the C++ builder makes from mjData may be from the
    float64 one numpy makes from the same mjData with the same float64 operations (one float32
    rounding, relative 2^-24, plus 2^-48 for sin/cos from two libraries, each within 4 ulps)."""
    want = np.abs(np.asarray(want, dtype=np.float64))
    return U32 * want + (2.0**-48 if transcendental else 0.0)


__all__ = ["U32", "U64", "RSQRT_ULPS", "gamma", "Enc", "variance", "agree", "assert_near", "OBS_PARITY", "obs_rounding"]
