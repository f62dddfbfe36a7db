"""Property tests (hypothesis) of the C++ policy runtime against the TorchScript module it loads.

Over random actor shapes and widths (plain MLP actors and TD7's SaleActor with its frozen encoder),
activations, weight scales from fresh to well past trained
magnitudes (a 30k-step InvertedPendulum actor's weights are ~30x their initial scale), observation
normalizations, action bounds and batch sizes:
- ``Policy`` (default options, auto backend) loads every policy whose TorchScript output is finite,
  and it and the module are both within the float32 rounding bound of the exact function;
- ``act`` answers the same question with the same bits however often it is asked and whatever was
  asked before (no state leaks between calls), and never writes its input;
- with ``batch_invariant=True`` a row's action is exactly its action alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from pydpg.core.agent import DDPGAgent
from pydpg.core.networks import Actor
from pydpg.core.sale import Encoder, SaleActor
from pydpg.deploy.export import export_policy
from pydpg.deploy.rounding import rounding_bound, within
from pydpg.deploy.runtime import Policy

torch.set_num_threads(1)

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def policies(draw):
    obs_dim = draw(st.integers(1, 24))
    act_dim = draw(st.integers(1, 8))
    hidden = tuple(draw(st.lists(st.integers(1, 96), min_size=1, max_size=3)))
    activation = draw(st.sampled_from([nn.ReLU, nn.Tanh]))
    # From 0.5x to 60x the initial weights: fresh, trained (~30x), and past it. Drawn from a list so
    # that the trained magnitudes are as likely as fresh ones in 30 examples.
    scale = draw(st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0, 60.0]))
    normalized = draw(st.booleans())
    low = np.array(draw(st.lists(st.floats(-100, 10), min_size=act_dim, max_size=act_dim)))
    width = np.array(draw(st.lists(st.floats(1e-3, 200), min_size=act_dim, max_size=act_dim)))
    batch = draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**31 - 1))
    sale = draw(st.booleans())  # TD7's actor: width hidden[0], zs of zs_dim (activation unused)
    zs_dim = draw(st.integers(1, 64))
    return dict(
        obs_dim=obs_dim,
        act_dim=act_dim,
        hidden=hidden,
        activation=activation,
        scale=scale,
        normalized=normalized,
        low=low,
        high=low + width,
        batch=batch,
        seed=seed,
        sale=sale,
        zs_dim=zs_dim,
    )


class Stats:
    """What RunningNormalizer hands export_policy: mean, var, eps, clip."""

    def __init__(self, rng, dim):
        self.mean = torch.from_numpy(rng.normal(0, 5, dim))
        self.var = torch.from_numpy(np.exp(rng.uniform(np.log(1e-4), np.log(1e4), dim)))
        self.eps = 1e-8
        self.clip = float(rng.choice([0.0, 5.0, 10.0]))


# Always run, besides the drawn examples: HalfCheetah's shapes at trained scale with normalization,
# and a deep narrow net at twice that scale with asymmetric bounds far from zero.
TRAINED = dict(
    obs_dim=17,
    act_dim=6,
    hidden=(256, 256),
    activation=nn.ReLU,
    scale=30.0,
    normalized=True,
    low=np.full(6, -1.0),
    high=np.full(6, 1.0),
    batch=64,
    seed=1,
)
BEYOND = dict(
    obs_dim=11,
    act_dim=3,
    hidden=(64, 32, 16),
    activation=nn.Tanh,
    scale=60.0,
    normalized=False,
    low=np.array([100.0, -5.0, 0.0]),
    high=np.array([300.0, 5.0, 0.01]),
    batch=37,
    seed=2,
)
# TD7's actor at its own sizes on Walker2d's shapes, at trained scale.
TD7 = dict(
    obs_dim=17,
    act_dim=6,
    hidden=(256,),
    activation=nn.ReLU,
    scale=30.0,
    normalized=False,
    low=np.full(6, -1.0),
    high=np.full(6, 1.0),
    batch=64,
    seed=3,
    sale=True,
    zs_dim=256,
)


def build(tmp_path, case):
    torch.manual_seed(case["seed"] % 10_000)
    rng = np.random.default_rng(case["seed"])
    if case.get("sale"):
        h = case["hidden"][0]
        actor = SaleActor(
            case["obs_dim"],
            case["act_dim"],
            Encoder(case["obs_dim"], case["act_dim"], case["zs_dim"], h),
            case["zs_dim"],
            h,
        )
    else:
        actor = Actor(case["obs_dim"], case["act_dim"], hidden=case["hidden"], activation=case["activation"])
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(case["scale"])
    agent = DDPGAgent(actor, [nn.Linear(case["obs_dim"] + case["act_dim"], 1)])
    norm = Stats(rng, case["obs_dim"]) if case["normalized"] else None
    path = tmp_path / f"p{case['seed']}.pt"
    export_policy(agent, path, action_low=case["low"], action_high=case["high"], normalizer=norm, verbose=False)
    if norm is not None:
        obs = norm.mean.numpy() + np.sqrt(norm.var.numpy()) * rng.normal(0, 2, (case["batch"], case["obs_dim"]))
    else:
        obs = rng.normal(0, 3, (case["batch"], case["obs_dim"]))
    return path, obs.astype(np.float32), rng


def module_actions(path, obs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(obs)).numpy()


def assert_as_exact_as_float32_allows(got, path, obs):
    """``got`` and torch's float32 evaluation of the module are both within the forward error bound
    of the network's exact function (pydpg.deploy.rounding): whatever order either sums in, on any CPU. A
    well-conditioned network makes the bound tight; a large-weight deep one (BEYOND) amplifies
    rounding, and the bound grows with it, derived from the network rather than measured here."""
    centre, bound = rounding_bound(path, obs)
    for what, actions in (("runtime", got), ("torch", module_actions(path, obs))):
        ok, i, d, allowed = within(actions, centre, bound)
        assert ok, f"{what}: |actions - exact| {d:.3g} > bound {allowed:.3g} at {i}"


@SETTINGS
@given(case=policies())
@example(case=TRAINED)
@example(case=BEYOND)
@example(case=TD7)
def test_policy_agrees_with_torchscript_and_never_refuses_a_finite_one(tmp_path, case):
    path, obs, _ = build(tmp_path, case)
    want = module_actions(path, obs)
    assert np.isfinite(want).all()  # tanh and the clamp keep every module output finite
    p = Policy(path, max_batch=case["batch"])  # default warm-up, auto backend: must not refuse
    assert p.backend == "mlp"  # not a silent fallback that would compare the module with itself
    got = p.act(obs)
    assert_as_exact_as_float32_allows(got, path, obs)
    assert (got >= case["low"].astype(np.float32)).all() and (got <= case["high"].astype(np.float32)).all()


@SETTINGS
@given(case=policies())
@example(case=TRAINED)
@example(case=BEYOND)
@example(case=TD7)
def test_act_has_no_memory_between_calls(tmp_path, case):
    path, obs, rng = build(tmp_path, case)
    for backend in ("mlp", "torchscript"):
        p = Policy(path, max_batch=64, backend=backend, on_nonfinite="hold")
        keep = obs.copy()
        first = p.act(obs)
        np.testing.assert_array_equal(obs, keep)  # the input is read, never written
        np.testing.assert_array_equal(p.act(obs), first)
        # Anything in between: other batch sizes, huge values, non-finite rows (held), single rows.
        for b in (1, 7, 64):
            junk = rng.normal(0, 1e6, (b, case["obs_dim"])).astype(np.float32)
            junk[0, 0] = np.nan
            p.act(junk)
        p.act(obs[0])
        np.testing.assert_array_equal(p.act(obs), first, err_msg=backend)


@SETTINGS
@given(case=policies())
@example(case=TRAINED)
@example(case=BEYOND)
@example(case=TD7)
def test_batch_invariant_rows_are_their_own(tmp_path, case):
    path, obs, _ = build(tmp_path, case)
    p = Policy(path, max_batch=case["batch"], batch_invariant=True)
    assert p.backend == "mlp"
    full = p.act(obs)
    alone = np.stack([p.act(o) for o in obs])
    np.testing.assert_array_equal(full, alone)
    np.testing.assert_array_equal(p.act(obs[::-1].copy()), full[::-1])
    assert_as_exact_as_float32_allows(full, path, obs)
