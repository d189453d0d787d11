"""ARES-EA transverse tuning, ``accelrl/AresEATransverseTuning-v0``, as published.

## Description
The ARES Experimental Area at DESY (Kaiser, Stein, Eichler, ICML 2022; Kaiser, Xu, Eichler
et al., Sci. Rep. 14, 2024): three quadrupoles AREAMQZM1-3 and two steerers AREAMCVM1
(vertical) and AREAMCHM1 (horizontal) focus and steer the beam onto the screen AREABSCR1 to
reach a target ``(mu_x, sigma_x, mu_y, sigma_y)``. Task spec: ``envs/ares_ea.yaml``.

## Action space
``Box(5)`` ``[Q1, Q2, CV, Q3, CH]``: quadrupoles in 1/m^2 (limits +-72), steerers in rad
(limits +-6.1782e-3). ``"delta"`` mode (default): at most 10% of each limit per step
(+-7.2 1/m^2, +-0.61782 mrad); ``"direct"``: absolute settings. Clipped to the box.

## Observation space
``Dict(beam=Box(4) [m], magnets=Box(5) [SI], target=Box(4) [m])``; ``beam`` and ``target``
are ordered ``(mu_x, sigma_x, mu_y, sigma_y)``. float32.

## Rewards
``"icml"`` by default: improvement of ``log(|dmu_x| + |dmu_y| + 2|dsigma_x| + 2|dsigma_y|)``,
doubled when negative. Others: see :mod:`accelrl.envs.rewards`.

## Starting state
Settings ``(+10, -10, 0, +10, 0)``; incoming beam, misalignments (Q1-3 and screen
+-400 um) and target (mu +-2 mm, sigma 0-2 mm) drawn uniformly as published.
``options={"trial": t}`` reproduces published trial ``t`` (:func:`accelrl.envs.load_trials`).

## Episode end
Terminates when all errors are below 20 um (``terminate_on_target=False`` to disable, as in
evaluation); ``TimeLimit`` 50 (training) — pass ``max_episode_steps=150`` for evaluation.

## Version history
* v0: initial release.
"""

from __future__ import annotations

from typing import Any

from accelrl.envs.spec import TaskSpec, shipped_spec_path
from accelrl.envs.tuning import TransverseTuningEnv
from accelrl.names import ARES_EA_ID

ENV_ID = ARES_EA_ID


def ares_ea_spec() -> TaskSpec:
    """The validated ARES-EA task spec shipped with accelrl."""
    return TaskSpec.from_yaml(shipped_spec_path("ares_ea"))


class AresEATransverseTuning(TransverseTuningEnv):
    """ARES-EA transverse tuning; keyword arguments as :class:`TransverseTuningEnv`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(ares_ea_spec(), **kwargs)
