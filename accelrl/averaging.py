"""Averaging a policy's setting changes over noisy readings (Kesten's rule with a trend reset).

A policy trained on exact readings turns reading noise into setting changes: near the
target its proposed change ``d`` is the correction for a reading that is off by the noise,
so the settings random-walk and the beam follows the noise ("chasing the noise"). Averaging
the proposals removes that without slowing the approach: the applied change is ``d / n``,
where the count ``n`` of each actuator grows by one whenever the policy reverses that
actuator's direction (its proposals dither about a setting: the running mean of the
proposals is a better estimate of the setting than the last one) and falls back to 1 when
the proposals of one direction add up to a real move (the policy keeps asking for one
direction: an approach, a drift or a fault such as a failed magnet).

Per actuator ``k`` and step, with ``d`` the proposed change (after the ``max_delta`` and
limit clipping) and ``r`` the running sum of the proposals since the last reversal:

.. code-block:: text

    reversal = sign(d) == -sign(previous non-zero d)
    r = d if reversal else r + d
    n = 1                        if |r| > reset_fraction * max_delta
        min(n + 1, max_count)    elif reversal
        n                        else
    applied change = d / n

This is Kesten's accelerated stochastic approximation (H. Kesten, Ann. Math. Statist. 29,
41, 1958: decrease the gain only when successive increments change sign) with a cumulative
sum reset (Page's CUSUM) so that a persistent request is followed at full gain. With
``n = 1`` (the first step of every episode, every approach) the policy acts exactly as
trained; the applied change is a convex combination of the current setting and the
proposal, so it never leaves the limits nor exceeds ``max_delta``. ``max_count`` bounds the
memory (about ``max_count`` steps) so that slow drifts are still followed.

Numpy only; used by both the torch policy (:mod:`accelrl.agents.policy`) and the bundle
runtime (:mod:`accelrl.deploy.runtime`), so evaluation and deployment average identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Default largest count: changes are averaged over at most about this many steps.
DEFAULT_MAX_COUNT = 8
#: Default trend reset: proposals of one direction adding up to this fraction of
#: ``max_delta`` are followed at full gain.
DEFAULT_RESET_FRACTION = 0.3
#: Largest ``max_count`` accepted (a memory of at most about this many steps).
MAX_COUNT_LIMIT = 1000


class StepAverager:
    """The averaging state of a batch of episodes (see the module documentation).

    :param max_count: Largest divisor ``n`` (1 to :data:`MAX_COUNT_LIMIT`; 1 switches
        averaging off).
    :param reset_fraction: Fraction of ``max_delta`` above which one direction's summed
        proposals reset the count to 1, in ``(0, 1]``.
    :raises ValueError: For a count outside ``[1, MAX_COUNT_LIMIT]`` or a fraction outside
        ``(0, 1]``.

    >>> avg = StepAverager(max_count=8, reset_fraction=0.3)
    >>> base = np.zeros((1, 1)); md = np.ones((1, 1))
    >>> [float(avg.apply(base, base + d, md)[0, 0]) for d in (0.5, -0.1, 0.1, -0.1)]
    [0.5, -0.05, 0.03333333333333333, -0.025]
    """

    def __init__(
        self,
        max_count: int = DEFAULT_MAX_COUNT,
        reset_fraction: float = DEFAULT_RESET_FRACTION,
    ) -> None:
        if not (
            isinstance(max_count, int | np.integer)
            and not isinstance(max_count, bool)
            and 1 <= max_count <= MAX_COUNT_LIMIT
        ):
            raise ValueError(
                f"max_count must be an integer in [1, {MAX_COUNT_LIMIT}], got {max_count!r}"
            )
        if not (
            isinstance(reset_fraction, int | float | np.integer | np.floating)
            and not isinstance(reset_fraction, bool)
            and 0.0 < float(reset_fraction) <= 1.0
        ):
            raise ValueError(f"reset_fraction must be a number in (0, 1], got {reset_fraction!r}")
        self.max_count = int(max_count)
        self.reset_fraction = float(reset_fraction)
        self._count: np.ndarray | None = None  # [N, K] current divisor n
        self._sign: np.ndarray | None = None  # [N, K] sign of the last non-zero proposal
        self._run: np.ndarray | None = None  # [N, K] proposals summed since the last reversal

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> StepAverager:
        """The averager of a policy's ``averaging`` entry (``{"max_count": 8,
        "reset_fraction": 0.3}``); ``None``: no averaging (``max_count = 1``).

        Both keys are required, so that every reader of the entry (this class, a bundle's
        manifest) averages the same way.

        :raises ValueError: For an entry that is not a mapping, missing or unknown keys, or
            bad values, naming them.
        """
        if spec is None:
            return cls(max_count=1)
        if not isinstance(spec, Mapping):
            raise ValueError(
                "averaging must be a mapping {max_count, reset_fraction} or null, got "
                f"{type(spec).__name__} {spec!r}"
            )
        keys = {"max_count", "reset_fraction"}
        unknown, missing = sorted(set(spec) - keys), sorted(keys - set(spec))
        if unknown or missing:
            raise ValueError(
                f"averaging: unknown keys {unknown}, missing keys {missing}; "
                "needs exactly max_count and reset_fraction"
            )
        return cls(**dict(spec))

    @property
    def spec(self) -> dict[str, Any] | None:
        """The ``averaging`` entry that rebuilds this averager (``None`` when off)."""
        if self.max_count == 1:
            return None
        return {"max_count": self.max_count, "reset_fraction": self.reset_fraction}

    def clear(self) -> None:
        """Forget everything (a new episode): the next change is applied in full."""
        self._count = self._sign = self._run = None

    def apply(self, base: np.ndarray, proposal: np.ndarray, max_delta: np.ndarray) -> np.ndarray:
        """The settings to apply ``[N, K]`` (SI) for the proposed ones.

        :param base: The settings the proposals change ``[N, K]`` (SI).
        :param proposal: The policy's next settings ``[N, K]`` (SI), already within the limits
            and within ``max_delta`` of ``base``.
        :param max_delta: Largest change per step ``[N, K]`` or ``[K]`` (SI, > 0).
        :return: ``base + (proposal - base) / n``.
        """
        base = np.asarray(base, np.float64)
        d = np.asarray(proposal, np.float64) - base
        if self.max_count == 1:
            return base + d
        if self._count is None or self._count.shape != d.shape:
            self._count = np.ones_like(d)
            self._sign = np.zeros_like(d)
            self._run = np.zeros_like(d)
        assert self._sign is not None and self._run is not None
        # A non-finite proposal passes through (the caller refuses it) and leaves that
        # actuator's state as it was, so that it cannot disable the trend reset.
        finite = np.isfinite(d)
        sign = np.sign(d)
        reversal = (sign * self._sign < 0) & finite
        run = np.where(reversal, d, self._run + d)
        trend = np.abs(run) > self.reset_fraction * np.asarray(max_delta, np.float64)
        grown = np.minimum(self._count + reversal, self.max_count)
        self._run = np.where(finite, run, self._run)
        self._count = np.where(finite, np.where(trend, 1.0, grown), self._count)
        self._sign = np.where(finite & (sign != 0), sign, self._sign)
        return base + d / self._count

    def next_settings(
        self,
        base: np.ndarray,
        proposal: np.ndarray,
        max_delta: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
    ) -> np.ndarray:
        """The settings to apply ``[N, K]`` (SI): :meth:`apply`, kept within ``[low, high]``
        (``base`` may lie outside them); the proposal itself when averaging is off.

        :param base: The settings the proposals change ``[N, K]`` (or one row ``[K]`` for all,
            SI).
        :param proposal: The policy's next settings ``[N, K]`` (SI), within the limits and
            within ``max_delta`` of ``base``.
        :param max_delta: Largest change per step ``[N, K]`` or ``[K]`` (SI, > 0).
        :param low: Lower limits ``[N, K]`` or ``[K]`` (SI).
        :param high: Upper limits ``[N, K]`` or ``[K]`` (SI).
        """
        if self.max_count == 1:
            return proposal
        base = np.broadcast_to(base, np.shape(proposal))
        return np.clip(self.apply(base, proposal, max_delta), low, high)
