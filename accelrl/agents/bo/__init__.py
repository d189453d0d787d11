"""Bayesian-optimisation tuning sessions with a physics-informed prior (BoTorch).

* :mod:`~accelrl.agents.bo.problem`: the tuning problem (variables, objective, constraints).
* :mod:`~accelrl.agents.bo.config`: session settings.
* :mod:`~accelrl.agents.bo.prior`: physics prior modules (the compiled ARES-EA beamline).
* :mod:`~accelrl.agents.bo.model`: the prior-mean wrapper, calibration, mismatch fallback.
* :mod:`~accelrl.agents.bo.acquisition`: LogEI / UCB and their optimisation.
* :mod:`~accelrl.agents.bo.guard`: hard bounds, max step, trust region, safe returns.
* :mod:`~accelrl.agents.bo.session`: the ask/tell session (persists and resumes).
* :mod:`~accelrl.agents.bo.persistence`: the session's files and the checks of a load.
* :mod:`~accelrl.agents.bo.live`: the live progress file of a session (one record per step).
* :mod:`~accelrl.agents.bo.optimiser`: the evaluation-protocol optimiser ``"bo"``.
* :mod:`~accelrl.agents.bo.xopt_interop`: the prior as an Xopt ``mean_modules`` entry.
* :mod:`~accelrl.agents.bo.plots`: figures of a session.

Names load on first access (BoTorch is imported only when a model is needed).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CORRELATION_THRESHOLD": "accelrl.agents.bo.config",
    "MIN_POINTS_FOR_CHECK": "accelrl.agents.bo.config",
    "SessionConfig": "accelrl.agents.bo.config",
    "BOOptimiser": "accelrl.agents.bo.optimiser",
    "BeamlinePrior": "accelrl.agents.bo.prior",
    "CalibratedMean": "accelrl.agents.bo.model",
    "PriorMean": "accelrl.agents.bo.model",
    "Constraint": "accelrl.agents.bo.problem",
    "Objective": "accelrl.agents.bo.problem",
    "ProblemError": "accelrl.agents.bo.problem",
    "TuningProblem": "accelrl.agents.bo.problem",
    "Variable": "accelrl.agents.bo.problem",
    "ares_ea_problem": "accelrl.agents.bo.problem",
    "from_protocol": "accelrl.agents.bo.problem",
    "screen_result": "accelrl.agents.bo.problem",
    "TuningGuard": "accelrl.agents.bo.guard",
    "TrustRegionConfig": "accelrl.agents.bo.guard",
    "SessionFileError": "accelrl.agents.bo.persistence",
    "SessionProgress": "accelrl.agents.bo.live",
    "SessionPaused": "accelrl.agents.bo.session",
    "TuningSession": "accelrl.agents.bo.session",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'accelrl.agents.bo' has no attribute {name!r}")
