"""Magnets between a setpoint and the field the beam sees, batched over environments.

For each actuator (SI unit of its setting: 1/m^2 for a quadrupole, rad for a steerer):

1. **Setpoint resolution.** The power supply realises ``round(setpoint / resolution) *
   resolution``, clipped to the actuator limits (a DAC step).
2. **Rate limit and settling.** Its output (the readback an operator sees) covers the
   fraction ``settle`` of the remaining distance to that value per step, at most ``rate``
   per step. It always lies between two values within the limits, so it never leaves them.
3. **Hysteresis.** The field follows the output through a Prandtl-Ishlinskii operator:
   ``H(x) = x + sum_m w_m (P_m - x)``, each play operator ``P_m`` following ``x`` with a
   backlash of half-width ``r_m`` (``P_m <- clip(P_m, x - r_m, x + r_m)``). The half-widths
   are spread evenly, ``r_m = R m / M`` (``m = 1..M``, equal weights ``1/M``), with ``R =
   width M / (M + 1)``, so that once the output has moved ``2 R`` (less than twice the
   width) since its last reversal, the descending and ascending branches differ by
   ``width``: the same setpoint gives fields up to ``width`` apart depending on the
   history. The history at the start of an episode is unknown: the plays start at a
   uniformly random point of the loop.
4. **Calibration.** ``field = (1 + g) H(x) + o`` with a gain error ``g`` and an offset
   ``o`` drawn uniformly per episode within ``+-gain_error`` and ``+-offset_error``.

An actuator without imperfections passes its setpoint through unchanged (bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from accelrl.envs.world.spec import MagnetSpec


def _rows(array: np.ndarray, index: np.ndarray | slice, value: np.ndarray) -> np.ndarray:
    """A copy of ``array`` with rows ``index`` replaced (state arrays are never changed in
    place, so that arrays handed out in ``info`` stay valid)."""
    out = array.copy()
    out[index] = value
    return out


class MagnetBank:
    """The magnets of ``num_envs`` environments with ``K`` actuators.

    :param specs: Per actuator its :class:`~accelrl.envs.world.spec.MagnetSpec` (``None``:
        ideal).
    :param low: Lower limits ``[K]`` (SI).
    :param high: Upper limits ``[K]`` (SI).
    :param num_envs: Batch size ``B``.
    """

    def __init__(
        self,
        specs: Sequence[MagnetSpec | None],
        low: np.ndarray,
        high: np.ndarray,
        num_envs: int,
    ) -> None:
        K = len(specs)
        ideal = MagnetSpec()
        s = [sp if sp is not None else ideal for sp in specs]
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.gain_half = np.array([m.gain_error for m in s])
        self.offset_half = np.array([m.offset_error for m in s])
        self.resolution = np.array([m.resolution for m in s])
        self.settle = np.array([m.settle for m in s])
        self.rate = np.array([np.inf if m.rate is None else m.rate for m in s])
        M = max([m.hysteresis.plays for m in s if m.hysteresis is not None] or [1])
        self.radii = np.zeros((K, M))
        self.weights = np.zeros((K, M))
        for k, m in enumerate(s):
            if m.hysteresis is not None and m.hysteresis.width > 0:
                n = m.hysteresis.plays
                R = m.hysteresis.width * n / (n + 1)
                self.radii[k, :n] = R * np.arange(1, n + 1) / n
                self.weights[k, :n] = 1.0 / n
        self.num_envs = B = num_envs
        self.readback = np.zeros((B, K))
        self.plays = np.zeros((B, K, M))
        self.gain = np.zeros((B, K))
        self.offset = np.zeros((B, K))
        self.field = np.zeros((B, K))

    @property
    def num_draws(self) -> int:
        """Uniforms one reset draws per environment."""
        return 3 * len(self.low)

    def quantise(self, setpoint: np.ndarray) -> np.ndarray:
        """The value the power supply realises for ``setpoint`` (within the limits)."""
        res = self.resolution
        steps = np.where(res > 0, np.round(setpoint / np.where(res > 0, res, 1.0)) * res, setpoint)
        return np.minimum(np.maximum(steps, self.low), self.high)

    def _field(self, x: np.ndarray, plays: np.ndarray, gain: np.ndarray, off: np.ndarray):
        h = x + np.einsum("bkm,km->bk", plays - x[:, :, None], self.weights)
        return h * (1.0 + gain) + off

    def reset(self, index: np.ndarray, setpoint: np.ndarray, u: np.ndarray) -> None:
        """New episodes of environments ``index`` at ``setpoint`` ``[n, K]`` (settled),
        with calibration errors and the hysteresis history from uniforms ``u`` ``[n, 3K]``."""
        K = len(self.low)
        gain = (2.0 * u[:, :K] - 1.0) * self.gain_half
        off = (2.0 * u[:, K : 2 * K] - 1.0) * self.offset_half
        where = 2.0 * u[:, 2 * K : 3 * K] - 1.0  # position on the loop, -1..1
        x = self.quantise(setpoint)
        plays = x[:, :, None] - where[:, :, None] * self.radii[None]
        self.gain = _rows(self.gain, index, gain)
        self.offset = _rows(self.offset, index, off)
        self.readback = _rows(self.readback, index, x)
        self.plays = _rows(self.plays, index, plays)
        self.field = _rows(self.field, index, self._field(x, plays, gain, off))

    def advance(self, index: np.ndarray | slice, setpoint: np.ndarray) -> None:
        """One step of environments ``index`` towards ``setpoint`` ``[n, K]``."""
        goal = self.quantise(setpoint)
        x = self.readback[index]
        delta = goal - x
        move = np.where(self.settle >= 1.0, delta, self.settle * delta)
        move = np.minimum(np.maximum(move, -self.rate), self.rate)
        x = np.where(move == delta, goal, x + move)
        x = np.minimum(np.maximum(x, self.low), self.high)
        r = self.radii[None]
        plays = np.minimum(np.maximum(self.plays[index], x[:, :, None] - r), x[:, :, None] + r)
        self.readback = _rows(self.readback, index, x)
        self.plays = _rows(self.plays, index, plays)
        field = self._field(x, plays, self.gain[index], self.offset[index])
        self.field = _rows(self.field, index, field)
