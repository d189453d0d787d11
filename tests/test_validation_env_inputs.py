"""What users hand to the environments: complex or non-numeric actions, unknown reset-option
types and NaN trials are refused with a message naming them (never a silently dropped
imaginary part, a raw ``AttributeError`` or a NaN reward)."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from validation_testlib import PROPERTY

import accelrl.envs as E
from accelrl.names import ARES_EA_ID


@pytest.fixture(scope="module")
def env() -> gym.Env:
    return E.TransverseTuningEnv(E.ares_ea_spec())


@pytest.fixture(scope="module")
def venv() -> gym.vector.VectorEnv:
    return E.make_vec(ARES_EA_ID, num_envs=3)


@pytest.fixture(scope="module")
def trial() -> E.Trial:
    return E.load_trials()[3]


@PROPERTY
@given(st.lists(st.complex_numbers(allow_nan=False, min_magnitude=1e-9), min_size=5, max_size=5))
def test_complex_actions_are_refused(env, action) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="imaginary part"):
        env.step(np.array(action))


def test_complex_vector_actions_are_refused(venv) -> None:
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="imaginary part"):
        venv.step(np.full((3, 5), 1e-3 + 1e-3j))


@pytest.mark.parametrize("action", [["a"] * 5, None, {"Q1": 1.0}, [object()] * 5, [[1, 2], [3]]])
def test_non_numeric_actions_are_refused(env, action) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be"):
        env.step(action)


@pytest.mark.parametrize(
    "options, words",
    [
        (5, "reset options must be a dict"),
        ("trial", "reset options must be a dict"),
        ({"trial": 3}, "must be a Trial"),
        ({"trial": "3"}, "must be a Trial"),
        ({"trial": {"incoming": []}}, "must be a Trial"),
        ({"trial": [1]}, "must hold Trial objects"),
        ({"target": "abc"}, "reset option 'target' must be real numbers"),
        ({"target": [0, 1j, 0, 0]}, "imaginary part"),
        ({"target": [0.0, -1e-4, 0.0, 1e-4]}, "target.sigma_x = -0.0001"),
        ({"incoming": [np.nan] * 11}, "NaN or inf"),
        ({"magnets": "standard"}, "reset option 'magnets' must be 5 settings or 'trial'"),
        ({"colour": 1}, "unknown reset options"),
    ],
)
def test_unknown_option_types_are_refused(env, options, words) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        env.reset(seed=0, options=options)


def test_a_trial_must_fit_the_beamline(env, trial) -> None:
    foreign = dataclasses.replace(trial, misalignments={"AREAMQZM9.x": 1e-4})
    with pytest.raises(ValueError, match=r"misaligns \['AREAMQZM9.x'\]"):
        env.reset(options={"trial": foreign})
    partial = dataclasses.replace(trial, initial={"Q1": 1.0})
    with pytest.raises(ValueError, match="stores settings for"):
        env.reset(options={"trial": partial, "magnets": "trial"})


def test_nan_trials_never_give_nan_rewards(tmp_path, env, trial) -> None:
    """NaN in a trial is refused when it is made or read, so rewards stay finite."""
    with pytest.raises(ValueError, match="nan"):
        dataclasses.replace(trial, target=np.array([0.0, np.nan, 0.0, 0.0]))
    env.reset(options={"trial": trial})
    _, reward, *_ = env.step(np.zeros(5, dtype=np.float32))
    assert np.isfinite(reward)
