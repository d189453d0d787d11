"""A world (:mod:`accelrl.envs.world`) as differentiable torch randomisation for training.

Analytic-policy-gradient training (:mod:`accelrl.agents.training.apg`) backpropagates
through the rollout, so the world's effects enter as torch operations on a batch of
rollouts, each rollout drawing its own imperfections at the start:

* **Magnets.** Calibration gain and offset errors (uniform within the world's
  ``gain_error`` / ``offset_error``) and the Prandtl-Ishlinskii hysteresis of
  :mod:`accelrl.envs.world.magnets` (the same play operators, started at a random point of
  the loop): ``field = (1 + g) H(x) + o``. The policy sees the setpoints (the readbacks of
  settled supplies; the setpoint resolution is left out, it is far below a step).
* **Beam.** Shot-to-shot jitter of the incoming beam at every reading and a random-walk
  drift per step, with the world's scales (absolute for centroids, log-normal for sizes
  and energy).
* **Camera.** The readout is not differentiable (FWHM windows of filtered projections), so
  it is replaced by its measured statistics: :func:`camera_table` runs the world's
  :class:`~accelrl.envs.world.camera.Camera` on a grid of centred spot sizes ``(sigma_x,
  sigma_y)`` and records the mean error and the spread of each of the four read
  parameters; a training reading is the true beam plus the bilinearly interpolated mean
  error (in log size) plus Gaussian noise of the interpolated spread and of the readout's
  quantisation step (``pixel / 2`` for centroids, ``pixel / 2.355`` for sizes, as
  ``step / sqrt(12)``).
* **Reading noise.** Optionally, Gaussian noise of a per-rollout level drawn uniformly in
  ``[0, reading_noise]`` [m] on every reading (the task spec's ``screen.reading_noise``
  model), in every rollout.

A fraction ``ideal_fraction`` of the rollouts runs in the ideal world (still with the
reading noise), so that the policy keeps its ideal-world behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from accelrl.envs.spec import TaskSpec
from accelrl.envs.world.spec import WorldSpec
from accelrl.names import INCOMING

#: Grid of spot sizes of the camera table [m] (log-spaced).
TABLE_SIZES: tuple[float, float, int] = (3e-6, 4e-3, 28)
#: Noisy readings per grid point used for the spread.
TABLE_REPEATS: int = 6


@dataclass(frozen=True)
class CameraTable:
    """Measured readout statistics of a camera on a log grid of spot sizes.

    :param log_sizes: ``[G]`` natural log of the grid sizes [log m].
    :param bias: ``[G, G, 4]`` mean ``reading - beam`` at ``(sigma_x_i, sigma_y_j)`` [m].
    :param spread: ``[G, G, 4]`` standard deviation of the reading there [m].
    :param step: ``[4]`` quantisation step of each read parameter [m].
    """

    log_sizes: np.ndarray
    bias: np.ndarray
    spread: np.ndarray
    step: np.ndarray


_TABLES: dict[str, CameraTable] = {}


def _table(world: WorldSpec, task: TaskSpec, seed: int) -> CameraTable:
    from accelrl.envs.world.camera import Camera
    from accelrl.envs.world.noise import table_normals

    assert world.camera is not None
    s = task.screen
    cam = Camera(world.camera, s.resolution, s.pixel_size, s.binning)
    lo, hi, n = TABLE_SIZES
    sizes = np.geomspace(lo, hi, n)
    sx, sy = np.meshgrid(sizes, sizes, indexing="ij")
    beam = np.stack([np.zeros(n * n), sx.ravel(), np.zeros(n * n), sy.ravel()], axis=1)
    rng = np.random.default_rng(seed)
    reps = np.repeat(beam, TABLE_REPEATS, axis=0)
    z = table_normals(rng.random((len(reps), 2)), cam.noise_size)
    reading, _ = cam.read(reps, z)
    err = (reading - reps).reshape(n, n, TABLE_REPEATS, 4)
    px, py = cam.geometry.pixel
    step = np.array([px / 2, px / 2.355, py / 2, py / 2.355])
    return CameraTable(np.log(sizes), err.mean(axis=2), err.std(axis=2), step)


def camera_table(world: WorldSpec, task: TaskSpec, seed: int = 0) -> CameraTable:
    """The readout statistics of ``world``'s camera on ``task``'s screen (cached).

    :raises ValueError: When the world has no camera.
    """
    if world.camera is None:
        raise ValueError(f"{world.source}: the world has no camera")
    key = f"{world.camera.model_dump_json()}|{task.screen.model_dump_json()}|{seed}"
    if key not in _TABLES:
        _TABLES[key] = _table(world, task, seed)
    return _TABLES[key]


def _interp2(table: torch.Tensor, log_sizes: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor):
    """Bilinear interpolation of ``table [G, G, C]`` at sizes ``sx, sy [B]`` (clamped to the
    grid) -> ``[B, C]``."""
    G = len(log_sizes)
    lo, d = log_sizes[0], log_sizes[1] - log_sizes[0]

    def coord(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = ((torch.log(s.clamp_min(1e-9)) - lo) / d).clamp(0.0, G - 1 - 1e-9)
        i = u.detach().floor().long()
        return i, (u - i)[:, None]

    i, t = coord(sx)
    j, s = coord(sy)
    a = table[i, j] * (1 - t) + table[i + 1, j] * t
    b = table[i, j + 1] * (1 - t) + table[i + 1, j + 1] * t
    return a * (1 - s) + b * s


_COL = {k: i for i, k in enumerate(INCOMING)}


def _scales(mu: float, mu_p: float, sigma: float, energy: float) -> tuple[list[float], ...]:
    absolute = [0.0] * len(INCOMING)
    relative = [0.0] * len(INCOMING)
    for k in ("mu_x", "mu_y"):
        absolute[_COL[k]] = mu
    for k in ("mu_px", "mu_py"):
        absolute[_COL[k]] = mu_p
    for k in ("sigma_x", "sigma_px", "sigma_y", "sigma_py"):
        relative[_COL[k]] = sigma
    relative[_COL["energy"]] = energy
    return absolute, relative


class TrainingWorld:
    """Per-rollout world randomisation of a batch of training rollouts (torch, float64).

    :param world: The world (``None`` or ideal: only the reading noise).
    :param task: The task.
    :param generator: Random stream of the training run.
    :param ideal_fraction: Fraction of rollouts in the ideal world, in ``[0, 1]``.
    :param reading_noise: Largest per-rollout Gaussian reading noise [m], >= 0.
    """

    def __init__(
        self,
        world: WorldSpec | None,
        task: TaskSpec,
        generator: torch.Generator,
        ideal_fraction: float = 0.0,
        reading_noise: float = 0.0,
    ) -> None:
        self.generator = generator
        self.ideal_fraction = ideal_fraction
        self.reading_noise = reading_noise
        world = world if world is not None and not world.is_ideal else None
        self.world = world
        names = [a.name for a in task.actuators]
        K = len(names)
        f64 = torch.float64
        self.gain_half = torch.zeros(K, dtype=f64)
        self.offset_half = torch.zeros(K, dtype=f64)
        M = 1
        if world is not None:
            M = max([m.hysteresis.plays for m in world.magnets.values() if m.hysteresis] or [1])
        self.radii = torch.zeros(K, M, dtype=f64)
        self.weights = torch.zeros(K, M, dtype=f64)
        self.table: CameraTable | None = None
        n = len(INCOMING)
        self.jitter_abs = self.jitter_rel = self.drift_abs = self.drift_rel = torch.zeros(n)
        if world is None:
            return
        for k, name in enumerate(names):
            m = world.magnets.get(name)
            if m is None:
                continue
            self.gain_half[k] = m.gain_error
            self.offset_half[k] = m.offset_error
            if m.hysteresis is not None and m.hysteresis.width > 0:
                p = m.hysteresis.plays
                R = m.hysteresis.width * p / (p + 1)
                self.radii[k, :p] = R * torch.arange(1, p + 1, dtype=f64) / p
                self.weights[k, :p] = 1.0 / p
        j, d = world.beam.jitter, world.beam.drift
        self.jitter_abs, self.jitter_rel = (
            torch.tensor(v, dtype=f64) for v in _scales(j.mu, j.mu_p, j.sigma, j.energy)
        )
        self.drift_abs, self.drift_rel = (
            torch.tensor(v, dtype=f64) for v in _scales(d.mu, d.mu_p, d.sigma, d.energy)
        )
        if world.camera is not None:
            self.table = camera_table(world, task)
            self._bias = torch.tensor(self.table.bias)
            self._spread = torch.tensor(self.table.spread)
            self._log_sizes = torch.tensor(self.table.log_sizes)
            self._step = torch.tensor(self.table.step) / math.sqrt(12.0)

    def _u(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, dtype=torch.float64, generator=self.generator)

    def _z(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, generator=self.generator)

    def reset(self, setpoints: torch.Tensor) -> None:
        """New rollouts starting (settled) at ``setpoints`` ``[B, K]``."""
        B, K = setpoints.shape
        self.on = (self._u(B) >= self.ideal_fraction).double()[:, None]
        self.noise = self._u(B, 1) * self.reading_noise
        on = self.on if self.world is not None else torch.zeros_like(self.on)
        self.on = on
        self.gain = (2 * self._u(B, K) - 1) * self.gain_half * on
        self.offset = (2 * self._u(B, K) - 1) * self.offset_half * on
        where = 2 * self._u(B, K, 1) - 1
        self.plays = setpoints.detach()[:, :, None] - where * self.radii[None]

    def field(self, setpoints: torch.Tensor) -> torch.Tensor:
        """Advance the hysteresis to ``setpoints`` ``[B, K]``; the fields the beam sees."""
        if self.world is None:
            return setpoints
        x = setpoints[:, :, None]
        self.plays = torch.minimum(torch.maximum(self.plays, x - self.radii), x + self.radii)
        h = setpoints + ((self.plays - x) * self.weights).sum(dim=2)
        field = h * (1 + self.gain) + self.offset
        return self.on * field + (1 - self.on) * setpoints

    def drift(self, incoming: torch.Tensor) -> torch.Tensor:
        """One random-walk step of the incoming beams ``[B, 11]``."""
        if self.world is None or not self.world.beam.drift.active:
            return incoming
        z = self._z(*incoming.shape) * self.on
        return (incoming + z * self.drift_abs) * torch.exp(z * self.drift_rel)

    def jitter(self, incoming: torch.Tensor) -> torch.Tensor:
        """The incoming beams ``[B, 11]`` of one shot."""
        if self.world is None or not self.world.beam.jitter.active:
            return incoming
        z = self._z(*incoming.shape) * self.on
        return (incoming + z * self.jitter_abs) * torch.exp(z * self.jitter_rel)

    def reading(self, beam: torch.Tensor) -> torch.Tensor:
        """The reading of beams ``[B, 4]`` on the screen (before the off-screen clamp)."""
        out = beam
        if self.table is not None:
            sx, sy = beam[:, 1], beam[:, 3]
            bias = _interp2(self._bias, self._log_sizes, sx, sy)
            spread = _interp2(self._spread, self._log_sizes, sx, sy).detach()
            spread = torch.sqrt(spread**2 + self._step**2)
            out = out + self.on * (bias + spread * self._z(*beam.shape))
        if self.reading_noise > 0:
            out = out + self.noise * self._z(*beam.shape)
            out = torch.stack([out[:, 0], out[:, 1].abs(), out[:, 2], out[:, 3].abs()], dim=1)
        return out
