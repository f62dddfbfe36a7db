"""Fuzz: mutated policy files (bytes flipped, truncated, zip entries removed or emptied, metadata
mangled) must load as a clean exception or as a policy that acts exactly like the original: never
a crash, never a silently different policy.

Loading runs in a child process, so a segfault or abort fails this test instead of killing pytest;
the child prints each file before loading it, so the culprit is named."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from pydpg.core.agent import DDPGAgent
from pydpg.core.normalizer import RunningNormalizer
from pydpg.deploy.export import export_policy

torch.set_num_threads(1)

CHILD = r"""
import json, sys
import numpy as np
import torch
torch.set_num_threads(1)
from pydpg.deploy.runtime import Policy
obs = np.random.default_rng(0).standard_normal((4, 17)).astype(np.float32)
# One reference per backend: a mangled network plan sends "auto" to the interpreter, whose actions
# agree with the mlp backend's to rounding, not bit for bit; the same backend must agree exactly.
ref = {b: Policy(sys.argv[1], max_batch=4, backend=b).act(obs) for b in ("mlp", "torchscript")}
counts = {}
for path in sys.argv[2:]:
    print("LOADING", path, file=sys.stderr, flush=True)
    try:
        p = Policy(path, max_batch=4, warmup_calls=1)
        a = p.act(obs)
        outcome = "same" if np.array_equal(a, ref[p.backend]) else "DIFFERENT"
    except (ValueError, OSError) as e:   # PolicyFormatError is a ValueError
        outcome = type(e).__name__
    except Exception as e:
        outcome = "UNEXPECTED " + type(e).__name__ + ": " + str(e)[:200]
    counts[outcome] = counts.get(outcome, 0) + 1
print(json.dumps(counts))
"""


def mutations(src: bytes, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = zipfile.ZipFile(io.BytesIO(src)).namelist()

    def rezip(drop=None, empty=None, replace=None):
        zin = zipfile.ZipFile(io.BytesIO(src))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            for name in names:
                if name == drop:
                    continue
                data = zin.read(name)
                if name == empty:
                    data = b""
                if replace and name.endswith(replace[0]):
                    data = replace[1]
                z.writestr(zin.getinfo(name), data)
        return out.getvalue()

    meta_name = next(x for x in names if x.endswith("pydpg_policy.json"))
    meta_text = zipfile.ZipFile(io.BytesIO(src)).read(meta_name).decode()
    for i in range(n):
        kind = i % 5
        b = bytearray(src)
        if kind == 0:  # random bit flips anywhere
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
            yield bytes(b)
        elif kind == 1:  # truncation
            yield bytes(b[: int(rng.integers(0, len(b)))])
        elif kind == 2:  # an entry removed (valid zip, CRCs intact)
            yield rezip(drop=names[int(rng.integers(len(names)))])
        elif kind == 3:  # an entry emptied
            yield rezip(empty=names[int(rng.integers(len(names)))])
        else:  # metadata mangled: cut, spliced, or a field given another type
            choice = int(rng.integers(3))
            if choice == 0:
                text = meta_text[: int(rng.integers(len(meta_text)))]
            elif choice == 1:
                j = int(rng.integers(len(meta_text)))
                text = meta_text[:j] + '\x00[{"' + meta_text[j:]
            else:
                meta = json.loads(meta_text)
                key = sorted(meta)[int(rng.integers(len(meta)))]
                meta[key] = [None, "x", -1, 1e308, {"a": []}, [1, 2]][int(rng.integers(6))]
                text = json.dumps(meta)
            yield rezip(replace=("pydpg_policy.json", text.encode()))


@pytest.fixture(scope="module")
def source_policy(tmp_path_factory):
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(17, 6)
    norm = RunningNormalizer(17)
    norm.update(np.random.default_rng(0).standard_normal((64, 17)))
    path = tmp_path_factory.mktemp("fuzz") / "policy.pt"
    export_policy(agent, path, action_low=[-1] * 6, action_high=[1] * 6, normalizer=norm, verbose=False)
    return path


def test_mutated_policy_files_never_crash(tmp_path, source_policy):
    src = source_policy.read_bytes()
    paths = []
    n = int(os.environ.get("PYDPG_FUZZ_N", "250"))  # raise for a longer soak
    for i, data in enumerate(mutations(src, n, seed=int(os.environ.get("PYDPG_FUZZ_SEED", "0")))):
        p = tmp_path / f"m{i:03d}.pt"
        p.write_bytes(data)
        paths.append(str(p))
    assert len(paths) >= 200
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(source_policy), *paths], capture_output=True, text=True, timeout=600
    )
    last = [line for line in proc.stderr.splitlines() if line.startswith("LOADING")][-1:]
    assert proc.returncode == 0, f"child died with {proc.returncode} at {last}: {proc.stderr[-2000:]}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(counts.values()) == len(paths)
    assert "DIFFERENT" not in counts, counts  # corruption is detected, or it did not touch the policy
    assert not [k for k in counts if k.startswith("UNEXPECTED")], counts
    assert counts.get("PolicyFormatError", 0) >= len(paths) // 2, counts  # most mutations are caught
