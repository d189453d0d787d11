"""Deterministic safety rules of a tuning session, outside the statistics.

:class:`TuningGuard` owns everything a suggestion must satisfy whatever the model says
(the limits arithmetic is :class:`accelrl.limits.StepLimits`, shared with the machine
safety layer):

* **hard bounds** from the machine/task configuration (never widened);
* an **absolute max step** per variable around the current read-back;
* a **trust region** (side length in normalised units around the best safe setting) that
  doubles after successes and halves after failures;
* **critical constraints**: after a violating result the session returns to the last safe
  setting (in max-step sized moves) or pauses;
* **return to best** and **rollback to the initial setting**, both as sequences of
  max-step sized moves.

Every suggestion passes :meth:`TuningGuard.guard` last: a non-finite value is replaced by
the read-back, then the value is clipped to the max step and to the hard bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from accelrl.limits import StepLimits

__all__ = ["TrustRegionConfig", "TuningGuard"]


class TrustRegionConfig(BaseModel):
    """Trust region in normalised units (1 = the whole bound range of a variable).

    :param length: Initial side length.
    :param length_min: Smallest side length; below it the region restarts at ``length``.
    :param length_max: Largest side length.
    :param success_tolerance: Consecutive improvements that double the side length.
    :param failure_tolerance: Consecutive non-improvements that halve it.
    :param improvement: Relative improvement of the modelled objective (GP units, e.g.
        log MAE) that counts as a success.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    length: float = Field(0.5, gt=0.0, le=1.0)
    length_min: float = Field(0.01, gt=0.0, le=1.0)
    length_max: float = Field(1.0, gt=0.0, le=1.0)
    success_tolerance: int = Field(2, ge=1)
    failure_tolerance: int = Field(6, ge=1)
    improvement: float = Field(1e-3, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> TrustRegionConfig:
        if not self.length_min <= self.length <= self.length_max:
            raise ValueError(
                f"need length_min <= length <= length_max, got {self.length_min}, "
                f"{self.length}, {self.length_max}"
            )
        return self


class TuningGuard:
    """Hard bounds, max step, trust region and safe-setting bookkeeping (SI units).

    :param low: Hard lower bounds ``[d]``.
    :param high: Hard upper bounds ``[d]``.
    :param max_step: Largest change per suggestion ``[d]`` (``inf``: unlimited).
    :param initial: Initial setting ``[d]`` (the rollback target).
    :param trust: Trust-region configuration.
    """

    def __init__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        max_step: np.ndarray,
        initial: np.ndarray,
        trust: TrustRegionConfig | None = None,
    ) -> None:
        self.limits = StepLimits(low, high, max_step)
        self.initial = np.asarray(initial, np.float64).reshape(-1).copy()
        if self.initial.shape != self.limits.low.shape:
            raise ValueError("low, high, max_step and initial must have the same shape")
        self.trust = trust or TrustRegionConfig()
        self.length = self.trust.length
        self.successes = 0
        self.failures = 0
        self.last_safe: np.ndarray | None = None
        self.returning = False  # moving back to last_safe after a critical violation
        self.paused = False
        self.reason = ""

    # -- geometry
    @property
    def low(self) -> np.ndarray:
        """Hard lower bounds ``[d]`` (SI)."""
        return self.limits.low

    @property
    def high(self) -> np.ndarray:
        """Hard upper bounds ``[d]`` (SI)."""
        return self.limits.high

    @property
    def max_step(self) -> np.ndarray:
        """Largest change per suggestion ``[d]`` (SI)."""
        return self.limits.max_step

    @property
    def span(self) -> np.ndarray:
        """Bound ranges ``[d]`` (SI)."""
        return self.high - self.low

    def step_box(self, readback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` SI: hard bounds intersected with read-back +- max step."""
        return self.limits.box(readback)

    def box(self, readback: np.ndarray, centre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Where the acquisition may look: the step box intersected with the trust region
        around ``centre`` (SI). Where they do not overlap, the box collapses onto the point
        of the step box nearest to the trust region."""
        lower, upper = self.step_box(readback)
        if centre is None:
            return lower, upper
        half = 0.5 * self.length * self.span
        t_lo, t_hi = centre - half, centre + half
        lo, hi = np.maximum(lower, t_lo), np.minimum(upper, t_hi)
        empty = lo > hi
        nearest = np.clip(np.clip(centre, t_lo, t_hi), lower, upper)
        lo = np.where(empty, nearest, lo)
        hi = np.where(empty, nearest, hi)
        return lo, hi

    def guard(self, x: Any, readback: np.ndarray) -> np.ndarray:
        """The final, deterministic check of a suggestion ``[d]`` (SI): non-finite entries
        become the read-back's, then max step around the read-back, then hard bounds (which
        win if the read-back itself lies outside them)."""
        raw = np.asarray(readback, np.float64).reshape(self.low.shape)
        rb = self.limits.clip(np.where(np.isfinite(raw), raw, self.initial))
        try:
            x = np.asarray(x, np.float64).reshape(rb.shape)
        except (TypeError, ValueError):
            x = rb.copy()
        x = np.where(np.isfinite(x), x, rb)
        centre = np.where(np.isfinite(raw), raw, rb)
        return self.limits.apply(x, centre).value

    def towards(self, goal: np.ndarray, readback: np.ndarray) -> np.ndarray:
        """One move from ``readback`` towards ``goal`` (SI), every variable within its max step."""
        return self.guard(goal, readback)

    def moves_to(self, goal: np.ndarray, readback: np.ndarray) -> int:
        """Number of max-step sized moves from ``readback`` to ``goal``."""
        return self.limits.moves(goal, readback)

    def route(self, goal: np.ndarray, readback: np.ndarray) -> list[np.ndarray]:
        """The moves from ``readback`` to ``goal`` (SI) on a straight line, each within the
        max step (:meth:`accelrl.limits.StepLimits.ramp`); the last one is ``goal`` clipped
        to the hard bounds (one move when already there)."""
        start = self.limits.clip(readback)
        return self.limits.ramp(goal, start) or [self.limits.clip(goal)]

    # -- trust region
    def record(self, improved: bool) -> None:
        """Update the trust region after a result (``improved``: new best by the margin)."""
        if improved:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        if self.successes >= self.trust.success_tolerance:
            self.length = min(2.0 * self.length, self.trust.length_max)
            self.successes = 0
        elif self.failures >= self.trust.failure_tolerance:
            self.length = 0.5 * self.length
            self.failures = 0
            if self.length < self.trust.length_min:
                self.length = self.trust.length
        self.length = float(self.length)

    def shrink(self) -> None:
        """Halve the trust region (after a critical violation), keeping the minimum."""
        self.length = max(0.5 * self.length, self.trust.length_min)
        self.successes = 0

    # -- persistence
    def state(self) -> dict[str, Any]:
        """JSON-friendly state."""
        return {
            "length": self.length,
            "successes": self.successes,
            "failures": self.failures,
            "last_safe": None if self.last_safe is None else self.last_safe.tolist(),
            "returning": self.returning,
            "paused": self.paused,
            "reason": self.reason,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.length = float(state["length"])
        self.successes = int(state["successes"])
        self.failures = int(state["failures"])
        last = state["last_safe"]
        self.last_safe = None if last is None else np.asarray(last, np.float64)
        self.returning = bool(state["returning"])
        self.paused = bool(state["paused"])
        self.reason = str(state["reason"])
