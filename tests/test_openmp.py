"""torch's OpenMP threads beside another busy process: ``import pydpg`` makes them wait passively.

libgomp's default spin-wait made every multi-threaded update ~35x slower whenever another process
held one of the cores (``pydpg journey`` sat at step 1000 for >10 minutes beside one training run).
Each case runs in a fresh interpreter, since libgomp reads its settings once, when torch loads it.
"""

import os
import subprocess
import sys

import pytest

ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}


def _python(code: str, env: dict = ENV, timeout: float = 120) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_pydpg_sets_a_passive_wait_policy_before_torch_loads():
    assert _python("import os, pydpg, torch; print(os.environ['OMP_WAIT_POLICY'])") == "PASSIVE"


def test_a_wait_policy_the_user_set_is_kept():
    env = {**ENV, "OMP_WAIT_POLICY": "ACTIVE"}
    assert _python("import os, pydpg; print(os.environ['OMP_WAIT_POLICY'])", env) == "ACTIVE"


def test_torch_loaded_first_is_left_alone():
    # Too late for libgomp to see it, so setting it would only mislead (and leak into child processes).
    assert _python("import os, torch, pydpg; print(os.environ.get('OMP_WAIT_POLICY'))") == "None"


# The update alternates between 1 and 2 torch threads, in rounds, while a busy loop holds one of the
# two CPUs the process may use. On 1 thread no barrier is waited on, so it is the yardstick: 2
# threads must cost at most a few times that. Spin-waiting cost 22-40x here (154 ms against 7 ms
# per update); sleeping waits cost 1.1x. A ratio, not a time, so the machine's speed cancels.
_UPDATES_BESIDE_A_BUSY_CORE = """
import os, statistics, sys, time
os.sched_setaffinity(0, [int(c) for c in sys.argv[1:]])  # before torch starts its threads
import pydpg
from pydpg.core.agent import DDPGAgent
from pydpg.core.batch import Batch
from pydpg.core.config import DDPGConfig
import torch

torch.manual_seed(0)
agent = DDPGAgent.from_dims(17, 6, DDPGConfig(batch_size=256))
n = 256
batch = Batch(torch.randn(n, 17), torch.rand(n, 6) * 2 - 1, torch.randn(n, 1), torch.randn(n, 17),
              torch.zeros(n, 1), torch.full((n, 1), 0.99))
print("ready", flush=True)
sys.stdin.readline()  # the busy loop is running
ms = {1: [], 2: []}
for _ in range(5):
    for threads in (1, 2):
        torch.set_num_threads(threads)
        agent.update(batch)
        t = time.perf_counter()
        for _ in range(10):
            agent.update(batch)
        ms[threads].append((time.perf_counter() - t) * 100)
print(statistics.median(ms[1]), statistics.median(ms[2]))
"""

_BUSY = "while True: pass"


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and 2 CPUs",
)
def test_two_threads_beside_a_busy_core_do_not_stall():
    two = sorted(os.sched_getaffinity(0))[:2]
    child = subprocess.Popen(
        [sys.executable, "-c", _UPDATES_BESIDE_A_BUSY_CORE, *map(str, two)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    busy = None
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        busy = subprocess.Popen([sys.executable, "-c", _BUSY], env=ENV)
        os.sched_setaffinity(busy.pid, two[:1])
        out, err = child.communicate("go\n", timeout=240)
        assert child.returncode == 0, err
        one_thread, two_threads = map(float, out.split())
        assert two_threads < 3 * one_thread, (
            f"2 torch threads beside a busy core: {two_threads:.1f} ms per update against {one_thread:.1f} ms "
            f"on 1 thread; OpenMP threads spin-waiting on the busy core?"
        )
    finally:
        for p in (child, busy):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
