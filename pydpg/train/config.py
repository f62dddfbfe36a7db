"""A run's settings (``TrainConfig``: everything about a run that is not the learning algorithm)
and how a run's configuration is resolved from its layers (``resolve``: defaults, task preset,
algorithm preset, the user's file, flags; ``pydpg.presets`` reads the files)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from pydpg import presets
from pydpg.common.envs import EnvLike, make_env
from pydpg.common.names import did_you_mean
from pydpg.contract.action import as_action_spec
from pydpg.contract.history import observing
from pydpg.contract.observation import ObservationError, ObservationMismatch, as_spec, verify_report
from pydpg.contract.randomization import as_randomization_spec
from pydpg.core.config import DDPGConfig, algorithm_presets, learning_starts_for

MAX_WORKERS = 4096  # collectors of one learner; a cluster's CPU count bounds a run further (distributed.py)
OBSERVATION_CHECK_STEPS = 50  # a run's stated observation is verified over this many env steps at start


def check_observation(
    spec: dict, env: EnvLike, env_kwargs: Optional[dict] = None, steps: int = OBSERVATION_CHECK_STEPS
) -> None:
    """Verify a run's stated observation spec against a fresh copy of its env before training: a
    spec the env cannot satisfy (unknown field or name, a slice out of range, another version,
    another robot's spec, an empty list) or one that does not reproduce its observations is a
    ValueError now, not at export hours later. Export verifies it again, longer."""
    # A fresh copy; an instance with no spec to copy from is checked itself (training resets it after).
    own = isinstance(env, str) or getattr(env, "spec", None) is not None
    single = make_env(env, env_kwargs or {}) if own else env
    try:
        # A spec with history is checked as the run observes: the env's observation is its base,
        # through the history wrapper (which refuses a base of another width by name).
        verify_report(spec, observing(single, spec), steps=steps)
    except (ObservationMismatch, ObservationError) as e:
        raise ValueError(f"the run's observation spec ([observation]) does not fit {_env_label(env)}: {e}") from None
    except ValueError as e:  # the history wrapper: a base of another width, or not a MuJoCo env
        raise ValueError(f"the run's observation spec ([observation]) does not fit {_env_label(env)}: {e}") from None
    except TypeError as e:  # not a MuJoCo env
        raise ValueError(f"the run states an observation spec ([observation]), but {e}") from None
    finally:
        if own:
            single.close()


def _env_label(env: EnvLike) -> str:
    return env if isinstance(env, str) else (getattr(getattr(env, "spec", None), "id", None) or type(env).__name__)


@dataclass
class TrainConfig:
    """Everything about a run that is not the learning algorithm (that is ``DDPGConfig``)."""

    env_id: Optional[str] = None
    env_kwargs: dict = field(default_factory=dict)  # to gym.make, e.g. {"xml_file": "robot.xml"}
    seed: int = 0  # seeds torch, numpy, the envs and the noise; a run is a function of it
    total_steps: int = 1_000_000  # sfujim/TD3 max_timesteps, CleanRL total_timesteps
    n_envs: int = 1  # envs stepped together (a vector env); 1 as in sfujim/TD3 and CleanRL
    eval_every: int = 5_000  # sfujim/TD3 eval_freq; 0 = no evaluation
    eval_episodes: int = 10  # sfujim/TD3 eval_policy(eval_episodes=10)
    eval_seed_offset: int = 100  # eval env seeded seed + 100, as sfujim/TD3's eval_policy
    checkpoint_every: int = 50_000  # 0 = only the final checkpoint
    keep_checkpoints: int = 1  # the previous one is deleted only after the new one is complete
    target_return: Optional[float] = None  # stop early once an eval mean reaches it
    # The observation spec (pydpg.contract.observation) of a config file's [observation] table: stored with
    # the run so that `pydpg export` of its checkpoints checks and ships it. None: the task preset's.
    observation: Optional[dict] = None
    # The action spec (pydpg.contract.action) of a config file's [action] table: every env of the run
    # (training, evaluation, workers) is driven through it, and `pydpg export` ships it. None: the
    # policy's output goes to the env's action space, as Gymnasium's envs define it.
    action: Optional[dict] = None
    # The domain randomization (pydpg.contract.randomization) of a config file's [randomization] table:
    # every training env (not the evaluation's: it measures the nominal robot) is randomized by it,
    # and the exported policy's metadata records it. None: the nominal model only.
    randomization: Optional[dict] = None
    # Distributed collection (pydpg.train.distributed): 0 = the envs are stepped in this process;
    # N >= 1 = N Ray actors, each stepping n_envs envs with a CPU copy of the actor.
    workers: int = 0
    ray_address: Optional[str] = None  # None: a local Ray (loopback only); else join this cluster
    broadcast_every: int = 100  # learner updates between weight broadcasts to the workers (Ape-X: 400)
    worker_noise_spread: float = 0.0  # worker i's sigma = sigma * exp(spread * (2i/(N-1) - 1)); 0: all equal
    worker_max_restarts: int = 3  # Ray restarts a dead worker this many times
    worker_timeout_s: float = 60.0  # every worker gone for this long: the run stops with an error
    # "fixed": chunks are taken from the workers in turn, so a run is a function of its seed, not of
    # the workers' speeds (a slow worker holds the others back). "arrival": whichever comes first,
    # Ape-X's way, for workers of unequal speed; runs then differ with timing.
    worker_order: str = "fixed"
    # torch's intra-op threads in the training process; None: torch's choice (all cores). Stored with
    # the run so that --resume runs on the count it started with: the count changes the arithmetic
    # (another summation order, so another run) and the speed (docs/benchmarks.md, "torch's threads
    # beside a busy core").
    threads: Optional[int] = None
    # Write OUT/best_model.pt (a model file) at each evaluation that beats every earlier one, as SB3's
    # EvalCallback(best_model_save_path) does. A long run's last policy can sit in a dip (CrossQ on
    # Walker2d, seed 1: best evaluation 5045, 38 at 295k of 300k); this is the one to export then.
    save_best: bool = True

    def validate(self) -> "TrainConfig":
        def check(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check(
            "env_id",
            self.env_id is None or (isinstance(self.env_id, str) and self.env_id != ""),
            "None or a non-empty string",
        )
        check("env_kwargs", isinstance(self.env_kwargs, dict), "a dict (TOML table [env])")
        check("seed", is_int(self.seed) and 0 <= self.seed < 2**32, "an int in [0, 2**32)")
        for name in ("total_steps", "n_envs", "eval_episodes", "keep_checkpoints"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1")
        for name in ("eval_every", "checkpoint_every", "eval_seed_offset", "workers", "worker_max_restarts"):
            check(name, is_int(getattr(self, name)) and getattr(self, name) >= 0, "an int >= 0")
        check("broadcast_every", is_int(self.broadcast_every) and self.broadcast_every >= 1, "an int >= 1")
        check("workers", self.workers <= MAX_WORKERS, f"at most {MAX_WORKERS} (the cluster's CPUs bound it further)")
        if self.ray_address is not None and self.workers == 0:
            raise ValueError(
                f"TrainConfig.ray_address {self.ray_address!r} is set but workers is 0: the address is "
                "where the collectors run (--workers N); without workers the run is local"
            )
        check(
            "ray_address",
            self.ray_address is None or (isinstance(self.ray_address, str) and self.ray_address != ""),
            "None or a non-empty string",
        )
        for name in ("worker_noise_spread", "worker_timeout_s"):
            v = getattr(self, name)
            check(
                name,
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                "a finite number >= 0",
            )
        check("worker_order", self.worker_order in ("fixed", "arrival"), '"fixed" or "arrival"')
        check("save_best", isinstance(self.save_best, bool), "a bool")
        check("threads", self.threads is None or (is_int(self.threads) and self.threads >= 1), "None or an int >= 1")
        t = self.target_return
        check(
            "target_return",
            t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and t == t),
            "None or a number",
        )
        if self.observation is not None:
            try:
                self.observation = as_spec(self.observation)
            except TypeError as e:
                raise ValueError(f"TrainConfig.observation: {e}") from None
        if self.action is not None:
            try:
                self.action = as_action_spec(self.action)
            except (TypeError, ValueError) as e:
                raise ValueError(f"TrainConfig.action: {e}") from None
        if self.randomization is not None:
            try:
                self.randomization = as_randomization_spec(self.randomization)
            except (TypeError, ValueError) as e:
                raise ValueError(f"TrainConfig.randomization: {e}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(
                "unknown TrainConfig key(s): " + ", ".join(f"{k!r}{did_you_mean(k, known)}" for k in unknown)
            )
        return cls(**d).validate()


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat settings (``key=value`` flags, ``pydpg.DDPG(**overrides)``) split into DDPGConfig and
    TrainConfig fields; an unknown key is an error naming the close ones."""
    agent_keys = {f for f in DDPGConfig.__dataclass_fields__}
    train_keys = {f for f in TrainConfig.__dataclass_fields__} - {"env_id"}
    unknown = [k for k in overrides if k not in agent_keys | train_keys]
    if unknown:
        raise ValueError(
            "unknown setting(s) "
            + ", ".join(f"{k!r}{did_you_mean(k, agent_keys | train_keys)}" for k in unknown)
            + "; settings are DDPGConfig or TrainConfig fields"
        )
    return (
        {k: v for k, v in overrides.items() if k in agent_keys},
        {k: v for k, v in overrides.items() if k in train_keys},
    )


# ---------------------------------------------------------------------------------------- a run's layers
def check_layer(source: str, agent: dict, train: dict) -> None:
    """Validate one layer's values on their own so that an error names the layer's source."""
    for kind, cls, values in (("agent", DDPGConfig, agent), ("train", TrainConfig, train)):
        if values:
            try:
                cls.from_dict(values)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{source}: [{kind}] {e}") from None


def resolve(
    env_id: Optional[str] = None,
    *,
    preset: Optional[str] = None,
    config_file: Union[str, os.PathLike, None] = None,
    td3: bool = False,
    agent: Optional[dict] = None,
    train: Optional[dict] = None,
    env_kwargs: Optional[dict] = None,
):
    """``(DDPGConfig, TrainConfig)`` for a run; see the module docstring for the layering."""
    agent_v: dict[str, Any] = {}
    train_v: dict[str, Any] = {}
    env_v: dict[str, Any] = {}
    observation: Optional[dict] = None
    action: Optional[dict] = None
    randomization: Optional[dict] = None
    if env_id is not None:
        agent_v["learning_starts"] = learning_starts_for(env_id)

    def apply(source: str, layer: dict[str, dict[str, Any]]) -> None:
        check_layer(source, layer.get("agent", {}), layer.get("train", {}))
        agent_v.update(layer.get("agent", {}))
        train_v.update(layer.get("train", {}))
        env_v.update(layer.get("env", {}))

    algo = None
    task = presets.find(env_id) if env_id is not None else None
    if preset is not None:
        if preset in DDPGConfig.presets():
            algo = preset
        elif presets.find(preset) is not None:
            task = presets.find(preset)
        else:
            choices = algorithm_presets() + presets.available()
            raise ValueError(
                f"unknown preset {preset!r}{did_you_mean(preset, choices)}; "
                f"algorithm presets: {', '.join(algorithm_presets())}; task presets: {', '.join(presets.available())}"
            )
    if task is not None:
        apply(f"preset {task}", presets.parse(f"preset {task}", presets.text(task)))
    if algo is not None:
        apply(f"preset {algo}", {"agent": DDPGConfig.presets()[algo]})
    if config_file is not None:
        layer = presets.read_file(config_file)
        apply(str(config_file), layer)
        # A task preset's spec is found again by env id at export (and left out, with a note, where
        # env kwargs change the observation); a user's own spec travels with the run.
        observation = layer.get("observation") or None
        action = layer.get("action") or None
        randomization = layer.get("randomization") or None
    if td3:
        apply("--td3", {"agent": DDPGConfig.presets()["td3"]})
    apply("overrides", {"agent": dict(agent or {}), "train": dict(train or {}), "env": dict(env_kwargs or {})})

    if env_id is not None:
        train_v["env_id"] = env_id
    train_v["env_kwargs"] = {**train_v.get("env_kwargs", {}), **env_v}
    if observation is not None:
        train_v["observation"] = observation
    if action is not None:
        train_v["action"] = action
    if randomization is not None:
        train_v["randomization"] = randomization
    return DDPGConfig.from_dict(agent_v), TrainConfig.from_dict(train_v)
