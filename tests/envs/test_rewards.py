"""Reward terms (:mod:`accelrl.envs.rewards`) against hand-computed values.

Errors are ``reading - target`` in (mu_x, sigma_x, mu_y, sigma_y) order [m]. All expected
values below are worked out by hand from the documented formulas; rewards are compared to
1e-12 relative (they are sums/logs of a few float64 numbers).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from envs_testlib import ENV_ID

from accelrl.envs import Reward
from accelrl.envs.rewards import RewardInputs

RTOL = 1e-12

# Two environments. Env 0 improves, env 1 gets worse (errors swapped).
E_PREV = np.array([1e-4, -2e-4, 3e-4, 5e-5])  # o = 1 + 4 + 3 + 1 = 9e-4
E_NEW = np.array([5e-5, 1e-4, -1e-4, 0.0])  # o = 0.5 + 2 + 1 + 0 = 3.5e-4
TARGET = np.array([1e-3, 2e-4, -5e-4, 1e-4])
E_INIT = np.array([4e-4, -4e-4, 4e-4, 4e-4])  # reading at reset minus target


def inputs(on_screen=(True, True), magnets=None, previous_magnets=None) -> RewardInputs:
    magnets = (
        np.array([[11.0, -10.0, 1e-3, 10.0, 0.0], [10.0, -10.0, 0.0, 10.0, 0.0]])
        if magnets is None
        else magnets
    )
    previous = (
        np.array([[10.0, -10.0, 0.0, 10.0, 0.0]] * 2)
        if previous_magnets is None
        else previous_magnets
    )
    return RewardInputs(
        error=np.stack([E_NEW, E_PREV]),
        previous_error=np.stack([E_PREV, E_NEW]),
        initial_reading=np.stack([E_INIT + TARGET, E_INIT + TARGET]),
        target=np.stack([TARGET, TARGET]),
        on_screen=np.array(on_screen),
        magnets=magnets,
        previous_magnets=previous,
        magnet_range=np.array([144.0, 144.0, 2 * 6.1782e-3, 144.0, 2 * 6.1782e-3]),
    )


def test_icml_hand_computed():
    r = Reward("icml")(inputs())
    # improvement: log(9e-4) - log(3.5e-4) = log(9/3.5) = 0.944462
    assert r[0] == pytest.approx(math.log(9 / 3.5), rel=RTOL)
    assert r[0] == pytest.approx(0.9444616088408514, rel=1e-12)
    # deterioration counts twice: 2 (log 3.5e-4 - log 9e-4)
    assert r[1] == pytest.approx(2 * math.log(3.5 / 9), rel=RTOL)


def test_icml_weights_sizes_twice():
    """o weighs |dsigma| twice: moving 1 um of error from mu_x to sigma_x doubles its cost."""
    x = inputs()
    x.previous_error = np.array([[2e-6, 0, 0, 0], [0, 0, 2e-6, 0]])
    x.error = np.array([[0, 1e-6, 0, 0], [0, 0, 0, 1e-6]])
    np.testing.assert_allclose(Reward("icml")(x), [0.0, 0.0], atol=1e-12)


def test_icml_reuses_an_objective_only_for_an_unchanged_array():
    """The objective of the last read-only error is reused when the same array comes back as
    the previous error; a writeable array is never reused (it may have changed since)."""
    reward = Reward("icml")
    frozen = np.stack([E_NEW, E_PREV])
    frozen.flags.writeable = False
    x = inputs()
    x.error = frozen
    first = reward(x)
    y = inputs()
    y.previous_error, y.error = frozen, np.stack([E_PREV, E_NEW])
    reused = reward(y)
    np.testing.assert_allclose(reused, [2 * math.log(3.5 / 9), math.log(9 / 3.5)], rtol=RTOL)
    y.previous_error = frozen.copy()  # the same values in a new array: computed afresh
    np.testing.assert_array_equal(reward(y), reused)
    assert first[0] == pytest.approx(math.log(9 / 3.5), rel=RTOL)
    writeable = np.stack([E_NEW, E_PREV])
    z = inputs()
    z.error = writeable
    reward(z)
    writeable[:] = np.stack([E_PREV, E_NEW])  # changed in place after its objective was taken
    w = inputs()
    w.previous_error, w.error = writeable, np.stack([E_NEW, E_PREV])
    np.testing.assert_allclose(reward(w), [math.log(9 / 3.5), 2 * math.log(3.5 / 9)], rtol=RTOL)


def test_icml_never_reuses_a_view_or_an_array_made_writeable_again():
    reward = Reward("icml")
    base = np.stack([E_NEW, E_PREV])
    view = base[:]
    view.flags.writeable = False
    owner = np.stack([E_NEW, E_PREV])
    owner.flags.writeable = False
    for error, change in ((view, lambda: base.__setitem__(slice(None), 2 * base)), (owner, None)):
        x = inputs()
        x.error = error
        reward(x)  # its objective is taken
        if change is None:
            error.flags.writeable = True
            error *= 2
        else:
            change()
        y = inputs()
        y.previous_error, y.error = error, np.stack([E_NEW, E_PREV])
        # o_prev doubled: log(2) better than an unchanged error
        np.testing.assert_allclose(reward(y), [math.log(2), math.log(2)], rtol=RTOL)


def test_icml_zero_error_is_floored():
    x = inputs()
    x.error = np.zeros((2, 4))
    r = Reward("icml")(x)
    assert np.all(np.isfinite(r))
    assert r[0] == pytest.approx(math.log(9e-4 / 1e-12), rel=1e-9)


def _d(e, norm):
    return np.mean(np.abs(e)) if norm == "l1" else np.sqrt(np.mean(e**2))


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("normalise", [False, True])
def test_feedback_and_differential(norm, log, normalise):
    x = inputs()
    d_new, d_prev, d0 = _d(E_NEW, norm), _d(E_PREV, norm), _d(E_INIT, norm)
    if norm == "l1":  # hand values: mean |e|
        assert (d_new, d_prev, d0) == pytest.approx((6.25e-5, 1.625e-4, 4e-4), rel=RTOL)
    else:  # sqrt(mean e^2)
        assert d_new == pytest.approx(math.sqrt((0.25 + 1 + 1) * 1e-8 / 4), rel=RTOL)
        assert d0 == pytest.approx(4e-4, rel=RTOL)

    def f(d):
        if log:
            return math.log(d) - (math.log(d0) if normalise else 0.0)
        return d / d0 if normalise else d

    options = {"norm": norm, "log": log, "normalise": normalise}
    fb = Reward([{"term": "feedback", **options}])(x)
    np.testing.assert_allclose(fb, [-f(d_new), -f(d_prev)], rtol=RTOL)
    diff = Reward([{"term": "differential", **options}])(x)
    np.testing.assert_allclose(diff, [f(d_prev) - f(d_new), f(d_new) - f(d_prev)], rtol=RTOL)


def test_feedback_defaults_l1_linear_normalised():
    x = inputs()
    np.testing.assert_allclose(
        Reward([{"term": "feedback"}])(x), [-6.25e-5 / 4e-4, -1.625e-4 / 4e-4], rtol=RTOL
    )


def test_on_screen_term():
    np.testing.assert_array_equal(Reward("on_screen")(inputs(on_screen=(True, False))), [1.0, -1.0])


def test_magnet_change_term():
    x = inputs()
    # env 0: Q1 +1 of 144 and CV +1 mrad of 12.3564 mrad; mean over 5 actuators, negated
    expected0 = -(1 / 144 + 1e-3 / (2 * 6.1782e-3)) / 5
    np.testing.assert_allclose(Reward("magnet_change")(x), [expected0, 0.0], rtol=RTOL, atol=0)


def test_composite_weights():
    x = inputs(on_screen=(True, False))
    config = [
        {"term": "icml", "weight": 2.0},
        {"term": "on_screen", "weight": 0.1},
        {"term": "magnet_change", "weight": -3.0},
        {"term": "feedback", "weight": 0.5, "norm": "l2", "log": True, "normalise": False},
    ]
    total = Reward(config)(x)
    parts = (
        2.0 * Reward("icml")(x)
        + 0.1 * np.array([1.0, -1.0])
        - 3.0 * Reward("magnet_change")(x)
        + 0.5 * Reward([{"term": "feedback", "norm": "l2", "log": True, "normalise": False}])(x)
    )
    np.testing.assert_allclose(total, parts, rtol=RTOL)
    assert repr(Reward(config)).startswith("Reward(icml*2.0 + on_screen*0.1")


@pytest.mark.parametrize(
    "config, words",
    [
        ("nonsense", ["nonsense"]),
        ([{"term": "shaped"}], ["shaped"]),
        ([{"weight": 1.0}], ["None"]),
        ([{"term": "feedback", "scale": 2}], ["scale"]),
        ([{"term": "differential", "norm": "l3"}], ["l3"]),
        ([{"term": "icml", "log": True}], ["icml", "log"]),
        ([], ["at least one"]),
    ],
)
def test_invalid_reward_config(config, words):
    with pytest.raises(ValueError) as info:
        Reward(config)
    for word in words:
        assert word in str(info.value)


def test_invalid_reward_in_env():
    with pytest.raises(ValueError, match="nonsense"):
        gym.make(ENV_ID, reward=[{"term": "nonsense"}])


# ------------------------------------------------------------------ rewards inside the env


def test_env_default_reward_is_icml():
    env = gym.make(ENV_ID)
    _, info0 = env.reset(seed=8)
    _, r, _, _, info1 = env.step(np.float32([2.0, 1.0, 1e-4, -1.0, 2e-4]))
    o_prev = np.abs(info0["reading"] - info0["target"]) @ [1, 2, 1, 2]
    o = np.abs(info1["reading"] - info1["target"]) @ [1, 2, 1, 2]
    expected = math.log(o_prev / o)
    expected = expected if expected >= 0 else 2 * expected
    assert r == pytest.approx(expected, rel=1e-12)


def test_env_uses_configured_reward():
    """Un-normalised linear l1 feedback is minus the MAE of the reading, i.e. -info['mae']."""
    env = gym.make(
        ENV_ID, reward=[{"term": "feedback", "norm": "l1", "log": False, "normalise": False}]
    )
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, r, _, _, info = env.step(
            rng.uniform(-1, 1, 5).astype(np.float32) * env.action_space.high
        )
        assert info["on_screen"]
        assert r == pytest.approx(-info["mae"], rel=1e-12)


def test_env_normalised_feedback_is_minus_one_for_doing_nothing():
    env = gym.make(ENV_ID, reward=[{"term": "feedback"}, {"term": "magnet_change", "weight": 5.0}])
    _, info = env.reset(seed=2)
    assert info["on_screen"]
    _, r, _, _, _ = env.step(np.zeros(5, dtype=np.float32))
    assert r == pytest.approx(-1.0, rel=1e-12)  # d / d0 = 1, no magnet change


def test_env_on_screen_reward():
    env = gym.make(ENV_ID, action_mode="direct", reward="on_screen")
    env.reset(seed=0)
    assert env.step(np.float32([10, -10, 0, 10, 0]))[1] == 1.0
    _, r, _, _, info = env.step(np.float32([10, -10, 6.1782e-3, 10, 0]))
    assert info["on_screen"] is False and r == -1.0
