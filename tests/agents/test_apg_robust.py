"""Robust APG training: world randomisation in torch, observation history, hold term,
recipe keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from accelrl.agents.policy import MLPPolicy, PolicyOptimiser, history_features
from accelrl.agents.training.apg import APGConfig, initialise_from, train_apg
from accelrl.agents.training.recipes import APGRecipe, RecipeError
from accelrl.agents.training.world import TrainingWorld, camera_table
from accelrl.bundle import ObservationHistory
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.world.magnets import MagnetBank
from accelrl.envs.world.spec import load_world
from accelrl.protocol import ObservationBatch, Problem

ROOT = Path(__file__).resolve().parents[2]


def test_three_iterations_under_a_world_with_history(tmp_path: Path) -> None:
    config = APGConfig(
        iterations=3, batch_size=8, horizon=4, hidden=[16], history=3, hold_penalty=0.1,
        ideal_fraction=0.25, reading_noise=1e-5, zero_target_fraction=0.5, seed=2,
    )  # fmt: skip
    result = train_apg(config, out_dir=tmp_path / "p", progress=False, world="ares-realistic")
    assert len(result.losses) == 3 and np.all(np.isfinite(result.losses))
    loaded = MLPPolicy.load(tmp_path / "p")
    assert loaded.meta.history == 3 and loaded.meta.n_obs == 13 + 3 * 9
    assert loaded.meta.provenance["world"] == "ares-realistic"
    again = train_apg(config, progress=False, world="ares-realistic")
    assert again.losses == result.losses  # seeded, world draws included


def test_recipe_keys_are_validated() -> None:
    recipe = APGRecipe.from_dict(
        {"algorithm": "apg", "world": "ares-realistic", "apg": {"history": 4}}
    )
    assert recipe.world == "ares-realistic" and recipe.config.history == 4
    bad = [
        ({"world": "no-such-world"}, "world = 'no-such-world'"),
        ({"apg": {"history": 2, "error_scale": None}}, "needs error_scale"),
        ({"apg": {"history": -1}}, "apg.history"),
        ({"apg": {"history": 33}}, "apg.history"),
        ({"apg": {"hold_penalty": -0.1}}, "apg.hold_penalty"),
        ({"apg": {"ideal_fraction": 1.5}}, "apg.ideal_fraction"),
        ({"apg": {"reading_noise": -1e-6}}, "apg.reading_noise"),
        ({"apg": {"histroy": 4}}, "histroy"),
    ]
    for change, needle in bad:
        with pytest.raises(RecipeError) as info:
            APGRecipe.from_dict({"algorithm": "apg", **change}, source="r.yaml")
        assert "r.yaml" in str(info.value) and needle in str(info.value), str(info.value)


def test_shipped_robust_recipe_and_the_ideal_one_unchanged() -> None:
    from accelrl.agents.training.apg import load_apg_recipe

    robust = load_apg_recipe(ROOT / "agents" / "apg-robust.yaml")
    assert robust.world == "ares-realistic" and robust.config.history > 0
    ideal = load_apg_recipe(ROOT / "agents" / "apg.yaml")
    assert ideal.world is None and ideal.config.history == 0 and ideal.config.hold_penalty == 0


def test_hysteresis_in_torch_matches_the_world_magnets() -> None:
    """The training world's magnets give the environment's fields for the same draws."""
    spec = ares_ea_spec()
    world = load_world("ares-realistic")
    low = np.array([a.low for a in spec.actuators])
    high = np.array([a.high for a in spec.actuators])
    B, K = 6, len(low)
    bank = MagnetBank([world.magnets.get(a.name) for a in spec.actuators], low, high, B)
    bank.resolution[:] = 0.0  # the training world leaves the DAC step out
    rng = np.random.default_rng(0)
    start = rng.uniform(low, high, (B, K)) * 0.5
    u = rng.uniform(size=(B, 3 * K))
    bank.reset(np.arange(B), start, u)
    tw = TrainingWorld(world, spec, torch.Generator().manual_seed(0))
    tw.reset(torch.tensor(start))
    # the same calibration and loop position as the numpy bank
    tw.on = torch.ones(B, 1, dtype=torch.float64)
    tw.gain, tw.offset = torch.tensor(bank.gain), torch.tensor(bank.offset)
    tw.plays = torch.tensor(bank.plays)
    for _ in range(8):
        setpoint = np.clip(start + rng.normal(0, 0.2, (B, K)) * (high - low) / 2, low, high)
        bank.advance(np.arange(B), setpoint)
        field = tw.field(torch.tensor(setpoint)).numpy()
        np.testing.assert_allclose(field, bank.field, rtol=1e-12, atol=1e-15)


def test_camera_table_reproduces_the_readout_bias() -> None:
    """The table's mean error is the camera's (FWHM sizes read ~2 px small), and the
    interpolated reading follows it between grid points."""
    spec = ares_ea_spec()
    world = load_world("ares-realistic")
    table = camera_table(world, spec)
    px = 4 * spec.screen.pixel_size[0]  # binning 4
    i = int(np.argmin(np.abs(np.exp(table.log_sizes) - 300e-6)))
    assert -3.5 * px < table.bias[i, i, 1] < -1.0 * px
    tw = TrainingWorld(world, spec, torch.Generator().manual_seed(0))
    tw.reset(torch.zeros(200, 5, dtype=torch.float64))
    beam = torch.tensor([[0.0, 300e-6, 0.0, 300e-6]], dtype=torch.float64).expand(200, 4)
    reading = tw.reading(beam)
    bias = (reading - beam).mean(dim=0).numpy()
    spread = (reading - beam).std(dim=0).numpy()
    assert -3.5 * px < bias[1] < -1.0 * px
    assert np.all(spread < 10e-6)  # the median-of-5 readout is quiet at this size


def test_reading_noise_alone_is_gaussian_with_the_drawn_level() -> None:
    spec = ares_ea_spec()
    tw = TrainingWorld(None, spec, torch.Generator().manual_seed(1), reading_noise=10e-6)
    tw.reset(torch.zeros(4000, 5, dtype=torch.float64))
    beam = torch.tensor([[1e-4, 5e-4, -1e-4, 5e-4]], dtype=torch.float64).expand(4000, 4)
    err = (tw.reading(beam) - beam).numpy()
    level = tw.noise.numpy()[:, 0]
    # per-rollout levels uniform in [0, 10 um]: error variance = E[level^2] = (10 um)^2 / 3
    np.testing.assert_allclose(err.var(axis=0), np.mean(level**2), rtol=0.1)
    assert level.max() <= 10e-6


def test_history_policy_started_from_the_shipped_policy_acts_as_it() -> None:
    shipped = MLPPolicy.load(ROOT / "agents" / "apg-ares-ea")
    meta = dataclasses.replace(shipped.meta, history=4, provenance={})
    policy = MLPPolicy(meta)
    initialise_from(policy, ROOT / "agents" / "apg-ares-ea")
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(20, 13)) * np.array(meta.obs_std) + np.array(meta.obs_mean)
    past = rng.normal(size=(20, 4 * 9)) * 1e-3
    full = np.concatenate([obs, past], axis=1)
    np.testing.assert_allclose(policy.act(full), shipped.act(obs), rtol=0, atol=1e-12)
    A, c = history_features(meta)
    assert A.shape == (13 + 4 + 4 * 9, 13 + 4 * 9) and c.shape == (A.shape[0],)


def test_init_policy_must_match_the_architecture() -> None:
    meta = dataclasses.replace(
        MLPPolicy.load(ROOT / "agents" / "apg-ares-ea").meta, hidden=[64], provenance={}
    )
    with pytest.raises(RecipeError, match="hidden"):
        initialise_from(MLPPolicy(meta), ROOT / "agents" / "apg-ares-ea")


def test_observation_history_shifts_and_resets() -> None:
    h = ObservationHistory(2, 5)
    a, b, c = (np.full((1, 13), v) for v in (1.0, 2.0, 3.0))
    np.testing.assert_array_equal(h.push(a), np.concatenate([a, a[:, :9], a[:, :9]], 1))
    np.testing.assert_array_equal(h.push(b), np.concatenate([b, a[:, :9], a[:, :9]], 1))
    np.testing.assert_array_equal(h.push(c), np.concatenate([c, b[:, :9], a[:, :9]], 1))
    h.clear()
    np.testing.assert_array_equal(h.push(c), np.concatenate([c, c[:, :9], c[:, :9]], 1))
    assert ObservationHistory(0, 5).push(a) is a


def test_policy_optimiser_keeps_and_resets_the_history() -> None:
    shipped = MLPPolicy.load(ROOT / "agents" / "apg-ares-ea")
    policy = MLPPolicy(dataclasses.replace(shipped.meta, history=2, provenance={}))
    spec = ares_ea_spec()
    low = np.array([a.low for a in spec.actuators])
    high = np.array([a.high for a in spec.actuators])
    problem = Problem(
        actuator_names=tuple(a.name for a in spec.actuators), low=low, high=high,
        start=np.zeros(5), target=np.zeros(4), max_delta=0.1 * np.maximum(-low, high),
        max_steps=10, seed=0,
    )  # fmt: skip
    opt = PolicyOptimiser(policy)
    rng = np.random.default_rng(0)
    obs = [
        ObservationBatch(
            beam=rng.normal(size=(3, 4)) * 1e-4,
            magnets=rng.uniform(low, high, (3, 5)),
            target=np.zeros((3, 4)),
            on_screen=np.ones(3, bool),
            step=s,
        )  # fmt: skip
        for s in range(3)
    ]
    opt.reset_batch([problem] * 3)
    first = [opt.ask_batch(o) for o in obs]
    opt.reset_batch([problem] * 3)
    again = [opt.ask_batch(o) for o in obs]
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)  # the reset forgot the previous episode
