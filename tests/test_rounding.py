"""pydpg.deploy.rounding: the forward error bound that decides when two evaluations of one policy agree.

Pinned two ways:
- sound: float32 evaluations that sum in other orders than any BLAS here (sequential, reversed,
  largest first, split-K, pairwise, a float32 numpy of its own with its own tanh), torch's eager and
  TorchScript modules, the runtime's mlp backend with MKL and with the portable kernels, all land
  within the bound of the centre, on random networks from fresh to past trained magnitudes and on
  the two trained actors in tests/data. Nothing here compares with a number measured on this CPU.
- tight enough: a wrong weight, a missing bias, a swapped layer and a dropped normalization fall
  outside it, on the trained actors and on random ones (test_export.py and test_runtime.py hold
  export's and the runtime's checks to the same bugs).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from policy_helpers import scramble_batch_renorm
from torch import nn

from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.networks import Actor, BatchRenorm
from pydpg.deploy.export import PolicyModule, _check_observations, export_policy
from pydpg.deploy.policy_file import read_metadata
from pydpg.deploy.rounding import FLOAT32_ROUNDED_CONSTANTS, FLOAT64, NoPlanError, rounding_bound, within
from pydpg.deploy.runtime import Policy

torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"
PENDULUM_30K = DATA / "inverted_pendulum_30k.pt"
HOPPER_1M = DATA / "hopper_crossq_1m_actor.pt"
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def hopper_agent() -> DDPGAgent:
    conf = DDPGConfig(**{**DDPGConfig.presets()["crossq"], "critic_hidden": (256, 256)})
    agent = DDPGAgent.from_dims(11, 3, conf)
    agent.actor.load_state_dict(torch.load(HOPPER_1M, weights_only=True))
    agent.actor.eval()
    return agent


def pendulum_agent() -> DDPGAgent:
    """The 30k-step InvertedPendulum policy's actor, back in an agent (the file has no normalization)."""
    module = jit_load(PENDULUM_30K)
    actor = Actor(4, 1, hidden=(64, 64))
    actor.load_state_dict({k[len("actor.") :]: v for k, v in module.state_dict().items() if k.startswith("actor.")})
    return DDPGAgent(actor, [nn.Linear(5, 1)])


# ------------------------------------------------------------------------------- float32 oracles
def sum_in_order(products: np.ndarray, bias: np.ndarray, order: str, rng) -> np.ndarray:
    """Rows of float32 products [n, out, k] plus bias, summed in float32 in the named order."""
    n, out, k = products.shape
    if order == "pairwise":  # numpy's own float32 reduction (pairwise, 8-way unrolled)
        return (products.sum(axis=2, dtype=np.float32) + bias).astype(np.float32)
    if order == "split":  # two halves of the inner dimension, then the bias: a split-K kernel
        h = k // 2
        a = products[..., :h].sum(axis=2, dtype=np.float32)
        b = products[..., h:].sum(axis=2, dtype=np.float32)
        return ((a + b).astype(np.float32) + bias).astype(np.float32)
    terms = np.concatenate([np.broadcast_to(bias, (n, out))[..., None], products], axis=2)
    if order == "reversed":
        terms = terms[..., ::-1]
    elif order == "largest_first":
        terms = np.take_along_axis(terms, np.argsort(-np.abs(terms), axis=2), axis=2)
    elif order == "smallest_first":
        terms = np.take_along_axis(terms, np.argsort(np.abs(terms), axis=2), axis=2)
    elif order == "random":
        terms = terms[..., rng.permutation(k + 1)]
    acc = np.zeros((n, out), np.float32)
    for i in range(k + 1):  # sequential, one float32 rounding per addition
        acc = (acc + terms[..., i]).astype(np.float32)
    return acc


ORDERS = ("sequential", "reversed", "largest_first", "smallest_first", "random", "split", "pairwise")


def numpy_float32(module: PolicyModule, obs: np.ndarray, order: str, seed: int = 0) -> np.ndarray:
    """The PolicyModule's function computed by numpy in float32, in its own summation order and with
    numpy's own tanh: a third implementation, independent of torch and of the runtime."""
    rng = np.random.default_rng(seed)
    f = np.float32
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    x = obs.astype(f)
    if module.normalize:
        x = ((x - sd["obs_mean"]).astype(f) / sd["obs_std"]).astype(f)
        if module.obs_clip > 0:
            x = np.clip(x, -module.obs_clip, module.obs_clip).astype(f)
    layers = list(module.actor.net)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Linear):
            w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
            products = (x[:, None, :] * w[None, :, :]).astype(f)
            x = sum_in_order(products, b, order, rng)
        elif isinstance(m, BatchRenorm):
            scale = (f(1) / np.sqrt((m.running_var.numpy() + f(m.eps)).astype(f))).astype(f)
            x = (
                (((x - m.running_mean.numpy()).astype(f) * scale).astype(f) * m.weight.detach().numpy()).astype(f)
                + m.bias.detach().numpy()
            ).astype(f)
        elif isinstance(m, nn.ReLU):
            x = np.maximum(x, f(0))
        elif isinstance(m, nn.Tanh):
            x = np.tanh(x).astype(f)
        else:
            raise TypeError(type(m))
    a = np.clip(np.tanh(x).astype(f), -1, 1).astype(np.float64)
    low, high = module.action_low.numpy().astype(np.float64), module.action_high.numpy().astype(np.float64)
    return np.clip(
        (low + (a + 1) * 0.5 * (high - low)).astype(f), module.action_low.numpy(), module.action_high.numpy()
    )


def module_of(agent: DDPGAgent, low, high, norm=None) -> tuple[PolicyModule, dict, Path]:
    """The exported module and metadata of ``agent`` (written to a temporary file)."""
    import tempfile

    path = Path(tempfile.mkdtemp()) / "p.pt"
    res = export_policy(agent, path, action_low=low, action_high=high, normalizer=norm, verbose=False)
    return jit_load(path), res.metadata, path


@st.composite
def networks(draw):
    obs_dim = draw(st.integers(1, 20))
    act_dim = draw(st.integers(1, 6))
    hidden = tuple(draw(st.lists(st.integers(1, 80), min_size=1, max_size=3)))
    return dict(
        obs_dim=obs_dim,
        act_dim=act_dim,
        hidden=hidden,
        activation=draw(st.sampled_from([nn.ReLU, nn.Tanh])),
        scale=draw(st.sampled_from([0.5, 1.0, 10.0, 30.0, 100.0])),  # fresh to past trained
        normalized=draw(st.booleans()),
        batch_renorm=draw(st.booleans()),
        low=draw(st.sampled_from([-1.0, -3.0, 250.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build_policy(tmp_path, case):
    torch.manual_seed(case["seed"] % 10_000)
    rng = np.random.default_rng(case["seed"])
    actor = Actor(
        case["obs_dim"],
        case["act_dim"],
        hidden=case["hidden"],
        activation=case["activation"],
        batch_renorm=BatchRenorm if case["batch_renorm"] else None,
    )
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(case["scale"])
    if case["batch_renorm"]:
        scramble_batch_renorm(actor, torch.Generator().manual_seed(case["seed"] % 10_000))
    actor.eval()
    norm = None
    if case["normalized"]:
        norm = {
            "mean": rng.normal(0, 5, case["obs_dim"]),
            "var": np.exp(rng.uniform(-5, 5, case["obs_dim"])),
            "eps": 1e-8,
            "clip": float(rng.choice([0.0, 5.0])),
        }
    low = np.full(case["act_dim"], case["low"])
    path = tmp_path / f"p{case['seed']}.pt"
    export_policy(
        DDPGAgent(actor, [nn.Linear(case["obs_dim"] + case["act_dim"], 1)]),
        path,
        action_low=low,
        action_high=low + 2.0,
        normalizer=norm,
        verbose=False,
    )
    obs = _check_observations(case["obs_dim"], norm, 96, seed=case["seed"] % 1000)
    return path, obs


def assert_within_bound(got, centre, bound, what):
    ok, i, d, allowed = within(got, centre, bound)
    assert ok, f"{what}: |got - centre| {d:.3g} > bound {allowed:.3g} at {i}"


# ------------------------------------------------------------------------------- soundness
@SETTINGS
@given(case=networks())
@example(
    case=dict(
        obs_dim=17,
        act_dim=6,
        hidden=(256, 256),
        activation=nn.ReLU,
        scale=30.0,
        normalized=True,
        batch_renorm=False,
        low=-1.0,
        seed=1,
    )
)
@example(
    case=dict(
        obs_dim=11,
        act_dim=3,
        hidden=(64, 32, 16),
        activation=nn.Tanh,
        scale=100.0,
        normalized=False,
        batch_renorm=True,
        low=250.0,
        seed=2,
    )
)
def test_every_summation_order_lands_within_the_bound(tmp_path, case):
    path, obs = build_policy(tmp_path, case)
    module = jit_load(path)
    centre, bound = rounding_bound(path, obs)
    assert np.isfinite(bound).all() and (bound >= 0).all()
    with torch.no_grad():
        assert_within_bound(module(torch.from_numpy(obs)).numpy(), centre, bound, "TorchScript, batched")
        rows = np.stack([module(torch.from_numpy(o[None])).numpy()[0] for o in obs])
        assert_within_bound(rows, centre, bound, "TorchScript, row by row")
        exact = copy.deepcopy(module).double()(torch.from_numpy(obs).double()).numpy()
    _, bound64 = rounding_bound(path, obs, unit_roundoff=FLOAT64, float32_output=False)
    assert_within_bound(exact, centre, bound64, "float64")
    eager_module = _eager_twin(path)
    for order in ORDERS:
        assert_within_bound(numpy_float32(eager_module, obs, order, case["seed"]), centre, bound, f"numpy, {order}")
    for kernels in ("auto", "portable"):
        for invariant in (False, True):
            p = Policy(path, max_batch=len(obs), mlp_kernels=kernels, batch_invariant=invariant)
            assert p.backend == "mlp"
            assert_within_bound(p.act(obs), centre, bound, f"runtime {kernels}, batch_invariant={invariant}")


def _eager_twin(path) -> PolicyModule:
    """The eager PolicyModule a file was written from, rebuilt from its state_dict and metadata."""
    meta = read_metadata(path)
    module = jit_load(path)
    sd = module.state_dict()
    linears = [s for s in meta["network"]["layers"]]
    layers: list[nn.Module] = []
    act = (
        {"relu": nn.ReLU, "tanh": nn.Tanh}[meta["network"]["hidden_activation"]]
        if meta["network"]["hidden_activation"] != "identity"
        else None
    )
    for i, s in enumerate(linears):
        if s.get("input_norm"):
            n = s["input_norm"]
            br = BatchRenorm(s["in"], eps=n["eps"])
            br.running_mean.copy_(sd[n["mean"]])
            br.running_var.copy_(sd[n["var"]])
            with torch.no_grad():
                br.weight.copy_(sd[n["weight"]])
                br.bias.copy_(sd[n["bias"]])
            layers.append(br.eval())
        lin = nn.Linear(s["in"], s["out"])
        with torch.no_grad():
            lin.weight.copy_(sd[s["weight"]])
            lin.bias.copy_(sd[s["bias"]])
        layers.append(lin)
        if i + 1 < len(linears) and act is not None:
            layers.append(act())
    actor = Actor(1, 1, hidden=(1,))  # forward: tanh(net(x)); its net replaced by the plan's layers
    actor.net = nn.Sequential(*layers)
    norm = meta["normalization"]
    m = PolicyModule(
        actor,
        np.asarray(meta["action_low"]),
        np.asarray(meta["action_high"]),
        None if norm is None else norm["mean"],
        None if norm is None else norm["var"],
        0.0 if norm is None else norm["eps"],
        0.0 if norm is None else norm["clip"],
        meta["obs_dim"],
    )
    for name in ("obs_mean", "obs_std", "action_low", "action_high"):
        getattr(m, name).copy_(sd[name])
    return m


@pytest.mark.parametrize("which", ["pendulum_30k", "hopper_1m"])
def test_the_trained_actors_land_within_the_bound_in_every_order(which):
    agent = pendulum_agent() if which == "pendulum_30k" else hopper_agent()
    obs_dim = 4 if which == "pendulum_30k" else 11
    module, meta, path = module_of(
        agent, [-3.0] if which == "pendulum_30k" else [-1.0] * 3, [3.0] if which == "pendulum_30k" else [1.0] * 3
    )
    obs = _check_observations(obs_dim, None, 1024)
    centre, bound = rounding_bound(path, obs)
    eager = _eager_twin(path)
    for order in ORDERS:
        assert_within_bound(numpy_float32(eager, obs, order), centre, bound, f"{which}, numpy {order}")
    with torch.no_grad():
        assert_within_bound(eager(torch.from_numpy(obs)).numpy(), centre, bound, f"{which}, eager")
    for kernels in ("auto", "portable"):
        assert_within_bound(
            Policy(path, max_batch=1024, mlp_kernels=kernels).act(obs), centre, bound, f"{which}, runtime {kernels}"
        )


def test_a_float64_actor_is_bounded_with_its_rounded_parameters(tmp_path):
    """A user's float64 actor: the file rounds its parameters to float32. The float64 evaluation,
    with its own parameters, is within the bound that counts that rounding as a constant error."""
    torch.manual_seed(0)
    actor = Actor(6, 2, hidden=(32, 32)).double()
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(20)
    path = tmp_path / "p.pt"
    export_policy(
        DDPGAgent(actor, [nn.Linear(8, 1).double()]), path, action_low=[-1, -1], action_high=[1, 1], verbose=False
    )
    obs = _check_observations(6, None, 256)
    centre, bound = rounding_bound(
        path, obs, unit_roundoff=FLOAT64, constants=FLOAT32_ROUNDED_CONSTANTS, float32_output=False
    )
    with torch.no_grad():
        got = np.tanh(actor.net(torch.from_numpy(obs).double()).numpy())
    assert_within_bound(got, centre, bound, "float64 actor")
    _, bound0 = rounding_bound(path, obs, unit_roundoff=FLOAT64, float32_output=False)
    assert (bound > bound0).any()  # the parameters' rounding is counted, not assumed away


def test_sale_actor_is_bounded(tmp_path):
    """TD7's SaleActor (encoder, ELU, AvgL1Norm): torch's evaluations, batched and alone, and the
    runtime's, land within the bound."""
    from pydpg.core.sale import Encoder, SaleActor

    torch.manual_seed(3)
    actor = SaleActor(17, 6, Encoder(17, 6, 64, 64), 64, 64)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(10)
    path = tmp_path / "td7.pt"
    export_policy(DDPGAgent(actor, [nn.Linear(23, 1)]), path, action_low=[-1] * 6, action_high=[1] * 6, verbose=False)
    obs = _check_observations(17, None, 256)
    centre, bound = rounding_bound(path, obs)
    module = jit_load(path)
    with torch.no_grad():
        assert_within_bound(module(torch.from_numpy(obs)).numpy(), centre, bound, "TorchScript")
        rows = np.stack([module(torch.from_numpy(o[None])).numpy()[0] for o in obs])
    assert_within_bound(rows, centre, bound, "TorchScript, row by row")
    for kernels in ("auto", "portable"):
        assert_within_bound(Policy(path, max_batch=256, mlp_kernels=kernels).act(obs), centre, bound, kernels)


def test_a_custom_actor_has_no_bound(tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 1)

        def forward(self, x):
            return torch.tanh(self.l(x))

    path = tmp_path / "c.pt"
    export_policy(Custom(), path, action_low=[-1], action_high=[1], verbose=False)
    with pytest.raises(NoPlanError, match="no network plan"):
        rounding_bound(path, np.zeros((1, 3), np.float32))


def test_bad_inputs_are_refused(tmp_path):
    path = tmp_path / "p.pt"
    torch.manual_seed(0)
    export_policy(DDPGAgent.from_dims(3, 1), path, action_low=[-1], action_high=[1], verbose=False)
    with pytest.raises(ValueError, match=r"obs has shape \(2, 4\), expected \(3,\) or \(B, 3\)"):
        rounding_bound(path, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="unit_roundoff"):
        rounding_bound(path, np.zeros((2, 3), np.float32), unit_roundoff=0.0)
    with pytest.raises(ValueError, match="unit_roundoff"):
        rounding_bound(path, np.zeros((2, 3), np.float32), unit_roundoff=float("nan"))
    with pytest.raises(ValueError, match="constants"):
        rounding_bound(path, np.zeros((2, 3), np.float32), constants=-1.0)
    # A NaN observation has no bound: +inf, which `within` counts as a failure, never a pass.
    centre, bound = rounding_bound(path, np.array([[np.nan, 0, 0]], np.float32))
    assert np.isinf(bound).all()
    assert not within(np.zeros(1), np.zeros(1), np.array([np.inf]))[0]
    assert not within(np.array([np.nan]), np.zeros(1), np.ones(1))[0]


# ------------------------------------------------------------------------------- tightness
def _first_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear))


def _square_linear(module: nn.Module) -> nn.Linear:
    return next(m for m in module.modules() if isinstance(m, nn.Linear) and m.in_features == m.out_features)


@torch.no_grad()
def wrong_weight(actor):  # the largest weight of the first layer with its sign flipped
    w = _first_linear(actor).weight
    i = int(w.abs().argmax())
    w.view(-1)[i] = -w.view(-1)[i]


@torch.no_grad()
def missing_bias(actor):  # the hidden square layer's bias never loaded
    _square_linear(actor).bias.zero_()


@torch.no_grad()
def swapped_layer(actor):  # the square layer's weight read in the other memory order (transposed)
    w = _square_linear(actor).weight
    w.copy_(w.T.clone())


BUGS = {"wrong weight": wrong_weight, "missing bias": missing_bias, "swapped layer": swapped_layer}
# Each bug, on each actor, must move some action beyond the bound (exporting the bugged actor against
# the true one fails; test_export.py checks it through export's own check).
ACTORS = {
    "pendulum_30k": (pendulum_agent, 4, None),
    "hopper_1m": (hopper_agent, 11, None),
    "random_normalized": (None, 17, "norm"),
}


def random_normalized_agent(scale: float = 30.0):
    """A random actor at trained magnitude (its tanh mostly saturated), or fresh (scale 1)."""
    torch.manual_seed(7)
    agent = DDPGAgent.from_dims(17, 6)
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.mul_(scale)
    return agent


def random_norm(dim=17):
    rng = np.random.default_rng(7)
    return {"mean": rng.normal(0, 5, dim), "var": np.exp(rng.uniform(-3, 3, dim)), "eps": 1e-8, "clip": 10.0}


CASES = [
    (a, b)
    for a in ACTORS
    for b in [*BUGS, "dropped normalization"]
    if not (a == "pendulum_30k" and b == "dropped normalization")
]  # it was trained without any


@pytest.mark.parametrize("actor_name,bug", CASES)
def test_real_bugs_fall_outside_the_bound(actor_name, bug):
    make, obs_dim, _ = ACTORS[actor_name]
    agent = make() if make else random_normalized_agent()
    norm = random_norm(obs_dim) if actor_name == "random_normalized" else None
    act_dim = agent.actor.net[-1].out_features
    module, meta, path = module_of(agent, [-1.0] * act_dim, [1.0] * act_dim, norm)
    obs = _check_observations(obs_dim, norm, 1024)
    centre, bound = rounding_bound(path, obs)
    eager = _eager_twin(path)
    if bug == "dropped normalization":
        if norm is not None:
            eager.normalize = False
        else:  # no observation normalization: CrossQ's first BatchRenorm
            first = next(i for i, m in enumerate(eager.actor.net) if isinstance(m, BatchRenorm))
            eager.actor.net[first] = nn.Identity()
    else:
        BUGS[bug](eager.actor)
    with torch.no_grad():
        bugged = eager(torch.from_numpy(obs)).numpy()
    ok, i, d, allowed = within(bugged, centre, 2 * bound)
    assert not ok, f"{bug} on {actor_name} stayed within twice the bound (largest |diff| {d:.3g})"


@pytest.mark.parametrize("actor_name", ["pendulum_30k", "hopper_1m", "fresh_normalized"])
def test_float64_sees_what_float32_rounding_hides(actor_name):
    """A weight off by 1e-4 of itself moves the actions less than float32's worst-case rounding, so
    no float32 comparison can tell it from rounding; in float64 the bound is ~2^29 times narrower and
    it shows. Export and the runtime's load check therefore judge "same function" in float64."""
    make, obs_dim, _ = ACTORS.get(actor_name, (None, 17, None))
    agent = make() if make else random_normalized_agent(scale=1.0)
    norm = random_norm(obs_dim) if actor_name == "fresh_normalized" else None
    act_dim = agent.actor.net[-1].out_features
    _, _, path = module_of(agent, [-1.0] * act_dim, [1.0] * act_dim, norm)
    obs = _check_observations(obs_dim, norm, 1024)
    centre, bound64 = rounding_bound(path, obs, unit_roundoff=FLOAT64)  # the module rounds its output to float32
    _, bound32 = rounding_bound(path, obs)
    eager = _eager_twin(path).double()
    with torch.no_grad():
        assert_within_bound(eager(torch.from_numpy(obs).double()).numpy(), centre, bound64, "the true module")
        w = _first_linear(eager.actor).weight
        i = int(w.abs().argmax())
        w.view(-1)[i] *= 1 + 1e-4
        bugged = eager(torch.from_numpy(obs).double()).numpy()
    assert within(bugged, centre, 2 * bound32)[0]  # hidden in float32's worst case
    assert not within(bugged, centre, 2 * bound64)[0]
