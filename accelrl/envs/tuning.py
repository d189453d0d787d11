"""Generic transverse beam tuning on any Cheetah beamline with a screen.

## Description
Set a list of actuators (quadrupole strengths, steering angles, ...) so that the beam read
on a screen reaches a target centroid and size ``(mu_x, sigma_x, mu_y, sigma_y)``. The
beamline is a Cheetah ``Segment`` evaluated by the compiled fast map (default), by Cheetah's
``ParameterBeam`` tracking or by ``ParticleBeam`` tracking (``backend=``). Between the agent
and the beam sits a world (``world=``, :mod:`accelrl.envs.world`, ``docs/worlds.md``): the
camera and image processing that produce the reading, magnets with calibration errors,
hysteresis and settling, a jittering and drifting incoming beam, scripted scenarios. The
default is the task spec's world (``ideal`` for the shipped tasks).

## Action space
``Box(K)`` in the actuators' SI units. ``action_mode="delta"`` (default): the change of each
setting, bounded by ``delta_fraction`` (10%) of the actuator's largest magnitude, added to
the power supplies' readback (the settings, in a world without magnet imperfections); the
result is clipped to the operator limits. ``"direct"``: the absolute settings within the
limits. Actions outside the box are clipped; NaN/inf, complex or non-numeric values or a wrong
shape raise ``ValueError``.
No world moves a setting or a readback outside the limits.

## Observation space
``Dict``: ``beam`` Box(4) = the screen reading ``(mu_x, sigma_x, mu_y, sigma_y)`` [m];
``magnets`` Box(K) = what the power supplies report (SI: the settings; in a world with
magnets their readbacks: quantised, settling); ``target`` Box(4) [m]. float32. Without a
camera: when the beam centroid is off the screen, ``beam`` reads the centroid clamped to
the screen edge and the screen's half width/height as size, and ``info["on_screen"]`` is
``False``. With a camera, ``beam`` is whatever the control room's image processing reports
(biased, noisy, wrong for clipped, saturated or dim spots; see ``docs/worlds.md``).

## Info
Privileged state, float64, SI: ``beam`` (the true beam on the screen, this shot),
``reading``, ``target``, ``magnets`` (settings), ``incoming``, ``misalignments``, ``mae``
(true beam to target), ``on_screen`` (true centroid on the screen), ``step``; with task
randomisation ``gain``, ``fail_step``, ``fail_index``; in a world ``readout_on_screen``,
``readback``, ``field``, ``magnet_gain``, ``magnet_offset``, ``incoming_jitter``,
``failed`` (see :meth:`accelrl.envs.core.TuningCore.info`).

## Rewards
Configurable (:mod:`accelrl.envs.rewards`); default the spec's (``"icml"``). Rewards use
the reading, and the on-screen verdict of the camera in a camera world.

## Starting state
Hidden state (incoming beam, misalignments, calibration errors, failures, the world's
magnet errors and hysteresis history) and target are drawn from the spec's randomisation
and the world; settings start at the spec's standard values (or uniformly random with
``start="random"``). ``reset(options=...)`` fixes any of them, e.g.
``options={"trial": trial}`` reproduces a published evaluation trial, and
``{"trial": t, "to_trial": t_next}`` a published scenario's beam change.

## Episode end
Terminates when all four reading errors stay below the spec's thresholds for ``hold``
steps (disable with ``terminate_on_target=False`` for evaluation); truncation is the
``TimeLimit`` set by ``gym.make`` (50 steps for training; use 150 for evaluation).

## Arguments
See :class:`TransverseTuningEnv`.

## Version history
* v0: initial release. The ``world`` argument (default: the task's world, ``ideal`` for the
  shipped tasks, which reproduces the initial release bit for bit) adds world models
  without changing the id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cheetah
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pydantic import ValidationError

from accelrl.config import format_validation_error
from accelrl.envs.batched import reset_core, single_action
from accelrl.envs.core import ActionMode, StartMode, TuningCore
from accelrl.envs.render import camera_image, screen_image
from accelrl.envs.spec import (
    Actuator,
    Randomisation,
    ScreenSpec,
    SpecError,
    TaskSpec,
    Uniform,
)
from accelrl.envs.validation import real_array
from accelrl.envs.world.spec import WorldSpec
from accelrl.physics.backends import make_beamline
from accelrl.physics.lattices import LATTICE_SUFFIXES, as_screen, load_lattice

#: Incoming-beam ranges :func:`make_tuning_env` draws from unless ``randomisation`` sets
#: them (SI: eV, m, rad): the published ARES-EA ranges (Kaiser et al., ICML 2022), a 80-160
#: MeV electron beam. Set your machine's with ``randomisation={"incoming": {...}}``.
DEFAULT_INCOMING: dict[str, tuple[float, float]] = {
    "energy": (80e6, 160e6),
    "mu_x": (-1e-3, 1e-3),
    "mu_px": (-1e-4, 1e-4),
    "mu_y": (-1e-3, 1e-3),
    "mu_py": (-1e-4, 1e-4),
    "sigma_x": (1e-5, 5e-4),
    "sigma_px": (1e-6, 5e-5),
    "sigma_y": (1e-5, 5e-4),
    "sigma_py": (1e-6, 5e-5),
    "sigma_tau": (1e-6, 5e-5),
    "sigma_p": (1e-4, 1e-3),
}

#: Default misalignment half-range [m] of :func:`make_tuning_env`: every quadrupole
#: upstream of the screen and the screen itself (the published ARES-EA value).
DEFAULT_MISALIGNMENT = 4e-4


def shipped_lattice(name: str) -> cheetah.Segment:
    """The Cheetah segment of a lattice shipped with accelrl (``"ares_ea"``)."""
    if name == "ares_ea":
        from accelrl.physics.lattices import ares_ea_segment

        return ares_ea_segment()
    raise ValueError(
        f"lattice {name!r}: not a shipped lattice (ares_ea) nor a lattice file "
        f"({', '.join(LATTICE_SUFFIXES)}); pass a Cheetah segment instead"
    )


def task_segment(spec: TaskSpec, segment: cheetah.Segment | None = None) -> cheetah.Segment:
    """The lattice of a task, with its screen element a ``cheetah.Screen``.

    :param spec: The task; its ``lattice`` is a shipped name or a lattice file (a path,
        made absolute by :meth:`TaskSpec.from_yaml`; read by
        :func:`~accelrl.physics.lattices.load_lattice`).
    :param segment: The lattice to use instead of the spec's.
    :raises ValueError: When there is no lattice, or the screen element is neither a
        ``Screen`` nor a monitor (``Marker``, ``BPM``) that
        :func:`~accelrl.physics.lattices.as_screen` turns into one with the spec's
        resolution, pixel size and binning.
    """
    if segment is None:
        if spec.lattice is None:
            raise ValueError(f"task {spec.id} names no lattice; pass segment=")
        if Path(spec.lattice).suffix.lower() in (*LATTICE_SUFFIXES, ".py"):
            segment = load_lattice(spec.lattice, spec.lattice_line)
        else:
            segment = shipped_lattice(spec.lattice)
    elements = {e.name: e for e in segment.flattened().elements}
    screen = elements.get(spec.screen.element)
    if screen is not None and not isinstance(screen, cheetah.Screen):
        s = spec.screen
        try:
            segment = as_screen(segment, s.element, s.resolution, s.pixel_size, s.binning)
        except ValueError as err:
            raise ValueError(f"task {spec.id}: screen.element {err}") from None
    return segment


def observation_space(spec: TaskSpec) -> spaces.Dict:
    """Observation space of a task (float32, SI units)."""
    hx, hy = spec.screen.half_extent
    low = np.array([a.low for a in spec.actuators], dtype=np.float32)
    high = np.array([a.high for a in spec.actuators], dtype=np.float32)
    t_mu, t_sig = spec.randomisation.target_mu, spec.randomisation.target_sigma
    return spaces.Dict(
        {
            "beam": spaces.Box(
                low=np.array([-np.inf, 0.0, -np.inf, 0.0], dtype=np.float32),
                high=np.full(4, np.inf, dtype=np.float32),
                dtype=np.float32,
            ),
            "magnets": spaces.Box(low=low, high=high, dtype=np.float32),
            "target": spaces.Box(
                low=np.array([-max(t_mu, hx), 0.0, -max(t_mu, hy), 0.0], dtype=np.float32),
                high=np.array(
                    [max(t_mu, hx), max(t_sig.high, hx), max(t_mu, hy), max(t_sig.high, hy)],
                    dtype=np.float32,
                ),
                dtype=np.float32,
            ),
        }
    )


def build_core(
    spec: TaskSpec,
    num_envs: int,
    segment: cheetah.Segment | None = None,
    backend: str = "fast",
    num_particles: int = 10_000,
    **core_kwargs: Any,
) -> TuningCore:
    """Beamline + :class:`TuningCore` for ``spec`` (shared by the single and vector envs)."""
    segment = task_segment(spec, segment)
    knobs = [(a.element, a.attribute) for a in spec.actuators]
    misalign = [name for name in spec.randomisation.misalignments]
    names = {e.name for e in segment.flattened().elements}
    for name in misalign:
        if name not in names:
            raise ValueError(f"randomisation.misalignments names {name!r}, not in the segment")
    beamline = make_beamline(segment, knobs, spec.screen.element, backend, num_particles, misalign)
    return TuningCore(spec, beamline, num_envs, **core_kwargs)


class TransverseTuningEnv(gym.Env):
    """Transverse beam tuning on a Cheetah beamline (see the module documentation).

    :param spec: Task spec, or a path to its YAML.
    :param segment: The lattice; default: the spec's shipped lattice.
    :param backend: ``"fast"`` (compiled map), ``"cheetah"`` or ``"cheetah-particles"``.
    :param num_particles: Particles per beam for ``"cheetah-particles"``.
    :param action_mode: ``"delta"`` (default) or ``"direct"``.
    :param reward: Reward config; default the spec's.
    :param start: ``"standard"`` or ``"random"`` start settings.
    :param terminate_on_target: Default the spec's ``termination.enabled``.
    :param render_mode: ``"rgb_array"`` or ``None``.
    :param world: The world between the agent and the beam (:mod:`accelrl.envs.world`): a
        shipped name (``"ideal"``, ``"ares-realistic"``, ``"harsh"``, with scenario
        overlays as ``"ares-realistic+q3-failure"``), a YAML path, a mapping or a
        :class:`~accelrl.envs.world.WorldSpec`; default the spec's ``world`` (ideal when it
        names none).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(
        self,
        spec: TaskSpec | str,
        segment: cheetah.Segment | None = None,
        backend: str = "fast",
        num_particles: int = 10_000,
        action_mode: ActionMode = "delta",
        reward: str | list[dict] | None = None,
        start: StartMode = "standard",
        terminate_on_target: bool | None = None,
        render_mode: str | None = None,
        world: WorldSpec | str | Path | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(spec, TaskSpec):
            spec = TaskSpec.from_yaml(spec)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.task = spec
        self.core = build_core(
            spec,
            1,
            segment,
            backend,
            num_particles,
            action_mode=action_mode,
            reward=reward,
            start=start,
            terminate_on_target=terminate_on_target,
            world=world,
        )
        self.backend = backend
        self.segment = segment
        #: The settings this environment was made with (reused by :func:`accelrl.envs.make_vec`).
        self.settings: dict[str, Any] = {
            "backend": backend,
            "num_particles": num_particles,
            "action_mode": action_mode,
            "reward": reward,
            "start": start,
            "terminate_on_target": terminate_on_target,
            "world": world,
        }
        self.render_mode = render_mode
        self.observation_space = observation_space(spec)
        self.action_space = spaces.Box(
            low=self.core.action_low.astype(np.float32),
            high=self.core.action_high.astype(np.float32),
            dtype=np.float32,
        )
        self._all = np.array([0])
        self.core.reset(self._all)

    @property
    def actuator_names(self) -> list[str]:
        return [a.name for a in self.task.actuators]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        reset_core(self.core, self._all, None if seed is None else [seed], options)
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = single_action(real_array(action, "action"), self.action_space)
        reward, terminated = self.core.step(self.core.validate_actions(a))
        return self._obs(), float(reward[0]), bool(terminated[0]), False, self._info()

    def _obs(self) -> dict[str, np.ndarray]:
        core = self.core
        if core.world is None:  # the observation of the core's one environment, directly
            return {
                "beam": core.reading[0].astype(np.float32),
                "magnets": core.magnets[0].astype(np.float32),
                "target": core.target[0].astype(np.float32),
            }
        return {k: v[0] for k, v in core.observation().items()}

    def _info(self) -> dict[str, Any]:
        core = self.core
        if core.world is None:  # TuningCore.info() of the one environment, directly
            h, r = core.hidden, core.spec.randomisation
            beam, target = core.beam[0], core.target[0]
            b0, b1, b2, b3 = beam.tolist()
            t0, t1, t2, t3 = target.tolist()
            info: dict[str, Any] = {
                "beam": beam.copy(),
                "reading": core.reading[0].copy(),
                "target": target.copy(),
                "magnets": core.magnets[0].copy(),
                "incoming": h.incoming[0].copy(),
                "misalignments": h.misalignments[0].copy(),
                # TuningCore.mae's sum, in its order (numpy adds 4 values one after another)
                "mae": (abs(b0 - t0) + abs(b1 - t1) + abs(b2 - t2) + abs(b3 - t3)) * 0.25,
                "on_screen": bool(core.on_screen[0]),
                "step": int(core.steps[0]),
            }
            if r.gain_error > 0:
                info["gain"] = h.gain[0].copy()
            if r.failure.probability > 0:
                info["fail_step"] = h.fail_step[0].copy()
                info["fail_index"] = h.fail_index[0].copy()
            return info
        info = {k: v[0].copy() for k, v in core.info().items()}
        info["mae"] = float(info["mae"])
        info["on_screen"] = bool(info["on_screen"])
        info["step"] = int(info["step"])
        if "readout_on_screen" in info:
            info["readout_on_screen"] = bool(info["readout_on_screen"])
        return info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return render_core(self.core, 0)


def render_core(core: TuningCore, i: int) -> np.ndarray:
    """RGB image of environment ``i`` of a core: the camera's expected processed image in a
    camera world, else a Gaussian spot drawn from the reading (with the target)."""
    w = core.world
    half = core.spec.screen.half_extent
    if w is not None and w.camera is not None:
        cam = w.camera
        image = cam.expected_image(core.beam[i : i + 1])[0]
        return camera_image(
            image, cam.spec.full_scale, core.target[i], cam.geometry.half_extent, core.reading[i]
        )
    return screen_image(core.reading[i], core.target[i], half, on_screen=bool(core.on_screen[i]))


def _uniform(value: Any, where: str) -> Uniform:
    """A :class:`Uniform` from ``(low, high)``, ``{"low": .., "high": ..}`` or a Uniform."""
    if isinstance(value, Uniform):
        return value
    if isinstance(value, Mapping):
        value = (value.get("low"), value.get("high"))
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be (low, high), got {value!r}") from None
    try:
        return Uniform(low=low, high=high)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"{where} = {value!r}: invalid")) from None


def custom_randomisation(
    randomisation: Randomisation | Mapping[str, Any] | None,
    misalignments: Mapping[str, float],
) -> Randomisation:
    """The :class:`Randomisation` of a custom task.

    :param randomisation: ``None`` (all defaults), a :class:`Randomisation`, or a mapping of
        its fields whose ``incoming`` may name only some moments (``(low, high)`` in SI);
        the others keep :data:`DEFAULT_INCOMING`.
    :param misalignments: The misalignment half-ranges [m] unless ``randomisation`` sets them.
    :raises ValueError: For an unknown field or moment, or an invalid range, naming it.
    """
    if isinstance(randomisation, Randomisation):
        return randomisation
    data = dict(randomisation or {})
    incoming = {k: _uniform(v, f"incoming.{k}") for k, v in DEFAULT_INCOMING.items()}
    for key, value in dict(data.pop("incoming", None) or {}).items():
        if key not in DEFAULT_INCOMING:
            raise ValueError(
                f"randomisation.incoming.{key}: unknown moment; known: {list(DEFAULT_INCOMING)}"
            )
        incoming[key] = _uniform(value, f"randomisation.incoming.{key}")
    if "target_sigma" in data:
        data["target_sigma"] = _uniform(data["target_sigma"], "randomisation.target_sigma")
    data.setdefault("misalignments", dict(misalignments))
    try:
        return Randomisation(incoming=incoming, **data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, "randomisation: invalid")) from None


def make_tuning_env(
    segment: cheetah.Segment,
    knobs: Sequence[tuple[str, str, float, float]],
    screen: str,
    start: Sequence[float] | None = None,
    misalignments: dict[str, float] | None = None,
    max_episode_steps: int = 50,
    randomisation: Randomisation | Mapping[str, Any] | None = None,
    env_id: str | None = None,
    **kwargs: Any,
) -> gym.Env:
    """A tuning environment for your own beamline, wrapped in a ``TimeLimit``.

    :param segment: Any Cheetah segment (e.g. from ``Segment.from_ocelot``/``from_bmad``/
        ``from_elegant``/``from_lattice_json``, or :func:`accelrl.physics.load_lattice`).
        The compiled map (``backend="fast"``, default) takes drifts, quadrupoles, dipoles,
        correctors and diagnostics; other elements (e.g. a ``Cavity``) need
        ``backend="cheetah"`` or ``"cheetah-particles"``.
    :param knobs: ``(element, attribute, low, high)`` per actuator, limits in SI units.
    :param screen: Name of the observing ``Screen`` element (a monitor that arrived as a
        ``Marker`` or ``BPM`` is turned into one by :func:`accelrl.physics.as_screen`).
    :param start: Start settings (default: 0 clipped into the limits).
    :param misalignments: Element name -> uniform misalignment half-range [m]
        (default: :data:`DEFAULT_MISALIGNMENT` = +-400 um on every quadrupole upstream of
        the screen and on the screen).
    :param max_episode_steps: TimeLimit [steps].
    :param randomisation: What is drawn at every reset (:class:`~accelrl.envs.spec.
        Randomisation` or a mapping of its fields): ``incoming`` beam ranges (any subset of
        the moments as ``(low, high)``, SI; the rest from :data:`DEFAULT_INCOMING`, the
        ARES-EA ranges, 80-160 MeV), ``target_mu`` (default +-2 mm), ``target_sigma``
        (default 0-2 mm), ``gain_error``, ``drift``, ``failure``, ``misalignments``.
    :param env_id: Id of the task (default ``"custom/<segment name>"``).
    :param kwargs: Forwarded to :class:`TransverseTuningEnv` (backend, reward, world, ...).
    :raises ValueError: For an unknown element or attribute, a screen that is not a
        ``cheetah.Screen`` (naming :func:`~accelrl.physics.as_screen` for a monitor),
        limits, start values or ranges out of order, naming the value.
    """
    elements = {e.name: e for e in segment.flattened().elements}
    if screen not in elements:
        raise ValueError(f"screen={screen!r} is not an element of the segment {segment.name!r}")
    if not isinstance(elements[screen], cheetah.Screen):
        kind = type(elements[screen]).__name__
        hint = ""
        if isinstance(elements[screen], (cheetah.Marker, cheetah.BPM)):
            hint = (
                " (an Ocelot Monitor arrives as a Marker); make it a screen first: "
                f"segment = accelrl.physics.as_screen(segment, {screen!r}, "
                "resolution=(width, height), pixel_size=(dx, dy))"
            )
        raise ValueError(f"screen={screen!r} is a cheetah.{kind}, not a cheetah.Screen{hint}")
    if misalignments is not None and randomisation is not None:
        if not isinstance(randomisation, Randomisation) and "misalignments" in randomisation:
            raise ValueError("give misalignments either as an argument or in randomisation")
    actuators = []
    for knob in knobs:
        if len(knob) != 4:
            raise ValueError(
                f"knob {knob!r} must be (element, attribute, low, high) with SI limits"
            )
        element, attribute, low, high = knob
        actuators.append(
            Actuator(name=element, element=element, attribute=attribute, low=low, high=high)
        )
    if start is None:
        start = [float(np.clip(0.0, a.low, a.high)) for a in actuators]
    if misalignments is None:
        names = list(elements)
        upstream = names[: names.index(screen)]
        misalignments = {
            n: DEFAULT_MISALIGNMENT for n in upstream if isinstance(elements[n], cheetah.Quadrupole)
        }
        misalignments[screen] = DEFAULT_MISALIGNMENT
    scr = elements[screen]
    spec = TaskSpec(
        id=env_id or f"custom/{segment.name}",
        actuators=actuators,
        screen=ScreenSpec(
            element=screen,
            resolution=tuple(int(v) for v in scr.resolution),
            pixel_size=tuple(float(v) for v in scr.pixel_size),
            binning=int(scr.binning),
        ),
        start=list(start),
        randomisation=custom_randomisation(randomisation, misalignments),
        max_episode_steps=max_episode_steps,
    )
    env = TransverseTuningEnv(spec, segment=segment, **kwargs)
    return gym.wrappers.TimeLimit(env, max_episode_steps=max_episode_steps)
