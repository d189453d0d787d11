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
