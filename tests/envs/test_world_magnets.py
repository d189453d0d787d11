"""Magnets between setpoint and field (:mod:`accelrl.envs.world.magnets`) and the rule that
no world ever moves a setting outside the actuator limits.

Fields and settings are compared exactly where the model is exact (identity, quantisation,
full settling) and to 1e-12 relative otherwise (sums of play operators)."""

from __future__ import annotations

import numpy as np
import pytest
from envs_testlib import ENV_ID, LIMITS

import accelrl.envs as E
from accelrl.envs.world import Hysteresis, MagnetSpec, load_world, shipped_worlds
from accelrl.envs.world.magnets import MagnetBank

LOW, HIGH = -LIMITS, LIMITS


def _bank(specs, num_envs=1):
    return MagnetBank(specs, LOW, HIGH, num_envs)


def _start(bank, setpoint, u=None):
    n = len(setpoint)
    u = np.full((n, bank.num_draws), 0.5) if u is None else u  # 0.5: no errors, loop centre
    bank.reset(np.arange(n), np.asarray(setpoint, dtype=np.float64), u)


def test_ideal_magnets_pass_setpoints_through_exactly():
    bank = _bank([None] * 5, num_envs=3)
    rng = np.random.default_rng(0)
    sp = rng.uniform(LOW, HIGH, (3, 5))
    _start(bank, sp, rng.random((3, bank.num_draws)))
    np.testing.assert_array_equal(bank.field, sp)
    for _ in range(3):
        sp = rng.uniform(LOW, HIGH, (3, 5))
        bank.advance(slice(None), sp)
        np.testing.assert_array_equal(bank.readback, sp)
        np.testing.assert_array_equal(bank.field, sp)


def test_setpoint_resolution_and_limits():
    bank = _bank([MagnetSpec(resolution=0.7)] + [MagnetSpec(resolution=1e-4)] * 4)
    q = bank.quantise(np.array([[71.9, 1.23456e-3, 1.23456e-3, 0.04, 6.17e-3]]))
    assert q[0, 0] == 72.0  # round(71.9 / 0.7) * 0.7 = 72.1 > 72: clipped to the limit
    np.testing.assert_allclose(q[0, 1:], [1.2e-3, 1.2e-3, 0.04, 6.1782e-3], rtol=1e-12)
    # 6.17e-3 / 1e-4 rounds to 62 steps = 6.2e-3 > 6.1782e-3: clipped to the limit
    assert np.all(q <= HIGH) and np.all(q >= LOW)


def test_settling_and_rate_limit():
    bank = _bank([MagnetSpec(settle=0.5), MagnetSpec(rate=2.0)] + [None] * 3)
    _start(bank, [[0.0, 0.0, 0.0, 0.0, 0.0]])
    target = np.array([[8.0, 8.0, 1e-3, 1.0, 1e-3]])
    seen = []
    for _ in range(5):
        bank.advance(slice(None), target)
        seen.append(bank.readback[0].copy())
    seen = np.array(seen)
    np.testing.assert_allclose(seen[:, 0], 8.0 * (1 - 0.5 ** np.arange(1, 6)), rtol=1e-15)
    np.testing.assert_array_equal(seen[:, 1], [2.0, 4.0, 6.0, 8.0, 8.0])  # lands exactly
    np.testing.assert_array_equal(seen[:, 2:], np.tile(target[0, 2:], (5, 1)))


def test_hysteresis_loop_width_and_history():
    """Major loop: after excursions beyond the width the branches at the same readback
    differ by the width; the same setpoint gives fields up to a width apart."""
    width = 0.5
    bank = _bank([MagnetSpec(hysteresis=Hysteresis(width=width, plays=4))] + [None] * 4)
    _start(bank, [[0.0] * 5])
    grid = np.linspace(-10.0, 10.0, 81)
    up, down = [], []
    for x in np.concatenate([grid[::-1], grid]):  # saturate downwards first
        bank.advance(slice(None), np.array([[x, 0, 0, 0, 0]]))
        up.append(bank.field[0, 0])
    for x in grid[::-1]:
        bank.advance(slice(None), np.array([[x, 0, 0, 0, 0]]))
        down.append(bank.field[0, 0])
    up = np.array(up[len(grid) :])
    down = np.array(down)[::-1]
    # 2 R = 2 width M / (M + 1) past the turning points every play follows: offset +-width/2
    inner = np.abs(grid) < 10.0 - 2 * width * 4 / 5
    np.testing.assert_allclose(down[inner] - up[inner], width, rtol=1e-12)
    np.testing.assert_allclose((down + up)[inner] / 2, grid[inner], atol=1e-12)
    # the loop is smooth: right after the turn the field moves less than the setpoint
    assert 0 < up[-1] - up[-2] <= grid[1] - grid[0] + 1e-12


def test_calibration_errors_per_episode():
    n = 4000
    spec = MagnetSpec(gain_error=0.02, offset_error=0.05)
    bank = _bank([spec] * 5, num_envs=n)
    u = np.random.default_rng(1).random((n, bank.num_draws))
    _start(bank, np.tile([10.0, -10.0, 1e-3, 10.0, 0.0], (n, 1)), u)
    g, o = bank.gain, bank.offset
    assert np.all(np.abs(g) <= 0.02) and np.all(np.abs(o) <= 0.05)
    assert g.min() < -0.0199 and g.max() > 0.0199  # uniform over the whole range
    np.testing.assert_allclose(bank.field, bank.readback * (1 + g) + o, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("world", [*shipped_worlds(), "harsh+q3-failure+steering-change"])
def test_no_world_moves_a_setting_outside_the_limits(world):
    """Random (1.5x oversized) actions in delta and direct mode, every shipped world: the
    settings, readbacks and observed magnets stay within the actuator limits."""
    for mode in ("delta", "direct"):
        venv = E.make_vec(ENV_ID, num_envs=8, world=world, action_mode=mode, max_episode_steps=50)
        obs, info = venv.reset(seed=3)
        rng = np.random.default_rng(4)
        low, high = venv.single_action_space.low, venv.single_action_space.high
        for _ in range(42):  # past the failure step 41 of q3-failure
            a = rng.uniform(1.5 * low, 1.5 * high, (8, 5)).astype(np.float32)
            obs, _, _, _, info = venv.step(a)
            for values in (info["magnets"], info.get("readback", info["magnets"])):
                assert np.all(values >= LOW) and np.all(values <= HIGH), world
            assert obs in venv.observation_space


def test_observation_is_the_readback_and_deltas_act_on_it():
    world = {"magnets": {"Q1": {"settle": 0.5, "resolution": 0.01}}}
    env = E.TransverseTuningEnv(E.ares_ea_spec(), world=world)
    obs, info = env.reset(seed=0)
    np.testing.assert_allclose(obs["magnets"], info["readback"].astype(np.float32))
    step = np.zeros(5, dtype=np.float32)
    step[0] = 4.0
    for _ in range(3):
        before = info["readback"][0]
        obs, _, _, _, info = env.step(step)
        assert info["magnets"][0] == pytest.approx(before + 4.0, rel=1e-6)  # setpoint
        assert obs["magnets"][0] == np.float32(info["readback"][0])
        assert info["readback"][0] < info["magnets"][0]  # still settling


def test_physics_sees_the_field():
    """In a world with magnets only, the beam is the beamline evaluated at the fields."""
    world = load_world("ares-realistic")
    only_magnets = {"magnets": world.model_dump()["magnets"]}
    venv = E.make_vec(ENV_ID, num_envs=6, world=only_magnets)
    _, info = venv.reset(seed=5)
    action = np.float32(0.3) * np.tile(venv.single_action_space.high, (6, 1))
    _, _, _, _, info = venv.step(action)
    core = venv.core
    beam = core.beamline.evaluate(info["field"], info["incoming"], info["misalignments"])
    np.testing.assert_allclose(info["beam"], beam, rtol=1e-12, atol=1e-15)
    assert np.all(info["field"] != info["magnets"])
