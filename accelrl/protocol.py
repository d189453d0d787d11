"""The optimiser protocol: every tuning method is judged and deployed through this interface.

An optimiser is reset once per trial with the :class:`Problem` (what an operator would know:
actuator names and limits, start settings, target, step budget) and then, at every step,
receives the latest :class:`Observation` and answers with the next absolute settings. RL
policies, Bayesian optimisation, Nelder-Mead, gradient and model-based tuners all implement
it, so the evaluation protocol (:func:`accelrl.agents.evaluation.evaluate`) and the machine
controller (:class:`accelrl.deploy.controller.Controller`) drive them identically.

An optimiser that can answer for many independent trials at once (a trained policy, a
baseline without state) may also implement :class:`BatchOptimiser`; the evaluation then
steps all trials of a chunk together in one native vector environment.

This module needs numpy only (the torch-free deployment runtime imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["BatchOptimiser", "Observation", "ObservationBatch", "Optimiser", "Problem"]


@dataclass(frozen=True)
class Problem:
    """What an optimiser may know before the first step of a trial (SI units).

    :param actuator_names: Names of the actuators, in settings order.
    :param low: Lower operator limits ``[K]``.
    :param high: Upper operator limits ``[K]``.
    :param start: Settings at the start of the trial ``[K]``.
    :param target: Target beam ``(mu_x, sigma_x, mu_y, sigma_y)`` [m].
    :param max_delta: Largest change per step ``[K]`` (SI): the bound an RL policy was
        trained with in simulation, the machine config's ``max_step`` on a machine.
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
    :param magnets: Current settings ``[K]`` (the readbacks on a machine).
    :param target: Target beam [m].
    :param on_screen: Whether the beam is on the screen.
    :param step: Steps taken so far in this trial (0 after reset).
    :param setpoints: On a machine, the setpoints last commanded ``[K]`` (SI), which a
        delta-action policy changes; ``None`` where they equal ``magnets`` (simulation).
    """

    beam: np.ndarray
    magnets: np.ndarray
    target: np.ndarray
    on_screen: bool
    step: int
    setpoints: np.ndarray | None = None

    def mae(self) -> float:
        """Mean absolute error of the reading to the target [m] (what an optimiser can see)."""
        return float(np.mean(np.abs(self.beam - self.target)))


@dataclass(frozen=True)
class ObservationBatch:
    """The observations of ``N`` trials at the same step (SI units, float64).

    :param beam: Screen readings ``[N, 4]`` [m].
    :param magnets: Current settings ``[N, K]``.
    :param target: Targets ``[N, 4]`` [m].
    :param on_screen: Whether each beam is on its screen ``[N]``.
    :param step: Steps taken so far (the same in every trial).
    """

    beam: np.ndarray
    magnets: np.ndarray
    target: np.ndarray
    on_screen: np.ndarray
    step: int

    def __len__(self) -> int:
        return int(self.beam.shape[0])

    def row(self, i: int) -> Observation:
        """Trial ``i``'s :class:`Observation` (copies)."""
        return Observation(
            beam=self.beam[i].copy(),
            magnets=self.magnets[i].copy(),
            target=self.target[i].copy(),
            on_screen=bool(self.on_screen[i]),
            step=self.step,
        )

    @classmethod
    def stack(cls, observations: Sequence[Observation]) -> ObservationBatch:
        """One batch of observations taken at the same step.

        :raises ValueError: For no observations or observations of different steps.
        """
        if not observations:
            raise ValueError("need at least one observation")
        steps = {o.step for o in observations}
        if len(steps) != 1:
            raise ValueError(f"observations of one batch must share their step, got {steps}")
        return cls(
            beam=np.stack([o.beam for o in observations]),
            magnets=np.stack([o.magnets for o in observations]),
            target=np.stack([o.target for o in observations]),
            on_screen=np.array([o.on_screen for o in observations], dtype=bool),
            step=observations[0].step,
        )


@runtime_checkable
class Optimiser(Protocol):
    """A tuning method.

    ``reset`` starts a trial; ``ask`` returns the next settings ``[K]`` (absolute, SI) given
    the latest observation. Settings outside the limits are clipped by the evaluation and
    by the safety layer on a machine.
    """

    name: str

    def reset(self, problem: Problem) -> None: ...

    def ask(self, observation: Observation) -> np.ndarray: ...


@runtime_checkable
class BatchOptimiser(Optimiser, Protocol):
    """An optimiser that also answers for ``N`` independent trials at once.

    ``reset_batch(problems)`` starts ``N`` trials; ``ask_batch(observations)`` returns the
    next settings ``[N, K]``. Trial ``i`` of a batch must get exactly the answers that
    ``reset(problems[i])`` and ``ask(observations.row(i))`` give (up to floating-point
    rounding of the batched arithmetic).
    """

    def reset_batch(self, problems: Sequence[Problem]) -> None: ...

    def ask_batch(self, observations: ObservationBatch) -> np.ndarray: ...
