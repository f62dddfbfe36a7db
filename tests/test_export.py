"""Export: the file maps raw observations to env-unit actions exactly as training did, carries its
metadata, passes a parity check (or is not written), and keeps TorchScript's deprecation quiet."""

from __future__ import annotations

import copy
import json
import types
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_rounding import CASES as BUG_CASES

from pydpg.cli.export import export_main
from pydpg.common.envs import scale_action
from pydpg.contract.observation import ObservationMismatch
from pydpg.contract.observation import task_spec as observation_task_spec
from pydpg.core.agent import DDPGAgent
from pydpg.core.config import DDPGConfig
from pydpg.core.normalizer import RunningNormalizer
from pydpg.deploy import export as export_module
from pydpg.deploy.export import ParityError, export_policy, task_spec
from pydpg.deploy.policy_file import FORMAT_VERSION, read_metadata
from pydpg.deploy.rounding import assert_within_rounding, rounding_bound, within
from pydpg.files.model import make_policy

torch.set_num_threads(1)


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's, see pydpg.deploy.export
        return torch.jit.load(str(path))


@pytest.fixture(scope="module")
def cheetah():
    env = gym.make("HalfCheetah-v5")
    yield env
    env.close()


def trained_like(obs_dim, act_dim, seed=0):
    torch.manual_seed(seed)
    agent = DDPGAgent.from_dims(obs_dim, act_dim)
    norm = RunningNormalizer(obs_dim)
    norm.update(np.random.default_rng(seed).standard_normal((256, obs_dim)) * 3 + 1)
    return agent, norm


def test_export_matches_training_policy_and_carries_metadata(tmp_path, cheetah, capsys):
    agent, norm = trained_like(17, 6)
    path = tmp_path / "policy.pt"
    res = export_policy(agent, path, env=cheetah, normalizer=norm, training_steps=1234, eval_return=56.5)
    assert "parity check passed on 1024 observations" in capsys.readouterr().out
    assert res.worst_ratio <= 1.0 and res.runtime_backend == "mlp"

    meta = read_metadata(path)
    assert meta["format"] == "pydpg-policy" and meta["format_version"] == FORMAT_VERSION
    assert (meta["obs_dim"], meta["act_dim"], meta["env_id"]) == (17, 6, "HalfCheetah-v5")
    assert meta["action_low"] == [-1.0] * 6 and meta["action_high"] == [1.0] * 6
    assert meta["training_steps"] == meta["policy_step"] == 1234 and meta["eval_return"] == 56.5
    # Through JSON unchanged: the float64 widening of the normalizer's own values.
    np.testing.assert_array_equal(meta["normalization"]["mean"], norm.mean.double().numpy())
    assert meta["normalization"]["clip"] == 10.0 and meta["pydpg_version"]
    assert meta["network"]["kind"] == "mlp" and meta["task"]["frame_skip"] == 5

    # The module is the whole map: raw obs in, env-unit actions out, equal to what the trainer does.
    module = jit_load(path)
    obs = np.random.default_rng(1).standard_normal((300, 17)).astype(np.float32) * 4
    policy = make_policy(agent, norm)
    want = np.stack([scale_action(policy(o), cheetah.action_space.low, cheetah.action_space.high) for o in obs])
    with torch.no_grad():
        # One observation at a time, as the trainer evaluates: bit for bit the same actions.
        single = np.concatenate([module(torch.from_numpy(o[None])).numpy() for o in obs[:50]])
        batched = module(torch.from_numpy(obs)).numpy()
    # Batch 1 in both, the same kernels on any CPU: the same computation, so the same bits.
    np.testing.assert_array_equal(single, want[:50])
    # BLAS blocks a batch of 300 differently from one row: equal up to float32 rounding.
    assert_within_rounding(batched, want, path, obs, "batched module vs the trainer's policy")


def test_action_scaling_to_asymmetric_bounds(tmp_path):
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(3, 2)
    low, high = np.array([-2.0, 0.0]), np.array([4.0, 0.5])
    export_policy(agent, tmp_path / "p.pt", action_low=low, action_high=high, verbose=False)
    module = jit_load(tmp_path / "p.pt")
    obs = torch.randn(500, 3) * 100  # saturate the tanh both ways
    with torch.no_grad():
        a = module(obs).numpy()
        unit = agent.actor(obs).numpy()
    assert (a >= low.astype(np.float32)).all() and (a <= high.astype(np.float32)).all()
    want = low + (unit.astype(np.float64) + 1) / 2 * (high - low)  # float64, not rounded to float32
    _, file_bound = rounding_bound(tmp_path / "p.pt", obs.numpy())
    _, want_bound = rounding_bound(tmp_path / "p.pt", obs.numpy(), float32_output=False)
    assert within(a, want, file_bound + want_bound)[0]
    assert read_metadata(tmp_path / "p.pt")["task"] is None


def test_statistics_as_plain_values_and_actions_far_from_zero(tmp_path):
    """Normalization given as plain statistics (eps may be 0, no clip) normalizes as training does,
    and bounds far from zero pass the parity check: a float32 file resolves actions near 300 only
    to 3e-5, which a fixed atol of 1e-5 would refuse."""
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(5, 2)
    rng = np.random.default_rng(0)
    norm = {"mean": rng.normal(0, 3, 5), "var": np.exp(rng.normal(0, 2, 5)), "eps": 0.0, "clip": 0.0}
    res = export_policy(
        agent, tmp_path / "p.pt", action_low=[250.0, -0.01], action_high=[300.0, 0.01], normalizer=norm, verbose=False
    )
    assert res.max_abs_diff <= res.tolerance
    assert res.tolerance >= float(np.spacing(np.float32(300.0))) / 2  # the file's output rounding
    obs = (norm["mean"] + np.sqrt(norm["var"]) * rng.normal(0, 2, (64, 5))).astype(np.float32)
    with torch.no_grad():
        got = jit_load(tmp_path / "p.pt")(torch.from_numpy(obs)).numpy()
        x = (torch.from_numpy(obs) - torch.from_numpy(norm["mean"]).float()) / torch.sqrt(
            torch.from_numpy(norm["var"])
        ).float()
        u = agent.actor(x).double().numpy()
    want = np.array([250.0, -0.01]) + (u + 1) * 0.5 * np.array([50.0, 0.02])
    # Another batch (64 rows, eager) than the file's: equal up to the rounding of both evaluations.
    _, file_bound = rounding_bound(tmp_path / "p.pt", obs)
    _, want_bound = rounding_bound(tmp_path / "p.pt", obs, float32_output=False)
    assert within(got, want, file_bound + want_bound)[0]


def test_failed_parity_check_fails_export_and_writes_nothing(tmp_path):
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(4, 1)

    class LyingNormalizer:  # its statistics say identity, but training normalized differently
        mean, var, eps, clip = np.zeros(4), np.ones(4), 0.0, 0.0

        def normalize(self, obs):
            return torch.as_tensor(obs, dtype=torch.float32) * 2

    path = tmp_path / "p.pt"
    with pytest.raises(ParityError, match="parity check FAILED"):
        export_policy(agent, path, normalizer=LyingNormalizer(), action_low=[-3], action_high=[3], verbose=False)
    assert list(tmp_path.iterdir()) == []


HOPPER_1M = Path(__file__).parent / "data" / "hopper_crossq_1m_actor.pt"


def hopper_crossq_1m():
    """CrossQ's Hopper-v5 actor after 1M steps (docs/benchmarks.md, "1M steps"; its state_dict): batch-
    renormalized, pre-activations near 5e4 on the check's observations, so float32 rounding moves its
    actions by ~5e-4. `pydpg export` of this run once failed the old check at 6.3e-5 > 1e-5."""
    conf = DDPGConfig(**{**DDPGConfig.presets()["crossq"], "critic_hidden": (256, 256)})
    agent = DDPGAgent.from_dims(11, 3, conf)
    agent.actor.load_state_dict(torch.load(HOPPER_1M, weights_only=True))
    return agent


def split_k_actions(actor, obs):
    """The actor in float32 with each Linear's products summed in two halves of its inputs, as a BLAS
    kernel that splits the inner dimension does: the same function, another rounding."""
    h = torch.from_numpy(obs)
    with torch.no_grad():
        for m in actor.net:
            if isinstance(m, torch.nn.Linear):
                k = m.in_features // 2
                h = h[:, :k] @ m.weight[:, :k].T + h[:, k:] @ m.weight[:, k:].T + m.bias
            else:
                h = m(h)
        return torch.tanh(h).numpy()


def test_a_long_trained_actor_exports_whatever_order_the_file_sums_in(tmp_path, monkeypatch):
    """The 1M-step CrossQ actor amplifies float32 rounding a thousandfold. Its file's actions replaced
    by float32 evaluations in other summation orders (split-K as some BLAS kernels do, and numpy's
    sequential, reversed and largest-first sums): every one passes, because the check allows what
    rounding can do in *any* order (pydpg.deploy.rounding), not what one order did on the machine that wrote
    the test. Nothing below depends on a number measured here."""
    from test_rounding import _eager_twin, numpy_float32

    agent = hopper_crossq_1m()
    real_writer = export_module._write_torchscript
    for order in ("split_k", "sequential", "reversed", "largest_first"):

        def writer(module, tmp, meta, xml, obs, order=order):
            real_writer(module, tmp, meta, xml, obs)
            if order == "split_k":
                return split_k_actions(agent.actor.eval(), obs)
            return numpy_float32(_eager_twin(tmp), obs, order)

        monkeypatch.setattr(export_module, "_write_torchscript", writer)
        path = tmp_path / f"{order}.pt"
        res = export_policy(agent, path, action_low=[-1.0] * 3, action_high=[1.0] * 3, verbose=False)
        assert res.worst_ratio <= 1.0 and path.exists()
        parity = read_metadata(path)["parity"]
        assert parity["rule"] == "rounding_bound" and parity["atol"] == 0.0
        assert parity["max_allowed"] == res.tolerance


@pytest.mark.parametrize("which,bug", BUG_CASES)
def test_export_refuses_a_file_that_computes_something_else(tmp_path, monkeypatch, which, bug):
    """What a wrong file would compute (the bugs of test_rounding.py, applied to the module the writer
    wrote) fails export's check on the trained actors and a random normalized one; nothing is written."""
    import test_rounding as tr

    agent = {
        "pendulum_30k": tr.pendulum_agent,
        "hopper_1m": tr.hopper_agent,
        "random_normalized": tr.random_normalized_agent,
    }[which]()
    norm = tr.random_norm() if which == "random_normalized" else None
    real_writer = export_module._write_torchscript

    def writer(module, tmp, meta, xml, obs):
        real_writer(module, tmp, meta, xml, obs)
        eager = tr._eager_twin(tmp)
        if bug == "dropped normalization":
            if norm is not None:
                eager.normalize = False
            else:
                first = next(i for i, m in enumerate(eager.actor.net) if isinstance(m, tr.BatchRenorm))
                eager.actor.net[first] = torch.nn.Identity()
        else:
            tr.BUGS[bug](eager.actor)
        with torch.no_grad():
            return eager(torch.from_numpy(obs)).numpy()

    monkeypatch.setattr(export_module, "_write_torchscript", writer)
    act_dim = agent.actor.net[-1].out_features
    with pytest.raises(ParityError, match="parity check FAILED.*float32 rounding bound"):
        export_policy(
            agent,
            tmp_path / "p.pt",
            action_low=[-1.0] * act_dim,
            action_high=[1.0] * act_dim,
            normalizer=norm,
            verbose=False,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["hopper_1m", "fresh_normalized"])
def test_export_refuses_a_file_off_by_less_than_float32_rounding(tmp_path, monkeypatch, which):
    """A file whose first-layer weight is off by 1e-4 of itself acts within float32's rounding bound of
    the actor, so the float32 comparison passes it; the float64 comparison of the file's module with
    the actor does not."""
    import test_rounding as tr

    agent = tr.hopper_agent() if which == "hopper_1m" else tr.random_normalized_agent(scale=1.0)
    norm = tr.random_norm() if which == "fresh_normalized" else None
    real_writer = export_module._write_torchscript

    def writer(module, tmp, meta, xml, obs):
        bugged = copy.deepcopy(module)
        with torch.no_grad():
            w = tr._first_linear(bugged.actor).weight
            i = int(w.abs().argmax())
            w.view(-1)[i] *= 1 + 1e-4
        return real_writer(bugged, tmp, meta, xml, obs)

    monkeypatch.setattr(export_module, "_write_torchscript", writer)
    act_dim = agent.actor.net[-1].out_features
    with pytest.raises(ParityError, match="computes another function than the actor: evaluated in float64"):
        export_policy(
            agent,
            tmp_path / "p.pt",
            action_low=[-1.0] * act_dim,
            action_high=[1.0] * act_dim,
            normalizer=norm,
            verbose=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_parity_record_and_message(tmp_path, capsys):
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(4, 1)
    res = export_policy(agent, tmp_path / "p.pt", action_low=[-1], action_high=[1])
    out = capsys.readouterr().out
    assert "every action within its float32 rounding bound" in out and "np.float64" not in out
    parity = res.metadata["parity"]
    assert set(parity) == {"n", "rule", "atol", "max_allowed", "median_allowed"}
    # A fresh 256-256 actor on raw observations 3 std wide: gamma_257 |W| |h| ~ 1.2e-4 at the second
    # layer, times the last layer's |W| row sums (~8): ~1e-3, the price of holding for every order.
    assert 0 < parity["median_allowed"] <= parity["max_allowed"] < 1e-2
    # ONNX / pt2 and custom actors keep an atol (their kernels or their rounding are not bounded).
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        export_policy(agent, tmp_path / "q.pt", action_low=[-1], action_high=[1], atol=float("nan"), verbose=False)
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        export_policy(agent, tmp_path / "q.pt", action_low=[-1], action_high=[1], atol=-1.0, verbose=False)


def test_deprecation_warning_stays_inside_export(tmp_path):
    torch.manual_seed(0)
    agent = DDPGAgent.from_dims(4, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_policy(agent, tmp_path / "p.pt", action_low=[-1], action_high=[1], verbose=False)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]
    # ... and the user's own filters are untouched afterwards.
    assert not any(f[0] == "ignore" and f[2] is DeprecationWarning and f[1] is None for f in warnings.filters[:1])


def test_export_from_trainer_like_object(tmp_path):
    agent, norm = trained_like(4, 1)
    env = gym.make("InvertedPendulum-v5")
    trainer = types.SimpleNamespace(
        agent=agent,
        normalizer=norm,
        low=env.action_space.low,
        high=env.action_space.high,
        step=777,
        history=[{"step": 700, "eval_mean": 12.5}],
        env_name="InvertedPendulum-v5",
        eval_env=env,
    )
    export_policy(trainer, tmp_path / "p.pt", verbose=False)
    meta = read_metadata(tmp_path / "p.pt")
    assert (meta["training_steps"], meta["eval_return"], meta["env_id"]) == (777, 12.5, "InvertedPendulum-v5")
    assert meta["policy_step"] == 777  # without TD7's policy checkpoints the policy is the run's latest
    # Step counts are whole numbers >= 0, and a policy cannot come from after the run's last step.
    for kw, what in (
        ({"policy_step": -5}, "policy_step must be a whole number"),
        ({"policy_step": 1.5}, "policy_step must be a whole number"),
        ({"training_steps": "10"}, "training_steps must be a whole number"),
        ({"training_steps": True}, "training_steps must be a whole number"),
        ({"policy_step": 800}, "policy_step 800 is after the run's training_steps 777"),
    ):
        with pytest.raises(ValueError, match=what):
            export_policy(trainer, tmp_path / "bad.pt", verbose=False, **kw)
    assert not (tmp_path / "bad.pt").exists()
    export_policy(trainer, tmp_path / "q.pt", verbose=False, policy_step=np.int64(700))
    assert read_metadata(tmp_path / "q.pt")["policy_step"] == 700
    assert meta["normalization"] is not None and meta["task"] is not None
    assert meta["observation"]["terms"] == [{"field": "qpos"}, {"field": "qvel"}]
    assert meta["observation"]["termination"][-1] == {
        "field": "qpos",
        "start": 1,
        "stop": 2,
        "min": -0.2,
        "max": 0.2,
        "strict": False,
    }
    env.close()


def test_cli_export_from_model_file(tmp_path, capsys):
    from pydpg.core.config import DDPGConfig
    from pydpg.files.checkpoint import write_model

    agent, norm = trained_like(4, 1)
    model = {
        "config": DDPGConfig().to_dict(),
        "run": {"env_id": "InvertedPendulum-v5", "env_kwargs": {}},
        "obs_dim": 4,
        "act_dim": 1,
        "action_low": torch.tensor([-3.0], dtype=torch.float64),
        "action_high": torch.tensor([3.0], dtype=torch.float64),
        "agent": agent.state_dict(),
        "normalizer": norm.to_dict(),
    }
    write_model(tmp_path / "model.pt", model)
    assert export_main([str(tmp_path / "model.pt"), "-o", str(tmp_path / "policy.pt")]) == 0
    assert "parity check passed" in capsys.readouterr().out
    meta = read_metadata(tmp_path / "policy.pt")
    assert meta["env_id"] == "InvertedPendulum-v5" and meta["action_high"] == [3.0]
    assert meta["normalization"]["mean"] == norm.mean.double().tolist()  # through JSON unchanged
    # A user's spec from a run config's [observation] table: checked, stored; a wrong one refused.
    (tmp_path / "run.toml").write_text(
        "[agent]\nhidden = [64, 64]\n\n[observation]\nversion = 1\n"
        '[[observation.terms]]\nfield = "qpos"\nnames = ["slider", "hinge"]\n'
        '[[observation.terms]]\nfield = "qvel"\n'
    )
    assert (
        export_main(
            [
                str(tmp_path / "model.pt"),
                "-o",
                str(tmp_path / "p2.pt"),
                "--observation-spec",
                str(tmp_path / "run.toml"),
            ]
        )
        == 0
    )
    assert read_metadata(tmp_path / "p2.pt")["observation"]["terms"][0]["names"] == ["slider", "hinge"]
    (tmp_path / "wrong.json").write_text('[{"field": "qvel"}, {"field": "qpos"}]')
    assert (
        export_main(
            [
                str(tmp_path / "model.pt"),
                "-o",
                str(tmp_path / "p3.pt"),
                "--observation-spec",
                str(tmp_path / "wrong.json"),
            ]
        )
        == 2
    )
    assert "term 'qvel', entry 0" in capsys.readouterr().err and not (tmp_path / "p3.pt").exists()
    (tmp_path / "none.toml").write_text("[agent]\n")
    assert (
        export_main(
            [
                str(tmp_path / "model.pt"),
                "-o",
                str(tmp_path / "p4.pt"),
                "--observation-spec",
                str(tmp_path / "none.toml"),
            ]
        )
        == 2
    )


def test_cli_export_bad_input(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing"), "-o", str(tmp_path / "p.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert export_main([str(tmp_path / "junk.pt"), "-o", str(tmp_path / "p.pt")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "Hopper-v5", "Ant-v5", "Reacher-v5"])
def test_task_spec_is_timing_only(env_id):
    """The loop's task is timing, the same for every MuJoCo env: no class-name switch, no reward,
    health or reset code (termination is in the observation spec; returns come from the replay)."""
    env = gym.make(env_id)
    u = env.unwrapped
    assert task_spec(env) == {
        "frame_skip": u.frame_skip,
        "timestep": u.model.opt.timestep,
        "control_hz": pytest.approx(1 / u.dt),
        "max_episode_steps": env.spec.max_episode_steps,
    }
    env.close()
    assert task_spec(gym.make("CartPole-v1")) is None


def test_onnx_export_parity(tmp_path, cheetah, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx

    agent, norm = trained_like(17, 6)
    res = export_policy(agent, tmp_path / "p.onnx", env=cheetah, normalizer=norm, format="onnx")
    # ONNX Runtime's own kernels: within the export's allowance (the float32 bound + atol 1e-5 for its tanh).
    assert res.worst_ratio <= 1.0 and "parity check passed" in capsys.readouterr().out
    model = onnx.load(str(tmp_path / "p.onnx"))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["pydpg_policy"])
    assert meta["obs_dim"] == 17
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 300):  # the batch axis is dynamic
        out = sess.run(None, {"obs": np.zeros((batch, 17), np.float32)})[0]
        assert out.shape == (batch, 6)


def test_pt2_export_parity(tmp_path):
    agent, _ = trained_like(17, 6)
    res = export_policy(agent, tmp_path / "p.pt2", action_low=[-1] * 6, action_high=[1] * 6, format="pt2")
    assert res.worst_ratio <= 1.0  # AOTInductor's kernels: within the export's allowance
    loaded = torch._inductor.aoti_load_package(str(tmp_path / "p.pt2"))
    assert loaded(torch.zeros(5, 17)).shape == (5, 6)


def test_export_from_trainer_with_vector_env(tmp_path):
    """A Trainer without an eval env holds only its vector env; the task is described from its spec."""
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("InvertedPendulum-v5")])
    trainer = types.SimpleNamespace(
        agent=DDPGAgent.from_dims(4, 1),
        normalizer=None,
        low=vec.single_action_space.low,
        high=vec.single_action_space.high,
        step=3,
        history=[],
        env_name=None,
        eval_env=None,
        vec=vec,
    )
    export_policy(trainer, tmp_path / "p.pt", verbose=False)
    meta = read_metadata(tmp_path / "p.pt")
    assert meta["env_id"] == "InvertedPendulum-v5" and meta["task"] is not None
    assert meta["observation"] == observation_task_spec("InvertedPendulum-v5")
    vec.close()


def test_observation_spec_is_verified_at_export(tmp_path):
    """A user's spec is checked against the env's own observations: a wrong one is refused naming
    the first wrong term, and nothing is written; a right one travels in the metadata."""
    env = gym.make("InvertedPendulum-v5")
    agent = DDPGAgent.from_dims(4, 1)
    with pytest.raises(ObservationMismatch, match=r"term 'qvel', entry 0"):
        export_policy(
            agent,
            tmp_path / "p.pt",
            env=env,
            observation_spec=[{"field": "qpos"}, {"field": "qvel", "scale": 2.0}],
            verbose=False,
        )
    assert not (tmp_path / "p.pt").exists()
    spec = [{"field": "qpos", "names": ["slider", "hinge"]}, {"field": "qvel"}]
    export_policy(agent, tmp_path / "p.pt", env=env, observation_spec=spec, verbose=False)
    assert read_metadata(tmp_path / "p.pt")["observation"]["terms"] == spec
    env.close()


def test_preset_spec_that_does_not_fit_the_env_kwargs_is_left_out(tmp_path, capsys):
    """HalfCheetah made with exclude_current_positions_from_observation=False observes 18 values: the
    preset's 17-value spec does not fit, so the policy is written without it, and the note says why."""
    env = gym.make("HalfCheetah-v5", exclude_current_positions_from_observation=False)
    export_policy(DDPGAgent.from_dims(18, 6), tmp_path / "p.pt", env=env)
    meta = read_metadata(tmp_path / "p.pt")
    assert meta["observation"] is None and meta["task"]["frame_skip"] == 5  # timing stays: it is the env's
    assert "observation spec left out" in capsys.readouterr().err
    env.close()


def test_preset_termination_that_does_not_fit_the_env_kwargs_is_left_out(tmp_path, capsys):
    """Hopper made with terminate_when_unhealthy=False never terminates: the preset's termination
    conditions would end episodes the env does not, so the spec is left out and the note names the
    first condition that disagreed."""
    env = gym.make("Hopper-v5", terminate_when_unhealthy=False)
    export_policy(DDPGAgent.from_dims(11, 3), tmp_path / "p.pt", env=env)
    assert read_metadata(tmp_path / "p.pt")["observation"] is None
    err = capsys.readouterr().err
    assert "observation spec left out" in err and "fails but the env did not terminate" in err
    env.close()


def test_infinite_clip_bounds_survive_into_the_loop(tmp_path):
    from pydpg.deploy.loop import run_policy

    env = gym.make("InvertedPendulum-v5")
    spec = [{"field": "qpos", "clip": [float("-inf"), float("inf")]}, {"field": "qvel", "clip": [-1e9, float("inf")]}]
    export_policy(DDPGAgent.from_dims(4, 1), tmp_path / "p.pt", env=env, observation_spec=spec, verbose=False)
    out = run_policy(tmp_path / "p.pt", realtime=False, quiet=True, max_steps=10)
    assert out["steps"] >= 1
    env.close()
