"""Fixtures for the C++ test drivers (tests/cpp/sanitize.sh): policy files, the TorchScript
module's own actions on random observations (the reference runtime_test compares against), and
damaged copies that must be refused.

    python tests/cpp/make_fixtures.py OUT_DIR     # prints runtime_test's arguments, one case a line,
                                                  # tab-separated
"""

from __future__ import annotations

import shutil
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.normalizer import RunningNormalizer
from pydpg.deploy.export import export_policy

HERE = Path(__file__).resolve().parent
TRAINED_PENDULUM = HERE.parent / "data" / "inverted_pendulum_30k.pt"
ROWS = 16


def write_reference(policy: Path, obs: np.ndarray, out: Path) -> None:
    from pydpg.deploy.rounding import rounding_bound

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(policy))
    with torch.no_grad():
        want = np.concatenate([module(torch.from_numpy(o[None])).numpy() for o in obs]).astype(np.float32)
    # runtime_test compares the runtime's actions (other kernels, batches of 16) with these batch-1
    # actions of torch's: two float32 evaluations, which agree within twice the forward error bound
    # of either (pydpg.deploy.rounding), on any CPU. Stored per entry, rounded up to float32.
    _, bound = rounding_bound(policy, obs)
    tol = np.nextafter((2 * bound).astype(np.float32), np.float32(np.inf))
    n, d = obs.shape
    out.write_bytes(
        struct.pack("<qqq", n, d, want.shape[1])
        + obs.astype("<f4").tobytes()
        + want.astype("<f4").tobytes()
        + tol.astype("<f4").tobytes()
    )


def trained_magnitude_policy(path: Path, scale: float = 30.0) -> None:
    """17 -> 64 -> 64 -> 6 with observation normalization, weights scaled to trained magnitudes."""
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(17, 6, DDPGConfig(hidden=(64, 64)))
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.mul_(scale)
    norm = RunningNormalizer(17)
    norm.update(np.random.default_rng(0).standard_normal((256, 17)) * 3 + 1)
    export_policy(agent, path, action_low=[-1.0] * 6, action_high=[1.0] * 6, normalizer=norm, verbose=False)


def td7_policy(path: Path) -> None:
    """TD7's actor (preset td7): the mlp backend's SALE plan, whose encoder writes into the
    concatenation through a row stride, is what the sanitizers should watch."""
    torch.manual_seed(2)
    agent = DDPGAgent.from_dims(17, 6, DDPGConfig.preset("td7"))
    export_policy(agent, path, action_low=[-1.0] * 6, action_high=[1.0] * 6, verbose=False)


def damaged_copies(src: Path, out: Path) -> list[Path]:
    data = src.read_bytes()
    files = {
        "empty.pt": b"",
        "text.pt": b"not a policy",
        "truncated.pt": data[: len(data) // 2],
        "tail_cut.pt": data[:-1],
    }
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    files["flipped.pt"] = bytes(flipped)
    paths = []
    for name, content in files.items():
        (out / name).write_bytes(content)
        paths.append(out / name)
    return paths


def main(out_dir: str) -> int:
    torch.set_num_threads(1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    pendulum = out / "pendulum_30k.pt"
    shutil.copyfile(TRAINED_PENDULUM, pendulum)
    write_reference(
        pendulum, (rng.standard_normal((ROWS, 4)) * [0.2, 0.3, 1.0, 2.0]).astype(np.float32), out / "pendulum_30k.ref"
    )
    scaled = out / "scaled_17x6.pt"
    trained_magnitude_policy(scaled)
    write_reference(scaled, (rng.standard_normal((ROWS, 17)) * 3 + 1).astype(np.float32), out / "scaled_17x6.ref")
    bad = damaged_copies(scaled, out)
    td7 = out / "td7_17x6.pt"
    td7_policy(td7)
    write_reference(td7, (rng.standard_normal((ROWS, 17)) * 3).astype(np.float32), out / "td7_17x6.ref")
    # A policy in the current format (observation spec in the metadata) for the control loop.
    import gymnasium as gym

    env = gym.make("HalfCheetah-v5")
    torch.manual_seed(1)
    export_policy(DDPGAgent.from_dims(17, 6), out / "cheetah.pt", env=env, verbose=False)
    env.close()
    print("\t".join(map(str, [out / "pendulum_30k.ref", pendulum])))
    print("\t".join(map(str, [out / "scaled_17x6.ref", scaled, *bad])))
    print("\t".join(map(str, [out / "td7_17x6.ref", td7])))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
