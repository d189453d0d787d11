"""The single ARES-EA environment ``accelrl/AresEATransverseTuning-v0``.

Spaces, Gymnasium's env checker on every backend, bad input, termination, the screen
model (off-screen reading, noise, quantisation) and rendering.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from envs_testlib import ENV_ID, HALF_X, HALF_Y, LIMITS, START, make_env, make_spec
from gymnasium.utils.env_checker import check_env

import accelrl.envs as E

#: Screen pixel size (x, y) [m] of AREABSCR1.
PIXEL = np.array([3.5488e-6, 2.5003e-6])


# ------------------------------------------------------------------ registration and spaces


def test_registered_with_time_limit():
    env = gym.make(ENV_ID)
    assert env.spec.max_episode_steps == 50
    assert isinstance(env.unwrapped, E.AresEATransverseTuning)
    assert gym.make(ENV_ID, max_episode_steps=150).spec.max_episode_steps == 150


def test_observation_layout():
    env = make_env()
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert set(space.spaces) == {"beam", "magnets", "target"}
    assert space["beam"].shape == (4,) and space["target"].shape == (4,)
    assert space["magnets"].shape == (5,)
    for key in space.spaces:
        assert space[key].dtype == np.float32
    np.testing.assert_array_equal(space["magnets"].low, np.float32(-LIMITS))
    np.testing.assert_array_equal(space["magnets"].high, np.float32(LIMITS))
    # beam sizes (indices 1, 3) are non-negative
    assert space["beam"].low[1] == 0 and space["beam"].low[3] == 0

    obs, info = env.reset(seed=3)
    for key, value in obs.items():
        assert value.dtype == np.float32, key
        assert obs in space
    # beam order (mu_x, sigma_x, mu_y, sigma_y): obs = float32 of the float64 reading
    np.testing.assert_array_equal(obs["beam"], info["reading"].astype(np.float32))
    np.testing.assert_array_equal(obs["magnets"], np.float32(START))
    np.testing.assert_array_equal(obs["target"], info["target"].astype(np.float32))


def test_beam_order_from_physics():
    """Steering with CH moves the first entry (mu_x), CV the third (mu_y); sizes stay."""
    env = make_env(action_mode="direct")
    _, info0 = env.reset(seed=0)
    _, _, _, _, ch = env.step(np.float32([10, -10, 0, 10, 5e-4]))
    _, _, _, _, cv = env.step(np.float32([10, -10, 5e-4, 10, 0]))
    d_ch = ch["beam"] - info0["beam"]
    d_cv = cv["beam"] - info0["beam"]
    assert abs(d_ch[0]) > 1e-4 and np.all(np.abs(d_ch[1:]) < 1e-12)
    assert abs(d_cv[2]) > 1e-4 and np.all(np.abs(d_cv[[0, 1, 3]]) < 1e-12)


def test_action_space_delta():
    space = make_env().action_space
    assert space.dtype == np.float32 and space.shape == (5,)
    expected = np.array([7.2, 7.2, 6.1782e-4, 7.2, 6.1782e-4])
    np.testing.assert_allclose(space.high, expected, rtol=1e-7)
    np.testing.assert_allclose(space.low, -expected, rtol=1e-7)


def test_action_space_direct():
    space = make_env(action_mode="direct").action_space
    np.testing.assert_allclose(space.high, LIMITS, rtol=1e-7)
    np.testing.assert_allclose(space.low, -LIMITS, rtol=1e-7)


# ------------------------------------------------------------------ Gymnasium env checker


@pytest.mark.parametrize("action_mode", ["delta", "direct"])
@pytest.mark.parametrize("backend", ["fast", "cheetah"])
def test_check_env(backend, action_mode):
    check_env(gym.make(ENV_ID, backend=backend, action_mode=action_mode).unwrapped)


@pytest.mark.parametrize("action_mode", ["delta", "direct"])
def test_check_env_particles(action_mode):
    env = gym.make(ENV_ID, backend="cheetah-particles", num_particles=64, action_mode=action_mode)
    check_env(env.unwrapped)


def test_particle_backend_seeded_by_env():
    """Particle sampling follows the env's seed, whatever torch's global generator holds,
    and leaves that generator as it was."""
    env = E.AresEATransverseTuning(backend="cheetah-particles", num_particles=64)
    action = np.float32([1.0, 2.0, 1e-4, -3.0, -2e-4])
    rewards = []
    for torch_seed in (0, 1, 2, 3):
        torch.manual_seed(torch_seed)
        expected = torch.rand(3)
        torch.manual_seed(torch_seed)
        env.reset(seed=123)
        rewards.append(env.step(action)[1])
        assert torch.equal(torch.rand(3), expected)  # global generator untouched
    assert all(r == rewards[0] for r in rewards), rewards


def test_particle_backend_agrees_with_parameter_backend():
    """Cheetah's Gaussian particle beams match the requested moments; tracking is linear,
    so readings agree with ParameterBeam tracking to float64 rounding (1e-9 relative)."""
    a = E.AresEATransverseTuning(backend="cheetah-particles", num_particles=100)
    b = E.AresEATransverseTuning(backend="cheetah")
    c = E.AresEATransverseTuning(backend="fast")
    action = np.float32([3.0, -2.0, 2e-4, 1.0, -1e-4])
    for env in (a, b, c):
        env.reset(seed=7)
    beams = [env.step(action)[4]["beam"] for env in (a, b, c)]
    np.testing.assert_allclose(beams[0], beams[1], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(beams[2], beams[1], rtol=1e-9, atol=1e-15)


def test_seeded_reset_reproducible():
    env = make_env()
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(5)]
    runs = []
    for _ in range(2):
        obs, info = env.reset(seed=99)
        trace = [obs["beam"], info["incoming"], info["misalignments"]]
        for a in actions:
            obs, r, *_ = env.step(a)
            trace += [obs["beam"], np.array(r)]
        runs.append(trace)
    for x, y in zip(*runs, strict=True):
        np.testing.assert_array_equal(x, y)
    _, other = env.reset(seed=100)
    assert not np.array_equal(other["incoming"], runs[0][1])


# ------------------------------------------------------------------ dynamics and bad input


def test_delta_action_moves_magnets():
    env = make_env()
    env.reset(seed=0)
    a = np.float32([1.5, -2.0, 1e-4, 0.5, -3e-4])
    _, _, _, _, info = env.step(a)
    np.testing.assert_allclose(info["magnets"], START + a.astype(np.float64), rtol=1e-12, atol=0)
    assert info["step"] == 1


def test_out_of_box_delta_actions_are_clipped():
    env = make_env()
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.float32([100, -100, 1.0, 8.0, -1.0]))
    bound = np.array([7.2, 7.2, 6.1782e-4, 7.2, 6.1782e-4])
    np.testing.assert_allclose(info["magnets"] - START, bound * [1, -1, 1, 1, -1], rtol=1e-6)


def test_delta_actions_stop_at_limits():
    env = make_env()
    env.reset(seed=0)
    for _ in range(12):  # 12 * 7.2 > 72 - 10
        _, _, _, _, info = env.step(np.float32([7.2, -7.2, 6.1782e-4, 7.2, -6.1782e-4]))
    np.testing.assert_allclose(info["magnets"], LIMITS * [1, -1, 1, 1, -1], rtol=1e-6)


def test_out_of_box_direct_actions_are_clipped():
    env = make_env(action_mode="direct")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.float32([1000, -1000, 1.0, 20.0, -1.0]))
    np.testing.assert_allclose(info["magnets"], [72, -72, 6.1782e-3, 20.0, -6.1782e-3], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("action_mode", ["delta", "direct"])
def test_nan_actions_raise(bad, action_mode):
    env = make_env(action_mode=action_mode)
    env.reset(seed=0)
    action = np.zeros(5, dtype=np.float32)
    action[2] = bad
    with pytest.raises(ValueError, match="NaN"):
        env.step(action)
    # the environment state is untouched by the rejected action
    _, _, _, _, info = env.step(np.zeros(5, dtype=np.float32) if action_mode == "delta" else START)
    np.testing.assert_allclose(info["magnets"], START, rtol=1e-7)


@pytest.mark.parametrize("shape", [(4,), (6,), (1, 5), (5, 1)])
def test_wrong_shape_actions_raise(shape):
    env = make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape") as info:
        env.step(np.zeros(shape, dtype=np.float32))
    assert str(shape) in str(info.value) and "(5,)" in str(info.value)


def test_reset_magnets_outside_limits_raise():
    env = make_env()
    with pytest.raises(ValueError, match="limits"):
        env.reset(options={"magnets": [80.0, 0, 0, 0, 0]})
    with pytest.raises(ValueError, match="limits"):
        env.reset(options={"magnets": [0, 0, 0.01, 0, 0]})
    _, info = env.reset(options={"magnets": [72.0, -72.0, 6.1782e-3, 0.0, -6.1782e-3]})
    np.testing.assert_array_equal(info["magnets"], [72.0, -72.0, 6.1782e-3, 0.0, -6.1782e-3])


@pytest.mark.parametrize(
    "options, words",
    [
        ({"magnets": [1.0, 2.0]}, ["magnets", "5"]),
        ({"target": [0, 0, np.nan, 0]}, ["target", "NaN"]),
        ({"incoming": [1.0] * 10}, ["incoming", "11"]),
        ({"misalignments": [0.0] * 7}, ["misalignments", "8"]),
        ({"bogus": 1}, ["bogus"]),
    ],
)
def test_bad_reset_options_raise(options, words):
    env = make_env()
    with pytest.raises(ValueError) as info:
        env.reset(options=options)
    for word in words:
        assert word in str(info.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="action_mode"):
        make_env(action_mode="absolute")
    with pytest.raises(ValueError, match="backend"):
        make_env(backend="elegant")
    with pytest.raises(ValueError, match="render_mode"):
        E.AresEATransverseTuning(render_mode="human")
    with pytest.raises(ValueError, match="start"):
        make_env(start="middle")


def test_random_start_within_limits():
    env = make_env(start="random")
    settings = np.array([env.reset(seed=s)[1]["magnets"] for s in range(200)])
    assert np.all(np.abs(settings) <= LIMITS)
    # spread over the whole range: each actuator reaches beyond half its limit both ways
    assert np.all(settings.max(axis=0) > 0.5 * LIMITS)
    assert np.all(settings.min(axis=0) < -0.5 * LIMITS)


# ------------------------------------------------------------------ termination


def _hold_target_env(**kwargs):
    """Env whose target equals the current screen reading (MAE 0 while settings stay)."""
    env = E.TransverseTuningEnv(kwargs.pop("spec", make_spec()), **kwargs)
    _, info = env.reset(seed=5)
    _, info = env.reset(seed=5, options={"target": info["reading"]})
    assert info["mae"] < 1e-15
    return env


def test_terminates_at_target():
    env = _hold_target_env()
    _, _, terminated, truncated, info = env.step(np.zeros(5, dtype=np.float32))
    assert terminated and not truncated
    assert info["mae"] < 1e-15


def test_terminates_after_hold_steps():
    env = _hold_target_env(spec=make_spec(termination_hold=3))
    flags = [env.step(np.zeros(5, dtype=np.float32))[2] for _ in range(3)]
    assert flags == [False, False, True]


def test_hold_counter_restarts_when_leaving_the_threshold():
    env = _hold_target_env(spec=make_spec(termination_hold=2))
    zero = np.zeros(5, dtype=np.float32)
    kick = np.float32([0, 0, 0, 0, 1e-4])  # CH 0.1 mrad: moves mu_x by ~0.1 mm >> 20 um
    assert env.step(zero)[2] is False
    _, _, terminated, _, info = env.step(kick)
    assert not terminated and info["mae"] > 2e-5 / 4
    assert env.step(-kick)[2] is False  # back within the thresholds: hold 1 of 2
    assert env.step(zero)[2] is True


def test_no_termination_just_outside_thresholds():
    """Thresholds are 20 um on every component: a 21 um error in mu_y alone does not end."""
    env = make_env()
    _, info = env.reset(seed=5)
    target = info["reading"] + [0.0, 0.0, 2.1e-5, 0.0]
    env.reset(seed=5, options={"target": target})
    assert env.step(np.zeros(5, dtype=np.float32))[2] is False
    target = info["reading"] + [1.9e-5, -1.9e-5, 1.9e-5, -1.9e-5]
    env.reset(seed=5, options={"target": target})
    assert env.step(np.zeros(5, dtype=np.float32))[2] is True


@pytest.mark.parametrize("how", ["argument", "spec"])
def test_terminate_on_target_false_never_terminates(how):
    if how == "argument":
        env = _hold_target_env(terminate_on_target=False)
    else:
        env = _hold_target_env(spec=make_spec(termination_enabled=False))
    for _ in range(20):
        _, _, terminated, truncated, info = env.step(np.zeros(5, dtype=np.float32))
        assert not terminated and not truncated
    assert info["mae"] < 1e-15


def test_time_limit_truncates():
    env = gym.make(ENV_ID, max_episode_steps=4, terminate_on_target=False)
    env.reset(seed=0)
    flags = [env.step(np.zeros(5, dtype=np.float32))[3] for _ in range(4)]
    assert flags == [False, False, False, True]


# ------------------------------------------------------------------ screen model


def _expected_off_screen_reading(beam):
    return np.array(
        [np.clip(beam[0], -HALF_X, HALF_X), HALF_X, np.clip(beam[2], -HALF_Y, HALF_Y), HALF_Y]
    )


def test_corrector_steers_beam_off_screen():
    env = make_env(action_mode="direct")
    env.reset(seed=0)
    # CV at its limit (6.2 mrad) moves mu_y by several mm: beyond the 2.55 mm half height
    _, _, _, _, info = env.step(np.float32([10, -10, 6.1782e-3, 10, 0]))
    assert abs(info["beam"][2]) > HALF_Y
    assert info["on_screen"] is False
    np.testing.assert_allclose(
        info["reading"], _expected_off_screen_reading(info["beam"]), rtol=1e-12
    )
    obs = env.step(np.float32([10, -10, 6.1782e-3, 10, 0]))[0]
    np.testing.assert_allclose(obs["beam"], _expected_off_screen_reading(info["beam"]), rtol=1e-6)
    # and back on the screen: the reading is the beam again
    _, _, _, _, info = env.step(np.float32(START))
    assert info["on_screen"] is True
    np.testing.assert_array_equal(info["reading"], info["beam"])


@pytest.mark.parametrize(
    "mu_x, mu_y", [(0.02, 0.0), (-0.02, 0.0), (0.0, 0.01), (0.0, -0.01), (0.03, -0.02)]
)
def test_incoming_offset_off_screen(mu_x, mu_y):
    env = make_env()
    incoming = [100e6, mu_x, 0.0, mu_y, 0.0, 1e-4, 1e-5, 1e-4, 1e-5, 1e-5, 1e-4]
    obs, info = env.reset(
        options={"incoming": incoming, "misalignments": np.zeros(8), "magnets": np.zeros(5)}
    )
    # all magnets off: a drift, so the centroid stays where it enters (plus angle 0)
    np.testing.assert_allclose(info["beam"][[0, 2]], [mu_x, mu_y], rtol=1e-9, atol=1e-12)
    assert info["on_screen"] is False
    expected = _expected_off_screen_reading(info["beam"])
    np.testing.assert_allclose(info["reading"], expected, rtol=1e-12)
    np.testing.assert_allclose(obs["beam"], expected, rtol=1e-6)
    assert obs in make_env().observation_space


def test_on_screen_edge():
    env = make_env()
    inside = [100e6, 0.99 * HALF_X, 0.0, -0.99 * HALF_Y, 0.0, 1e-4, 1e-5, 1e-4, 1e-5, 1e-5, 1e-4]
    _, info = env.reset(
        options={"incoming": inside, "misalignments": np.zeros(8), "magnets": np.zeros(5)}
    )
    assert info["on_screen"] is True
    np.testing.assert_array_equal(info["reading"], info["beam"])


def test_reading_noise_statistics():
    """screen.reading_noise = 10 um: reading - beam ~ N(0, (10 um)^2) on the centroids."""
    sigma = 1e-5
    venv = E.TransverseTuningVectorEnv(make_spec(screen_reading_noise=sigma), num_envs=2048)
    _, info = venv.reset(seed=0)
    on = info["on_screen"]  # off-screen readings are the documented clamp, not beam + noise
    assert on.sum() > 1500
    samples = [info["reading"] - info["beam"]]
    for _ in range(3):
        _, _, _, _, info = venv.step(np.zeros((2048, 5), dtype=np.float32))
        np.testing.assert_array_equal(info["on_screen"], on)
        samples.append(info["reading"] - info["beam"])
    samples = [s[on] for s in samples]
    noise = np.concatenate(samples)[:, [0, 2]].ravel()  # ~15000 centroid samples
    n = noise.size
    # std of the sample std is sigma / sqrt(2n) = 0.55%: allow 3%
    assert np.std(noise) == pytest.approx(sigma, rel=0.03)
    assert abs(np.mean(noise)) < 5 * sigma / np.sqrt(n)
    # Gaussian: ~68.3% within one sigma (binomial sd 0.4%)
    assert np.mean(np.abs(noise) < sigma) == pytest.approx(0.6827, abs=0.02)
    # independent between steps: lag-1 correlation of one env's noise ~ 0
    per_step = np.stack(samples)[:, :, 0]
    corr = np.corrcoef(per_step[0], per_step[1])[0, 1]
    assert abs(corr) < 5 / np.sqrt(on.sum())
    # sizes get the same noise (|sigma + noise|, so never negative)
    sizes = np.concatenate(samples)[:, [1, 3]].ravel()
    assert np.std(sizes) == pytest.approx(sigma, rel=0.05)
    assert np.all(info["reading"][:, [1, 3]] >= 0)


def test_reading_noise_is_seeded():
    spec = make_spec(screen_reading_noise=1e-5)
    env = E.TransverseTuningEnv(spec)
    a = env.reset(seed=4)[0]["beam"]
    b = env.reset(seed=4)[0]["beam"]
    np.testing.assert_array_equal(a, b)
    c = env.step(np.zeros(5, dtype=np.float32))[0]["beam"]
    assert not np.array_equal(b, c)  # new noise every step


def test_quantise_rounds_to_pixels():
    venv = E.TransverseTuningVectorEnv(make_spec(screen_quantise=True), num_envs=256)
    _, info = venv.reset(seed=0)
    on = info["on_screen"]
    assert on.sum() > 100
    reading, beam = info["reading"][on], info["beam"][on]
    pixel = np.array([PIXEL[0], PIXEL[0], PIXEL[1], PIXEL[1]])
    pixels = reading / pixel
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-6)
    assert np.all(np.abs(reading - beam) <= pixel / 2 * (1 + 1e-9))
    assert np.any(reading != beam)


def test_quantise_with_binning():
    venv = E.TransverseTuningVectorEnv(
        make_spec(screen_quantise=True, screen_binning=4), num_envs=64
    )
    _, info = venv.reset(seed=1)
    on = info["on_screen"]
    pixel = 4 * np.array([PIXEL[0], PIXEL[0], PIXEL[1], PIXEL[1]])
    pixels = info["reading"][on] / pixel
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-6)
    assert np.all(np.abs(info["reading"][on] - info["beam"][on]) <= pixel / 2 * (1 + 1e-9))


# ------------------------------------------------------------------ rendering


def _pixel_of(x, y, shape):
    h, w = shape
    col = (x + HALF_X) / (2 * HALF_X) * w
    row = (HALF_Y - y) / (2 * HALF_Y) * h
    return row, col


def _brightness(image):
    target_rgb = np.array([255, 64, 64])
    b = image.astype(np.int64).sum(axis=2)
    b[np.all(image == target_rgb, axis=2)] = -1  # the red target overlay is not beam
    return b


def test_render_rgb_array_centroid():
    env = make_env(render_mode="rgb_array")
    _, info = env.reset(seed=2, options={"target": [-3e-3, 1e-4, 2e-3, 1e-4]})
    assert info["on_screen"]
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    h, w = image.shape[:2]
    assert h > 100 and w > 100
    b = _brightness(image)
    row, col = np.unravel_index(np.argmax(b), b.shape)
    exp_row, exp_col = _pixel_of(info["reading"][0], info["reading"][2], (h, w))
    # within 1.5 pixels of the centroid (the peak pixel contains it)
    assert abs(row + 0.5 - exp_row) <= 1.5 and abs(col + 0.5 - exp_col) <= 1.5
    # the spot is a bright viridis-yellow, the far background dark
    assert b.max() > 450
    far_row, far_col = (0 if exp_row > h / 2 else h - 1), (0 if exp_col > w / 2 else w - 1)
    assert b[far_row, far_col] < 200


def test_render_off_screen_is_dark():
    env = make_env(render_mode="rgb_array", action_mode="direct")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.float32([10, -10, 6.1782e-3, 10, 0]))
    assert info["on_screen"] is False
    b = _brightness(env.render())
    assert b.max() < 200  # viridis floor (68, 1, 84) = 153 everywhere


def test_render_none_without_mode():
    env = make_env()
    env.reset(seed=0)
    assert env.render() is None
