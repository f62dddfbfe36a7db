"""DDPG hyperparameters.

Defaults are the modern, re-tuned DDPG of Fujimoto et al. 2018 ("Addressing Function Approximation
Error in Actor-Critic Methods", the TD3 paper's "OurDDPG"; github.com/sfujim/TD3) and CleanRL's
``ddpg_continuous_action.py`` (which shares them except for a delayed actor, see ``policy_delay``).
``DDPGConfig.preset("paper")`` gives Lillicrap et al. 2015 §7, and ``DDPGConfig.preset("td3")``
switches on TD3's three changes.

Noise scales, target-smoothing noise and its clip are in the actor's normalized [-1, 1] action
units (0.1 here = 0.1 * max_action in TD3's code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from pydpg.common.names import did_you_mean

NOISE_TYPES = ("gaussian", "ou", "none")
UPDATE_BACKENDS = ("auto", "cpp", "torch")


@dataclass
class DDPGConfig:
    # Networks. 256-256 as in OurDDPG / CleanRL; the paper used 400-300 with final_init=3e-3.
    hidden: tuple[int, ...] = (256, 256)
    final_init: Optional[float] = None  # U(±final_init) last layer (Lillicrap §7); None = PyTorch default
    # LayerNorm after each hidden layer of the critic(s) (RLPD, Ball et al. 2023; Nauman et al. 2024).
    # Off: neither OurDDPG, CleanRL nor the paper normalizes (the paper's batch norm is not kept).
    critic_layer_norm: bool = False
    # The critics' widths where they differ from the actor's; () = ``hidden``. CrossQ widens the critic
    # to 2048-2048 (Bhatt et al. 2024; sb3-contrib's CrossQ uses 1024-1024 to save compute).
    critic_hidden: tuple[int, ...] = ()

    # Optimization. Adam 3e-4 for both networks: OurDDPG and CleanRL (paper: 1e-4 actor, 1e-3 critic).
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4  # OurDDPG / CleanRL (paper: 1e-3)
    # Adam's first-moment decay, every optimizer's (SALE's encoder too): torch's default; CrossQ
    # uses 0.5 (its code, sb3-contrib).
    adam_beta1: float = 0.9
    batch_size: int = 256  # OurDDPG / CleanRL (paper: 64)
    tau: float = 0.005  # Polyak rate, OurDDPG / CleanRL (paper: 0.001)
    gamma: float = 0.99  # all three sources
    critic_l2: float = 0.0  # L2 on the critic as Adam weight_decay; paper: 1e-2, dropped by OurDDPG
    buffer_size: int = 1_000_000  # all three sources

    # Exploration, in [-1, 1] action units.
    exploration_noise: str = "gaussian"  # "gaussian" (TD3 / CleanRL), "ou" (paper) or "none"
    exploration_sigma: float = 0.1  # Gaussian std: TD3 main.py expl_noise=0.1, CleanRL exploration_noise=0.1
    ou_theta: float = 0.15  # Lillicrap §7
    ou_sigma: float = 0.2  # Lillicrap §7
    ou_dt: float = 1e-2  # OpenAI baselines' OrnsteinUhlenbeckActionNoise
    # Uniform-random steps before learning: TD3 main.py start_timesteps=25e3, CleanRL learning_starts=25e3.
    # Small tasks (the pendulums) solve in a few thousand steps, so 25k random steps would be most of
    # the run; the TD3 paper (§6.1) used 1_000 there. `preset(..., env_id=...)` applies that.
    learning_starts: int = 25_000
    train_freq: int = 1  # env steps between updates: one update per env step (TD3 / CleanRL)
    gradient_steps: int = 1  # gradient steps per update

    # TD3 switches (Fujimoto et al. 2018 §4.2, §5.2, §5.3); off = DDPG. TD3 values: True, 2, 0.2, 0.5.
    twin_critics: bool = False  # clipped double-Q: target uses min of two critics
    # Actor + target update every `policy_delay` critic steps. 1 = OurDDPG (and SB3's DDPG); CleanRL's
    # ddpg_continuous_action.py uses 2 (its policy_frequency), its one departure from OurDDPG's values.
    policy_delay: int = 1
    target_policy_noise: float = 0.0  # std of Gaussian noise on mu'(s') in the critic target
    target_noise_clip: float = 0.5  # that noise is clipped to ±target_noise_clip

    # TD7's switches (Fujimoto et al. 2023, github.com/sfujim/TD7); off = DDPG. TD7 values: True,
    # 250, True, True (with prioritized=True, per_alpha=0.4), True.
    # SALE (pydpg.core.sale): an encoder learns zs = f(s), zsa = g(zs, a) from the dynamics; actor and
    # critic read them beside s and a. Network width is hidden[0] (TD7: 256); needs hard targets.
    sale: bool = False
    sale_dim: int = 256  # zs / zsa width, TD7's zs_dim
    encoder_lr: float = 3e-4  # TD7
    # Copy online -> target every N critic steps instead of Polyak averaging (0: Polyak, tau, after each
    # actor step). TD7 target_update_rate=250; SALE's fixed encoders are refreshed at the same moments.
    hard_target_interval: int = 0
    # Clamp Q'(s', a') in the target to the range of targets seen before the last target update (TD7).
    value_clip: bool = False
    # LAP (Fujimoto et al. 2020): priorities max(|delta|, 1) (the max over critics), no importance
    # weights, and the Huber critic loss; with per_alpha=1 that has the uniform MSE's expected gradient
    # (docs/theory.md §7). Needs prioritized=True; TD7 uses per_alpha=0.4.
    lap: bool = False
    # TD7's policy checkpoints (pydpg.core.snapshots, called snapshots in the code so as not to be
    # confused with a run's checkpoints): deploy and evaluate the last policy whose worst
    # training-episode return beat the previous one's; updates wait for episode ends.
    # One local env only (n_envs=1, no workers): an assessment is of one fixed policy's episodes.
    policy_checkpoints: bool = False

    # CrossQ's switches (Bhatt et al. 2024, "CrossQ: Batch Normalization in Deep Reinforcement Learning
    # for Greater Sample Efficiency and Simplicity"; github.com/adityab/CrossQ, sb3-contrib's CrossQ).
    # batch_renorm: a BatchRenorm layer before every Linear of actor and critics (pydpg.core.networks).
    # target_networks=False: no target networks; the critic target reads the online critic, and
    # (s, a) and (s', mu(s')) go through the critic in one joint batch so that its batch statistics
    # are those of both distributions (docs/theory.md). CrossQ values: True, False, momentum 0.01,
    # warmup 100k forward passes (sb3-contrib's renorm_warmup_steps).
    batch_renorm: bool = False
    batch_renorm_momentum: float = 0.01  # running statistics' update rate; CrossQ: 0.01 (sb3-contrib)
    batch_renorm_warmup: int = 100_000  # forward passes before renormalization starts (sb3-contrib)
    target_networks: bool = True  # False: CrossQ's target from the online critic (no target nets)

    # Replay.
    prioritized: bool = False  # proportional PER (Schaul et al. 2016)
    per_alpha: float = 0.6  # Schaul et al. 2016, proportional variant
    per_beta0: float = 0.4  # importance-sampling exponent, annealed to 1; Schaul et al. 2016
    n_step: int = 1  # n-step returns (1 = the paper's one-step target)

    obs_normalization: bool = False  # running mean/std of the observations; off in OurDDPG and CleanRL
    device: str = "cpu"  # torch device of the networks and the update ("cuda" for a GPU)
    # Who runs the update. "auto": the C++ update (csrc/train/mlp_update.*, faster on a CPU: docs/benchmarks.md,
    # "Update speed against a jitted JAX update") wherever
    # it applies (default Actor/Critic MLPs on the CPU, fused Adam, no hooks; DDPG, TD3 and CrossQ's
    # switches; pydpg.core.mlp_update says why not otherwise), else torch. "cpp": the C++ update or a
    # ValueError saying why not. "torch": always the autograd reference. They agree to float rounding
    # (tests/test_mlp_update.py, tests/test_crossq_update.py).
    update_backend: str = "auto"

    @property
    def critic_widths(self) -> tuple[int, ...]:
        """The critics' hidden widths: ``critic_hidden``, or the actor's ``hidden`` when it is ()."""
        return tuple(self.critic_hidden or self.hidden)

    # ------------------------------------------------------------------ presets
    @staticmethod
    def presets() -> dict[str, dict[str, Any]]:
        return {
            "ddpg": {},
            # Lillicrap et al. 2015 §7 (low-dimensional tasks).
            "paper": dict(
                hidden=(400, 300),
                final_init=3e-3,
                actor_lr=1e-4,
                critic_lr=1e-3,
                critic_l2=1e-2,
                tau=1e-3,
                batch_size=64,
                exploration_noise="ou",
            ),
            # Fujimoto et al. 2018, Algorithm 1 / §6.1 and sfujim/TD3 main.py.
            "td3": dict(twin_critics=True, policy_delay=2, target_policy_noise=0.2, target_noise_clip=0.5),
            # TD7: TD3 + SALE + LAP + hard targets + value clipping + policy checkpoints.
            # Fujimoto et al. 2023; values from sfujim/TD7 TD7.py Hyperparameters (and main.py: 25k random steps).
            "td7": dict(
                twin_critics=True,
                policy_delay=2,
                target_policy_noise=0.2,
                target_noise_clip=0.5,
                sale=True,
                sale_dim=256,
                encoder_lr=3e-4,
                hard_target_interval=250,
                value_clip=True,
                lap=True,
                prioritized=True,
                per_alpha=0.4,
                policy_checkpoints=True,
            ),
            # CrossQ on TD3's deterministic actor (CrossQ is SAC-based; its first version, CrossNorm,
            # arXiv:1902.05605v2, applied the joint normalization to DDPG and TD3): TD3's clipped
            # double Q and target smoothing, batch renormalization, no target networks, a 2048-2048
            # critic (the paper's), and sb3-contrib CrossQ's defaults from the authors' code:
            # learning_rate 1e-3, Adam betas (0.5, 0.999), policy_delay 3. The wide critic is for a
            # GPU: on a CPU core an update costs over an order of magnitude more than a 256-256 one
            # (docs/benchmarks.md, "CrossQ (2026-12-05)", from benchmarks/results/update_crossq.json);
            # critic_hidden=(256, 256) is the paper's narrow ablation.
            "crossq": dict(
                twin_critics=True,
                policy_delay=3,
                target_policy_noise=0.2,
                target_noise_clip=0.5,
                batch_renorm=True,
                target_networks=False,
                critic_hidden=(2048, 2048),
                actor_lr=1e-3,
                critic_lr=1e-3,
                adam_beta1=0.5,
            ),
        }

    @classmethod
    def preset(cls, name: str = "ddpg", env_id: Optional[str] = None, **overrides: Any) -> "DDPGConfig":
        """A named preset ("ddpg", "paper", "td3"), adapted to ``env_id``, with ``overrides`` on top."""
        presets = cls.presets()
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}{did_you_mean(name, presets)}; choose from {sorted(presets)}")
        values = dict(presets[name])
        if env_id is not None:
            values["learning_starts"] = learning_starts_for(env_id)
        return cls.from_dict({**values, **overrides})

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``hidden`` as a list)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["critic_hidden"] = list(self.critic_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DDPGConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            named = ", ".join(f"{k!r}{did_you_mean(k, known)}" for k in unknown)
            raise ValueError(f"unknown DDPGConfig key(s): {named}")
        d = dict(d)
        for key in ("hidden", "critic_hidden"):
            if key in d and not isinstance(d[key], int):
                d[key] = tuple(d[key])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ validation
    def validate(self) -> "DDPGConfig":
        """Raise ValueError naming the first nonsensical field and its value; returns self."""

        def check(field: str, ok: bool, want: str, hint: str = "") -> None:
            if not ok:
                raise ValueError(f"DDPGConfig.{field} must be {want}, got {getattr(self, field)!r}{hint}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # rejects NaN

        h = self.hidden
        check(
            "hidden",
            isinstance(h, (tuple, list)) and all(is_int(w) and w > 0 for w in h),
            "a sequence of positive ints",
        )
        ch = self.critic_hidden
        check(
            "critic_hidden",
            isinstance(ch, (tuple, list)) and all(is_int(w) and w > 0 for w in ch),
            "a sequence of positive ints (empty: the same as hidden)",
        )
        check("final_init", self.final_init is None or (is_num(self.final_init) and self.final_init > 0), "None or > 0")
        for f in ("actor_lr", "critic_lr", "encoder_lr", "ou_dt"):
            check(f, is_num(getattr(self, f)) and getattr(self, f) > 0, "> 0")
        for f in (
            "critic_l2",
            "exploration_sigma",
            "ou_theta",
            "ou_sigma",
            "target_policy_noise",
            "target_noise_clip",
            "per_alpha",
        ):
            check(f, is_num(getattr(self, f)) and getattr(self, f) >= 0, ">= 0")
        check("tau", is_num(self.tau) and 0 < self.tau <= 1, "in (0, 1]")
        check("gamma", is_num(self.gamma) and 0 <= self.gamma <= 1, "in [0, 1]")
        check("adam_beta1", is_num(self.adam_beta1) and 0 <= self.adam_beta1 < 1, "in [0, 1)")
        check(
            "batch_renorm_momentum",
            is_num(self.batch_renorm_momentum) and 0 < self.batch_renorm_momentum <= 1,
            "in (0, 1]",
        )
        check("batch_renorm_warmup", is_int(self.batch_renorm_warmup) and self.batch_renorm_warmup >= 0, "an int >= 0")
        check("per_beta0", is_num(self.per_beta0) and 0 <= self.per_beta0 <= 1, "in [0, 1]")
        for f in ("batch_size", "buffer_size", "train_freq", "gradient_steps", "policy_delay", "n_step", "sale_dim"):
            check(f, is_int(getattr(self, f)) and getattr(self, f) >= 1, "an int >= 1")
        check(
            "hard_target_interval", is_int(self.hard_target_interval) and self.hard_target_interval >= 0, "an int >= 0"
        )
        check("learning_starts", is_int(self.learning_starts) and self.learning_starts >= 0, "an int >= 0")
        check(
            "exploration_noise",
            self.exploration_noise in NOISE_TYPES,
            f"one of {NOISE_TYPES}",
            did_you_mean(self.exploration_noise, NOISE_TYPES),
        )
        for f in (
            "twin_critics",
            "prioritized",
            "obs_normalization",
            "critic_layer_norm",
            "sale",
            "value_clip",
            "lap",
            "policy_checkpoints",
            "batch_renorm",
            "target_networks",
        ):
            check(f, isinstance(getattr(self, f), bool), "a bool")
        check(
            "sale",
            not self.sale or self.hard_target_interval > 0,
            "False unless hard_target_interval > 0",
            " (SALE's fixed encoders are refreshed at hard target updates; TD7 uses 250)",
        )
        check(
            "sale",
            not (self.sale and self.critic_layer_norm),
            "False with critic_layer_norm",
            " (SALE's critic has its own normalization, AvgL1Norm)",
        )
        check(
            "critic_hidden",
            not (self.sale and self.critic_hidden),
            "() with sale",
            " (SALE's networks are all hidden[0] wide)",
        )
        check(
            "batch_renorm",
            not (self.batch_renorm and (self.sale or self.critic_layer_norm)),
            "False with sale or critic_layer_norm",
            " (one normalization per network)",
        )
        for f in ("hard_target_interval", "value_clip", "sale"):
            check(
                f,
                self.target_networks or not getattr(self, f),
                "off with target_networks=False",
                " (it acts on the target networks)",
            )
        check(
            "lap",
            not self.lap or self.prioritized,
            "False unless prioritized=True",
            " (LAP samples through the prioritized buffer)",
        )
        check(
            "policy_checkpoints",
            not (self.policy_checkpoints and self.obs_normalization),
            "False with obs_normalization",
            " (a checkpoint would run under statistics that kept moving after it was assessed)",
        )
        check("device", isinstance(self.device, str) and self.device != "", "a torch device string")
        check(
            "update_backend",
            self.update_backend in UPDATE_BACKENDS,
            f"one of {UPDATE_BACKENDS}",
            did_you_mean(self.update_backend, UPDATE_BACKENDS),
        )
        return self


def learning_starts_for(env_id: str) -> int:
    """Random-action warm-up length for ``env_id``: 1_000 for the pendulums, else 25_000."""
    return 1_000 if "pendulum" in env_id.lower() else DDPGConfig.learning_starts


def algorithm_presets() -> list[str]:
    """Names of the algorithm presets (``DDPGConfig.presets``): ``ddpg``, ``paper``, ``td3``, ..."""
    return sorted(DDPGConfig.presets())
