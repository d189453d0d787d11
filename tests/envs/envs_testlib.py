"""Shared helpers (constants, spec builders) for the environment tests (:mod:`accelrl.envs`).

Physical scales used for tolerances throughout (SI units):

* screen AREABSCR1: half width 4.3437 mm, half height 2.5503 mm, pixels 3.5488 um x 2.5003 um;
* typical beam readings are 1e-5..5e-3 m, so an absolute tolerance of 1e-15 m (1 fm) on a
  float64 reading is ~1e-12 relative to the smallest physically relevant scale (1 nm);
* observations are float32 (relative resolution 6e-8).
"""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import accelrl.envs as E

ROOT = Path(__file__).resolve().parents[2]
SPEC_YAML = ROOT / "envs" / "ares_ea.yaml"
#: sha256 of desy-ml/rl-vs-bo ``trials.yaml`` at commit fcd68a5 (the shipped copy's data,
#: without its provenance comment lines).
UPSTREAM_TRIALS_SHA256 = "894100e0a5d5e20b98016a2fd757a1475f77bb0b5aacbf7ad2c5557568bfe676"
ENV_ID = E.ARES_EA_ID

#: Screen half extent [m] of AREABSCR1 = resolution * pixel size / 2.
HALF_X = 2448 * 3.5488e-6 / 2
HALF_Y = 2040 * 2.5003e-6 / 2
#: Actuator limits (Q1, Q2, CV, Q3, CH) [1/m^2, 1/m^2, rad, 1/m^2, rad].
LIMITS = np.array([72.0, 72.0, 6.1782e-3, 72.0, 6.1782e-3])
START = np.array([10.0, -10.0, 0.0, 10.0, 0.0])


def spec_dict() -> dict:
    """A fresh, editable copy of the shipped ARES-EA spec (``envs/ares_ea.yaml``)."""
    return copy.deepcopy(yaml.safe_load(SPEC_YAML.read_text()))


def make_spec(**changes) -> E.TaskSpec:
    """The ARES-EA spec with some fields replaced, validated by ``TaskSpec.from_dict``.

    Keys ``screen_<field>`` and ``termination_<field>`` set screen/termination fields,
    ``max_episode_steps`` the TimeLimit; every other key is a ``randomisation`` field.
    """
    data = spec_dict()
    for key, value in changes.items():
        if key.startswith("screen_"):
            data["screen"][key[len("screen_") :]] = value
        elif key.startswith("termination_"):
            data["termination"][key[len("termination_") :]] = value
        elif key == "max_episode_steps":
            data[key] = value
        else:
            data["randomisation"][key] = value
    return E.TaskSpec.from_dict(data)


def make_env(**kwargs) -> gym.Env:
    return gym.make(ENV_ID, **kwargs)


# ---------------------------------------------------------------------------- vector = singles
BEAM_RTOL = 1e-12
BEAM_ATOL = 1e-15  # m: far below any physical scale (screen pixels are ~3 um)
REWARD_ATOL = 1e-12
#: ``info`` entries of a world compared between vector and single environments.
WORLD_KEYS = (
    "reading",
    "readout_on_screen",
    "readback",
    "field",
    "magnet_gain",
    "magnet_offset",
    "incoming_jitter",
    "failed",
)


def _split(options, i):
    """The reset options of environment ``i``: per-environment lists give their ``i``-th."""
    if options is None:
        return None
    return {k: (v[i] if isinstance(v, list) else v) for k, v in options.items()}


def compare_with_singles(venv, singles, seed, steps, rng, same_step=False, options=None):
    """Step ``venv`` and the ``singles`` with the same random actions; compare everything
    (``info`` entries of a world too: readbacks, fields, jitter, readout flags).

    Environment ``i`` is reset with ``seed + i`` and ``options`` (whose per-environment
    lists, e.g. ``"trial"``, are split among the singles). Returns the number of episode
    ends seen (terminations, truncations)."""
    n = venv.num_envs
    obs, info = venv.reset(seed=seed, options=options)
    single = [env.reset(seed=seed + i, options=_split(options, i)) for i, env in enumerate(singles)]
    for i, (_, inf) in enumerate(single):
        np.testing.assert_allclose(info["beam"][i], inf["beam"], rtol=BEAM_RTOL, atol=BEAM_ATOL)
        np.testing.assert_array_equal(info["incoming"][i], inf["incoming"])
        np.testing.assert_array_equal(info["target"][i], inf["target"])
    done = np.zeros(n, dtype=bool)
    ends = np.zeros(2, dtype=int)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    for t in range(steps):
        # 1.5x the box so that clipping is exercised too
        actions = (rng.uniform(1.5 * low, 1.5 * high, size=(n, len(low)))).astype(np.float32)
        obs, reward, terminated, truncated, info = venv.step(actions)
        for i, env in enumerate(singles):
            if done[i] and not same_step:
                # next-step autoreset: this step is the reset, reward 0, not done
                o, inf = env.reset()
                r, te, tr = 0.0, False, False
            else:
                o, r, te, tr, inf = env.step(actions[i])
            ctx = f"step {t}, env {i}"
            assert te == terminated[i] and tr == truncated[i], ctx
            assert reward[i] == pytest.approx(r, abs=REWARD_ATOL, rel=0), ctx
            if same_step and (te or tr):
                final_obs = info["final_obs"]
                for key in o:
                    np.testing.assert_allclose(final_obs[key][i], o[key], rtol=2e-7, err_msg=ctx)
                np.testing.assert_allclose(
                    info["final_info"]["beam"][i], inf["beam"], rtol=BEAM_RTOL, atol=BEAM_ATOL
                )
                o, inf = env.reset()
            np.testing.assert_allclose(
                info["beam"][i], inf["beam"], rtol=BEAM_RTOL, atol=BEAM_ATOL, err_msg=ctx
            )
            np.testing.assert_array_equal(info["incoming"][i], inf["incoming"], err_msg=ctx)
            np.testing.assert_array_equal(info["target"][i], inf["target"], err_msg=ctx)
            np.testing.assert_array_equal(info["step"][i], inf["step"], err_msg=ctx)
            for key in WORLD_KEYS:
                if key in inf:
                    np.testing.assert_allclose(
                        info[key][i], inf[key], rtol=BEAM_RTOL, atol=BEAM_ATOL, err_msg=ctx
                    )
            for key in o:  # float32 of equal-to-rounding float64: equal or one ulp apart
                np.testing.assert_allclose(obs[key][i], o[key], rtol=2e-7, err_msg=ctx)
        done = terminated | truncated
        ends += [terminated.sum(), truncated.sum()]
    return ends
