"""``pydpg.DDPG``: the high-level, Stable-Baselines3-style interface.

    agent = pydpg.DDPG("Hopper-v5", seed=0, out_dir="runs/hopper")   # or a gymnasium.Env
    agent.learn(300_000)
    action, _ = agent.predict(obs, deterministic=True)               # in the env's units
    agent.save("hopper.pt")
    agent = pydpg.DDPG.load("hopper.pt")                             # or a run/checkpoint dir

It wraps ``pydpg.train.trainer.Trainer`` (the training run) and the agent, ``pydpg.core.agent.DDPGAgent``
(the update).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import gymnasium as gym
import numpy as np

from pydpg.common.envs import EvalResult, check_env_id, evaluate, make_env, scale_action
from pydpg.contract.wrappers import contract_wrapper
from pydpg.core.config import DDPGConfig
from pydpg.deploy.export import export_policy
from pydpg.files import checkpoint as ckpt_io
from pydpg.files.model import agent_from_model, make_policy
from pydpg.train.config import TrainConfig, resolve, split_overrides
from pydpg.train.trainer import Trainer

PathLike = Union[str, os.PathLike]


def _plain_kwargs(spec_kwargs: dict) -> dict:
    """The JSON-like part of an env spec's kwargs (what a model file can carry to remake the env)."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {k: v for k, v in spec_kwargs.items() if isinstance(v, plain) and k != "render_mode"}


class DDPG:
    """DDPG on a Gymnasium env with a Box action space.

    Args:
        env: an environment id (``"HalfCheetah-v5"``) or a ``gymnasium.Env``.
        config: None (the shipped task preset for the env id if any, else ``DDPGConfig()``), a
            ``DDPGConfig``, a dict of its fields, a preset name (``"td3"``, ``"paper"``,
            ``"Hopper-v5"``) or a TOML file path (see ``pydpg.presets``).
        seed: seeds networks, exploration, replay sampling and envs (eval env: seed + 100).
        out_dir: where ``learn`` writes metrics.csv, TensorBoard scalars, checkpoints, summary.json
            and the learning-curve PNG; None writes nothing.
        verbose: 1 prints a line per evaluation.
        **overrides: ``DDPGConfig`` fields (``tau=0.01``, ``twin_critics=True``, ...) and
            ``TrainConfig`` fields (``n_envs=4``, ``eval_every=10_000``, ``env_kwargs={...}``, ...).
    """

    def __init__(
        self,
        env: Union[str, gym.Env],
        config: Union[DDPGConfig, dict, str, PathLike, None] = None,
        seed: int = 0,
        out_dir: Optional[PathLike] = None,
        verbose: int = 0,
        **overrides: Any,
    ):
        agent_over, train_over = split_overrides(overrides)
        train_over["seed"] = seed
        env_id = env if isinstance(env, str) else getattr(getattr(env, "spec", None), "id", None)
        if isinstance(env, str):
            check_env_id(env)
        elif not isinstance(env, gym.Env):
            raise TypeError(f"env must be an environment id or a gymnasium.Env, got {type(env).__name__}")
        elif env.spec is not None and "env_kwargs" not in train_over:
            train_over["env_kwargs"] = _plain_kwargs(env.spec.kwargs)
        preset = config_file = None
        if isinstance(config, DDPGConfig):
            agent_over = {**config.validate().to_dict(), **agent_over}
        elif isinstance(config, dict):
            cfg_agent, cfg_train = split_overrides(config)
            agent_over, train_over = {**cfg_agent, **agent_over}, {**cfg_train, **train_over}
        elif isinstance(config, (str, os.PathLike)):
            if str(config).endswith(".toml") or Path(config).is_file():
                config_file = config
            else:
                preset = str(config)
        elif config is not None:
            raise TypeError(f"config must be a DDPGConfig, dict, preset name or TOML path, got {type(config).__name__}")
        cfg, train = resolve(env_id, preset=preset, config_file=config_file, agent=agent_over, train=train_over)
        self._init(Trainer(cfg, train, env, out_dir, verbose=bool(verbose)))

    def _init(self, trainer: Optional[Trainer], model: Optional[dict] = None) -> None:
        self.trainer = trainer
        if trainer is not None:
            self.agent, self.normalizer = trainer.agent, trainer.normalizer
            self.config, self.train_config = trainer.config, trainer.train_cfg
            self._low, self._high = trainer.low, trainer.high
        else:  # loaded without an env: predict / save only
            self.agent, self.normalizer = agent_from_model(model)
            self.config = self.agent.config
            self.train_config = TrainConfig.from_dict(model["run"])
            self._low = model["action_low"].numpy()
            self._high = model["action_high"].numpy()
        self._model = model
        self._policy = make_policy(self.agent, self.normalizer)
        self._noise_rng = np.random.default_rng(self.train_config.seed + 1)

    # ------------------------------------------------------------------ SB3-style methods
    def learn(self, total_timesteps: int, progress_bar: bool = False) -> "DDPG":
        """Train for ``total_timesteps`` more env steps (evaluating/checkpointing as configured)."""
        if self.trainer is None:
            raise ValueError("this agent was loaded without an environment; use DDPG.load(path, env=...) to train")
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, int) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be an int >= 1, got {total_timesteps!r}")
        self.trainer.progress_enabled = progress_bar
        self.trainer.run(total_steps=self.trainer.step + total_timesteps)
        return self

    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Action(s) for one observation [obs_dim] or a batch [n, obs_dim], in the env's units.

        Returns ``(action, None)`` like Stable-Baselines3 (the second item is SB3's recurrent state).
        ``deterministic=False`` adds the configured Gaussian exploration noise (sigma
        ``exploration_sigma`` in [-1, 1] units; none if ``exploration_noise == "none"``).
        """
        obs = np.asarray(observation, dtype=np.float32)
        if obs.shape[-1:] != (self.agent_obs_dim,) or obs.ndim > 2:
            raise ValueError(
                f"observation must have shape ({self.agent_obs_dim},) or (n, {self.agent_obs_dim}), got {obs.shape}"
            )
        unit = self._policy(obs)
        if not deterministic and self.config.exploration_noise != "none":
            unit = np.clip(unit + self._noise_rng.normal(0.0, self.config.exploration_sigma, unit.shape), -1.0, 1.0)
        return scale_action(unit, self._low, self._high), None

    @property
    def agent_obs_dim(self) -> int:
        return int(self._model["obs_dim"]) if self.trainer is None else self.trainer.obs_dim

    def evaluate(
        self, n_episodes: int = 10, seed: Optional[int] = None, env: Union[str, gym.Env, None] = None
    ) -> EvalResult:
        """Noiseless episodes (seed default: the run's seed + 100) on the run's eval env or ``env``."""
        if seed is None:
            seed = self.train_config.seed + self.train_config.eval_seed_offset
        if env is None and self.trainer is not None:
            return self.trainer.evaluate(n_episodes, seed)
        wrap = contract_wrapper(self.train_config.action, self.train_config.observation)  # the run's contracts
        if env is None:
            if self.train_config.env_id is None:
                raise ValueError("no environment to evaluate on; pass env=")
            env = make_env(self.train_config.env_id, self.train_config.env_kwargs, wrapper=wrap)
        elif isinstance(env, str):
            env = make_env(env, self.train_config.env_kwargs, wrapper=wrap)
        return evaluate(self._policy, env, n_episodes, seed)

    def save(self, path: PathLike) -> None:
        """One file with weights, optimizer state, normalizer and config (no replay buffer, as SB3's
        ``save``); ``DDPG.load`` reads it, and so does ``pydpg eval``."""
        model = self.trainer.model_dict() if self.trainer is not None else self._model
        ckpt_io.write_model(path, model)

    def export(self, path: PathLike, **kwargs: Any):
        """Write the actor as a deployable policy (normalization, tanh and action scaling inside)
        and check it against this agent; see ``pydpg.deploy.export.export_policy`` for the options
        (``format="torchscript" | "onnx" | "pt2"``)."""

        if self.trainer is not None:
            return export_policy(self.trainer, path, **kwargs)
        kwargs.setdefault("action_low", self._low)
        kwargs.setdefault("action_high", self._high)
        kwargs.setdefault("env_id", self.train_config.env_id)
        return export_policy(self.agent, path, normalizer=self.normalizer, **kwargs)

    @classmethod
    def load(
        cls,
        path: PathLike,
        env: Union[str, gym.Env, None] = None,
        device: Optional[str] = None,
        out_dir: Optional[PathLike] = None,
        verbose: int = 0,
    ) -> "DDPG":
        """Load a model file (``save``) or, from a run/checkpoint directory, the complete training
        state (buffer, RNGs, env states): ``learn`` then continues that run exactly.

        Without ``env``, the env is remade from the stored id; if that is impossible (the model was
        trained on an env instance without an id), the agent can only ``predict``/``save``.
        """
        self = cls.__new__(cls)
        if not Path(path).is_file():
            trainer = Trainer.resume(path, env=env, out_dir=out_dir, device=device, verbose=bool(verbose))
            self._init(trainer)
            return self
        model = ckpt_io.read_model(path, map_location=device)
        if device is not None:
            model = {**model, "config": {**model["config"], "device": device}}
        run = model["run"]
        env = env if env is not None else run.get("env_id")
        if env is None:
            self._init(None, model)
            return self
        trainer = Trainer(
            DDPGConfig.from_dict(model["config"]),
            TrainConfig.from_dict(run),
            env,
            out_dir,
            verbose=bool(verbose),
            model=model,
        )
        self._init(trainer)
        return self

    # ------------------------------------------------------------------ conveniences
    @property
    def num_timesteps(self) -> int:
        return 0 if self.trainer is None else self.trainer.step

    @property
    def policy(self):
        """The actor network mu(s) -> [-1, 1]^act_dim (observations normalized first, if configured):
        the TD7 policy checkpoint with ``policy_checkpoints``."""
        return self.agent.policy_actor

    @property
    def env(self):
        return None if self.trainer is None else self.trainer.vec

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()

    def __repr__(self) -> str:
        env = self.train_config.env_id or "?"
        return f"pydpg.DDPG({env!r}, steps={self.num_timesteps}, config={self.config})"
