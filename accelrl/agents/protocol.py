"""The optimiser protocol: every tuning method is judged through this one interface.

An optimiser is reset once per trial with the :class:`Problem` (what an operator would know:
actuator names and limits, start settings, target, step budget) and then, at every step,
receives the latest :class:`Observation` and answers with the next absolute settings. RL
policies, Bayesian optimisation, Nelder-Mead, gradient and model-based tuners all implement
it, so :func:`accelrl.agents.evaluation.evaluate` treats them identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Problem:
    """What an optimiser may know before the first step of a trial (SI units).

    :param actuator_names: Names of the actuators, in settings order.
    :param low: Lower operator limits ``[K]``.
    :param high: Upper operator limits ``[K]``.
    :param start: Settings at the start of the trial ``[K]``.
    :param target: Target beam ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param max_delta: Largest change per step an RL policy was trained with ``[K]``.
    :param max_steps: Step budget.
    :param seed: Seed for the optimiser's own randomness in this trial.
    """

    actuator_names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    start: np.ndarray
    target: np.ndarray
    max_delta: np.ndarray
    max_steps: int
    seed: int


@dataclass(frozen=True)
class Observation:
    """What the machine shows after a step (SI units, float64).

    :param beam: Screen reading ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param magnets: Current settings ``[K]``.
    :param target: Target beam [m].
    :param on_screen: Whether the beam is on the screen.
    :param step: Steps taken so far in this trial (0 after reset).
    """

    beam: np.ndarray
    magnets: np.ndarray
    target: np.ndarray
    on_screen: bool
    step: int

    def mae(self) -> float:
        """Mean absolute error of the reading to the target [m] (what an optimiser can see)."""
        return float(np.mean(np.abs(self.beam - self.target)))


@runtime_checkable
class Optimiser(Protocol):
    """A tuning method.

    ``reset`` starts a trial; ``ask`` returns the next settings ``[K]`` (absolute, SI) given
    the latest observation. Settings outside the limits are clipped by the evaluation.
    """

    name: str

    def reset(self, problem: Problem) -> None: ...

    def ask(self, observation: Observation) -> np.ndarray: ...
