"""A robot of your own, end to end: train DDPG on it, export with the observation contract checked,
run the policy in the C++ control loop, and prove the loop is the env by replaying its trace.

    python examples/custom_robot/train_and_deploy.py --steps 20000 --out runs/arm

1. trains on ArmReach-v0 (arm.xml + arm_env.py: sensors, not a Gymnasium task);
2. exports with OBSERVATION_SPEC, which the export checks against the env over 200 steps;
3. runs `pydpg run` (MuJoCo C API, no Python) from the initial states of a Python evaluation, with a
   trace of what the policy saw and did;
4. replays the trace through the Gymnasium env: largest observation difference, Python and C++
   returns side by side.
With --pd the arm is commanded by joint position targets through arm_env.ACTION_SPEC_PD (a PD law at
the physics rate): trained under it, exported with it (checked), and run by the loop with it.
With --randomize it trains under arm_env.RANDOMIZATION_SPEC (masses, damping, a delay, sensor noise),
the loop runs under the same randomization with the evaluation's seed (and earns the same returns),
and a robustness report of the exported file follows: its return across masses and delays.
Then build the C++ loop that uses the observation builder directly (see README.md beside this file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arm_env  # noqa: E402  (registers ArmReach-v0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--out", default="runs/arm")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--pd", action="store_true", help="position targets and a PD law (arm_env.ACTION_SPEC_PD)")
    p.add_argument("--randomize", action="store_true", help="train and run under arm_env.RANDOMIZATION_SPEC")
    args = p.parse_args(argv)

    import gymnasium as gym

    import pydpg
    from pydpg.common.envs import evaluate, initial_states
    from pydpg.contract.wrappers import contract_wrapper
    from pydpg.deploy.export import export_policy
    from pydpg.deploy.loop import run_policy
    from pydpg.deploy.robustness import parse_vary, report_table, robustness_report
    from pydpg.files.model import make_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] training DDPG on ArmReach-v0 for {args.steps} steps ...", flush=True)
    contract = {"action": arm_env.ACTION_SPEC_PD} if args.pd else {}
    if args.randomize:
        contract["randomization"] = arm_env.RANDOMIZATION_SPEC
    agent = pydpg.DDPG(
        "ArmReach-v0", seed=0, out_dir=str(out), learning_starts=1000, hidden=(64, 64), eval_every=0, **contract
    )
    agent.learn(args.steps)

    print("[2/4] exporting with the observation spec (checked against the env) ...", flush=True)
    # The env the policy acts in: through its action contract (its outputs are position targets with
    # --pd), nominal for the export's checks.
    wrap = contract_wrapper(contract.get("action"))
    env = gym.make("ArmReach-v0") if wrap is None else wrap(gym.make("ArmReach-v0"))
    export_policy(agent.trainer, out / "policy.pt", env=env, observation_spec=arm_env.OBSERVATION_SPEC)
    env.close()

    print("[3/4] the policy in the C++ control loop ...", flush=True)
    # With --randomize: the loop, its replay and the Python evaluation all under the training's
    # randomization, its draws seeded with the evaluation's seed (7), so that all three draw alike.
    wrap = contract_wrapper(contract.get("action"), None, contract.get("randomization"))
    env = gym.make("ArmReach-v0") if wrap is None else wrap(gym.make("ArmReach-v0"))
    python = evaluate(make_policy(agent.trainer.agent, agent.trainer.normalizer), env, args.episodes, seed=7)
    states = initial_states(env, args.episodes, seed=7)  # where those evaluation episodes started
    print("[4/4] replaying the loop's trace through the Gymnasium env ...\n", flush=True)
    randomized = dict(randomization="policy", randomization_seed=7) if args.randomize else {}
    loop = run_policy(
        out / "policy.pt",
        initial_states=states,
        replay=env,
        realtime=False,
        quiet=True,
        trace=out / "trace.csv",
        **randomized,
    )
    env.close()
    print(f"return, Python evaluation : {np.round(python.returns, 3).tolist()}")
    print(f"return, C++ loop (replay) : {np.round(loop['returns'], 3).tolist()}")
    print(f"largest observation difference, loop vs env: {loop['max_obs_diff']:.2g}")
    print(f"policy act() latency in the loop: p50 {loop['latency_us']['p50']:.2f} us")
    if args.randomize:
        print("\nbefore the robot: the exported policy across link masses and action delays\n", flush=True)
        varies = [parse_vary("body_mass=0.6:1.4:5"), parse_vary("delay=0:2")]
        report = robustness_report(out / "policy.pt", varies, episodes=args.episodes, seed=7, jobs=1)
        print(report_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
