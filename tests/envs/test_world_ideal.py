"""The ``ideal`` world is the environment without a world model, bit for bit.

``data/ideal_world_golden.npz`` holds trajectories recorded with the environment code before
world models existed (commit ca44ac3): single environments (delta and direct actions,
standard and random starts, two reward configurations, TimeLimit resets), vector
environments with published trials and both autoreset modes, and a task with every
randomisation of the task spec in use (gain errors, drift, failures, reading noise,
quantised readings). The test replays the same seeds, options and actions with
``world="ideal"`` and with no world and requires every observation, reward, flag and
``info`` entry to match the recording: integers and flags exactly, floats to 1e-13
relative (exact on the recording machine; the margin covers last-bit differences of
libm between CPUs; rewards, differences of MAE terms, to 1e-13 of the largest reward of
the run, since a last-bit change of a term is not relative to their difference) and the
two runs of this process exactly.

Record again (only when the ideal behaviour is changed on purpose) with
``python tests/envs/test_world_ideal.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from envs_testlib import ENV_ID, make_spec

import accelrl.envs as E

GOLDEN = Path(__file__).resolve().parent / "data" / "ideal_world_golden.npz"
RTOL = 1e-13

#: Info keys recorded (those present in every configuration, plus the optional ones).
INFO_KEYS = (
    "beam",
    "reading",
    "target",
    "magnets",
    "incoming",
    "misalignments",
    "mae",
    "on_screen",
    "step",
    "gain",
    "fail_step",
    "fail_index",
)


def _world_kwargs(world: Any) -> dict[str, Any]:
    return {} if world is None else {"world": world}


def _record_step(out: dict[str, list], prefix: str, obs, reward, te, tr, info) -> None:
    for key, value in obs.items():
        out.setdefault(f"{prefix}obs_{key}", []).append(np.asarray(value))
    out.setdefault(f"{prefix}reward", []).append(np.asarray(reward, dtype=np.float64))
    out.setdefault(f"{prefix}terminated", []).append(np.asarray(te))
    out.setdefault(f"{prefix}truncated", []).append(np.asarray(tr))
    for key in INFO_KEYS:
        if key in info:
            out.setdefault(f"{prefix}info_{key}", []).append(np.asarray(info[key]))


def _single_runs(world: Any, out: dict[str, list]) -> None:
    configs = [
        ("single_delta_", {}, [0, 1, 2, 3]),
        (
            "single_direct_",
            {
                "action_mode": "direct",
                "start": "random",
                "terminate_on_target": False,
                "reward": [
                    {"term": "differential", "weight": 1.0},
                    {"term": "on_screen", "weight": 0.1},
                ],
            },
            [10, 11],
        ),
    ]
    for prefix, kwargs, seeds in configs:
        env = gym.make(ENV_ID, **kwargs, **_world_kwargs(world))
        rng = np.random.default_rng(len(prefix))
        low, high = env.action_space.low, env.action_space.high
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            _record_step(out, prefix, obs, 0.0, False, False, info)
            for _ in range(70):  # past the TimeLimit of 50
                action = rng.uniform(1.5 * low, 1.5 * high).astype(np.float32)
                obs, reward, te, tr, info = env.step(action)
                _record_step(out, prefix, obs, reward, te, tr, info)
                if te or tr:
                    obs, info = env.reset()
                    _record_step(out, prefix, obs, 0.0, False, False, info)


def _vector_runs(world: Any, out: dict[str, list], trials: list[E.Trial]) -> None:
    noisy = make_spec(
        screen_reading_noise=5e-6,
        screen_quantise=True,
        drift={"mu": 2e-6, "mu_p": 2e-7},
        failure={"probability": 0.5, "step": [2, 10]},
        gain_error=0.05,
        termination_thresholds=[1.5e-3] * 4,
    )
    loose = make_spec(termination_thresholds=[3e-3] * 4)
    configs = [
        ("vec_trials_", E.ares_ea_spec(), {"max_episode_steps": 25}, {"trial": trials[:12]}),
        (
            "vec_direct_",
            loose,
            {"action_mode": "direct", "autoreset_mode": "same_step", "max_episode_steps": 9},
            None,
        ),
        ("vec_noisy_", noisy, {"max_episode_steps": 11}, None),
        ("vec_noisy_same_", noisy, {"max_episode_steps": 7, "autoreset_mode": "same_step"}, None),
    ]
    for prefix, spec, kwargs, options in configs:
        n = 12
        venv = E.TransverseTuningVectorEnv(spec, num_envs=n, **kwargs, **_world_kwargs(world))
        rng = np.random.default_rng(len(prefix))
        low, high = venv.single_action_space.low, venv.single_action_space.high
        obs, info = venv.reset(seed=40, options=options)
        _record_step(out, prefix, obs, np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), info)
        for _ in range(40):
            actions = rng.uniform(1.5 * low, 1.5 * high, size=(n, len(low))).astype(np.float32)
            obs, reward, te, tr, info = venv.step(actions)
            _record_step(out, prefix, obs, reward, te, tr, info)
            if "final_info" in info:
                final = {"final_" + k: v for k, v in info["final_obs"].items()}
                for key, value in final.items():
                    out.setdefault(f"{prefix}{key}", []).append(np.asarray(value))
                out.setdefault(f"{prefix}final_beam", []).append(info["final_info"]["beam"])


def run(world: Any, trials: list[E.Trial]) -> dict[str, np.ndarray]:
    """Every recorded array of the golden scenarios, run with ``world`` (None: no world)."""
    out: dict[str, list] = {}
    _single_runs(world, out)
    _vector_runs(world, out, trials)
    return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return dict(data)


@pytest.fixture(scope="module")
def no_world(trials) -> dict[str, np.ndarray]:
    return run(None, trials)


def _compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], exact: bool) -> None:
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        assert have.shape == want.shape and have.dtype == want.dtype, key
        if exact or not np.issubdtype(want.dtype, np.floating):
            np.testing.assert_array_equal(have, want, err_msg=key)
        else:
            # A reward is a difference of MAE terms: a last-bit change of a term is an absolute
            # error on the scale of the terms, not of the (possibly much smaller) difference.
            atol = RTOL * float(np.max(np.abs(want), initial=0.0)) if key.endswith("reward") else 0
            np.testing.assert_allclose(have, want, rtol=RTOL, atol=atol, err_msg=key)


def test_no_world_matches_recording(golden, no_world):
    _compare(no_world, golden, exact=False)


@pytest.mark.parametrize("world", ["ideal"])
def test_ideal_world_is_the_environment_without_world(world, golden, no_world, trials):
    ideal = run(world, trials)
    _compare(ideal, golden, exact=False)
    _compare(ideal, no_world, exact=True)


if __name__ == "__main__":  # record the golden file from the code as it is
    GOLDEN.parent.mkdir(exist_ok=True)
    arrays = run(None, E.load_trials())
    np.savez_compressed(GOLDEN, **arrays)
    print(f"recorded {len(arrays)} arrays, {sum(a.nbytes for a in arrays.values())} bytes")
