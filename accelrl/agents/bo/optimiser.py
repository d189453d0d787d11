"""BO under the evaluation protocol: :class:`BOOptimiser` (registered as ``"bo"``).

``accelrl evaluate --optimiser bo:prior=physics`` runs one :class:`~accelrl.agents.bo.
session.TuningSession` per trial: objective the observed MAE [m] (modelled in log), beam on
screen as a critical constraint, step limit ``max_step`` x the problem's ``max_delta``, and
in the last steps the route back to the best observed setting.

Priors: ``"physics"`` (the calibrated ARES-EA beamline, :class:`~accelrl.agents.bo.prior.
BeamlinePrior`), ``"nominal"`` (the same, not calibrated), ``"wrong"`` (sign-flipped
quadrupoles, calibrated: tests the fallback), ``"none"`` (constant mean).

>>> from accelrl.agents.registry import make_optimiser
>>> make_optimiser("bo:prior=none,acquisition=ucb").name
'bo:acquisition=ucb,prior=none'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from accelrl.agents.bo.config import SessionConfig
from accelrl.agents.bo.problem import from_protocol, screen_result
from accelrl.agents.tuners.baselines import check_problem
from accelrl.protocol import Observation, Problem

__all__ = ["PRIORS", "BOOptimiser"]

#: Prior names accepted by :class:`BOOptimiser`.
PRIORS: tuple[str, ...] = ("physics", "nominal", "wrong", "none")


class BOOptimiser:
    """Bayesian optimisation with an optional physics prior, as a protocol optimiser.

    :param prior: One of :data:`PRIORS`.
    :param acquisition: ``"logei"`` or ``"ucb"``.
    :param beta: UCB exploration weight.
    :param budget_s: Acquisition-optimisation budget per step [s].
    :param max_step: Largest change per step in units of the problem's ``max_delta``
        (0: unlimited).
    :param trust_length: Initial trust-region side length (normalised units).
    :param return_to_best: Spend the last steps on the route back to the best setting.
    :param fit_maxiter: L-BFGS iterations of each GP fit.
    :param observer: Called with the session after each step (the observation ingested and
        the next suggestion made, or its failure), e.g. :meth:`accelrl.agents.bo.live.
        SessionProgress.update`, which writes the step to the live progress file.
    """

    name = "bo"

    def __init__(
        self,
        prior: str = "physics",
        acquisition: str = "logei",
        beta: float = 2.0,
        budget_s: float = 0.08,
        max_step: float = 1.0,
        trust_length: float = 0.5,
        return_to_best: bool = True,
        fit_maxiter: int = 15,
        observer: Callable[[Any], None] | None = None,
    ) -> None:
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if acquisition not in ("logei", "ucb"):
            raise ValueError(f"acquisition must be 'logei' or 'ucb', got {acquisition!r}")
        if not max_step >= 0:
            raise ValueError(f"max_step must be >= 0 (units of max_delta; 0: none), got {max_step}")
        self.prior = prior
        self.acquisition = acquisition
        self.return_to_best = bool(return_to_best)
        self.max_step = float(max_step)
        self._config = dict(
            acquisition=acquisition,
            beta=beta,
            budget_s=budget_s,
            fit_maxiter=fit_maxiter,
            trust={"length": trust_length},
        )
        SessionConfig.model_validate(self._config)  # fail early on bad values
        self.session: Any = None  # TuningSession (BoTorch is imported on reset)
        self.observer = observer

    def _prior(self, problem: Problem):  # noqa: ANN202 - BeamlinePrior or None
        if self.prior == "none":
            return None
        from accelrl.agents.bo.prior import BeamlinePrior

        return BeamlinePrior(
            target=problem.target,
            calibrate=self.prior != "nominal",
            wrong="flipped" if self.prior == "wrong" else None,
        )

    def reset(self, problem: Problem) -> None:
        """Start a trial: a fresh session seeded with ``problem.seed``."""
        check_problem(problem)
        self._problem = problem
        tuning = from_protocol(problem, self.max_step if self.max_step > 0 else None)
        from accelrl.agents.bo.session import TuningSession

        config = SessionConfig.model_validate({**self._config, "seed": int(problem.seed)})
        self.session = TuningSession(tuning, self._prior(problem), config)

    def ask(self, observation: Observation) -> np.ndarray:
        """Ingest the observation, answer the next settings ``[K]`` (SI)."""
        if self.session is None:
            raise RuntimeError("BOOptimiser: call reset(problem) before ask()")
        s = self.session
        magnets = np.asarray(observation.magnets, np.float64)
        result = screen_result(observation.beam, observation.target, observation.on_screen)
        s.ingest(s.problem.named(magnets), result)
        try:
            remaining = self._problem.max_steps - int(observation.step)
            if self.return_to_best and not s.pending:
                best = s.best()
                if best is not None:
                    moves = s.safety.moves_to(s.problem.vector(best[0]), magnets)
                    if 0 < moves and moves >= remaining:
                        s.finish()
            x = s.suggest()
        finally:
            if self.observer is not None:
                self.observer(s)
        return np.array([x[n] for n in s.names], dtype=np.float64)
