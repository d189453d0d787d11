"""The limits arithmetic of every safety rule: hard bounds, max step per move, ramps.

:class:`StepLimits` is the one implementation of what both the machine safety layer
(:mod:`accelrl.deploy.safety`) and the BO session's guard (:mod:`accelrl.agents.bo.guard`)
enforce on settings ``[K]`` (SI units):

* **hard bounds** ``low <= x <= high``;
* **max step** ``|x - base| <= max_step`` from the setting a move starts at -- or from every
  setting in a range, when it is not known which one the move starts at (:meth:`StepLimits.box_of`);
* an optional **reach** box (e.g. "no further from the initial setting than a rollback can
  undo");
* **ramps**: a straight line from one setting to another in the fewest moves that each stay
  within the max step (every knob arrives at the same move), within the bounds.

>>> import numpy as np
>>> lim = StepLimits(low=[-1.0, -1.0], high=[1.0, 1.0], max_step=[0.5, 0.1])
>>> lim.apply(np.array([0.9, 0.9]), base=np.zeros(2)).value
array([0.5, 0.1])
>>> [p.tolist() for p in lim.ramp(np.array([0.2, 0.2]), np.zeros(2))]
[[0.1, 0.1], [0.2, 0.2]]

This module needs numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Limited", "StepLimits"]

#: Relative slack of the max-step checks (float rounding of ``base + step``).
STEP_SLACK = 1e-12


@dataclass(frozen=True)
class Limited:
    """A setting after the limits, with every change they made.

    :param value: The limited setting ``[K]`` (SI).
    :param changes: ``(index, rule, before, after)`` per change, in the order the rules
        apply: ``"max_step"``, ``"reach"``, then ``"low"`` or ``"high"``.
    """

    value: np.ndarray
    changes: tuple[tuple[int, str, float, float], ...]


class StepLimits:
    """Hard bounds and a max step per knob (see the module documentation).

    :param low: Lower bounds ``[K]`` (SI).
    :param high: Upper bounds ``[K]`` (SI), each above its lower bound.
    :param max_step: Largest change per move ``[K]`` (SI), > 0; ``inf`` for no limit.
    :raises ValueError: For shapes that differ, non-finite bounds, ``low >= high`` or a
        max step that is not > 0.
    """

    def __init__(
        self,
        low: Sequence[float] | np.ndarray,
        high: Sequence[float] | np.ndarray,
        max_step: Sequence[float] | np.ndarray,
    ) -> None:
        self.low = np.array(low, dtype=np.float64).reshape(-1)
        self.high = np.array(high, dtype=np.float64).reshape(-1)
        self.max_step = np.array(max_step, dtype=np.float64).reshape(-1)
        if not self.low.shape == self.high.shape == self.max_step.shape:
            raise ValueError(
                f"low, high and max_step must have the same length, got {self.low.size}, "
                f"{self.high.size}, {self.max_step.size}"
            )
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError(
                f"bounds must be finite, got {self.low.tolist()}, {self.high.tolist()}"
            )
        if np.any(~(self.high > self.low)):
            raise ValueError(f"high must be > low, got {self.low.tolist()}, {self.high.tolist()}")
        if np.any(~(self.max_step > 0)):
            raise ValueError(f"max_step must be > 0, got {self.max_step.tolist()}")

    def __len__(self) -> int:
        return int(self.low.size)

    def clip(self, x: np.ndarray) -> np.ndarray:
        """``x`` clipped to the hard bounds."""
        return np.minimum(np.maximum(np.asarray(x, np.float64), self.low), self.high)

    def box(self, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``: where one move from ``base`` may go (the bounds intersected
        with ``base +- max_step``; ``base`` clipped to the bounds first)."""
        b = self.clip(base)
        return np.maximum(self.low, b - self.max_step), np.minimum(self.high, b + self.max_step)

    def box_of(self, least: np.ndarray, most: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``: where one move may go when it may start anywhere in
        ``[least, most]`` (per knob): within ``max_step`` of every such setting, within the
        bounds. Empty (``lower > upper``) where ``most - least > 2 max_step`` or the range
        lies beyond a bound by more than ``max_step``.

        >>> lim = StepLimits([-1.0], [1.0], [0.5])
        >>> [b.tolist() for b in lim.box_of(np.array([0.0]), np.array([0.3]))]
        [[-0.2], [0.5]]
        """
        least = np.asarray(least, np.float64).reshape(-1)
        most = np.asarray(most, np.float64).reshape(-1)
        return (
            np.maximum(self.low, most - self.max_step),
            np.minimum(self.high, least + self.max_step),
        )

    def apply(
        self,
        x: np.ndarray,
        base: np.ndarray,
        reach: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Limited:
        """``x`` limited to ``base +- max_step``, then to the ``reach`` box, then to the
        bounds (the bounds always win), with every change recorded.

        :param x: Requested setting ``[K]`` (finite).
        :param base: The setting the move starts from ``[K]``.
        :param reach: Optional ``(lower, upper)`` box ``[K]`` the setting must stay in.
        """
        value = np.asarray(x, np.float64).reshape(-1).copy()
        base = np.asarray(base, np.float64).reshape(-1)
        changes: list[tuple[int, str, float, float]] = []
        rules: list[tuple[str, np.ndarray, np.ndarray]] = [
            ("max_step", base - self.max_step, base + self.max_step)
        ]
        if reach is not None:
            rules.append(
                ("reach", np.asarray(reach[0], np.float64), np.asarray(reach[1], np.float64))
            )
        for rule, lo, hi in rules:
            new = np.minimum(np.maximum(value, lo), hi)
            changes += [
                (int(i), rule, float(value[i]), float(new[i])) for i in (new != value).nonzero()[0]
            ]
            value = new
        new = self.clip(value)
        for i in (new != value).nonzero()[0]:  # 1-D: flatnonzero, one call less
            rule = "low" if value[i] < self.low[i] else "high"
            changes.append((int(i), rule, float(value[i]), float(new[i])))
        return Limited(new, tuple(changes))

    def allows(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Mask ``[K]``: ``x`` is finite, within the bounds and within ``max_step`` of
        ``base`` (with :data:`STEP_SLACK` relative slack for float rounding)."""
        x = np.asarray(x, np.float64).reshape(-1)
        base = np.asarray(base, np.float64).reshape(-1)
        with np.errstate(invalid="ignore"):
            return (
                np.isfinite(x)
                & (x >= self.low)
                & (x <= self.high)
                & (np.abs(x - base) <= self.max_step * (1 + STEP_SLACK))
            )

    def move(self, point: np.ndarray, base: np.ndarray) -> np.ndarray:
        """``point`` as one move from ``base``: kept where it is within the max step (with
        :data:`STEP_SLACK` for float rounding), else clipped to ``base +- max_step``; then
        within the bounds."""
        point = np.asarray(point, np.float64).reshape(-1)
        base = np.asarray(base, np.float64).reshape(-1)
        within = np.abs(point - base) <= self.max_step * (1 + STEP_SLACK)
        point = np.where(within, point, np.clip(point, base - self.max_step, base + self.max_step))
        return self.clip(point)

    def moves(self, goal: np.ndarray, base: np.ndarray) -> int:
        """Fewest moves from ``base`` to ``goal`` within the max step (0 when equal)."""
        distance = np.abs(np.asarray(goal, np.float64) - np.asarray(base, np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.isfinite(self.max_step), distance / self.max_step, 0.0)
        worst = float(np.max(ratio)) if ratio.size else 0.0
        return int(math.ceil(worst - STEP_SLACK)) if worst > 0 else 0

    def ramp(self, goal: np.ndarray, base: np.ndarray) -> list[np.ndarray]:
        """The moves from ``base`` to ``goal`` (clipped to the bounds) on a straight line:
        :meth:`moves` points, each within the max step of the one before (``base`` for the
        first) and within the bounds; the last is the goal. Empty when ``base`` is the goal.
        """
        goal = self.clip(goal)
        start = np.asarray(base, np.float64).reshape(-1)
        n = self.moves(goal, start)
        points: list[np.ndarray] = []
        previous = start
        for j in range(1, n + 1):
            point = goal.copy() if j == n else start + (goal - start) * (j / n)
            point = self.move(point, previous)
            points.append(point)
            previous = point
        return points
