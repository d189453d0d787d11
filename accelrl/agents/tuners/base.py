"""What every tuner of the optimiser protocol shares: problem checks, normalised
coordinates and :class:`TunerBase` (the problem, its limits as float64 arrays, a generator
seeded per trial).
"""

from __future__ import annotations

import math

import numpy as np

from accelrl.protocol import Observation, Problem

__all__ = ["TunerBase", "check_problem", "from_unit", "to_unit"]


def check_problem(problem: Problem) -> None:
    """Validate a :class:`~accelrl.protocol.Problem` before a trial starts.

    :raises ValueError: Naming the field that has the wrong shape, is not finite, or has
        ``low >= high``, a start outside the limits, or a negative ``max_delta``.
    """
    K = len(problem.actuator_names)
    if K == 0:
        raise ValueError("problem has no actuators")
    for name in ("low", "high", "start", "max_delta"):
        value = np.asarray(getattr(problem, name), dtype=np.float64)
        if value.shape != (K,):
            raise ValueError(f"problem.{name} must have shape ({K},), got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"problem.{name} contains NaN or inf: {value.tolist()}")
    target = np.asarray(problem.target, dtype=np.float64)
    if target.shape != (4,) or not np.all(np.isfinite(target)):
        raise ValueError(
            f"problem.target must be 4 finite values (mu_x, sigma_x, mu_y, sigma_y) [m], "
            f"got {target.tolist()}"
        )
    low, high = np.asarray(problem.low, np.float64), np.asarray(problem.high, np.float64)
    if np.any(low >= high):
        raise ValueError(f"problem.low must be < problem.high, got {low.tolist()}, {high.tolist()}")
    start = np.asarray(problem.start, np.float64)
    if np.any(start < low) or np.any(start > high):
        raise ValueError(f"problem.start {start.tolist()} is outside the limits")
    if np.any(np.asarray(problem.max_delta, np.float64) < 0):
        raise ValueError(f"problem.max_delta must be >= 0, got {list(problem.max_delta)}")
    if int(problem.max_steps) < 0:
        raise ValueError(f"problem.max_steps must be >= 0, got {problem.max_steps}")


def to_unit(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Settings (SI) -> normalised ``[-1, 1]`` coordinates (``low`` -> -1, ``high`` -> +1)."""
    return 2.0 * (np.asarray(x, np.float64) - low) / (high - low) - 1.0


def from_unit(u: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Normalised ``[-1, 1]`` coordinates -> settings (SI), clipped to the limits."""
    x = low + (np.asarray(u, np.float64) + 1.0) * 0.5 * (high - low)
    return np.clip(x, low, high)


class TunerBase:
    """Shared bookkeeping: the problem, limits as float64 arrays, the seeded generator."""

    name: str = "base"

    def __init__(self) -> None:
        self._problem: Problem | None = None
        self.rng = np.random.default_rng(0)

    def reset(self, problem: Problem) -> None:
        """Start a trial: validate ``problem`` and seed the generator from ``problem.seed``."""
        check_problem(problem)
        self._problem = problem
        self.low = np.asarray(problem.low, dtype=np.float64)
        self.high = np.asarray(problem.high, dtype=np.float64)
        self.start = np.asarray(problem.start, dtype=np.float64)
        self.target = np.asarray(problem.target, dtype=np.float64)
        self.max_delta = np.asarray(problem.max_delta, dtype=np.float64)
        self.rng = np.random.default_rng(int(problem.seed))

    def _check(self, observation: Observation) -> tuple[np.ndarray, np.ndarray]:
        """``(reading [4] m, settings [K] SI)`` of ``observation`` as float64, validated."""
        if self._problem is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(problem) before ask()")
        beam = np.asarray(observation.beam, dtype=np.float64).reshape(-1)
        magnets = np.asarray(observation.magnets, dtype=np.float64).reshape(-1)
        if beam.shape != (4,):
            raise ValueError(f"observation.beam must have 4 values, got shape {beam.shape}")
        if magnets.shape != self.low.shape:
            raise ValueError(
                f"observation.magnets must have {self.low.size} values, got shape {magnets.shape}"
            )
        return beam, magnets

    def _mae(self, beam: np.ndarray) -> float:
        """Observed MAE to the target [m]; ``inf`` for a non-finite reading."""
        value = float(np.mean(np.abs(beam - self.target)))
        return value if math.isfinite(value) else math.inf

    def _out(self, x: np.ndarray) -> np.ndarray:
        """Finite settings within the limits (what every ``ask`` returns)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise RuntimeError(f"{type(self).__name__} produced non-finite settings {x.tolist()}")
        return np.clip(x, self.low, self.high)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
