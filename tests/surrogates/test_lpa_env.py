"""accelrl/LPATuning-v0: Gymnasium API, vector/single agreement, disagreement penalty, errors.

The surrogate here is trained on a synthetic test-fixture table (conftest.py: smooth
functions with the column names of the Wake-T dataset), so the tests do not depend on the
shipped weights; one test checks the shipped surrogate when it is present.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import accelrl  # noqa: F401  (registers the ids)
from accelrl.envs.lpa import LPATaskConfig, LPATuningEnv
from accelrl.envs.lpa_vector import LPATuningVectorEnv
from accelrl.surrogates.models.io import resolve_model_dir
from accelrl.surrogates.objective import ObjectiveConfig, SurrogateObjective

torch.set_num_threads(1)


def test_check_env(surrogate) -> None:
    env = LPATuningEnv(surrogate=surrogate)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert set(info) >= {"objective", "sigma", "ensemble_std", "p_valid", "density_drift"}
    assert info["ensemble_std"].shape == (3,)


def test_registered_id_and_make_vec(surrogate) -> None:
    env = gym.make("accelrl/LPATuning-v0", surrogate=surrogate)
    assert env.spec.max_episode_steps == 50
    env.reset(seed=0)
    venv = gym.make_vec(
        "accelrl/LPATuning-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        surrogate=surrogate,
    )
    assert isinstance(venv, LPATuningVectorEnv) and venv.num_envs == 3


def test_vector_env_matches_single_envs(surrogate) -> None:
    n, steps = 4, 12
    venv = LPATuningVectorEnv(n, surrogate=surrogate, max_episode_steps=5, start="random")
    singles = [
        gym.wrappers.TimeLimit(LPATuningEnv(surrogate=surrogate, start="random"), 5)
        for _ in range(n)
    ]
    vobs, _ = venv.reset(seed=10)
    sobs = [e.reset(seed=10 + i)[0] for i, e in enumerate(singles)]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        a = rng.uniform(venv.single_action_space.low, venv.single_action_space.high, (n, 3))
        a = a.astype(np.float32)
        vobs, vr, vterm, vtrunc, vinfo = venv.step(a)
        for i, e in enumerate(singles):
            if sobs[i] is None:  # the single env finished last step: reset like autoreset
                o, _ = e.reset()
                r, trunc = 0.0, False
            else:
                o, r, _, trunc, _ = e.step(a[i])
            sobs[i] = None if trunc else o
            np.testing.assert_allclose(vobs["settings"][i], o["settings"], rtol=1e-6)
            np.testing.assert_allclose(vobs["beam"][i], o["beam"], rtol=1e-5)
            np.testing.assert_allclose(vobs["target"][i], o["target"], rtol=1e-6)
            assert vr[i] == pytest.approx(r, rel=1e-9, abs=1e-12)
            assert bool(vtrunc[i]) == trunc


def test_reward_penalises_disagreement(surrogate) -> None:
    opts = {"settings": [10.0, 2e23, 5e-5], "target_energy": 6e8, "drift": 0.0}
    plain = LPATuningEnv(surrogate=surrogate, k_sigma=0.0, jitter_rel_rms=0.0)
    penal = LPATuningEnv(surrogate=surrogate, k_sigma=3.0, jitter_rel_rms=0.0)
    _, ip = plain.reset(seed=0, options=opts)
    _, iq = penal.reset(seed=0, options=opts)
    zero = np.zeros(3, np.float32)
    _, r_plain, _, _, info = plain.step(zero)
    _, r_pen, _, _, _ = penal.step(zero)
    assert info["sigma"] > 0
    assert r_plain == pytest.approx(info["objective"], rel=1e-9)
    assert r_pen == pytest.approx(info["objective"] - 3.0 * info["sigma"], rel=1e-9)
    # the penalty grows where members disagree more: off the design (clipped) corner vs centre
    f = SurrogateObjective(surrogate, ObjectiveConfig(target_energy=6e8, k_sigma=1.0))
    terms = f.evaluate([[10.0, 2e23, 5e-5]])
    assert terms["penalised"][0] < terms["objective"][0]


def test_jitter_and_drift_act_on_the_right_inputs(surrogate) -> None:
    env = LPATuningEnv(surrogate=surrogate, jitter_rel_rms=0.02, drift_rel_step=0.01)
    env.reset(seed=1, options={"settings": [10.0, 2e23, 5e-5], "drift": 0.01})
    _, _, _, _, info = env.step(np.zeros(3, np.float32))
    x = info["inputs"]
    assert x[0] == pytest.approx(10.0 * (1 + info["laser_jitter"]), rel=1e-12)
    assert x[1] == pytest.approx(2e23 * (1 + info["density_drift"]), rel=1e-12)
    assert x[2] == pytest.approx(5e-5, rel=1e-12)
    assert info["density_drift"] != 0.01


def test_bad_actions_and_config_raise(surrogate) -> None:
    env = LPATuningEnv(surrogate=surrogate)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf for \\['plasma_density'\\]"):
        env.step(np.array([0.0, np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not surrogate inputs"):
        LPATuningEnv(surrogate=surrogate, actuators=["laser_power"])
    with pytest.raises(ValueError, match="outside the surrogate bounds"):
        LPATuningEnv(surrogate=surrogate, actuators=["laser_energy"], fixed={"beam_delay": 1.0})
    with pytest.raises(ValueError, match="k_sigma"):
        LPATaskConfig(k_sigma=-1)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"trial": 1})


def test_subset_of_actuators(surrogate) -> None:
    env = LPATuningEnv(
        surrogate=surrogate,
        actuators=["beam_delay"],
        fixed={"laser_energy": 9.0},
        action_mode="direct",
    )
    check_env(env, skip_render_check=True)
    _, _, _, _, info = env.step(np.array([4.5e-5], np.float32))
    assert info["inputs"][2] == pytest.approx(4.5e-5, rel=1e-6)


def test_shipped_surrogate_env() -> None:
    try:
        resolve_model_dir("lpa_beamloading")
    except FileNotFoundError:
        pytest.skip("no shipped lpa_beamloading surrogate")
    env = gym.make("accelrl/LPATuning-v0")
    check_env(env.unwrapped, skip_render_check=True)
