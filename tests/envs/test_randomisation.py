"""Domain randomisation: published ranges, calibration (gain) errors, drift and failures.

With ``N = 4096`` uniform draws the expected gap between the extreme draw and its bound is
``range / 4097``; requiring it within 0.5% of the range fails with probability
``(1 - 0.005)^4096 ~ 1e-9``.
"""

from __future__ import annotations

import numpy as np
import pytest
from envs_testlib import ENV_ID, START, make_spec, spec_dict

import accelrl.envs as E
from accelrl.physics.beam import INCOMING

N = 4096
FILL = 0.005


def _assert_fills(values, low, high, what):
    values = np.asarray(values)
    span = high - low
    assert values.min() >= low and values.max() <= high, what
    assert values.min() < low + FILL * span, f"{what}: min {values.min()} vs low {low}"
    assert values.max() > high - FILL * span, f"{what}: max {values.max()} vs high {high}"


@pytest.fixture(scope="module")
def drawn():
    venv = E.make_vec(ENV_ID, num_envs=N)
    _, info = venv.reset(seed=2024)
    return venv, info


def test_incoming_within_published_ranges(drawn):
    _, info = drawn
    ranges = spec_dict()["randomisation"]["incoming"]
    # published (rl-vs-bo): energy 80-160 MeV, mu +-1 mm / +-0.1 mrad, sigma 10-500 um ...
    assert ranges["energy"] == {"low": 80e6, "high": 160e6}
    assert ranges["sigma_x"] == {"low": 1e-5, "high": 5e-4}
    for j, key in enumerate(INCOMING):
        _assert_fills(info["incoming"][:, j], ranges[key]["low"], ranges[key]["high"], key)
    # independent draws: moments are uncorrelated
    corr = np.corrcoef(info["incoming"].T)
    assert np.max(np.abs(corr - np.eye(11))) < 5 / np.sqrt(N)


def test_misalignments_within_published_ranges(drawn):
    venv, info = drawn
    assert venv.core.misalignment_names[0] == "AREAMQZM1.x"
    assert info["misalignments"].shape == (N, 8)
    for j, name in enumerate(venv.core.misalignment_names):
        _assert_fills(info["misalignments"][:, j], -4e-4, 4e-4, name)


def test_targets_within_published_ranges(drawn):
    _, info = drawn
    target = info["target"]
    _assert_fills(target[:, 0], -2e-3, 2e-3, "target mu_x")
    _assert_fills(target[:, 2], -2e-3, 2e-3, "target mu_y")
    _assert_fills(target[:, 1], 0.0, 2e-3, "target sigma_x")
    _assert_fills(target[:, 3], 0.0, 2e-3, "target sigma_y")
    # uniform: mean at the centre within 4 standard errors
    for j, centre in enumerate([0.0, 1e-3, 0.0, 1e-3]):
        half = 2e-3 if j in (0, 2) else 1e-3
        assert abs(target[:, j].mean() - centre) < 4 * half / np.sqrt(3 * N)


def test_start_settings_and_on_screen_fraction(drawn):
    _, info = drawn
    np.testing.assert_array_equal(info["magnets"], np.tile(START, (N, 1)))
    # with the standard settings most randomised beams are on the screen
    assert info["on_screen"].mean() > 0.8


def test_gain_error():
    """gain_error g: the machine applies setting * (1 + g_i), g_i uniform in +-g."""
    g = 0.2
    spec = make_spec(gain_error=g)
    venv = E.TransverseTuningVectorEnv(spec, num_envs=N)
    _, info = venv.reset(seed=5)
    gain = venv.core.hidden.gain
    assert gain.shape == (N, 5)
    for j in range(5):
        _assert_fills(gain[:, j], -g, g, f"gain {j}")
    # beam = beam of the calibrated machine at settings * (1 + g): check env 0
    ref = E.TransverseTuningEnv(make_spec())
    _, ref_info = ref.reset(
        options={
            "incoming": info["incoming"][0],
            "misalignments": info["misalignments"][0],
            "magnets": START * (1 + gain[0]),
        }
    )
    np.testing.assert_allclose(info["beam"][0], ref_info["beam"], rtol=1e-12, atol=1e-15)
    # observations show the requested settings, not the applied ones
    np.testing.assert_array_equal(info["magnets"][0], START)
    # same seed, no gain error: same hidden beam, different reading
    _, plain = E.TransverseTuningVectorEnv(make_spec(), num_envs=N).reset(seed=5)
    np.testing.assert_array_equal(plain["incoming"], info["incoming"])
    assert np.all(plain["beam"] != info["beam"])


def test_drift_moves_incoming_centroid():
    mu, mu_p = 1e-5, 1e-6
    spec = make_spec(drift={"mu": mu, "mu_p": mu_p})
    venv = E.TransverseTuningVectorEnv(spec, num_envs=N, terminate_on_target=False)
    _, info0 = venv.reset(seed=0)
    zero = np.zeros((N, 5), dtype=np.float32)
    _, _, _, _, info1 = venv.step(zero)
    step = info1["incoming"] - info0["incoming"]
    moving = [INCOMING.index(k) for k in ("mu_x", "mu_px", "mu_y", "mu_py")]
    fixed = [j for j in range(11) if j not in moving]
    np.testing.assert_array_equal(step[:, fixed], 0.0)
    # Gaussian steps of the stated std (standard error of a std: 1/sqrt(2N) = 1.1%)
    for j, std in zip(moving, [mu, mu_p, mu, mu_p], strict=True):
        assert np.std(step[:, j]) == pytest.approx(std, rel=0.05)
        assert abs(np.mean(step[:, j])) < 5 * std / np.sqrt(N)
    # a random walk: after 4 more steps the spread is sqrt(5) times larger
    for _ in range(4):
        _, _, _, _, info5 = venv.step(zero)
    total = info5["incoming"][:, moving[0]] - info0["incoming"][:, moving[0]]
    assert np.std(total) == pytest.approx(np.sqrt(5) * mu, rel=0.05)
    # the beam on the screen follows: with settings unchanged the reading moves
    assert np.all(info5["beam"][:, 0] != info0["beam"][:, 0])


def test_no_drift_by_default():
    venv = E.make_vec(ENV_ID, num_envs=8)
    _, info0 = venv.reset(seed=0)
    _, _, _, _, info1 = venv.step(np.zeros((8, 5), dtype=np.float32))
    np.testing.assert_array_equal(info1["incoming"], info0["incoming"])
    np.testing.assert_allclose(info1["beam"], info0["beam"], rtol=1e-12, atol=1e-15)


def test_actuator_failure_freezes_one_actuator():
    """probability 1, failure at step 3: from step 3 one actuator keeps its step-2 value."""
    n = 256
    spec = make_spec(failure={"probability": 1.0, "step": [3, 3]})
    venv = E.TransverseTuningVectorEnv(
        spec, num_envs=n, action_mode="direct", terminate_on_target=False
    )
    venv.reset(seed=1)
    rng = np.random.default_rng(0)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    history = []
    actions = []
    for _ in range(6):
        a = rng.uniform(low, high, (n, 5)).astype(np.float32)
        _, _, _, _, info = venv.step(a)
        history.append(info["magnets"])
        actions.append(a.astype(np.float64))
    np.testing.assert_array_equal(history[0], actions[0])
    np.testing.assert_array_equal(history[1], actions[1])
    stuck_counts = np.zeros(5, dtype=int)
    for i in range(n):
        stuck = [j for j in range(5) if history[2][i, j] != actions[2][i, j]]
        assert len(stuck) == 1, (i, stuck)
        j = stuck[0]
        stuck_counts[j] += 1
        for t in range(2, 6):
            assert history[t][i, j] == actions[1][i, j]  # frozen at the step-2 value
            others = [k for k in range(5) if k != j]
            np.testing.assert_array_equal(history[t][i, others], actions[t][i, others])
    # the failing actuator is uniform over the 5: each gets 256/5 = 51 +- 7
    assert np.all(stuck_counts > 25), stuck_counts


def test_failure_probability_and_steps():
    p = 0.3
    spec = make_spec(failure={"probability": p, "step": [2, 6]})
    venv = E.TransverseTuningVectorEnv(spec, num_envs=N)
    venv.reset(seed=3)
    fail_step = venv.core.hidden.fail_step
    failing = fail_step >= 0
    assert failing.mean() == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / N))
    assert set(np.unique(fail_step[failing])) == {2, 3, 4, 5, 6}


def test_no_failures_by_default():
    venv = E.make_vec(ENV_ID, num_envs=64, action_mode="direct")
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.uniform(venv.single_action_space.low, venv.single_action_space.high, (64, 5))
        _, _, _, _, info = venv.step(a.astype(np.float32))
        np.testing.assert_array_equal(info["magnets"], a.astype(np.float32).astype(np.float64))
