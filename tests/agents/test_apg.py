"""Differentiable-simulation policy training and the portable policy form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accelrl.agents.policy import MLPPolicy, PolicyOptimiser, flat_observation
from accelrl.agents.training.apg import (
    APGConfig,
    config_from_dict,
    screen_reading,
    train_apg,
    train_apg_recipe,
)
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.core import TuningCore
from accelrl.physics import ARES_EA_KNOBS, ares_ea_segment, compile
from accelrl.protocol import Observation, Problem


def test_short_training_improves_and_saves(tmp_path) -> None:
    config = APGConfig(iterations=60, batch_size=32, horizon=4, hidden=[32, 32], seed=1)
    result = train_apg(config, out_dir=tmp_path / "p", progress=False)
    assert len(result.losses) == 60 and np.all(np.isfinite(result.losses))
    # the mean log-MAE objective improves over training (noisy batches: compare averages)
    assert np.mean(result.losses[-15:]) < np.mean(result.losses[:15])
    loaded = MLPPolicy.load(tmp_path / "p")
    obs = np.random.default_rng(0).normal(size=(7, 13)) * 1e-3
    np.testing.assert_allclose(loaded.act(obs), result.policy.act(obs), rtol=0, atol=0)
    assert loaded.meta.provenance["method"] == "apg"
    assert loaded.meta.provenance["config"]["seed"] == 1


def test_training_is_seeded() -> None:
    config = APGConfig(iterations=5, batch_size=8, horizon=3, hidden=[8], seed=3)
    a = train_apg(config, progress=False)
    b = train_apg(config, progress=False)
    assert a.losses == b.losses


def test_screen_reading_matches_the_environment() -> None:
    """The rollout's screen model must be the environment's (documented off-screen reading)."""
    spec = ares_ea_spec()
    beamline = compile(
        ares_ea_segment(), ARES_EA_KNOBS, "AREABSCR1", list(spec.randomisation.misalignments)
    )
    core = TuningCore(spec, beamline, num_envs=64)
    core.reset(np.arange(64))
    rng = np.random.default_rng(0)
    beam = np.stack(
        [
            rng.uniform(-8e-3, 8e-3, 64),
            rng.uniform(1e-5, 1e-3, 64),
            rng.uniform(-5e-3, 5e-3, 64),
            rng.uniform(1e-5, 1e-3, 64),
        ],
        axis=1,
    )
    expected = np.where(
        ((np.abs(beam[:, 0]) < core.half_extent[0]) & (np.abs(beam[:, 2]) < core.half_extent[1]))[
            :, None
        ],
        beam,
        np.minimum(np.maximum(beam, core._off_low), core._off_high),
    )
    got = screen_reading(torch.from_numpy(beam), spec.screen.half_extent).numpy()
    np.testing.assert_array_equal(got, expected)
    assert not np.all(np.abs(beam[:, 0]) < core.half_extent[0])  # the case is exercised


def test_policy_optimiser_bounds_and_actuator_check(tmp_path) -> None:
    result = train_apg(APGConfig(iterations=2, batch_size=4, horizon=2, hidden=[8]), progress=False)
    opt = PolicyOptimiser(result.policy)
    low = np.array([-72, -72, -6.1782e-3, -72, -6.1782e-3])
    problem = Problem(
        actuator_names=("Q1", "Q2", "CV", "Q3", "CH"),
        low=low,
        high=-low,
        start=np.array([10.0, -10.0, 0.0, 10.0, 0.0]),
        target=np.array([0, 1e-4, 0, 1e-4]),
        max_delta=0.1 * -low,
        max_steps=10,
        seed=0,
    )
    opt.reset(problem)
    obs = Observation(
        beam=np.array([1e-3, 2e-4, -1e-3, 3e-4]),
        magnets=np.array([71.0, -10, 0, 10, 0]),
        target=problem.target,
        on_screen=True,
        step=0,
    )
    settings = opt.ask(obs)
    assert np.all(settings <= -low) and np.all(settings >= low)
    assert np.all(np.abs(settings - obs.magnets) <= problem.max_delta + 1e-12)
    # plain sequences are observations too (as for the bundle runtime)
    as_lists = Observation(
        beam=obs.beam.tolist(),
        magnets=obs.magnets.tolist(),
        target=obs.target.tolist(),
        on_screen=True,
        step=0,
    )
    opt.reset(problem)
    np.testing.assert_array_equal(opt.ask(as_lists), settings)
    with pytest.raises(ValueError, match="actuators"):
        opt.reset(Problem(**{**problem.__dict__, "actuator_names": ("A", "B", "C", "D", "E")}))


def test_error_features_resolve_micrometres() -> None:
    """With error_scale the network input holds the beam error in units of error_scale."""
    result = train_apg(APGConfig(iterations=1, batch_size=4, horizon=2, hidden=[8]), progress=False)
    policy = result.policy
    obs = torch.from_numpy(
        flat_observation([1e-6, 1e-4, 0, 1e-4], [10, -10, 0, 10, 0], [0, 1e-4, 0, 1e-4])
    )
    z = policy.normalise(obs)
    assert z.shape[-1] == 13 + 4
    np.testing.assert_allclose(z[-4:].numpy(), [1e-6 / 1e-4, 0, 0, 0], atol=1e-12)


def test_recipe_and_bad_settings(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "algorithm: apg\nseed: 2\napg: {iterations: 2, batch_size: 4, horizon: 2, hidden: [8]}\n"
    )
    result = train_apg_recipe(recipe, tmp_path / "out")
    assert (tmp_path / "out" / "policy" / "policy.pt").is_file()
    assert result.policy.meta.provenance["config"]["seed"] == 2
    with pytest.raises(ValueError, match="horizn"):
        config_from_dict({"iterations": 1, "horizn": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: td3\n")
    with pytest.raises(ValueError, match="not an APG recipe"):
        train_apg_recipe(bad, tmp_path / "x")
