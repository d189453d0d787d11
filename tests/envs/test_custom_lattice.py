"""``accelrl.envs.make_tuning_env`` on a user's own Cheetah segment.

The test lattice: drift 0.5 m, focusing quad QF (0.1 m), drift 0.5 m, defocusing quad QD
(0.1 m), drift 0.3 m, horizontal corrector HC (0.02 m), drift D3 = 1.0 m, screen SCR
(1000 x 800 pixels of 5 um). Linear optics checks:

* with both quads off, the line is a drift, so centroids move by ``mu' * L`` (L = 2.52 m);
* the corrector kicks by its angle; the centroid on the screen moves by ``angle * D3``
  (Cheetah applies the kick at the corrector's exit; +-l/2 = 1% allowed).
"""

from __future__ import annotations

import cheetah
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import accelrl.envs as E

D3 = 1.0
TOTAL_LENGTH = 0.5 + 0.1 + 0.5 + 0.1 + 0.3 + 0.02 + D3
KNOBS = [("QF", "k1", -30.0, 30.0), ("QD", "k1", -30.0, 30.0), ("HC", "angle", -1e-3, 1e-3)]


def fodo(dtype: torch.dtype = torch.float64) -> cheetah.Segment:
    """The test lattice; ``dtype=torch.float32`` is Cheetah's default (and its converters')."""
    kw = {"dtype": dtype}

    def t(value):
        return torch.tensor(value, dtype=dtype)

    return cheetah.Segment(
        [
            cheetah.Drift(length=t(0.5), name="D0", **kw),
            cheetah.Quadrupole(length=t(0.1), k1=t(0.0), name="QF", **kw),
            cheetah.Drift(length=t(0.5), name="D1", **kw),
            cheetah.Quadrupole(length=t(0.1), k1=t(0.0), name="QD", **kw),
            cheetah.Drift(length=t(0.3), name="D2", **kw),
            cheetah.HorizontalCorrector(length=t(0.02), angle=t(0.0), name="HC", **kw),
            cheetah.Drift(length=t(D3), name="D3", **kw),
            cheetah.Screen(
                resolution=(1000, 800),
                pixel_size=t([5e-6, 5e-6]),
                is_active=True,
                name="SCR",
                **kw,
            ),
        ],
        name="fodo",
    )


pytestmark = pytest.mark.filterwarnings("ignore:.*not having a spec")


@pytest.mark.parametrize("action_mode", ["delta", "direct"])
def test_check_env(action_mode):
    env = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR", action_mode=action_mode)
    assert isinstance(env, gym.wrappers.TimeLimit)
    check_env(env.unwrapped)


def test_check_env_cheetah_backend():
    env = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR", backend="cheetah")
    check_env(env.unwrapped)


def test_backends_agree_on_custom_lattice():
    kwargs = {"knobs": KNOBS, "screen": "SCR", "action_mode": "direct"}
    fast = E.make_tuning_env(fodo(), **kwargs)
    ref = E.make_tuning_env(fodo(), backend="cheetah", **kwargs)
    for env in (fast, ref):
        env.reset(seed=4)
    action = np.float32([12.0, -8.0, 3e-4])
    a, b = fast.step(action)[4]["beam"], ref.step(action)[4]["beam"]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15)


def test_float32_segment_fast_backend():
    """Cheetah builds float32 segments by default; the compiled map evaluates in float64."""
    env = E.make_tuning_env(fodo(torch.float32), knobs=KNOBS, screen="SCR")
    _, info = env.reset(seed=4)
    _, ref = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR").reset(seed=4)
    # lengths differ by float32 rounding (~1e-8 relative)
    np.testing.assert_allclose(info["beam"], ref["beam"], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", ["cheetah", "cheetah-particles"])
def test_float32_segment_cheetah_backends(backend):
    env = E.make_tuning_env(
        fodo(torch.float32), knobs=KNOBS, screen="SCR", backend=backend, num_particles=100
    )
    _, info = env.reset(seed=4)
    _, ref = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR").reset(seed=4)
    np.testing.assert_allclose(info["beam"], ref["beam"], rtol=1e-6, atol=1e-12)


def test_spaces_and_defaults():
    env = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR", max_episode_steps=12)
    space = env.action_space
    np.testing.assert_allclose(space.high, [3.0, 3.0, 1e-4], rtol=1e-7)  # 10% of the limits
    assert env.observation_space["magnets"].shape == (3,)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["magnets"], [0.0, 0.0, 0.0])  # 0 clipped into limits
    # default misalignments: every quadrupole upstream of the screen, and the screen
    assert env.unwrapped.core.misalignment_names == [
        "QF.x",
        "QF.y",
        "QD.x",
        "QD.y",
        "SCR.x",
        "SCR.y",
    ]
    assert np.all(np.abs(info["misalignments"]) <= 4e-4)
    hx, hy = env.unwrapped.task.screen.half_extent
    assert (hx, hy) == pytest.approx((2.5e-3, 2.0e-3), rel=1e-12)
    for _ in range(12):
        *_, truncated, _ = env.step(np.zeros(3, dtype=np.float32))
    assert truncated


def test_drift_and_corrector_physics():
    env = E.make_tuning_env(
        fodo(), knobs=KNOBS, screen="SCR", action_mode="direct", misalignments={}, start=[0, 0, 0]
    )
    mu_x, mu_px, mu_y, mu_py = 2e-4, 1e-4, -3e-4, -5e-5
    incoming = [100e6, mu_x, mu_px, mu_y, mu_py, 1e-4, 1e-5, 1e-4, 1e-5, 1e-5, 1e-4]
    _, info = env.reset(options={"incoming": incoming})
    assert info["misalignments"].shape == (0,)
    # quads off: a drift of 2.52 m
    expected = [mu_x + mu_px * TOTAL_LENGTH, mu_y + mu_py * TOTAL_LENGTH]
    np.testing.assert_allclose(info["beam"][[0, 2]], expected, rtol=1e-9)
    sigma_x = np.hypot(1e-4, 1e-5 * TOTAL_LENGTH)  # uncorrelated beam through a drift
    assert info["beam"][1] == pytest.approx(sigma_x, rel=1e-3)  # + energy-spread terms ~1e-7
    _, _, _, _, kicked = env.step(np.float32([0, 0, 1e-3]))
    shift = kicked["beam"] - info["beam"]
    assert shift[0] == pytest.approx(1e-3 * D3, rel=0.01)
    np.testing.assert_allclose(shift[1:], 0.0, atol=1e-12)
    # focusing with QF changes the sizes
    _, _, _, _, focused = env.step(np.float32([20, 0, 0]))
    assert abs(focused["beam"][1] - info["beam"][1]) > 1e-6


def test_explicit_misalignments():
    env = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR", misalignments={"QD": 1e-4})
    assert env.unwrapped.core.misalignment_names == ["QD.x", "QD.y"]
    values = np.array([env.reset(seed=s)[1]["misalignments"] for s in range(50)])
    assert np.all(np.abs(values) <= 1e-4) and np.abs(values).max() > 5e-5


@pytest.mark.parametrize(
    "knobs, screen, words",
    [
        ([("NOPE", "k1", -1.0, 1.0)], "SCR", ["NOPE"]),
        ([("QF", "k1", -1.0)], "SCR", ["QF", "(element, attribute, low, high)"]),
        ([("QF", "bogus", -1.0, 1.0)], "SCR", ["QF", "bogus"]),
        ([("HC", "k1", -1.0, 1.0)], "SCR", ["HC", "k1"]),
        ([("QF", "k1", 1.0, -1.0)], "SCR", ["QF", "high"]),
        ([("QF", "k1", -1.0, 1.0)], "QD", ["QD", "Screen"]),
        ([("QF", "k1", -1.0, 1.0)], "NOSCREEN", ["NOSCREEN"]),
    ],
    ids=["element", "tuple", "attribute", "wrong-attribute", "limits", "not-screen", "no-screen"],
)
def test_invalid_knobs_and_screen(knobs, screen, words):
    with pytest.raises(ValueError) as info:
        E.make_tuning_env(fodo(), knobs=knobs, screen=screen)
    for word in words:
        assert word in str(info.value)


def test_start_outside_limits():
    with pytest.raises(ValueError, match="start"):
        E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR", start=[50.0, 0.0, 0.0])


def test_custom_vector_env_matches_single():
    env = E.make_tuning_env(fodo(), knobs=KNOBS, screen="SCR")
    spec = env.unwrapped.task
    venv = E.TransverseTuningVectorEnv(spec, num_envs=3, segment=fodo())
    _, info = venv.reset(seed=10)
    for i in range(3):
        _, single = env.reset(seed=10 + i)
        np.testing.assert_allclose(info["beam"][i], single["beam"], rtol=1e-12, atol=1e-15)
