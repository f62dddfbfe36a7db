"""pydpg.Policy / the C++ PolicyRuntime: parity with the exported module, input checks, the NaN/Inf
guard, clamping, latency statistics, bad policy files, and no heap allocation per act()."""

from __future__ import annotations

import io
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from policy_helpers import base_meta, plain_module, scramble_batch_renorm, write_raw_policy
from torch import nn

from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.normalizer import RunningNormalizer
from pydpg.deploy.export import export_policy
from pydpg.deploy.policy_file import read_metadata
from pydpg.deploy.rounding import assert_within_rounding
from pydpg.deploy.runtime import NonFiniteError, Policy, PolicyFormatError

torch.set_num_threads(1)
OBS, ACT = 17, 6


def crossq_agent(seed: int = 0) -> DDPGAgent:
    """CrossQ's agent, its actor's batch renormalization layers scrambled."""
    torch.manual_seed(seed)
    agent = DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("crossq", critic_hidden=(32, 32)))
    scramble_batch_renorm(agent.actor, torch.Generator().manual_seed(seed))
    return agent


@pytest.fixture(scope="module", params=["mlp_actor", "td7_actor", "crossq_actor"])
def policy_file(request, tmp_path_factory):
    """HalfCheetah's shapes with normalization and scaling; every test runs on pydpg's default actor,
    on TD7's (SaleActor: its frozen encoder, AvgL1Norm and ELU inside the policy) and on CrossQ's
    (a BatchRenorm before each Linear)."""
    torch.manual_seed(0)
    agent = (
        crossq_agent()
        if request.param == "crossq_actor"
        else DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("td7") if request.param == "td7_actor" else None)
    )
    norm = RunningNormalizer(OBS)
    norm.update(np.random.default_rng(0).standard_normal((256, OBS)) * 2 + 0.5)
    path = tmp_path_factory.mktemp("policy") / "policy.pt"
    export_policy(
        agent,
        path,
        action_low=[-1, -1, -1, -0.5, -0.5, -0.5],
        action_high=[1, 1, 1, 0.5, 0.5, 0.5],
        normalizer=norm,
        env_id="HalfCheetah-v5",
        verbose=False,
    )
    return path


def module_of(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


@pytest.mark.parametrize("backend", ["mlp", "torchscript"])
def test_matches_exported_module(policy_file, backend):
    p = Policy(policy_file, max_batch=256, backend=backend)
    assert p.backend == backend and (p.obs_dim, p.act_dim) == (OBS, ACT)
    obs = np.random.default_rng(1).standard_normal((256, OBS)).astype(np.float32) * 3
    with torch.no_grad():
        want = module_of(policy_file)(torch.from_numpy(obs)).numpy()
    # The runtime's kernels against torch's, and batch 1 against 256: equal up to float32 rounding.
    assert_within_rounding(p.act(obs), want, policy_file, obs, f"{backend} backend")
    single = p.act(obs[3])
    assert single.shape == (ACT,) and single.dtype == np.float32
    assert_within_rounding(single[None], want[3:4], policy_file, obs[3:4], "batch 1")


def test_auto_backend_is_mlp_for_pydpg_actor(policy_file):
    assert Policy(policy_file).backend == "mlp"


def test_numpy_torch_and_out(policy_file):
    p = Policy(policy_file, max_batch=8)
    obs = np.random.default_rng(2).standard_normal((8, OBS)).astype(np.float32)
    a = p.act(obs)
    t = p.act(torch.from_numpy(obs))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), a)
    # Gymnasium's float64 obs: float32 values widened and narrowed back are the same numbers, so the
    # same computation runs on them.
    np.testing.assert_array_equal(p.act(obs.astype(np.float64)), a)
    out = np.empty((8, ACT), np.float32)
    assert p.act(obs, out=out) is out
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(p.act(torch.from_numpy(obs).requires_grad_()).numpy(), a)


def test_bad_inputs_raise_clear_errors(policy_file):
    p = Policy(policy_file, max_batch=4)
    good = np.zeros((4, OBS), np.float32)
    with pytest.raises(ValueError, match=r"shape \(4, 16\), expected \(17,\) or \(B, 17\)"):
        p.act(np.zeros((4, OBS - 1), np.float32))
    with pytest.raises(ValueError, match="batch size 5, expected 1 to max_batch=4"):
        p.act(np.zeros((5, OBS), np.float32))
    with pytest.raises(TypeError, match="floating-point.*int64"):
        p.act(np.zeros((4, OBS), np.int64))
    with pytest.raises(TypeError, match="floating-point"):
        p.act(np.zeros((4, OBS), bool))
    with pytest.raises(TypeError, match="floating-point"):
        p.act(torch.zeros(4, OBS, dtype=torch.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        p.act(np.zeros((OBS, 4), np.float32).T)
    with pytest.raises(ValueError, match="C-contiguous"):
        p.act(np.zeros((4, 2 * OBS), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="shape"):
        p.act(np.zeros((1, 4, OBS), np.float32))
    with pytest.raises(ValueError, match="shape"):
        p.act(np.float32(1.0))
    with pytest.raises(TypeError):
        p.act(None)
    with pytest.raises(TypeError):
        p.act("obs")
    with pytest.raises(ValueError, match="out has shape"):
        p.act(good, out=np.empty((3, ACT), np.float32))
    with pytest.raises(TypeError, match="out must be"):
        p.act(good, out=np.empty((4, ACT), np.float64))
    assert p.act(good).shape == (4, ACT)  # still usable


def test_bad_options(policy_file):
    with pytest.raises(ValueError, match="max_batch"):
        Policy(policy_file, max_batch=0)
    with pytest.raises(ValueError, match="on_nonfinite"):
        Policy(policy_file, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="safe_action has 2 values"):
        Policy(policy_file, safe_action=[0, 0])
    with pytest.raises(ValueError, match=r"safe_action\[3\] = 0.9 is outside"):
        Policy(policy_file, safe_action=[0, 0, 0, 0.9, 0, 0])
    with pytest.raises(ValueError, match="backend"):
        Policy(policy_file, backend="gpu")
    with pytest.raises(TypeError):
        Policy(policy_file, max_batch=2.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raise(policy_file, bad):
    p = Policy(policy_file, max_batch=3)
    obs = np.zeros((3, OBS), np.float32)
    obs[1, 5] = bad
    with pytest.raises(NonFiniteError, match="row 1 .* at index 5"):
        p.act(obs)
    g = p.guard_stats()
    assert g["nonfinite_obs_rows"] == 1 and g["raised"] == 1
    assert isinstance(NonFiniteError("x"), ValueError)


def test_nonfinite_hold_last_per_row(policy_file):
    p = Policy(policy_file, max_batch=3, on_nonfinite="hold")
    rng = np.random.default_rng(3)
    first = rng.standard_normal((3, OBS)).astype(np.float32)
    a1 = p.act(first)
    second = rng.standard_normal((3, OBS)).astype(np.float32)
    second[0, 0] = np.nan
    a2 = p.act(second)
    np.testing.assert_array_equal(a2[0], a1[0])  # held: a copy of the stored action, exact
    # The other rows are computed in a batch of 3 here and of 2 there. BLAS picks its kernel by
    # matrix shape (and CPU), so they agree to rounding, not bit for bit; see test_batch_invariant.
    assert_within_rounding(
        a2[1:],
        Policy(policy_file, max_batch=3).act(second[1:].copy()),
        policy_file,
        second[1:],
        "batch of 3 vs batch of 2",
    )
    assert p.guard_stats()["held_rows"] == 1 and p.guard_stats()["nonfinite_obs_rows"] == 1
    # Before any good action, "hold" falls back to the safe action (zeros).
    q = Policy(policy_file, on_nonfinite="hold")
    np.testing.assert_array_equal(q.act(np.full(OBS, np.inf, np.float32)), np.zeros(ACT, np.float32))


def test_nonfinite_safe_action(policy_file):
    safe = [0.1, 0.2, 0.3, -0.4, 0.0, 0.5]
    p = Policy(policy_file, max_batch=2, on_nonfinite="safe", safe_action=safe)
    obs = np.zeros((2, OBS), np.float32)
    obs[0, :] = np.nan
    a = p.act(obs)
    np.testing.assert_array_equal(a[0], np.float32(safe))
    assert np.isfinite(a[1]).all()
    assert p.guard_stats()["safe_rows"] == 1
    p.reset_guard_stats()
    assert p.guard_stats()["safe_rows"] == 0


class NaNForNegative(nn.Module):
    """Finite for x[0] >= 0, NaN otherwise: exercises the output guard."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(obs[:, :2]) * 10.0


def test_output_guard_and_clamp(tmp_path):
    path = write_raw_policy(tmp_path / "p.pt", NaNForNegative(), base_meta(3, 2, low=-1.0, high=2.0))
    p = Policy(path, max_batch=2, on_nonfinite="safe", backend="auto")
    assert p.backend == "torchscript"  # no network plan in the metadata
    a = p.act(np.array([[4.0, 0.0001, 0], [-1.0, 1.0, 0]], np.float32))
    # 20 clamped to the bound 2 (exact); sqrt(float32(1e-4)) * 10 is two correctly rounded float32
    # steps from 0.1 on any IEEE CPU: within 3 float32 rounding units (1.8e-7) of it.
    np.testing.assert_allclose(a[0], [2.0, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(a[1], [0.0, 0.0])
    assert p.guard_stats()["nonfinite_action_rows"] == 1
    with pytest.raises(NonFiniteError, match="non-finite action"):
        Policy(path).act(np.array([-1.0, 1.0, 0], np.float32))


def test_latency_statistics(policy_file):
    p = Policy(policy_file, latency_window=100)
    assert p.latency()["count"] == 0  # warm-up is not counted
    for _ in range(250):
        p.act(np.zeros(OBS, np.float32))
    s = p.latency()
    assert s["count"] == 250 and s["window"] == 100
    assert 0 < s["p50_us"] <= s["p90_us"] <= s["p99_us"] <= s["p999_us"] <= s["max_us"]
    assert s["mean_us"] <= s["max_us"]
    p.reset_latency()
    assert p.latency()["count"] == 0


def test_thread_count_is_fixed(policy_file):
    before = torch.get_num_threads()
    try:
        Policy(policy_file, num_threads=2)
        assert torch.get_num_threads() == 2  # one intra-op pool per process (documented)
        Policy(policy_file, num_threads=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------- trained policies
# A policy trained for 30k steps on InvertedPendulum-v5 (noiseless eval 1000), exported as users do:
#   pydpg train InvertedPendulum-v5 --steps 30000 --seed 0 --out run && pydpg export run -o policy.pt
# (Its TorchScript *.debug_pkl records, which name the exporting machine's source paths, were
# dropped from the zip; nothing loads them.) Its weights are ~30x their initial scale. pydpg 0.1.0's
# runtime refused it: the mlp backend used its input buffer as scratch and warm-up fed each call's
# hidden activations back in as the observation, which diverged to Inf with trained weights (and
# stayed finite with fresh ones).
TRAINED_PENDULUM = Path(__file__).parent / "data" / "inverted_pendulum_30k.pt"


def test_trained_policy_loads_with_default_options_and_matches_torchscript():
    module = module_of(TRAINED_PENDULUM)
    obs = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32) * [0.2, 0.3, 1.0, 2.0]
    obs = obs.astype(np.float32)
    with torch.no_grad():
        want = np.concatenate([module(torch.from_numpy(o[None])).numpy() for o in obs])
    for kwargs in ({}, {"backend": "mlp"}, {"backend": "torchscript"}, {"batch_invariant": True}):
        p = Policy(TRAINED_PENDULUM, **kwargs)  # default warm-up: 64 calls
        assert p.backend == kwargs.get("backend", "mlp")
        got = np.stack([p.act(o) for o in obs])
        # Other kernels (the mlp backend's), and a batch of 200 against batch 1: equal up to rounding.
        assert_within_rounding(got, want, TRAINED_PENDULUM, obs, str(kwargs))
        batched = Policy(TRAINED_PENDULUM, max_batch=200, **kwargs).act(obs)
        assert_within_rounding(batched, want, TRAINED_PENDULUM, obs, f"{kwargs}, batched")


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0, 100.0])
def test_trained_magnitude_weights_load_and_match(tmp_path, scale):
    """Random actors with weights scaled up to (and past) trained magnitudes, through the default
    constructor: the runtime loads every one whose TorchScript output is finite, and agrees with it."""
    torch.manual_seed(int(scale))
    agent = DDPGAgent.from_dims(OBS, ACT, DDPGConfig(hidden=(64, 64)))
    with torch.no_grad():
        for param in agent.actor.parameters():
            param.mul_(scale)
    norm = RunningNormalizer(OBS)
    norm.update(np.random.default_rng(1).standard_normal((256, OBS)) * 3 + 2)
    path = tmp_path / "p.pt"
    export_policy(agent, path, action_low=[-2.0] * ACT, action_high=[2.0] * ACT, normalizer=norm, verbose=False)
    obs = (np.random.default_rng(2).standard_normal((64, OBS)) * 3 + 2).astype(np.float32)
    with torch.no_grad():
        want = module_of(path)(torch.from_numpy(obs)).numpy()
    assert np.isfinite(want).all()
    p = Policy(path, max_batch=64)
    assert p.backend == "mlp"
    assert_within_rounding(p.act(obs), want, path, obs, f"weights x{scale}")
    again = p.act(obs)
    np.testing.assert_array_equal(again, p.act(obs))  # same call, same shape, same process: same bits


def test_act_does_not_modify_its_input(policy_file):
    p = Policy(policy_file, max_batch=8)
    obs = np.random.default_rng(4).standard_normal((8, OBS)).astype(np.float32)
    keep = obs.copy()
    p.act(obs)
    np.testing.assert_array_equal(obs, keep)


@pytest.mark.parametrize("backend", ["mlp", "torchscript"])
def test_batch_invariant(policy_file, backend):
    """With batch_invariant=True a row's action does not depend on the rest of the batch, exactly:
    every row is computed alone, by the same instructions on the same one-row buffer, on any CPU."""
    p = Policy(policy_file, max_batch=64, backend=backend, batch_invariant=True)
    assert p.batch_invariant
    obs = np.random.default_rng(5).standard_normal((64, OBS)).astype(np.float32) * 3
    full = p.act(obs)
    for b in (1, 2, 3, 7, 33, 64):
        np.testing.assert_array_equal(p.act(obs[:b]), full[:b])
    np.testing.assert_array_equal(p.act(obs[::-1].copy()), full[::-1])
    for i in (0, 17, 63):
        np.testing.assert_array_equal(p.act(obs[i]), full[i])
    with torch.no_grad():
        want = module_of(policy_file)(torch.from_numpy(obs)).numpy()
    assert_within_rounding(full, want, policy_file, obs, "batch-invariant rows vs the module's batch")
    with pytest.raises(TypeError, match="batch_invariant"):
        Policy(policy_file, batch_invariant="yes")


def test_portable_kernels_still_pass_parity(policy_file):
    """Without MKL (aarch64 torch wheels) the mlp backend runs at::addmm and std::tanh: forced here on
    x86, it still reproduces the module to the load check's bound, so "auto" keeps the fast path."""
    fast = Policy(policy_file, max_batch=64)
    sale = read_metadata(policy_file)["network"]["kind"] == "sale"
    expm1 = (", expm1: sleef", ", expm1: libm double") if sale else ("",)
    assert fast.kernels in [
        k + e for k in ("sgemm: mkl, tanh: mkl vml", "sgemm: aten addmm, tanh: libm") for e in expm1
    ]
    for path in (policy_file, TRAINED_PENDULUM):
        p = Policy(path, max_batch=64, mlp_kernels="portable")
        portable = "sgemm: aten addmm, tanh: libm" + (", expm1: libm double" if path == policy_file and sale else "")
        assert p.backend == "mlp" and p.kernels == portable
        obs = np.random.default_rng(6).standard_normal((64, p.obs_dim)).astype(np.float32)
        with torch.no_grad():
            want = module_of(path)(torch.from_numpy(obs)).numpy()
        assert_within_rounding(p.act(obs), want, path, obs, f"portable kernels, {path.name}")
    assert Policy(policy_file, backend="torchscript").kernels == "torchscript interpreter"
    with pytest.raises(ValueError, match="mlp_kernels must be 'auto' or 'portable'"):
        Policy(policy_file, mlp_kernels="fast")


# ---------------------------------------------------------------------------------------- bad files
def test_missing_empty_and_non_policy_files(tmp_path, policy_file):
    with pytest.raises(FileNotFoundError):
        Policy(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(PolicyFormatError, match="is empty"):
        Policy(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(PolicyFormatError, match="not a TorchScript archive"):
        Policy(tmp_path / "text.pt")
    data = policy_file.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PolicyFormatError, match="truncated or corrupt"):
        Policy(tmp_path / "trunc.pt")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10  # inside a weight tensor
    (tmp_path / "flip.pt").write_bytes(bytes(flipped))
    with pytest.raises(PolicyFormatError, match="CRC-32"):
        Policy(tmp_path / "flip.pt")
    with pytest.raises(OSError, match="directory"):
        Policy(tmp_path)
    assert issubclass(PolicyFormatError, ValueError)


def test_torchscript_that_is_not_a_pydpg_policy(tmp_path):
    path = write_raw_policy(tmp_path / "p.pt", nn.Linear(3, 2), None)
    with pytest.raises(PolicyFormatError, match="not a pydpg policy"):
        Policy(path)


def test_wrong_format_version(tmp_path):
    meta = base_meta(3, 2)
    meta["format_version"] = 99
    path = write_raw_policy(tmp_path / "p.pt", plain_module(3, 2), meta)
    with pytest.raises(PolicyFormatError, match="format version 99; this runtime reads version 1 .upgrade pydpg."):
        Policy(path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"obs_dim": 5}, r"does not accept a \[1, 5\]"),
        ({"act_dim": 3, "action_low": [-1] * 3, "action_high": [1] * 3}, r"metadata says \[1, 3\]"),
        ({"action_low": [1, -1]}, "low < high"),
        ({"action_high": [1]}, "act_dim entries"),
        ({"obs_dim": "3"}, "obs_dim must be an integer"),
        ({"format": "other"}, "format"),
        ({"normalization": {"mean": [0] * 2, "var": [1] * 3, "eps": 0}}, "obs_dim entries"),
        ({"normalization": {"mean": [0] * 3, "var": [-1] * 3, "eps": 0}}, "not finite/positive"),
    ],
)
def test_metadata_contradicting_module(tmp_path, change, match):
    meta = {**base_meta(3, 2), **change}
    path = write_raw_policy(tmp_path / "p.pt", plain_module(3, 2), meta)
    with pytest.raises(PolicyFormatError, match=match):
        Policy(path)


def test_malformed_metadata_json(tmp_path):
    path = write_raw_policy(tmp_path / "p.pt", plain_module(3, 2), None, {"pydpg_policy.json": '{"format": [[[['})
    with pytest.raises(PolicyFormatError, match="invalid pydpg metadata"):
        Policy(path)
    deep = "[" * 10000 + "]" * 10000
    path = write_raw_policy(tmp_path / "q.pt", plain_module(3, 2), None, {"pydpg_policy.json": deep})
    with pytest.raises(PolicyFormatError, match="nested deeper"):
        Policy(path)


def _with_plan(src, dst, edit):
    """A copy of the policy file at ``src`` whose metadata's network plan ``edit`` changed."""
    meta = read_metadata(src)
    edit(meta["network"])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module_of(src), buf, _extra_files={"pydpg_policy.json": json.dumps(meta)})
    dst.write_bytes(buf.getvalue())
    return dst


def _damaged_plan_is_refused(agent, tmp_path, edit, match):
    """backend="mlp" refuses the export of ``agent`` with its plan ``edit``-ed, naming ``match``;
    "auto" runs the module on the interpreter instead, still agreeing with it."""
    good = tmp_path / "good.pt"
    export_policy(agent, good, action_low=[-1] * ACT, action_high=[1] * ACT, verbose=False)
    assert Policy(good).backend == "mlp"
    bad = _with_plan(good, tmp_path / "bad.pt", edit)
    with pytest.raises(PolicyFormatError, match=match):
        Policy(bad, backend="mlp")
    p = Policy(bad)
    assert p.backend == "torchscript"
    obs = np.random.default_rng(0).standard_normal((4, OBS)).astype(np.float32)
    with torch.no_grad():
        want = module_of(bad)(torch.from_numpy(obs)).numpy()
    # The bad file's module is the good file's: the good plan bounds its rounding.
    assert_within_rounding(np.stack([p.act(o) for o in obs]), want, good, obs, "interpreter, row by row")


def test_lying_network_plan_is_refused(tmp_path, policy_file):
    """A network plan that does not reproduce forward() falls back to the interpreter (auto) or is
    refused (backend="mlp"): the fast path can never silently compute something else."""
    path = _with_plan(policy_file, tmp_path / "lie.pt", lambda n: n.update(hidden_activation="tanh"))  # it is relu
    assert Policy(path).backend == "torchscript"
    with pytest.raises(PolicyFormatError, match="does not reproduce forward"):
        Policy(path, backend="mlp")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda n: n.pop("state_layer"), "state_layer"),
        (lambda n: n["norm"].update(kind="l2"), "network.norm.kind must be avg_l1"),
        (lambda n: n["norm"].update(eps=0), r"network.norm.eps must be in \(0, 1\)"),
        (lambda n: n["norm"].update(eps="x"), "network.norm.eps"),
        (lambda n: n["encoder"].update(hidden_activation="gelu"), "is not one of relu, tanh, elu, identity"),
        (lambda n: n["encoder"].update(layers=[]), "network.encoder.layers is empty"),
        (lambda n: n["encoder"]["layers"].pop(), r"does not reproduce forward\(\)"),  # fits, but lies
        (lambda n: n["encoder"]["layers"].pop(0), r"tensor 'actor.encoder.zs2.weight' is \[256, 256\]"),
        (lambda n: n["state_layer"].update(out=-1), r"network.state_layer.out must be in \[1, "),
        (lambda n: n["state_layer"].update(weight="actor.nope"), "the module has no tensor 'actor.nope'"),
        (lambda n: n.update(kind="transformer"), "no network the mlp backend runs"),
    ],
)
def test_bad_sale_plans_are_refused_by_name(tmp_path, edit, match):
    """A TD7 policy whose plan is damaged is refused by name (or run on the interpreter)."""
    torch.manual_seed(3)
    _damaged_plan_is_refused(DDPGAgent.from_dims(OBS, ACT, DDPGConfig.preset("td7")), tmp_path, edit, match)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda n: n["layers"][1]["input_norm"].update(kind="layer_norm"), r"input_norm.kind must be batch_renorm"),
        (lambda n: n["layers"][1]["input_norm"].update(eps=0), r"input_norm.eps must be in \(0, 1\)"),
        (lambda n: n["layers"][1]["input_norm"].update(eps=None), r"input_norm.eps"),
        (
            lambda n: n["layers"][0]["input_norm"].update(mean="actor.net.3.running_mean"),
            r"tensor 'actor.net.3.running_mean' is \[256\] Float, expected \[17\] float32",
        ),
        (lambda n: n["layers"][1]["input_norm"].update(var="actor.nope"), "the module has no tensor 'actor.nope'"),
        (
            lambda n: n["layers"][1]["input_norm"].update(weight="actor.net.3.running_var"),
            "the module has no tensor 'actor.net.3.running_var'",
        ),  # a buffer where a parameter belongs
        (lambda n: n["layers"][2].pop("input_norm"), r"does not reproduce forward\(\)"),  # fits, but lies
        # A lie smaller than float32's rounding bound: only the float64 comparison sees it.
        (
            lambda n: n["layers"][1]["input_norm"].update(eps=n["layers"][1]["input_norm"]["eps"] * 1.01),
            r"does not reproduce forward\(\) \(\|diff\| .* in float64",
        ),
    ],
)
def test_bad_batch_renorm_plans_are_refused_by_name(tmp_path, edit, match):
    """A CrossQ policy whose plan is damaged is refused by name (or run on the interpreter)."""
    _damaged_plan_is_refused(crossq_agent(3), tmp_path, edit, match)


# ---------------------------------------------------------------------------------------- allocations
def test_act_does_not_allocate_after_warmup(alloc_check, policy_file):
    results = {}
    for backend in ("mlp", "torchscript"):
        out = subprocess.run(
            [str(alloc_check), str(policy_file), backend, "64", "200"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        results[backend] = json.loads(out.stdout)
    assert results["mlp"]["probe_allocations"] >= 2  # the counter does see allocations
    assert results["mlp"]["allocations"] == 0, results  # 400 calls, batch 1 and 64: none, anywhere
    # The TorchScript interpreter allocates its intermediate tensors: why the mlp backend exists.
    assert results["torchscript"]["allocations"] > 0
