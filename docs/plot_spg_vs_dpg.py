"""Draw docs/spg_vs_dpg.png: the Gaussian policy gradient against the DPG as sigma -> 0.

Run from the repository root:  python docs/plot_spg_vs_dpg.py   (numpy, scipy, matplotlib; ~10 s)

Left:  relative distance of the stochastic policy gradient to the DPG. The exact gradient of J_sigma
       (closed form) approaches the DPG like sigma^2; a Monte Carlo likelihood-ratio (REINFORCE,
       returns-to-go, no baseline) estimate from a fixed number of rollouts does not, because its
       noise grows like 1/sigma.
Right: per-rollout variance of that estimator (grows like 1/sigma^2) against the per-rollout
       variance of the DPG estimate sum_t gamma^t grad_a Q(s_t, K s_t) s_t^T (no sigma at all).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import lq  # noqa: E402

N_ROLLOUTS = 20_000
SEED = 2014


def main(out: Path = ROOT / "docs" / "spg_vs_dpg.png") -> None:
    p, K = lq.example_problem(), lq.example_gain()
    G = lq.dpg(p, K)
    gnorm = np.linalg.norm(G)
    sigmas = np.logspace(-3, 0, 13)
    fine = np.logspace(-3, 0, 200)

    exact_bias = np.array([np.linalg.norm(lq.spg(p, K, s) - G) for s in fine]) / gnorm
    mc_err, mc_var = [], []
    for s in sigmas:
        g = lq.reinforce_samples(p, K, s, N_ROLLOUTS, np.random.default_rng(SEED))  # common random numbers
        mc_err.append(np.linalg.norm(g.mean(0) - G) / gnorm)
        mc_var.append(g.reshape(N_ROLLOUTS, -1).var(0, ddof=1).sum() / gnorm**2)
    mc_err, mc_var = np.array(mc_err), np.array(mc_var)
    d = lq.dpg_samples(p, K, N_ROLLOUTS, np.random.default_rng(SEED))
    dpg_var = d.reshape(N_ROLLOUTS, -1).var(0, ddof=1).sum() / gnorm**2
    dpg_err = np.linalg.norm(d.mean(0) - G) / gnorm
    # expected error of the N-rollout REINFORCE mean: sqrt(bias^2 + trace Var / N)
    exact_at = np.array([np.linalg.norm(lq.spg(p, K, s) - G) for s in sigmas]) / gnorm
    rms = np.sqrt(exact_at**2 + mc_var / N_ROLLOUTS)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.3), constrained_layout=True)

    ax0.loglog(
        fine,
        exact_bias,
        "C0-",
        lw=2,
        label=r"exact $\|\nabla J_\sigma - \nabla J\| / \|\nabla J\|$ (slope 2: $\propto\sigma^2$)",
    )
    ax0.loglog(sigmas, mc_err, "C3o", label=f"REINFORCE mean of {N_ROLLOUTS:,} rollouts")
    ax0.loglog(sigmas, rms, "C3--", lw=1, label=r"expected: $\sqrt{\mathrm{bias}^2 + \mathrm{tr\,Var}/N}$")
    ax0.axhline(dpg_err, color="C2", lw=1.5, label=f"DPG mean of {N_ROLLOUTS:,} rollouts")
    ax0.set_xlabel(r"policy noise $\sigma$")
    ax0.set_ylabel("relative distance to the DPG")
    ax0.set_title("Gaussian policy gradient vs DPG")
    ax0.legend(fontsize=8, loc="lower right", framealpha=0.95)
    ax0.grid(True, which="major", alpha=0.3)

    ax1.loglog(sigmas, mc_var, "C3o-", label="REINFORCE (returns-to-go, no baseline)")
    ax1.loglog(sigmas, mc_var[0] * (sigmas / sigmas[0]) ** -2, "k:", lw=1, label=r"$\propto 1/\sigma^2$")
    ax1.axhline(dpg_var, color="C2", lw=1.5, label="DPG with the true critic")
    ax1.set_xlabel(r"policy noise $\sigma$")
    ax1.set_ylabel(r"per-rollout $\mathrm{tr\,Var}[\hat g] / \|\nabla J\|^2$")
    ax1.set_title("estimator variance")
    ax1.legend(fontsize=8, loc="upper right")
    ax1.grid(True, which="major", alpha=0.3)

    fig.suptitle(r"LQ problem (tests/lq.py): $n=3$, $m=2$, $\gamma=0.9$, linear policy $a = Ks$", fontsize=10)
    fig.savefig(out, dpi=110)

    slope_bias = np.polyfit(np.log(fine), np.log(exact_bias), 1)[0]
    small = sigmas <= 0.1
    slope_var = np.polyfit(np.log(sigmas[small]), np.log(mc_var[small]), 1)[0]
    print(f"wrote {out}")
    print(f"bias slope (exact, log-log): {slope_bias:.6f}")
    print(f"REINFORCE variance slope for sigma <= 0.1: {slope_var:.3f}")
    print(f"REINFORCE variance at sigma=1e-3 / DPG variance: {mc_var[0] / dpg_var:.3g}")


if __name__ == "__main__":
    main()
