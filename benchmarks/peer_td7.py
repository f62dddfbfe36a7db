"""pydpg's ``--preset td7`` against the authors' TD7 (github.com/sfujim/TD7, ``TD7.py``), update for
update and episode for episode.

    git clone https://github.com/sfujim/TD7 ../TD7      # the authors' code; it is not a dependency
    python benchmarks/peer_td7.py --td7-repo ../TD7      # ~2-5 minutes on one CPU thread
    python benchmarks/peer_td7.py --td7-repo ../TD7 --updates 1000 --task Ant-v5

Two checks, each printing a table (and, with ``--json``, writing them):

1. **The update.** Both agents start from the same weights (pydpg's, copied into the authors'
   networks: encoder, fixed encoder, fixed target encoder, actor, critic and their targets), see the
   same batches and the same target-smoothing noise, at the authors' sizes (256-unit layers,
   zs_dim 256, batch 256). The batches are real transitions: random-action steps of ``--task``
   (Gymnasium), sampled uniformly by this script, because the authors' LAP buffer is replaced by a
   feeder that hands out the script's batch and records the priorities it is given. Each update
   seeds both noise generators alike (the authors draw from torch's global generator, pydpg from its
   agent's). Compared: every update's LAP priorities (pydpg's ``max(|delta|, 1)`` to the power
   ``per_alpha``, which its replay applies, against the authors' ``priority``), the value-clipping
   range after each hard target update, and at the end every parameter of every network.
   Float rounding differs (pydpg's fused Adam, the authors' per-tensor Adam), so the columns are
   max abs and max relative differences, not equality.

2. **The policy checkpoints.** The authors' ``maybe_train_and_checkpoint`` (its ``train`` replaced
   by a counter) and pydpg's ``PolicySnapshots`` with the trainer's bookkeeping (updates owed =
   steps since learning started) see the same sequence of training episodes (lengths and returns
   drawn at random, drifting upward, past the 750k-update switch to 20-episode assessments). Per
   episode: did training run, how many updates, was the policy checkpointed. pydpg does not assess
   the first episode after learning starts (it straddles the random warm-up; the authors start
   acting with the policy only at the next episode boundary), so pydpg is fed one empty episode
   first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pydpg.common.envs import make_env
from pydpg.core.agent import DDPGAgent
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
from pydpg.core.snapshots import PolicySnapshots

RESULTS = Path(__file__).parent / "results" / "peer_td7.json"


def load_authors(repo: Path):
    """The authors' TD7 module (TD7.py imports buffer.py from the same directory)."""
    if not (repo / "TD7.py").is_file():
        raise SystemExit(f"{repo}: no TD7.py here; clone github.com/sfujim/TD7 and pass its directory")
    sys.path.insert(0, str(repo.resolve()))
    return importlib.import_module("TD7")


# ---------------------------------------------------------------------------------------- data
def random_transitions(task: str, steps: int, seed: int) -> dict[str, np.ndarray]:
    """``steps`` transitions of ``task`` under uniform random actions; ``done`` only on termination."""
    env = make_env(task)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    keys = ("obs", "action", "reward", "next_obs", "done")
    out = {k: [] for k in keys}
    for _ in range(steps):
        a = env.action_space.sample()
        nxt, r, term, trunc, _ = env.step(a)
        for k, v in zip(keys, (obs, a, r, nxt, float(term))):
            out[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


class Feeder:
    """Stands in for the authors' LAP buffer: ``sample`` returns the batch set for this update;
    ``update_priority`` and ``reset_max_priority`` are recorded."""

    def __init__(self):
        self.batch = None
        self.priority = None
        self.resets = 0

    def sample(self):
        return self.batch

    def update_priority(self, priority):
        self.priority = priority.detach().clone()

    def reset_max_priority(self):
        self.resets += 1


# ---------------------------------------------------------------------------------------- weights
def _actor_state(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith("encoder.")}


def _critic_state(sd: dict) -> dict:
    """pydpg's two heads (heads.k.l0..l3) as the authors' q01, q1, q2, q3 / q02, q4, q5, q6."""
    names = {0: ("q01", "q1", "q2", "q3"), 1: ("q02", "q4", "q5", "q6")}
    out = {}
    for k, v in sd.items():
        if k.startswith("heads."):
            _, head, layer, kind = k.split(".")
            out[f"{names[int(head)][int(layer[1:])]}.{kind}"] = v
    return out


AUTHORS_NETS = ("encoder", "fixed_encoder", "fixed_encoder_target", "actor", "actor_target", "critic", "critic_target")


def pydpg_states(ours: DDPGAgent) -> dict[str, dict]:
    """pydpg's networks, in the authors' names and layout."""
    return {
        "encoder": ours.encoder.state_dict(),
        "fixed_encoder": ours.fixed_encoder.state_dict(),
        "fixed_encoder_target": ours.actor_target.encoder.state_dict(),
        "actor": _actor_state(ours.actor.state_dict()),
        "actor_target": _actor_state(ours.actor_target.state_dict()),
        "critic": _critic_state(ours.critic.state_dict()),
        "critic_target": _critic_state(ours.critic_targets[0].state_dict()),
    }


def authors_states(agent) -> dict[str, dict]:
    return {name: getattr(agent, name).state_dict() for name in AUTHORS_NETS}


def authors_agent(td7, ours: DDPGAgent, obs_dim: int, act_dim: int, fused_adam: bool):
    """The authors' agent with pydpg's initial weights and a feeder for a buffer. ``fused_adam``
    swaps its optimizers for torch's fused Adam (pydpg's kernel): the rounding-only control."""
    agent = td7.Agent(obs_dim, act_dim, max_action=1.0, hp=td7.Hyperparameters())
    if agent.device.type != "cpu":
        raise SystemExit("run this check with a CPU-only torch (or CUDA_VISIBLE_DEVICES=): pydpg's agent is on CPU")
    for name, state in pydpg_states(ours).items():
        getattr(agent, name).load_state_dict(state)  # strict: every one of the authors' keys is covered
    # The authors' policy checkpoint starts as the initial actor and fixed encoder, as pydpg's does.
    agent.checkpoint_actor.load_state_dict(agent.actor.state_dict())
    agent.checkpoint_encoder.load_state_dict(agent.fixed_encoder.state_dict())
    if fused_adam:
        for opt, net in (
            ("actor_optimizer", agent.actor),
            ("critic_optimizer", agent.critic),
            ("encoder_optimizer", agent.encoder),
        ):
            lr = getattr(agent, opt).param_groups[0]["lr"]
            setattr(agent, opt, torch.optim.Adam(net.parameters(), lr=lr, fused=True))
    agent.replay_buffer = Feeder()
    return agent


def diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a - b).abs().max().item()
    return d, d / max(b.abs().max().item(), 1e-30)


def compare(a: dict[str, dict], b: dict[str, dict]) -> dict[str, list[float]]:
    """Per network: [max abs, max abs relative to b's largest parameter] over its parameters."""
    out = {}
    for name in AUTHORS_NETS:
        d = [diff(a[name][key], b[name][key]) for key in b[name]]
        out[name] = [max(x[0] for x in d), max(x[1] for x in d)]
    return out


# ---------------------------------------------------------------------------------------- check 1
def check_update(td7, task: str, updates: int, seed: int) -> dict:
    data = random_transitions(task, 5_000, seed)
    obs_dim, act_dim = data["obs"].shape[1], data["action"].shape[1]
    cfg = DDPGConfig.preset("td7", update_backend="torch")
    torch.manual_seed(seed)
    ours = DDPGAgent.from_dims(obs_dim, act_dim, cfg)
    theirs = authors_agent(td7, ours, obs_dim, act_dim, fused_adam=False)
    control = authors_agent(td7, ours, obs_dim, act_dim, fused_adam=True)
    hp = theirs.hp
    settings = {
        "batch": (cfg.batch_size, hp.batch_size),
        "discount": (cfg.gamma, hp.discount),
        "hard target interval": (cfg.hard_target_interval, hp.target_update_rate),
        "policy delay": (cfg.policy_delay, hp.policy_freq),
        "target noise": (cfg.target_policy_noise, hp.target_policy_noise),
        "noise clip": (cfg.target_noise_clip, hp.noise_clip),
        "LAP alpha": (cfg.per_alpha, hp.alpha),
        "zs dim": (cfg.sale_dim, hp.zs_dim),
        "hidden": (cfg.hidden[0], hp.critic_hdim),
        "lr (actor, critic, encoder)": (
            (cfg.actor_lr, cfg.critic_lr, cfg.encoder_lr),
            (hp.actor_lr, hp.critic_lr, hp.encoder_lr),
        ),
    }
    rng = np.random.default_rng(seed)
    n = len(data["obs"])
    worst = {"pydpg": {"priority": 0.0, "range": 0.0}, "control": {"priority": 0.0, "range": 0.0}}
    growth = []  # the actor's max relative difference as the updates go, pydpg and the control
    t0 = time.perf_counter()
    for k in range(1, updates + 1):
        rows = rng.integers(0, n, cfg.batch_size)
        t = {key: torch.from_numpy(v[rows]) for key, v in data.items()}
        reward, done = t["reward"].unsqueeze(1), t["done"].unsqueeze(1)
        batch = Batch(t["obs"], t["action"], reward, t["next_obs"], done, torch.full_like(reward, cfg.gamma))
        ours.generator.manual_seed(k)
        info = ours.update(batch)
        for agent in (theirs, control):
            agent.replay_buffer.batch = (t["obs"], t["action"], t["next_obs"], reward, 1.0 - done)
            torch.manual_seed(k)  # the authors draw the target noise from torch's global generator
            agent.train()
        ref = theirs.replay_buffer.priority
        for who, prio, lo_hi in (
            ("pydpg", info["td_errors"].pow(cfg.per_alpha), ours.value_range),
            ("control", control.replay_buffer.priority, torch.tensor([control.min_target, control.max_target])),
        ):
            worst[who]["priority"] = max(worst[who]["priority"], diff(prio, ref)[1])
            if k % cfg.hard_target_interval == 0:
                got = torch.tensor([theirs.min_target, theirs.max_target])
                worst[who]["range"] = max(worst[who]["range"], diff(lo_hi.to(got.dtype), got)[1])
        if k in (1, 10) or k % 100 == 0 or k == updates:
            ref_states = authors_states(theirs)
            ctrl_states = authors_states(control)
            growth.append(
                {
                    "update": k,
                    "pydpg": compare(pydpg_states(ours), ref_states)["actor"][1],
                    "control": compare(ctrl_states, ref_states)["actor"][1],
                    "pydpg_vs_control": compare(pydpg_states(ours), ctrl_states)["actor"][1],
                }
            )
    wall = time.perf_counter() - t0
    ref_states = authors_states(theirs)
    return {
        "task": task,
        "updates": updates,
        "settings": {k: [v[0], v[1]] for k, v in settings.items()},
        "settings_equal": all(a == b for a, b in settings.values()),
        "hard_target_updates": theirs.replay_buffer.resets,
        "networks": {
            "pydpg": compare(pydpg_states(ours), ref_states),
            "control": compare(authors_states(control), ref_states),
            "pydpg_vs_control": compare(pydpg_states(ours), authors_states(control)),
        },
        "worst": worst,
        "actor_growth": growth,
        "wall_time_s": round(wall, 1),
    }


# ---------------------------------------------------------------------------------------- check 2
def check_checkpoints(td7, episodes: int, seed: int) -> dict:
    """The same episode sequence through the authors' checkpoint logic and pydpg's."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 1001, episodes)
    # Returns that drift upward with noise, so assessments both pass and fail, early and late.
    returns = np.cumsum(rng.normal(3.0, 1.0, episodes)) + rng.normal(0, 150.0, episodes)

    theirs = td7.Agent(3, 2, max_action=1.0)
    trained = []
    theirs.train = lambda: (setattr(theirs, "training_steps", theirs.training_steps + 1), trained.append(1))
    saved = []
    original = theirs.checkpoint_actor.load_state_dict
    theirs.checkpoint_actor.load_state_dict = lambda sd: (saved.append(1), original(sd))

    ours = PolicySnapshots()
    ours.episode_ended(0.0)  # pydpg's unassessed first episode (see the module docstring): empty here
    steps, n_grad, our_saves = 0, 0, 0
    mismatches, late_at = [], {}
    for i, (length, ret) in enumerate(zip(lengths, returns)):
        before_t, before_s = len(trained), len(saved)
        theirs.maybe_train_and_checkpoint(int(length), float(ret))
        their_updates, their_save = len(trained) - before_t, len(saved) > before_s

        steps += int(length)
        train, save = ours.episode_ended(float(ret))
        our_saves += save
        our_updates = 0
        if train:  # the trainer's burst: every update owed since learning started
            ours.updates_made(n_grad, steps)
            our_updates, n_grad = steps - n_grad, steps
        if (our_updates, save) != (their_updates, their_save):
            mismatches.append({"episode": i, "pydpg": [our_updates, save], "authors": [their_updates, their_save]})
        if theirs.max_eps_before_update > 1 and "authors" not in late_at:
            late_at["authors"] = i
        if ours.episodes_per_assessment > 1 and "pydpg" not in late_at:
            late_at["pydpg"] = i
    return {
        "episodes": episodes,
        "steps": steps,
        "updates": {"pydpg": n_grad, "authors": theirs.training_steps},
        "checkpoints": {"pydpg": our_saves, "authors": len(saved)},
        "late_regime_from_episode": late_at,
        "mismatches": len(mismatches),
        "first_mismatches": mismatches[:5],
        "best_min_return": {"pydpg": ours.best_min_return, "authors": theirs.best_min_return},
    }


# ---------------------------------------------------------------------------------------- report
def table(update: dict, ckpt: dict) -> str:
    nets, worst = update["networks"], update["worst"]
    lines = [
        f"## TD7 update, pydpg against sfujim/TD7: {update['task']}, {update['updates']} updates "
        f"({update['hard_target_updates']} hard target updates), {update['wall_time_s']} s",
        "",
        "| setting | pydpg | authors |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {a} | {b} |" for k, (a, b) in update["settings"].items()]
    lines += [
        "",
        "Differences from the authors' agent. *control*: the authors' own code with torch's fused Adam "
        "(pydpg's kernel) instead of its per-tensor Adam, from the same start: how far float rounding "
        "alone carries two runs apart. Relative: to the largest magnitude in the authors' tensor.",
        "",
        "| compared, max rel | pydpg vs authors | control vs authors | pydpg vs control |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} parameters after the run | {nets['pydpg'][name][1]:.2e} | {nets['control'][name][1]:.2e} | "
        f"{nets['pydpg_vs_control'][name][1]:.2e} |"
        for name in AUTHORS_NETS
    ]
    lines += [
        f"| LAP priorities, every update | {worst['pydpg']['priority']:.2e} | {worst['control']['priority']:.2e} | |",
        f"| value-clipping range, every hard target update | {worst['pydpg']['range']:.2e} | "
        f"{worst['control']['range']:.2e} | |",
        "",
        "| actor, max rel difference after update | "
        + " | ".join(str(g["update"]) for g in update["actor_growth"])
        + " |",
        "|---|" + "---:|" * len(update["actor_growth"]),
        "| pydpg | " + " | ".join(f"{g['pydpg']:.1e}" for g in update["actor_growth"]) + " |",
        "| control | " + " | ".join(f"{g['control']:.1e}" for g in update["actor_growth"]) + " |",
        "| pydpg vs control | " + " | ".join(f"{g['pydpg_vs_control']:.1e}" for g in update["actor_growth"]) + " |",
        "",
    ]
    lines += [
        f"## TD7 policy checkpoints: {ckpt['episodes']} episodes, {ckpt['steps']:,} steps",
        "",
        "| | pydpg | authors |",
        "|---|---:|---:|",
        f"| updates made | {ckpt['updates']['pydpg']:,} | {ckpt['updates']['authors']:,} |",
        f"| policy checkpoints taken | {ckpt['checkpoints']['pydpg']} | {ckpt['checkpoints']['authors']} |",
        f"| 20-episode assessments from episode | {ckpt['late_regime_from_episode'].get('pydpg')} | "
        f"{ckpt['late_regime_from_episode'].get('authors')} |",
        f"| best min return at the end | {ckpt['best_min_return']['pydpg']:.1f} | "
        f"{ckpt['best_min_return']['authors']:.1f} |",
        f"| episodes where (updates, checkpointed) differ | {ckpt['mismatches']} | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--td7-repo", type=Path, required=True, help="a clone of github.com/sfujim/TD7")
    p.add_argument("--task", default="Walker2d-v5")
    p.add_argument("--updates", type=int, default=600)
    p.add_argument("--episodes", type=int, default=1500, help="for the checkpoint check (past 750k updates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, nargs="?", const=RESULTS, default=None)
    args = p.parse_args(argv)
    for name in ("updates", "episodes", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    td7 = load_authors(args.td7_repo)
    ckpt = check_checkpoints(td7, args.episodes, args.seed)
    update = check_update(td7, args.task, args.updates, args.seed)
    print(table(update, ckpt))
    if args.json:
        args.json.write_text(json.dumps({"update": update, "checkpoints": ckpt}, indent=1, default=float) + "\n")
    bad = (
        not update["settings_equal"]
        or ckpt["mismatches"]
        or not all(math.isfinite(v) for w in update["worst"].values() for v in w.values())
        or ckpt["updates"]["pydpg"] != ckpt["updates"]["authors"]
        or ckpt["checkpoints"]["pydpg"] != ckpt["checkpoints"]["authors"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
