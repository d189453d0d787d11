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


def test_screen_image_is_the_world_cameras_image() -> None:
    """In a camera world the served image is the camera's expected processed image (the
    spot where the camera sees the beam, pedestal included); without one, a Gaussian of the
    reading with its peak at the read centroid (row 0 at the top)."""
    trial = load_trials()[30]
    shape = (128, 96)
    for world in ("ares-realistic", None):
        plant = Plant(trial, world=world, seed=5)
        reading = plant.observe()
        image = plant.screen_image(shape, reading)
        assert image.shape == (96, 128) and 0.0 <= image.min() and image.max() <= 1.0
        half_x, half_y = plant.spec.screen.half_extent
        row, col = np.unravel_index(np.argmax(image), image.shape)
        x = (col + 0.5) / 128 * 2 * half_x - half_x
        y = half_y - (row + 0.5) / 96 * 2 * half_y
        pixel = (2 * half_x / 128, 2 * half_y / 96)
        # the brightest pixel lies on the beam centre within the spot's size and 2 pixels
        beam = plant.beam()
        assert abs(x - beam["mu_x"]) <= beam["sigma_x"] + 2 * pixel[0]
        assert abs(y - beam["mu_y"]) <= beam["sigma_y"] + 2 * pixel[1]
        if world is not None:
            camera = plant.core.world.camera
            expected = camera.expected_image(np.array(plant.core.beam[:1]))[0]
            assert image.max() == pytest.approx(
                min(expected.max() / camera.spec.full_scale, 1.0), rel=0.05
            )
            assert image.min() > 0.0  # the pedestal of clipped background noise
        else:
            assert image.min() < 1e-3
