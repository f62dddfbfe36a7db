"""Peer agents configured like pydpg's defaults, shared by the benchmarks (one definition each).

Stable-Baselines3 comes with the optional ``bench`` extra: pip install -e .[bench]
"""

from __future__ import annotations


def sb3_ddpg(env, learning_starts: int, seed: int):
    """SB3's DDPG with pydpg's default hyper-parameters (the TD3 paper's OurDDPG, sfujim/TD3):
    256-256 nets, Adam 3e-4, batch 256, tau 0.005, gamma 0.99, 1M buffer, one update per env step,
    Gaussian exploration noise of std 0.1 (``pydpg.experiments.sb3_peer.sb3_model`` maps a DDPGConfig onto SB3;
    sweeps use it too). ``env`` is an id or a gymnasium env."""
    from pydpg.core.config import DDPGConfig
    from pydpg.experiments.sb3_peer import sb3_model

    return sb3_model(env, DDPGConfig(learning_starts=learning_starts), seed)


def _crossq_kwargs(critic_width: int, learning_starts: int, seed: int) -> dict:
    # The peers' own CrossQ defaults (learning rate 1e-3, Adam betas (0.5, 0.999), policy delay 3,
    # batch 256, batch renormalization as published) with pydpg's actor (256-256) and the critic width
    # compared; one update per env step, a 1M buffer.
    return dict(
        learning_starts=learning_starts,
        seed=seed,
        batch_size=256,
        buffer_size=1_000_000,
        policy_kwargs={"net_arch": {"pi": [256, 256], "qf": [critic_width, critic_width]}},
        verbose=0,
    )


def sbx_crossq(env, critic_width: int, learning_starts: int, seed: int):
    """SBX's CrossQ (sbx-rl, JAX: the whole update jitted, a stochastic SAC actor)."""
    from sbx import CrossQ

    return CrossQ("MlpPolicy", env, **_crossq_kwargs(critic_width, learning_starts, seed))


def sb3_contrib_crossq(env, critic_width: int, learning_starts: int, seed: int):
    """sb3-contrib's CrossQ (PyTorch, the authors' reference port, a stochastic SAC actor)."""
    from sb3_contrib import CrossQ

    return CrossQ("MlpPolicy", env, **_crossq_kwargs(critic_width, learning_starts, seed))


def xla_threads(n: int) -> None:
    """XLA's CPU thread pools to ``n`` threads, as torch.set_num_threads(n) does for torch. Must run
    before jax is imported."""
    import os

    multi = "true" if n > 1 else "false"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={n}"
    ).strip()


class JaxDDPG:
    """The fastest CPU peer we know of: DDPG/TD3 in the structure of CleanRL's
    ``ddpg_continuous_action_jax.py`` / ``td3_continuous_action_jax.py``. Flax ``Actor`` (tanh
    output) and ``QNetwork`` (observation and action concatenated at the input), one optax Adam per
    network, the critic loss on y = r + discount * (1 - done) * Q'(s', mu'(s')), the actor loss
    -Q(s, mu(s)), and Polyak averaging of all targets after the actor step. XLA compiles each whole
    update, optimizer included, into one program (TD3: a second, critic-only one for the steps
    without an actor update). Hyper-parameters are pydpg's defaults (256-256, Adam 3e-4, tau 0.005);
    TD3's: twin critics, actor every 2nd step, smoothing noise 0.2 clipped at 0.5.

    Needs the ``bench`` extra (jax[cpu], flax, optax).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        td3: bool = False,
        seed: int = 0,
        hidden: tuple[int, ...] = (256, 256),
        lr: float = 3e-4,
        tau: float = 0.005,
    ):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import optax

        class Actor(nn.Module):
            @nn.compact
            def __call__(self, s):
                for w in hidden:
                    s = nn.relu(nn.Dense(w)(s))
                return jnp.tanh(nn.Dense(act_dim)(s))

        class QNetwork(nn.Module):
            @nn.compact
            def __call__(self, s, a):
                x = jnp.concatenate([s, a], -1)
                for w in hidden:
                    x = nn.relu(nn.Dense(w)(x))
                return nn.Dense(1)(x)

        actor, qnet, opt = Actor(), QNetwork(), optax.adam(lr)
        n_q = 2 if td3 else 1
        keys = jax.random.split(jax.random.PRNGKey(seed), 2 + n_q)
        s0, a0 = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
        pi = actor.init(keys[0], s0)
        qs = tuple(qnet.init(k, s0, a0) for k in keys[2:])
        # Targets start as copies of the online parameters (a fresh buffer each).
        self.state = dict(
            pi=pi,
            pi_t=jax.tree_util.tree_map(jnp.array, pi),
            pi_opt=opt.init(pi),
            qs=qs,
            qs_t=jax.tree_util.tree_map(jnp.array, qs),
            q_opt=opt.init(qs),
            key=keys[1],
        )
        noise, clip = (0.2, 0.5) if td3 else (0.0, 0.0)

        def critic_step(st, d):
            key, k = jax.random.split(st["key"])
            a2 = actor.apply(st["pi_t"], d["next_obs"])
            if noise > 0:  # target policy smoothing
                eps = jnp.clip(noise * jax.random.normal(k, a2.shape), -clip, clip)
                a2 = jnp.clip(a2 + eps, -1.0, 1.0)
            q2 = jnp.min(jnp.stack([qnet.apply(p, d["next_obs"], a2) for p in st["qs_t"]]), axis=0)
            y = jax.lax.stop_gradient(d["reward"] + d["discount"] * (1.0 - d["done"]) * q2)

            def loss(qs):
                return sum(jnp.mean((qnet.apply(p, d["obs"], d["action"]) - y) ** 2) for p in qs)

            value, grads = jax.value_and_grad(loss)(st["qs"])
            upd, q_opt = opt.update(grads, st["q_opt"], st["qs"])
            return {**st, "qs": optax.apply_updates(st["qs"], upd), "q_opt": q_opt, "key": key}, value

        def full_step(st, d):
            st, q_loss = critic_step(st, d)

            def loss(pi):
                return -jnp.mean(qnet.apply(st["qs"][0], d["obs"], actor.apply(pi, d["obs"])))

            value, grads = jax.value_and_grad(loss)(st["pi"])
            upd, pi_opt = opt.update(grads, st["pi_opt"], st["pi"])
            pi = optax.apply_updates(st["pi"], upd)
            polyak = lambda online, target: jax.tree_util.tree_map(  # noqa: E731
                lambda p, t: tau * p + (1.0 - tau) * t, online, target
            )
            return {
                **st,
                "pi": pi,
                "pi_opt": pi_opt,
                "pi_t": polyak(pi, st["pi_t"]),
                "qs_t": polyak(st["qs"], st["qs_t"]),
            }, (q_loss, value)

        self._full = jax.jit(full_step)
        self._critic_only = jax.jit(critic_step)
        self._act = jax.jit(actor.apply)
        self.delay = 2 if td3 else 1
        self.n = 0

    def update(self, batch: dict):
        """One update on ``batch`` (obs, action, reward [B, 1], next_obs, done [B, 1], discount [B, 1]);
        returns the losses without waiting for them (JAX dispatches asynchronously)."""
        self.n += 1
        fn = self._full if self.n % self.delay == 0 else self._critic_only
        self.state, losses = fn(self.state, batch)
        return losses

    def act(self, obs):
        """mu(obs) for a [n, obs_dim] array, as a NumPy array (waits for any update in flight)."""
        import numpy as np

        return np.asarray(self._act(self.state["pi"], obs))
