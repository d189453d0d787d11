"""The incoming beam in a world (:mod:`accelrl.envs.world.beam`): jitter, drift and the
published scenarios (Kaiser et al., Sci. Rep. 14, 2024).

Statistical checks use ``N = 512`` environments: a standard deviation is within 15 % of
its value with probability > 1 - 1e-5 (relative standard error ``1/sqrt(2N)`` = 3 %)."""

from __future__ import annotations

import numpy as np
import pytest
from envs_testlib import ENV_ID

import accelrl.envs as E
from accelrl.physics.beam import INCOMING

N = 512
COL = {k: i for i, k in enumerate(INCOMING)}
ZERO = np.zeros((N, 5), dtype=np.float32)


def test_jitter_is_fresh_every_reading():
    world = {"beam": {"jitter": {"mu": 1e-5, "mu_p": 1e-6, "sigma": 0.02, "energy": 1e-3}}}
    venv = E.make_vec(ENV_ID, num_envs=N, world=world)
    _, info0 = venv.reset(seed=0)
    _, _, _, _, info1 = venv.step(ZERO)
    j0, j1 = info0["incoming_jitter"], info1["incoming_jitter"]
    np.testing.assert_array_equal(info1["incoming"], info0["incoming"])  # nothing accumulates
    for key, scale in (("mu_x", 1e-5), ("mu_py", 1e-6)):
        assert np.std(j1[:, COL[key]]) == pytest.approx(scale, rel=0.15)
    rel = j1[:, COL["sigma_x"]] / info1["incoming"][:, COL["sigma_x"]]
    assert np.std(rel) == pytest.approx(0.02, rel=0.15)
    assert np.std(j1[:, COL["energy"]] / info1["incoming"][:, 0]) == pytest.approx(1e-3, rel=0.15)
    assert np.all(j1[:, COL["sigma_tau"]] == 0) and np.all(j1[:, COL["sigma_p"]] == 0)
    assert abs(np.corrcoef(j0[:, COL["mu_x"]], j1[:, COL["mu_x"]])[0, 1]) < 0.2
    assert np.all(info1["beam"] != info0["beam"])  # the screen sees each shot


def test_drift_is_a_random_walk():
    world = {"beam": {"drift": {"mu": 2e-6, "sigma": 1e-2}}}
    venv = E.make_vec(ENV_ID, num_envs=N, world=world)
    _, info0 = venv.reset(seed=1)
    for _ in range(4):
        _, _, _, _, info = venv.step(ZERO)
    moved = info["incoming"] - info0["incoming"]
    assert np.std(moved[:, COL["mu_y"]]) == pytest.approx(2e-6 * 2, rel=0.15)  # sqrt(4) steps
    logs = np.log(info["incoming"][:, COL["sigma_y"]] / info0["incoming"][:, COL["sigma_y"]])
    assert np.std(logs) == pytest.approx(1e-2 * 2, rel=0.15)
    np.testing.assert_array_equal(moved[:, [COL["mu_px"], COL["energy"]]], 0.0)


def test_world_drift_adds_to_the_task_drift():
    from envs_testlib import make_spec

    spec = make_spec(drift={"mu": 3e-6, "mu_p": 0.0})
    venv = E.TransverseTuningVectorEnv(spec, num_envs=N, world={"beam": {"drift": {"mu": 4e-6}}})
    _, info0 = venv.reset(seed=2)
    _, _, _, _, info = venv.step(ZERO)
    moved = info["incoming"][:, COL["mu_x"]] - info0["incoming"][:, COL["mu_x"]]
    assert np.std(moved) == pytest.approx(5e-6, rel=0.15)  # sqrt(3^2 + 4^2)


def _run(venv, steps, options=None, seed=3):
    _, info = venv.reset(seed=seed, options=options)
    history = [info]
    zero = np.zeros((venv.num_envs, 5), dtype=np.float32)
    for _ in range(steps):
        history.append(venv.step(zero)[4])
    return history


def test_beam_animation_to_the_next_trial(trials):
    """As published: trial i's incoming beam moves linearly to trial i + 1's over 80 steps."""
    n = 4
    venv = E.make_vec(ENV_ID, num_envs=n, world="beam-animation", max_episode_steps=80)
    options = {"trial": trials[:n], "to_trial": trials[1 : n + 1]}
    history = _run(venv, 80, options)
    start = np.stack([t.incoming for t in trials[:n]])
    dest = np.stack([t.incoming for t in trials[1 : n + 1]])
    for t in (0, 1, 40, 79, 80):
        want = start + (dest - start) * (t / 80)
        np.testing.assert_allclose(history[t]["incoming"], want, rtol=1e-12)


def test_beam_animation_without_a_destination_draws_one():
    venv = E.make_vec(ENV_ID, num_envs=N, world="beam-animation")
    h = _run(venv, 40)
    spec = E.ares_ea_spec().randomisation.incoming
    dest = h[0]["incoming"] + (h[40]["incoming"] - h[0]["incoming"]) * 2  # 40/80 of the way
    for k in ("energy", "mu_x", "sigma_y"):
        lo, hi = spec[k].low, spec[k].high
        d = dest[:, COL[k]]
        assert d.min() >= lo - 1e-12 * abs(lo) and d.max() <= hi + 1e-12 * abs(hi)
        assert np.std(d) == pytest.approx((hi - lo) / np.sqrt(12), rel=0.15)


def test_beam_switch_after_step_40(trials):
    venv = E.make_vec(ENV_ID, num_envs=2, world="beam-switch")
    h = _run(venv, 42, {"trial": trials[5:7], "to_trial": trials[8:10]})
    start = np.stack([t.incoming for t in trials[5:7]])
    dest = np.stack([t.incoming for t in trials[8:10]])
    for t in (0, 1, 40):
        np.testing.assert_array_equal(h[t]["incoming"], start)
    for t in (41, 42):
        np.testing.assert_allclose(h[t]["incoming"], dest, rtol=1e-12)


def test_steering_change_after_step_40():
    venv = E.make_vec(ENV_ID, num_envs=N, world="steering-change")
    h = _run(venv, 41)
    jump = h[41]["incoming"] - h[40]["incoming"]
    np.testing.assert_array_equal(h[40]["incoming"], h[0]["incoming"])
    for key, half in (("mu_x", 5e-4), ("mu_y", 5e-4), ("mu_px", 5e-5), ("mu_py", 5e-5)):
        d = jump[:, COL[key]]
        assert np.all(np.abs(d) <= half) and np.std(d) == pytest.approx(half / np.sqrt(3), rel=0.15)
    others = [i for k, i in COL.items() if k not in ("mu_x", "mu_y", "mu_px", "mu_py")]
    np.testing.assert_allclose(jump[:, others], 0.0, atol=1e-18)


def test_q3_fails_to_zero_after_step_40():
    """As published (FailQ3(at_step=40)): from step 41 Q3's setting is 0 whatever the agent
    does; with hysteresis its field is the remanence of its history, not 0."""
    n = 8
    for world, exact in (("q3-failure", True), ("ares-realistic+q3-failure", False)):
        venv = E.make_vec(ENV_ID, num_envs=n, world=world, terminate_on_target=False)
        obs, info = venv.reset(seed=4)
        push = np.zeros((n, 5), dtype=np.float32)
        push[:, 3] = 1.0
        for t in range(1, 44):
            obs, _, _, _, info = venv.step(push)
            failed = t >= 41
            assert np.all(info["failed"][:, 3] == failed)
            assert not info["failed"][:, [0, 1, 2, 4]].any()
            if failed:
                np.testing.assert_array_equal(info["magnets"][:, 3], 0.0)
                np.testing.assert_array_equal(obs["magnets"][:, 3], 0.0)
            else:
                assert np.all(info["magnets"][:, 3] > 10.0)
        if not exact:
            field = info["field"][:, 3]
            spec = venv.core.world_spec.magnets["Q3"]
            assert np.all(field != 0.0)
            assert np.all(np.abs(field) <= spec.hysteresis.width / 2 + spec.offset_error)
