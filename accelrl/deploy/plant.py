"""The simulated beamline behind :class:`~accelrl.deploy.sim.SimMachine` and the virtual
accelerator: the accelrl transverse-tuning simulation with one fixed hidden state.

A :class:`Plant` is what a machine *is* (magnets, incoming beam, misalignments, a screen),
without anything a control system adds (channels, timestamps, busy flags, faults). It is a
thin layer over :class:`~accelrl.envs.core.TuningCore` with one environment in ``"direct"``
action mode, so its physics is exactly the environment's: the same compiled beamline, the
same off-screen reading, the same actuator clipping, drift and failures of the task spec.

The hidden state comes from a published evaluation trial (:func:`accelrl.envs.load_trials`),
from explicit values, or from the task's randomisation with a seed. Knob settings start at
the task's standard settings unless ``initial_knobs`` says otherwise.

Example::

    >>> from accelrl.deploy.plant import Plant
    >>> plant = Plant.from_trial(0)                       # published ARES-EA trial 0
    >>> plant.knob_names
    ('Q1', 'Q2', 'CV', 'Q3', 'CH')
    >>> sorted(plant.observe())                           # screen reading [m]
    ['mu_x', 'mu_y', 'sigma_x', 'sigma_y']
    >>> applied = plant.set_knobs({"Q1": 12.0, "CH": 1e-4})   # SI: 1/m^2, rad
    >>> plant.knobs()["Q1"]
    12.0
    >>> plant.hidden()["misalignments"]["AREAMQZM1.x"] == plant.trial.misalignments.get(
    ...     "AREAMQZM1.x", 0.0)
    True

The class is safe to call from several threads (one lock around the simulation).
This module imports torch (through the simulation); the deployment runtime does not.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from accelrl.envs.ares_ea import ENV_ID as ARES_EA_ID
from accelrl.envs.core import TuningCore
from accelrl.envs.spec import TaskSpec
from accelrl.envs.trials import Trial, load_trials
from accelrl.envs.tuning import build_core
from accelrl.names import INCOMING, TRANSVERSE

#: Names of the screen reading, in order: centroids and sizes [m].
OBSERVATION_NAMES: tuple[str, ...] = tuple(TRANSVERSE)


def _task_spec(env_id: str) -> TaskSpec:
    from accelrl.envs import TASKS

    if env_id not in TASKS:
        raise ValueError(f"unknown environment {env_id!r}; registered: {sorted(TASKS)}")
    return TASKS[env_id]()


class Plant:
    """One simulated beamline with a fixed hidden state.

    :param trial: Hidden state and target: a :class:`~accelrl.envs.trials.Trial`, or ``None``
        to draw them from the task's randomisation with ``seed``.
    :param env_id: Registered environment whose task (lattice, knobs, screen, limits) the
        plant simulates.
    :param spec: Task spec to use instead of ``env_id``'s.
    :param backend: ``"fast"`` (compiled map, default), ``"cheetah"`` or
        ``"cheetah-particles"``.
    :param incoming: Incoming beam ``[11]`` in :data:`accelrl.physics.beam.INCOMING` order
        (SI), overriding the trial's / the random draw.
    :param misalignments: ``"ELEMENT.x"``/``"ELEMENT.y"`` -> misalignment [m], overriding
        the trial's / the random draw (missing entries are 0 m).
    :param initial_knobs: Knob name -> start setting (SI), or ``"trial"`` for the trial's
        stored initial settings; default: the task's standard settings.
    :param reading_noise: Standard deviation of Gaussian noise added to each centroid and
        size reading at every :meth:`observe` [m] (0: none). Drawn freshly at each call,
        as a camera would; the true beam (:meth:`beam`) is noise-free.
    :param seed: Seed of the random hidden state (``trial=None``) and of the reading noise.
    :param world: The world the beamline runs in (:mod:`accelrl.envs.world`: a shipped name
        such as ``"ares-realistic"``, a YAML path or a ``WorldSpec``); default the task
        spec's. In a world, :meth:`observe` is the world's camera readout of the jittered
        beam, the fields are the magnets' (calibration errors, hysteresis) for the settings,
        and every :meth:`set_knobs` call is one step of the beam's drift and scenarios.
    :raises ValueError: For unknown names, wrong sizes, non-finite values or start settings
        outside the limits (naming them).
    """

    observation_names: tuple[str, ...] = OBSERVATION_NAMES

    def __init__(
        self,
        trial: Trial | None = None,
        *,
        env_id: str = ARES_EA_ID,
        spec: TaskSpec | None = None,
        backend: str = "fast",
        incoming: Sequence[float] | None = None,
        misalignments: Mapping[str, float] | None = None,
        initial_knobs: Mapping[str, float] | str | None = None,
        reading_noise: float = 0.0,
        seed: int | None = None,
        world: Any = None,
    ) -> None:
        if not np.isfinite(reading_noise) or reading_noise < 0:
            raise ValueError(f"reading_noise must be a finite value >= 0 m, got {reading_noise}")
        self.spec = spec if spec is not None else _task_spec(env_id)
        self.core: TuningCore = build_core(
            self.spec, 1, backend=backend, action_mode="direct", terminate_on_target=False,
            world=world,
        )  # fmt: skip
        #: The world the plant runs in (its name; ``"ideal"`` without one).
        self.world_name = self.core.world_spec.name or "ideal"
        self.trial = trial
        self.knob_names: tuple[str, ...] = tuple(a.name for a in self.spec.actuators)
        self.reading_noise = float(reading_noise)
        self._noise = np.random.default_rng(seed)
        self._lock = threading.Lock()

        options: dict[str, Any] = {}
        if trial is not None:
            options["trial"] = trial
        if incoming is not None:
            options["incoming"] = incoming
        if misalignments is not None:
            known = set(self.core.misalignment_names)
            unknown = sorted(set(misalignments) - known)
            if unknown:
                raise ValueError(f"unknown misalignments {unknown}; known: {sorted(known)}")
            options["misalignments"] = [
                float(misalignments.get(n, 0.0)) for n in self.core.misalignment_names
            ]
        if isinstance(initial_knobs, str):
            options["magnets"] = initial_knobs
        elif initial_knobs is not None:
            options["magnets"] = self._full_vector(initial_knobs, self.spec.start)
        all_ = np.array([0])
        self.core.seed(all_, [seed])
        self.core.reset(all_, options)

    @classmethod
    def from_trial(cls, index: int, trials_path: str | Path | None = None, **kwargs: Any) -> Plant:
        """The plant of trial ``index`` (its position) of a trial set.

        :param index: Position in the trial set (0-based).
        :param trials_path: Trial-set YAML; default the 300 published ARES-EA trials.
        :param kwargs: Forwarded to :class:`Plant`.
        :raises IndexError: If the set has no trial ``index``.
        """
        trials = load_trials(trials_path)
        if not 0 <= index < len(trials):
            raise IndexError(f"trial {index} out of range: the set has {len(trials)} trials")
        return cls(trials[index], **kwargs)

    # ------------------------------------------------------------------ knobs
    @property
    def limits(self) -> dict[str, tuple[float, float]]:
        """Knob name -> ``(low, high)``: what the power supplies accept (SI)."""
        return {
            name: (float(lo), float(hi))
            for name, lo, hi in zip(self.knob_names, self.core.low, self.core.high, strict=True)
        }

    @property
    def units(self) -> dict[str, str]:
        """Knob name -> SI unit."""
        return {a.name: a.unit for a in self.spec.actuators}

    def _full_vector(self, values: Mapping[str, float], base: Sequence[float]) -> np.ndarray:
        unknown = sorted(set(values) - set(self.knob_names))
        if unknown:
            raise ValueError(f"unknown knobs {unknown}; known: {list(self.knob_names)}")
        out = np.array(base, dtype=np.float64)
        for i, name in enumerate(self.knob_names):
            if name in values:
                out[i] = float(values[name])
        if not np.all(np.isfinite(out)):
            raise ValueError(f"knob values must be finite, got {dict(values)}")
        return out

    def set_knobs(self, values: Mapping[str, float]) -> dict[str, float]:
        """Set some or all knobs (SI) and re-evaluate the beam.

        Values beyond a knob's limits are clipped to them (a power supply does not go beyond
        its range); a stuck actuator (task failures) keeps its value. Every call is one
        simulation step (drift, if the task has any, advances by one step).

        :param values: Knob name -> setting (SI); knobs not named keep their setting.
        :return: All knob settings after the call (SI).
        :raises ValueError: For unknown knob names or NaN/inf values.
        """
        with self._lock:
            target = self._full_vector(values, self.core.magnets[0])
            self.core.step(self.core.validate_actions(target[None, :]))
            return self._knobs()

    def _knobs(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.knob_names, self.core.magnets[0], strict=True)}

    def knobs(self) -> dict[str, float]:
        """Knob name -> current setting (SI)."""
        with self._lock:
            return self._knobs()

    # ------------------------------------------------------------------ beam
    def observe(self) -> dict[str, float]:
        """The screen reading ``mu_x, sigma_x, mu_y, sigma_y`` [m], with fresh reading noise.

        Off the screen, the reading is the centroid clamped to the screen edge and the
        screen's half size (as in the environment); no noise is added then.
        """
        with self._lock:
            reading = np.array(self.core.reading[0], dtype=np.float64)
            on = bool(self.core.on_screen[0])
            if self.reading_noise > 0 and on:
                reading = reading + self.reading_noise * self._noise.standard_normal(4)
                reading[[1, 3]] = np.abs(reading[[1, 3]])
        return {n: float(v) for n, v in zip(self.observation_names, reading, strict=True)}

    def beam(self) -> dict[str, float]:
        """The true (noise-free, unclamped) beam on the screen [m]."""
        with self._lock:
            beam = self.core.beam[0]
        return {n: float(v) for n, v in zip(self.observation_names, beam, strict=True)}

    def screen_image(self, shape: tuple[int, int], reading: Mapping[str, float]) -> np.ndarray:
        """The screen image ``[height, width]`` with values in [0, 1] of full scale.

        In a world with a camera: the camera's expected processed image of the true beam
        (pedestal, saturation and all; :meth:`accelrl.envs.world.camera.Camera.expected_image`),
        sampled at ``shape`` pixels (nearest camera pixel). Otherwise a 2-D Gaussian of
        ``reading`` [m], peak 1, at least one pixel wide.

        :param shape: ``(width, height)`` [px].
        :param reading: ``mu_x, sigma_x, mu_y, sigma_y`` [m] (used without a camera).
        """
        w, h = shape
        world = self.core.world
        if world is not None and world.camera is not None:
            camera = world.camera
            with self._lock:
                image = camera.expected_image(np.array(self.core.beam[:1], dtype=np.float64))[0]
            rows = ((np.arange(h) + 0.5) * image.shape[0] / h).astype(np.int64)
            cols = ((np.arange(w) + 0.5) * image.shape[1] / w).astype(np.int64)
            sampled = image[np.ix_(rows, cols)] / max(float(camera.spec.full_scale), 1e-12)
            return np.clip(sampled, 0.0, 1.0)
        hx, hy = self.spec.screen.half_extent
        x = np.linspace(-hx, hx, w)
        y = np.linspace(hy, -hy, h)  # row 0 at the top: up is +y
        sx = max(float(reading["sigma_x"]), 2 * hx / w)
        sy = max(float(reading["sigma_y"]), 2 * hy / h)
        gx = np.exp(-0.5 * ((x - float(reading["mu_x"])) / sx) ** 2)
        gy = np.exp(-0.5 * ((y - float(reading["mu_y"])) / sy) ** 2)
        return np.outer(gy, gx)

    @property
    def on_screen(self) -> bool:
        """Whether the beam centroid is on the screen."""
        with self._lock:
            return bool(self.core.on_screen[0])

    @property
    def target(self) -> dict[str, float]:
        """The trial's (or randomly drawn) target beam [m]."""
        with self._lock:
            target = self.core.target[0]
        return {n: float(v) for n, v in zip(self.observation_names, target, strict=True)}

    def mae(self, target: Mapping[str, float] | None = None) -> float:
        """Mean absolute error of the true beam to ``target`` (default :attr:`target`) [m]."""
        t = self.target if target is None else target
        b = self.beam()
        return float(np.mean([abs(b[n] - float(t[n])) for n in self.observation_names]))

    def hidden(self) -> dict[str, Any]:
        """The hidden state (SI): ``incoming`` (moment name -> value), ``misalignments``
        (``"ELEMENT.x"`` -> m), ``beam`` (true beam), ``on_screen``, ``target``, ``step``
        (number of :meth:`set_knobs` calls)."""
        with self._lock:
            c = self.core
            return {
                "incoming": {
                    k: float(v) for k, v in zip(INCOMING, c.hidden.incoming[0], strict=True)
                },
                "misalignments": {
                    n: float(v)
                    for n, v in zip(c.misalignment_names, c.hidden.misalignments[0], strict=True)
                },
                "beam": {
                    n: float(v) for n, v in zip(self.observation_names, c.beam[0], strict=True)
                },
                "on_screen": bool(c.on_screen[0]),
                "target": {
                    n: float(v) for n, v in zip(self.observation_names, c.target[0], strict=True)
                },
                "step": int(c.steps[0]),
            }

    def __repr__(self) -> str:
        source = f"trial {self.trial.index}" if self.trial is not None else "random hidden state"
        return f"Plant({self.spec.id}, {source}, world={self.world_name}, knobs={self._knobs()})"
