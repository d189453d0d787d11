"""What the incoming beam does on its own, batched over environments.

* **Drift**: a random walk of the incoming beam, one Gaussian step per environment step:
  centroid positions and angles by ``mu`` [m] / ``mu_p`` [rad], the four transverse sizes
  and the energy by relative steps ``sigma`` / ``energy`` (log-normal, so they stay
  positive). It adds to the task spec's own centroid drift.
* **Jitter**: a fresh Gaussian deviation of the same moments at every reading (shot to
  shot); it does not accumulate.
* **Incoming changes** (:class:`~accelrl.envs.world.spec.IncomingChange`): the scripted
  scenarios of Kaiser et al., Sci. Rep. 14 (2024) (desy-ml/rl-vs-bo, ``utils``:
  ``AnimateIncomingBeam``, ``SetIncomingBeamAtStep``): the beam moves from its value at
  the start of the episode towards another beam (another trial's, or a fresh draw from the
  task's distribution) or by a random offset (an upstream steering change), linearly over
  ``steps`` steps after step ``after``.

The state is the *base* beam (episode start plus drift); the incoming beam of step ``t`` is
the base plus every change's displacement at ``t``; a reading sees it with jitter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from accelrl.envs.world.spec import BeamSpec, IncomingChange
from accelrl.physics.beam import INCOMING

_COL = {k: i for i, k in enumerate(INCOMING)}
#: Columns moved by absolute amounts: centroid positions [m] and angles [rad].
_POSITIONS = [_COL["mu_x"], _COL["mu_y"]]
_ANGLES = [_COL["mu_px"], _COL["mu_py"]]
#: Columns moved by relative amounts: the four transverse sizes, and the energy.
_SIZES = [_COL["sigma_x"], _COL["sigma_px"], _COL["sigma_y"], _COL["sigma_py"]]
_ENERGY = [_COL["energy"]]
#: Columns that must stay positive.
_POSITIVE = [i for i, k in enumerate(INCOMING) if k == "energy" or k.startswith("sigma")]
#: Smallest value of a positive moment after a change [SI].
_FLOOR = 1e-12


def _scales(mu: float, mu_p: float, sigma: float, energy: float) -> tuple[np.ndarray, ...]:
    absolute = np.zeros(len(INCOMING))
    absolute[_POSITIONS] = mu
    absolute[_ANGLES] = mu_p
    relative = np.zeros(len(INCOMING))
    relative[_SIZES] = sigma
    relative[_ENERGY] = energy
    return absolute, relative


def _rows(array: np.ndarray, index: np.ndarray | slice, value: np.ndarray) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


class BeamModel:
    """Drift, jitter and incoming-beam changes of ``num_envs`` environments.

    :param spec: Jitter and drift.
    :param changes: The incoming-change scenarios.
    :param incoming_low: Lower bounds of the task's incoming-beam distribution ``[11]``.
    :param incoming_span: Widths of that distribution ``[11]`` (for ``to: other`` draws).
    :param num_envs: Batch size ``B``.
    """

    def __init__(
        self,
        spec: BeamSpec,
        changes: Sequence[IncomingChange],
        incoming_low: np.ndarray,
        incoming_span: np.ndarray,
        num_envs: int,
    ) -> None:
        j, d = spec.jitter, spec.drift
        self.jitter_abs, self.jitter_rel = _scales(j.mu, j.mu_p, j.sigma, j.energy)
        self.drift_abs, self.drift_rel = _scales(d.mu, d.mu_p, d.sigma, d.energy)
        self.has_jitter = j.active
        self.has_drift = d.active
        self.changes = list(changes)
        self.low = np.asarray(incoming_low, np.float64)
        self.span = np.asarray(incoming_span, np.float64)
        self.offset_half = [
            np.array([c.offset.get(k, 0.0) for k in INCOMING]) for c in self.changes
        ]
        n = len(INCOMING)
        self.num_envs = B = num_envs
        self.start = np.zeros((B, n))
        self.base = np.zeros((B, n))
        self.delta = np.zeros((B, len(self.changes), n))

    @property
    def num_draws(self) -> int:
        """Uniforms one reset draws per environment (11 per change)."""
        return len(INCOMING) * len(self.changes)

    def reset(
        self,
        index: np.ndarray,
        incoming: np.ndarray,
        u: np.ndarray,
        to_incoming: np.ndarray | None = None,
    ) -> None:
        """New episodes of environments ``index`` starting from ``incoming`` ``[n, 11]``.

        :param u: ``[n, num_draws]`` uniforms (destinations and offsets of the changes).
        :param to_incoming: Destination ``[n, 11]`` of ``to: other`` changes (reset option
            ``to_trial``/``to_incoming``); default: drawn from the task's distribution.
        """
        n = len(INCOMING)
        deltas = []
        for c, (change, half) in enumerate(zip(self.changes, self.offset_half, strict=True)):
            uc = u[:, c * n : (c + 1) * n]
            if change.to == "other":
                dest = self.low + uc * self.span if to_incoming is None else to_incoming
                deltas.append(dest - incoming)
            else:
                deltas.append((2.0 * uc - 1.0) * half)
        delta = np.stack(deltas, axis=1) if deltas else np.zeros((len(incoming), 0, n))
        self.start = _rows(self.start, index, incoming)
        self.base = _rows(self.base, index, incoming)
        self.delta = _rows(self.delta, index, delta)

    def drift(self, index: np.ndarray | slice, z: np.ndarray) -> None:
        """One random-walk step of the base beam of environments ``index``; ``z`` [n, 11]."""
        base = self.base[index]
        base = (base + z * self.drift_abs) * np.exp(z * self.drift_rel)
        self.base = _rows(self.base, index, base)

    def shift_base(self, index: np.ndarray | slice, columns: list[int], step: np.ndarray) -> None:
        """Add ``step`` ``[n, len(columns)]`` to the base beam (the task spec's drift)."""
        base = self.base[index].copy()
        base[:, columns] += step
        self.base = _rows(self.base, index, base)

    def incoming(self, index: np.ndarray | slice, steps: np.ndarray) -> np.ndarray:
        """Incoming beam ``[n, 11]`` of environments ``index`` at their step ``steps``."""
        beam = self.base[index]
        if not self.changes:
            return beam
        beam = beam.copy()
        delta = self.delta[index]
        for c, change in enumerate(self.changes):
            frac = np.clip((steps - change.after) / change.steps, 0.0, 1.0)
            if change.shape == "sinusoidal":
                frac = np.sin(np.pi * frac)
            beam += delta[:, c] * frac[:, None]
        beam[:, _POSITIVE] = np.maximum(beam[:, _POSITIVE], _FLOOR)
        return beam

    def jittered(self, incoming: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``incoming`` ``[n, 11]`` with one shot's jitter (standard normals ``z`` [n, 11])."""
        return (incoming + z * self.jitter_abs) * np.exp(z * self.jitter_rel)
