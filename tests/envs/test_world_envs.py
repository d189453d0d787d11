"""Environments in a world: ``gym.make(ID, world=...)``, the batched env, seeding, ``info``.

Vector environment ``i`` follows a single environment seeded ``s + i`` in every world: the
world draws from the environments' counter-based streams. Beams, readbacks and fields agree
to float64 rounding (1e-12 relative), readings and flags exactly in practice (a reading
only differs if a projection value lies within rounding of the half-maximum level)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from envs_testlib import ENV_ID, compare_with_singles, make_spec
from gymnasium.utils.env_checker import check_env

import accelrl.envs as E


@pytest.mark.parametrize("world", ["ares-realistic", "harsh+q3-failure"])
def test_check_env(world):
    check_env(gym.make(ENV_ID, world=world).unwrapped, skip_render_check=True)


@pytest.mark.parametrize(
    "world, same_step",
    [
        ("ares-realistic+q3-failure+beam-animation", False),
        ("harsh+steering-change", True),
    ],
)
def test_vector_env_follows_single_envs(world, same_step):
    spec = make_spec(termination_thresholds=[1.5e-3] * 4)
    n = 4
    venv = E.TransverseTuningVectorEnv(
        spec,
        num_envs=n,
        max_episode_steps=45,
        world=world,
        autoreset_mode="same_step" if same_step else "next_step",
    )
    singles = [
        gym.wrappers.TimeLimit(E.TransverseTuningEnv(spec, world=world), 45) for _ in range(n)
    ]
    ends = compare_with_singles(venv, singles, 21, 50, np.random.default_rng(6), same_step)
    assert ends.sum() >= n  # autoresets exercised


def test_vector_env_follows_single_envs_with_trials(trials):
    n = 3
    world = "ares-realistic+beam-switch"
    venv = E.make_vec(ENV_ID, num_envs=n, world=world, max_episode_steps=50)
    singles = [gym.make(ENV_ID, world=world) for _ in range(n)]
    options = {"trial": trials[:n], "to_trial": trials[10 : 10 + n]}
    compare_with_singles(venv, singles, 5, 44, np.random.default_rng(7), options=options)


def test_resets_are_reproducible():
    env = gym.make(ENV_ID, world="harsh")
    a = np.full(5, 0.1, dtype=np.float32) * env.action_space.high

    def run(seed):
        obs, info = env.reset(seed=seed)
        out = [obs["beam"], info["field"], info["magnet_gain"]]
        for _ in range(5):
            obs, r, _, _, info = env.step(a)
            out += [obs["beam"], obs["magnets"], np.float64(r), info["incoming_jitter"]]
        return out

    first, again, other = run(11), run(11), run(12)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[1], other[1])


def test_info_carries_the_privileged_state():
    env = gym.make(ENV_ID, world="ares-realistic+q3-failure")
    obs, info = env.reset(seed=8)
    for key in (
        "beam",
        "reading",
        "readout_on_screen",
        "readback",
        "field",
        "magnet_gain",
        "magnet_offset",
        "incoming_jitter",
        "failed",
    ):
        assert key in info, key
    np.testing.assert_array_equal(obs["beam"], info["reading"].astype(np.float32))
    assert info["mae"] == pytest.approx(np.mean(np.abs(info["beam"] - info["target"])), rel=1e-12)
    assert isinstance(info["readout_on_screen"], bool) and isinstance(info["on_screen"], bool)
    # the reading is the camera's, not the beam: the FWHM algorithm's size bias shows
    assert not np.allclose(info["reading"], info["beam"], rtol=1e-3)


def test_reward_uses_the_readout_verdict():
    """A spot too dim to stand out: geometrically on the screen, the camera calls it off,
    and the on-screen reward term follows the camera (what a deployed agent experiences)."""
    world = {"camera": {"signal": 10.0, "gain": 2.6, "read_noise": 2.0, "background": 50.0}}
    env = E.TransverseTuningEnv(
        E.ares_ea_spec(), world=world, reward=[{"term": "on_screen", "weight": 1.0}]
    )
    _, info = env.reset(seed=9)
    _, reward, _, _, info = env.step(np.zeros(5, dtype=np.float32))
    assert info["on_screen"] and not info["readout_on_screen"]
    assert reward == -1.0


def test_make_vec_and_gym_make_vec_take_a_world():
    venv = E.make_vec(ENV_ID, num_envs=2, world="ares-realistic")
    assert venv.core.world.camera is not None
    gvenv = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", world="harsh")
    assert gvenv.unwrapped.core.world_spec.name == "harsh"


def test_spec_world_is_the_default_and_world_argument_overrides():
    from envs_testlib import spec_dict

    data = spec_dict()
    data["world"] = "harsh"
    spec = E.TaskSpec.from_dict(data)
    assert E.TransverseTuningEnv(spec).core.world_spec.name == "harsh"
    assert E.TransverseTuningEnv(spec, world="ideal").core.world is None


def test_render_in_a_camera_world():
    env = gym.make(ENV_ID, world="ares-realistic", render_mode="rgb_array")
    env.reset(seed=10)
    image = env.render()
    assert image.shape == (510, 612, 3) and image.dtype == np.uint8  # the camera's grid
    venv = E.make_vec(ENV_ID, num_envs=2, world="ares-realistic", render_mode="rgb_array")
    venv.reset(seed=10)
    images = venv.render()
    assert len(images) == 2 and images[0].shape == (510, 612, 3)


@pytest.mark.parametrize("backend", ["cheetah", "cheetah-particles"])
def test_worlds_with_cheetah_backends(backend):
    kwargs = {"backend": backend, "num_particles": 256, "world": "ares-realistic"}
    venv = E.make_vec(ENV_ID, num_envs=2, max_episode_steps=3, **kwargs)
    singles = [gym.make(ENV_ID, max_episode_steps=3, **kwargs) for _ in range(2)]
    compare_with_singles(venv, singles, 30, 4, np.random.default_rng(8))
