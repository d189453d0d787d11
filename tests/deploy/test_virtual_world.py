"""The virtual accelerator's simulation serves the task spec's world when its config names
one: the same camera readout, magnets and beam as the environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelrl.deploy.plant import Plant
from accelrl.deploy.virtual.config import VirtualConfigError, load_virtual_config
from accelrl.deploy.virtual.core import build_plant
from accelrl.envs import TransverseTuningVectorEnv
from accelrl.envs.ares_ea import ares_ea_spec
from accelrl.envs.trials import load_trials

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "virtual_ares_ea.yaml"
NAMES = ("mu_x", "sigma_x", "mu_y", "sigma_y")


def test_plant_in_a_world_reads_as_the_environment() -> None:
    """Same trial and seed: the plant's readings are the environment's, step for step,
    and differ from the ideal plant's (camera readout, magnet errors, jitter)."""
    trial = load_trials()[30]
    plant = Plant(trial, world="ares-realistic", seed=5)
    ideal = Plant(trial, seed=5)
    assert plant.world_name == "ares-realistic" and ideal.world_name == "ideal"
    env = TransverseTuningVectorEnv(
        ares_ea_spec(), 1, max_episode_steps=50, action_mode="direct",
        terminate_on_target=False, world="ares-realistic",
    )  # fmt: skip
    _, info = env.reset(seed=[5], options={"trial": [trial]})
    got = np.array([plant.observe()[n] for n in NAMES])
    np.testing.assert_array_equal(got, info["reading"][0])
    assert not np.allclose(got, [ideal.observe()[n] for n in NAMES], rtol=1e-6, atol=0)
    rng = np.random.default_rng(0)
    settings = np.array(info["magnets"][0])
    low, high = env.core.low, env.core.high
    for _ in range(5):
        settings = np.clip(settings + rng.normal(0, 0.02, 5) * (high - low), low, high)
        plant.set_knobs(dict(zip(plant.knob_names, settings, strict=True)))
        _, _, _, _, info = env.step(settings[None])
        np.testing.assert_array_equal([plant.observe()[n] for n in NAMES], info["reading"][0])
        assert plant.mae() == pytest.approx(float(info["mae"][0]), rel=1e-12)


def test_ioc_config_names_the_world() -> None:
    loaded = load_virtual_config(CONFIG, world="ares-realistic")
    assert loaded.config.world == "ares-realistic"
    plant = build_plant(loaded)
    assert plant.world_name == "ares-realistic"
    assert build_plant(load_virtual_config(CONFIG)).world_name == "ideal"


def test_unknown_world_is_refused_naming_the_field() -> None:
    with pytest.raises(VirtualConfigError) as info:
        load_virtual_config(CONFIG, world="no-such-world")
    assert "world" in str(info.value) and "no-such-world" in str(info.value)
    assert str(CONFIG) in str(info.value)
