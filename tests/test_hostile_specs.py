"""Bad numbers and names in an observation spec, refused alike by Python (``as_spec``: the API, TOML
configs) and by C++ (the builder and the termination check that the control loop, ``pydpg run``
and a user's program bind): one table of cases that both readers run. A robotics package refuses;
it never guesses (a NaN termination bound once read as "no bound", an e-stop removed without a
word)."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

from pydpg import _core
from pydpg.contract.observation import ObservationError, as_spec

Q = '{"field": "qpos"}'


def spec(terms: str = Q, termination: str = "") -> str:
    return (
        '{"version": 1, "terms": ['
        + terms
        + "]"
        + (', "termination": [' + termination + "]" if termination else "")
        + "}"
    )


def cond(**kv) -> str:
    return json.dumps({"field": "qpos", "start": 1, "stop": 2, **kv}).replace('"@', "").replace('@"', "")


# (JSON text as Python's json.dumps writes it, NaN and Infinity words included; what the message names)
BAD = {
    "termination max NaN": (spec(termination=cond(min=0.7, max="@NaN@")), r"termination.*\.max is NaN"),
    "termination min NaN": (spec(termination=cond(min="@NaN@")), r"termination.*\.min is NaN"),
    "termination min +inf": (spec(termination=cond(min="@Infinity@")), r"termination.*\.min is \+?inf"),
    "termination max -inf": (spec(termination=cond(max="@-Infinity@")), r"termination.*\.max is -inf"),
    "clip low +inf": (spec('{"field": "qpos", "clip": [Infinity, null]}'), r"terms?.*0.*clip.*is \+?inf"),
    "clip high -inf": (spec('{"field": "qpos", "clip": [null, -Infinity]}'), r"terms?.*0.*clip.*is -inf"),
    "clip NaN": (spec('{"field": "qpos", "clip": [NaN, 1]}'), r"clip.*is NaN"),
    "scale +inf": (spec('{"field": "qpos", "scale": Infinity}'), r"scale must be finite"),
    "scale NaN": (spec('{"field": "qpos", "scale": NaN}'), r"scale is NaN"),
    "offset -inf": (spec('{"field": "qpos", "offset": -Infinity}'), r"offset must be finite"),
    "offset NaN": (spec('{"field": "qpos", "offset": NaN}'), r"offset is NaN"),
    "name with NUL": (spec('{"field": "qpos", "names": "thigh_joint\\u0000junk"}'), r"NUL character"),
    "termination name with NUL": (
        spec(termination=json.dumps({"field": "qpos", "names": "thigh_joint\u0000x", "min": -1})),
        r"NUL character",
    ),
    "no version": ('{"terms": [' + Q + "]}", r"no 'version'"),
}
# Infinities on the side where they mean "no bound" stay accepted (pydpg 0.2 files hold them).
GOOD = {
    "termination min -inf": spec(termination=cond(min="@-Infinity@", max=5)),
    "termination max +inf": spec(termination=cond(min=0.7, max="@Infinity@")),
    "clip [-inf, +inf]": spec('{"field": "qpos", "clip": [-Infinity, Infinity]}'),
}


@pytest.fixture(scope="module")
def model():
    return gym.make("Hopper-v5").unwrapped.model


def cpp_bind(text: str, model) -> None:
    """What the control loop binds: the builder and the termination check."""
    _core.ObservationBuilder(text, model._address)
    _core.TerminationCheck(text, model._address)


@pytest.mark.parametrize("case", list(BAD))
def test_python_refuses(case):
    text, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        as_spec(json.loads(text))


@pytest.mark.parametrize("case", list(BAD))
def test_cpp_refuses(case, model):
    text, match = BAD[case]
    with pytest.raises(ObservationError, match=match):
        cpp_bind(text, model)


@pytest.mark.parametrize("case", list(GOOD))
def test_both_accept_an_infinity_that_means_no_bound(case, model):
    text = GOOD[case]
    spec_ = as_spec(json.loads(text))
    assert "Infinity" not in json.dumps(spec_)  # written as null
    cpp_bind(text, model)
    cpp_bind(json.dumps(spec_), model)


def test_toml_config_with_an_infinite_scale_is_refused(tmp_path):
    """A run config's [observation] table (TOML has inf): refused before training starts."""
    from pydpg.train.config import resolve

    (tmp_path / "run.toml").write_text(
        '[observation]\nversion = 1\n[[observation.terms]]\nfield = "qpos"\nscale = inf\n'
    )
    with pytest.raises(ValueError, match=r"scale must be finite"):
        resolve("Hopper-v5", config_file=str(tmp_path / "run.toml"))


def test_a_policy_whose_termination_bound_is_nan_does_not_run(tmp_path):
    """The metadata of a policy file (the loop's input) with "max": NaN, as json.dumps writes it:
    `pydpg run` stops with the entry named instead of running with one bound removed."""
    import torch
    from policy_helpers import write_raw_policy

    from pydpg.core.agent import DDPGAgent
    from pydpg.deploy.export import export_policy
    from pydpg.deploy.loop import ControlLoopError, run_policy
    from pydpg.deploy.policy_file import METADATA_FILE, load_torchscript, read_metadata

    torch.manual_seed(0)
    env = gym.make("Hopper-v5")
    good = tmp_path / "good.pt"
    export_policy(DDPGAgent.from_dims(11, 3), good, env=env, verbose=False)
    meta = read_metadata(good)
    meta["observation"]["termination"][1]["max"] = float("nan")
    bad = tmp_path / "bad.pt"
    write_raw_policy(bad, load_torchscript(good), meta, extra={"model.xml": open(env.unwrapped.fullpath).read()})
    assert "NaN" in json.dumps(read_metadata(bad))
    with pytest.raises(ControlLoopError, match=r"termination condition 1\.max is NaN"):
        run_policy(bad, realtime=False, max_steps=5)
    assert METADATA_FILE
