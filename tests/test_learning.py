"""DDPG actually learns: InvertedPendulum-v5 reaches a noiseless eval return >= 950 (of 1000)
within a bounded number of steps, with the shipped preset and a fixed seed, on CPU.

The preset (pydpg/presets/InvertedPendulum-v5.toml) uses 64-64 nets, so the whole test takes
well under a minute on two cores; it documents how many steps its seeds needed when it was tuned.
"""

import time

import torch

from pydpg.train.config import resolve
from pydpg.train.trainer import Trainer

STEP_BUDGET = 30_000  # seeds 0-2 needed 4k-13k steps when the preset was tuned
TARGET = 950.0


def test_inverted_pendulum_learns_within_budget():
    torch.set_num_threads(1)
    cfg, train = resolve(
        "InvertedPendulum-v5",
        train={
            "seed": 0,
            "total_steps": STEP_BUDGET,
            "eval_every": 1000,
            "eval_episodes": 5,
            "target_return": TARGET,
            "checkpoint_every": 0,
        },
    )
    assert cfg.exploration_noise == "gaussian" and not cfg.twin_critics  # plain DDPG, not TD3
    t0 = time.time()
    trainer = Trainer(cfg, train)
    summary = trainer.run()
    elapsed = time.time() - t0
    curve = [(r["step"], round(r["eval_mean"])) for r in trainer.history]
    print(
        f"\nInvertedPendulum-v5 seed 0: eval {summary['final_eval']['mean']:.0f} at step {summary['steps']} "
        f"({elapsed:.0f} s); curve {curve}"
    )
    assert summary["reached_target"], f"no eval reached {TARGET} within {STEP_BUDGET} steps: {curve}"
    assert summary["final_eval"]["mean"] >= TARGET and summary["steps"] <= STEP_BUDGET
    # The learned policy is good on fresh initial states too, not only on the eval seed.
    assert trainer.evaluate(5, seed=12345).mean >= TARGET


TD7_STEP_BUDGET = 20_000  # seeds 0-2 needed 9k, 8k and 11k steps when the td7 preset was added


def test_td7_preset_learns_inverted_pendulum_within_budget():
    """The td7 preset (SALE, LAP, hard targets, value clipping, policy checkpoints) on the same task,
    at the task preset's 64-wide networks (SALE's embeddings 64 wide too). Evaluation runs the
    policy checkpoint, so this also shows the checkpoint follows the learning actor."""
    torch.set_num_threads(1)
    cfg, train = resolve(
        "InvertedPendulum-v5",
        preset="td7",
        agent={"sale_dim": 64},
        train={
            "seed": 0,
            "total_steps": TD7_STEP_BUDGET,
            "eval_every": 1000,
            "eval_episodes": 5,
            "target_return": TARGET,
            "checkpoint_every": 0,
        },
    )
    assert cfg.sale and cfg.lap and cfg.policy_checkpoints
    trainer = Trainer(cfg, train)
    summary = trainer.run()
    curve = [(r["step"], round(r["eval_mean"])) for r in trainer.history]
    assert summary["reached_target"], f"no eval reached {TARGET} within {TD7_STEP_BUDGET} steps: {curve}"
    assert trainer.evaluate(5, seed=12345).mean >= TARGET


CROSSQ_STEP_BUDGET = 6_000  # seeds 0-2 each reached 1000 at 2k steps (1k updates) when the preset was added


def test_crossq_preset_learns_inverted_pendulum_within_budget():
    """The crossq preset (batch renormalization, no target networks, the joint critic pass; TD3's
    clipped double Q and smoothing) on the same task, with the task preset's 64-wide actor and a
    64-wide critic instead of the preset's 2048 (the CPU's budget; the learning rates are CrossQ's)."""
    torch.set_num_threads(1)
    cfg, train = resolve(
        "InvertedPendulum-v5",
        preset="crossq",
        agent={"critic_hidden": (64, 64)},
        train={
            "seed": 0,
            "total_steps": CROSSQ_STEP_BUDGET,
            "eval_every": 1000,
            "eval_episodes": 5,
            "target_return": TARGET,
            "checkpoint_every": 0,
        },
    )
    assert cfg.batch_renorm and not cfg.target_networks and cfg.actor_lr == 1e-3
    trainer = Trainer(cfg, train)
    assert trainer.agent.actor_target is None
    summary = trainer.run()
    curve = [(r["step"], round(r["eval_mean"])) for r in trainer.history]
    assert summary["reached_target"], f"no eval reached {TARGET} within {CROSSQ_STEP_BUDGET} steps: {curve}"
    assert trainer.evaluate(5, seed=12345).mean >= TARGET
