"""A world bound to a task and a batch: the runtime the tuning core steps.

:class:`WorldModel` combines the camera (:mod:`.camera`), the magnets (:mod:`.magnets`),
the beam (:mod:`.beam`) and the actuator-failure scenarios of a
:class:`~accelrl.envs.world.spec.WorldSpec` for ``num_envs`` environments. It draws no
random numbers itself: the core hands it uniforms from the environments' streams (at
reset, per step for drift, per reading for jitter and camera noise), so that environment
``i`` of a batch follows a single environment exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from accelrl.envs.world.beam import BeamModel
from accelrl.envs.world.camera import Camera
from accelrl.envs.world.magnets import MagnetBank
from accelrl.envs.world.noise import box_muller, table_normals
from accelrl.envs.world.spec import FailureScenario, IncomingChange, WorldSpec
from accelrl.physics.beam import INCOMING

if TYPE_CHECKING:
    from accelrl.envs.spec import TaskSpec


def _rows(array: np.ndarray, index: np.ndarray | slice, value: Any) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


class WorldModel:
    """A world for ``num_envs`` environments of ``task``.

    :param world: The world (not ideal: an ideal world needs no model).
    :param task: The task it runs.
    :param num_envs: Batch size ``B``.
    :param max_episode_steps: Episode length the scenario steps must fit in (default: the
        task's).
    :raises WorldError: When the world does not fit the task (names, ranges, steps).
    """

    def __init__(
        self,
        world: WorldSpec,
        task: TaskSpec,
        num_envs: int,
        max_episode_steps: int | None = None,
    ) -> None:
        world.check(task, max_episode_steps)
        self.spec = world
        self.num_envs = B = num_envs
        names = [a.name for a in task.actuators]
        low = np.array([a.low for a in task.actuators])
        high = np.array([a.high for a in task.actuators])
        K = len(names)

        self.camera: Camera | None = None
        if world.camera is not None:
            s = task.screen
            self.camera = Camera(world.camera, s.resolution, s.pixel_size, s.binning)

        self.magnets: MagnetBank | None = None
        if any(m.active for m in world.magnets.values()):
            specs = [world.magnets.get(n) for n in names]
            self.magnets = MagnetBank(specs, low, high, B)

        changes = [s for s in world.scenarios if isinstance(s, IncomingChange)]
        self.beam: BeamModel | None = None
        if changes or world.beam.jitter.active or world.beam.drift.active:
            r = task.randomisation
            inc_low = np.array([r.incoming[k].low for k in INCOMING])
            inc_span = np.array([r.incoming[k].high for k in INCOMING]) - inc_low
            self.beam = BeamModel(world.beam, changes, inc_low, inc_span, B)

        self.failures = [s for s in world.scenarios if isinstance(s, FailureScenario)]
        F = len(self.failures)
        self._fail_value = np.array(
            [np.nan if f.value is None else f.value for f in self.failures]
        ).reshape(F)
        self._fail_fixed = np.array(
            [-1 if f.actuator is None else names.index(f.actuator) for f in self.failures]
        ).reshape(F)
        self.fail_step = np.full((B, F), -1, dtype=np.int64)
        self.fail_index = np.zeros((B, F), dtype=np.int64)
        self._K = K

        self.num_reset_draws = (
            (self.magnets.num_draws if self.magnets else 0)
            + (self.beam.num_draws if self.beam else 0)
            + 3 * F
        )
        jitter = self.beam is not None and self.beam.has_jitter
        self.num_reading_draws = (2 * len(INCOMING) if jitter else 0) + (2 if self.camera else 0)
        self.has_drift = self.beam is not None and self.beam.has_drift
        self.jitter = np.zeros((B, len(INCOMING)))

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        index: np.ndarray,
        u: np.ndarray,
        setpoints: np.ndarray,
        incoming: np.ndarray,
        to_incoming: np.ndarray | None = None,
    ) -> None:
        """New episodes of environments ``index``: calibration errors, hysteresis history,
        scenario destinations and failures from uniforms ``u`` ``[n, num_reset_draws]``."""
        o = 0
        if self.magnets is not None:
            k = self.magnets.num_draws
            self.magnets.reset(index, setpoints, u[:, o : o + k])
            o += k
        if self.beam is not None:
            k = self.beam.num_draws
            self.beam.reset(index, incoming, u[:, o : o + k], to_incoming)
            o += k
        steps, which = [], []
        for f, failure in enumerate(self.failures):
            uf = u[:, o + 3 * f : o + 3 * f + 3]
            lo, hi = failure.step
            fails = uf[:, 0] < failure.probability
            steps.append(np.where(fails, lo + np.floor(uf[:, 1] * (hi - lo + 1)), -1))
            drawn = np.floor(uf[:, 2] * self._K)
            which.append(np.where(self._fail_fixed[f] >= 0, self._fail_fixed[f], drawn))
        if self.failures:
            self.fail_step = _rows(self.fail_step, index, np.stack(steps, axis=1).astype(np.int64))
            self.fail_index = _rows(
                self.fail_index, index, np.stack(which, axis=1).astype(np.int64)
            )
        self.jitter = _rows(self.jitter, index, 0.0)

    # ------------------------------------------------------------------ steps
    def constrain(
        self,
        index: np.ndarray | slice,
        steps: np.ndarray,
        previous: np.ndarray,
        setpoints: np.ndarray,
    ) -> np.ndarray:
        """``setpoints`` ``[n, K]`` with the failed actuators of step ``steps`` at their
        failure value (or frozen at ``previous``); always within the limits."""
        if not self.failures:
            return setpoints
        out = setpoints.copy()
        fail_step, fail_index = self.fail_step[index], self.fail_index[index]
        for f in range(len(self.failures)):
            rows = np.nonzero((fail_step[:, f] >= 0) & (steps >= fail_step[:, f]))[0]
            cols = fail_index[rows, f]
            value = self._fail_value[f]
            out[rows, cols] = previous[rows, cols] if np.isnan(value) else value
        return out

    def failed(self, index: np.ndarray | slice, steps: np.ndarray) -> np.ndarray:
        """``[n, K]`` whether each actuator has failed by step ``steps``."""
        out = np.zeros((len(steps), self._K), dtype=bool)
        fail_step, fail_index = self.fail_step[index], self.fail_index[index]
        for f in range(len(self.failures)):
            rows = np.nonzero((fail_step[:, f] >= 0) & (steps >= fail_step[:, f]))[0]
            out[rows, fail_index[rows, f]] = True
        return out

    def reading_inputs(
        self, incoming: np.ndarray, u: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The incoming beam of one reading (with jitter) and the camera's normals, from
        ``u`` ``[n, num_reading_draws]`` (``None`` when no draws are needed)."""
        z = None
        if u is None:
            return incoming, z
        o = 0
        if self.beam is not None and self.beam.has_jitter:
            n = len(INCOMING)
            incoming = self.beam.jittered(incoming, box_muller(u[:, : 2 * n]))
            o = 2 * n
        if self.camera is not None:
            z = table_normals(u[:, o : o + 2], self.camera.noise_size)
        return incoming, z

    # ------------------------------------------------------------------ views
    def info(self, index: np.ndarray | slice, steps: np.ndarray) -> dict[str, np.ndarray]:
        """World state of environments ``index`` (SI units)."""
        info: dict[str, np.ndarray] = {}
        if self.magnets is not None:
            m = self.magnets
            info["readback"] = m.readback[index]
            info["field"] = m.field[index]
            info["magnet_gain"] = m.gain[index]
            info["magnet_offset"] = m.offset[index]
        if self.beam is not None:
            info["incoming_jitter"] = self.jitter[index]
        if self.failures:
            info["failed"] = self.failed(index, steps)
        return info
