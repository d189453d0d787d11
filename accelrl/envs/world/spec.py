"""Declarative, validated world models: the imperfect machine between the agent and the beam.

A world describes what the simulation of a task leaves out when it is ideal: the camera and
the image processing that turn the beam on the screen into the four numbers the agent
observes, the magnets between a setpoint and the field the beam sees, and what the incoming
beam does on its own (shot-to-shot jitter, slow drift, scripted scenarios). Worlds are YAML
files (``envs/worlds/*.yaml``), loaded by name or path with :func:`load_world`, or the
``world:`` key of a task spec. Every value is in SI units (camera quantities in electrons,
digital numbers and pixels, as a camera data sheet gives them), validated on load: an
invalid value fails with the file, the field, the value and the allowed range.

Example::

    >>> from accelrl.envs.world import load_world
    >>> load_world("ideal").is_ideal
    True
    >>> world = load_world("ares-realistic+q3-failure")   # a preset with a scenario overlay
    >>> [s.kind for s in world.scenarios]
    ['actuator_failure']

Its size (~550 lines): one pydantic schema tree (the world and its camera, magnets, beam and
scenarios) with its checks against a task and the loader that merges a world onto its base; the
docstrings documenting every field are over a quarter of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from accelrl.config import format_validation_error
from accelrl.envs import validation
from accelrl.physics.beam import INCOMING
from accelrl.resources import shipped

if TYPE_CHECKING:
    from accelrl.envs.spec import TaskSpec

#: Folder of the shipped world presets (``envs/worlds`` of the repository).
WORLDS_DIR = shipped("envs", "worlds")
#: Folder of the shipped scenario overlays.
SCENARIOS_DIR = WORLDS_DIR / "scenarios"


class WorldError(ValueError):
    """An invalid world; the message names the file, the field, the value and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- beam
class Drift(_Model):
    """Random walk of the incoming beam during an episode: per-step Gaussian steps.

    :param mu: Standard deviation per step of the centroid positions mu_x, mu_y [m].
    :param mu_p: Standard deviation per step of the centroid angles [rad].
    """

    mu: float = Field(0.0, ge=0.0)
    mu_p: float = Field(0.0, ge=0.0)


class BeamDrift(Drift):
    """:class:`Drift` of the centroid, extended by relative drifts of sizes and energy.

    :param sigma: Standard deviation per step of the relative change of the four transverse
        sizes ``sigma_x, sigma_px, sigma_y, sigma_py`` [1] (log-normal: sizes stay positive).
    :param energy: Standard deviation per step of the relative energy change [1].
    """

    sigma: float = Field(0.0, ge=0.0, lt=1.0)
    energy: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def active(self) -> bool:
        return self.mu > 0 or self.mu_p > 0 or self.sigma > 0 or self.energy > 0


class Jitter(_Model):
    """Shot-to-shot jitter of the incoming beam: a fresh Gaussian deviation at every reading
    (it does not accumulate; compare :class:`BeamDrift`).

    :param mu: Standard deviation of the centroid positions mu_x, mu_y [m].
    :param mu_p: Standard deviation of the centroid angles mu_px, mu_py [rad].
    :param sigma: Relative standard deviation of the four transverse sizes [1].
    :param energy: Relative standard deviation of the energy [1].
    """

    mu: float = Field(0.0, ge=0.0)
    mu_p: float = Field(0.0, ge=0.0)
    sigma: float = Field(0.0, ge=0.0, lt=1.0)
    energy: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def active(self) -> bool:
        return self.mu > 0 or self.mu_p > 0 or self.sigma > 0 or self.energy > 0


class BeamSpec(_Model):
    """What the incoming beam does on its own."""

    jitter: Jitter = Jitter()
    drift: BeamDrift = BeamDrift()


# ---------------------------------------------------------------------------- scenarios
class ActuatorFailure(_Model):
    """An actuator fails from a (random) step on: its setting freezes, or goes to ``value``.

    :param probability: Probability per episode that the actuator fails.
    :param step: Range of the first failed step (inclusive; step 1 is the first ``step()``).
    :param actuator: Name of the failing actuator; ``None`` draws one uniformly per episode.
    :param value: Setting of the failed actuator (SI, within its limits; e.g. 0 for a power
        supply that switched off); ``None`` freezes it at its last setting.
    """

    probability: float = Field(0.0, ge=0.0, le=1.0)
    step: tuple[int, int] = (1, 50)
    actuator: str | None = None
    value: float | None = None

    @field_validator("step")
    @classmethod
    def _ordered_steps(cls, v: tuple[int, int]) -> tuple[int, int]:
        return validation.check_step_range(v, "failure step")


class FailureScenario(ActuatorFailure):
    """:class:`ActuatorFailure` as a world scenario (certain by default)."""

    kind: Literal["actuator_failure"] = "actuator_failure"
    probability: float = Field(1.0, ge=0.0, le=1.0)


class IncomingChange(_Model):
    """The incoming beam changes during the episode, from its start value towards a
    destination: at step ``t`` it is ``start + (destination - start) * f(t)`` with
    ``f = clip((t - after) / steps, 0, 1)`` (``"linear"``) or ``sin(pi * that)``
    (``"sinusoidal"``: there and back), on top of any drift.

    :param after: Last step before the change begins (0: it begins with the first step).
    :param steps: Number of steps the change takes (1: a sudden change).
    :param shape: ``"linear"`` or ``"sinusoidal"``.
    :param to: ``"other"``: another incoming beam: the reset option ``to_trial`` /
        ``to_incoming``, else a fresh draw from the task's incoming-beam distribution.
        ``"offset"``: the start beam plus a uniform draw in ``+-offset``.
    :param offset: Half-ranges of the change per incoming moment for ``to: offset`` (keys of
        :data:`~accelrl.physics.beam.INCOMING`, SI units; sizes and energy must stay positive).
    """

    kind: Literal["incoming_change"] = "incoming_change"
    after: int = Field(0, ge=0)
    steps: int = Field(1, ge=1)
    shape: Literal["linear", "sinusoidal"] = "linear"
    to: Literal["other", "offset"] = "other"
    offset: dict[str, float] = {}

    @model_validator(mode="after")
    def _offsets(self) -> IncomingChange:
        unknown = sorted(set(self.offset) - set(INCOMING))
        if unknown:
            raise ValueError(f"offset names unknown moments {unknown}; known: {list(INCOMING)}")
        negative = {k: v for k, v in self.offset.items() if v < 0}
        if negative:
            raise ValueError(f"offset half-ranges must be >= 0, got {negative}")
        if self.to == "offset" and not self.offset:
            raise ValueError("to: offset needs at least one offset half-range")
        if self.to == "other" and self.offset:
            raise ValueError("offset is only used with to: offset")
        return self


Scenario = Annotated[FailureScenario | IncomingChange, Field(discriminator="kind")]


# ---------------------------------------------------------------------------- magnets
class Hysteresis(_Model):
    """Hysteresis of a magnet: a Prandtl-Ishlinskii operator (a weighted sum of ``plays``
    play operators, the simplest Preisach-type model).

    :param width: Full width of the major loop [SI unit of the actuator]: the difference of
        the field between the descending and the ascending branch at the same power-supply
        output, once the output has moved ``2 * width * plays / (plays + 1)`` (less than
        twice the width) since its last reversal. Must be below the actuator range.
    :param plays: Number of play operators; their half-widths are spread evenly up to
        ``width * plays / (plays + 1)``, so the loop closes smoothly.
    """

    width: float = Field(ge=0.0)
    plays: int = Field(4, ge=1, le=64)


class MagnetSpec(_Model):
    """Imperfections of one magnet (SI unit of its actuator: 1/m^2, rad, ...).

    :param gain_error: Half-range of the relative calibration error drawn uniformly per
        episode: the field is ``(1 + g) * H(readback) + o``.
    :param offset_error: Half-range of the field offset ``o`` drawn uniformly per episode
        (remanence, zero offset of the power supply).
    :param hysteresis: The hysteresis ``H``; ``None``: none.
    :param resolution: Setpoint resolution (the power supply's DAC step); 0: continuous.
    :param settle: Fraction of the remaining distance to the setpoint the power-supply output
        covers in one step (1: settled within the step, as when the control loop waits).
    :param rate: Largest change of the power-supply output per step; ``None``: unlimited.
    """

    gain_error: float = Field(0.0, ge=0.0, lt=1.0)
    offset_error: float = Field(0.0, ge=0.0)
    hysteresis: Hysteresis | None = None
    resolution: float = Field(0.0, ge=0.0)
    settle: float = Field(1.0, gt=0.0, le=1.0)
    rate: float | None = Field(None, gt=0.0)

    @property
    def active(self) -> bool:
        return (
            self.gain_error > 0
            or self.offset_error > 0
            or (self.hysteresis is not None and self.hysteresis.width > 0)
            or self.resolution > 0
            or self.settle < 1
            or self.rate is not None
        )


# ---------------------------------------------------------------------------- camera
ReadoutMethod = Literal["ares", "fit", "moments"]


class CameraSpec(_Model):
    """The screen camera and the image processing that read the beam (see
    :mod:`accelrl.envs.world.camera`). Geometry (resolution, pixel size) is the task's
    screen; charges are per output (binned) pixel and frame.

    :param binning: Camera binning (output pixel = ``binning`` x ``binning`` sensor pixels);
        ``None``: the task screen's. Must divide the screen resolution.
    :param frames: Number of beam frames and of background frames whose per-pixel medians
        are subtracted (odd, so that a median is one of the frames).
    :param bit_depth: ADC bit depth; frames saturate at ``2**bit_depth - 1`` DN.
    :param gain: Conversion gain [electrons / DN].
    :param read_noise: Read noise [electrons rms].
    :param shot_noise: Poisson statistics of the photo-electrons.
    :param dark_level: Black-level offset of every frame [DN] (keeps read noise above 0).
    :param background: Background light and dark current [electrons / pixel / frame],
        present in beam and background frames alike.
    :param signal: Photo-electrons of the whole beam spot in one frame [electrons].
    :param method: Beam parameters from the processed image: ``"ares"`` (the control room's
        FWHM algorithm), ``"fit"`` (Gaussian fits of the projections) or ``"moments"``.
    :param off_screen_fraction: The beam is reported off the screen when more than this
        fraction of the pixels of *both* filtered projections exceed half their maximum.
    :param min_filter: Size of the minimum filter of the projections [px].
    :param uniform_filter: Size of the uniform (boxcar) filter after it [px].
    """

    binning: int | None = Field(None, ge=1)
    frames: int = Field(5, ge=1, le=99)
    bit_depth: int = Field(12, ge=8, le=16)
    gain: float = Field(1.0, gt=0.0)
    read_noise: float = Field(0.0, ge=0.0)
    shot_noise: bool = True
    dark_level: float = Field(0.0, ge=0.0)
    background: float = Field(0.0, ge=0.0)
    signal: float = Field(1.0e6, gt=0.0)
    method: ReadoutMethod = "ares"
    off_screen_fraction: float = Field(0.95, gt=0.0, le=1.0)
    min_filter: int = Field(5, ge=1, le=99)
    uniform_filter: int = Field(5, ge=1, le=99)

    @field_validator("frames")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"frames must be odd (the median of an odd number of frames), got {v}")
        return v

    @model_validator(mode="after")
    def _dark_below_full_scale(self) -> CameraSpec:
        full = 2**self.bit_depth - 1
        if not self.dark_level < full:
            raise ValueError(
                f"dark_level ({self.dark_level} DN) must be below the full scale of "
                f"{self.bit_depth} bits ({full} DN)"
            )
        return self

    @property
    def full_scale(self) -> int:
        """Largest digital number of a frame [DN]."""
        return 2**self.bit_depth - 1


# ---------------------------------------------------------------------------- world
class WorldSpec(_Model):
    """A world: camera, magnets, beam and scenarios. Everything left out is ideal.

    :param name: Short name (e.g. ``"ares-realistic"``).
    :param description: One paragraph for humans.
    :param camera: The camera and readout; ``None``: the task's screen reading model
        (the beam moments, clamped when off the screen).
    :param magnets: Actuator name -> its imperfections; actuators not named are ideal.
    :param beam: Jitter and drift of the incoming beam.
    :param scenarios: Scripted events (failures, incoming-beam changes).
    """

    name: str = ""
    description: str = ""
    camera: CameraSpec | None = None
    magnets: dict[str, MagnetSpec] = {}
    beam: BeamSpec = BeamSpec()
    scenarios: list[Scenario] = []

    _source: str = PrivateAttr("world")

    @property
    def source(self) -> str:
        """The file (or name) the world was loaded from, for messages."""
        return self._source

    @property
    def is_ideal(self) -> bool:
        """Whether the world changes nothing (the environment without a world model)."""
        return (
            self.camera is None
            and not any(m.active for m in self.magnets.values())
            and not self.beam.jitter.active
            and not self.beam.drift.active
            and not self.scenarios
        )

    def with_source(self, source: str) -> WorldSpec:
        """This world, remembering ``source`` for messages."""
        out = self.model_copy()
        out._source = source
        return out

    # ------------------------------------------------------------------ task checks
    def check(self, task: TaskSpec, max_episode_steps: int | None = None) -> None:
        """Validate the world against a task: actuator names, hysteresis widths and offsets
        below the actuator ranges, failure values within the limits, scenario steps within
        the episode, camera binning dividing the screen.

        :param max_episode_steps: Episode length the scenario steps must fit in (default:
            the task's).
        :raises WorldError: Naming the world's source, the field, the value and the problem.
        """
        problems = check_world(self, task, max_episode_steps)
        if problems:
            raise WorldError(
                "\n".join([f"{self.source}: world does not fit task {task.id}"] + problems)
            )


def _unit(act: Any) -> str:
    return f" {act.unit}" if act.unit else ""


def check_world(
    world: WorldSpec, task: TaskSpec, max_episode_steps: int | None = None
) -> list[str]:
    """The problems (one line each, ``  field = value: message``) of ``world`` on ``task``."""
    horizon = task.max_episode_steps if max_episode_steps is None else max_episode_steps
    acts = {a.name: a for a in task.actuators}
    out: list[str] = []
    for name, magnet in world.magnets.items():
        if name not in acts:
            out.append(f"  magnets.{name}: no such actuator; the task has {list(acts)}")
            continue
        act = acts[name]
        span = act.high - act.low
        limits = f"the range of {name} ({span:g}{_unit(act)})"
        if magnet.hysteresis is not None and not magnet.hysteresis.width < span:
            out.append(
                f"  magnets.{name}.hysteresis.width = {magnet.hysteresis.width!r}: "
                f"must be below {limits}"
            )
        for field in ("offset_error", "resolution"):
            value = getattr(magnet, field)
            if not value < span:
                out.append(f"  magnets.{name}.{field} = {value!r}: must be below {limits}")
        if magnet.rate is not None and not magnet.rate <= span:
            out.append(f"  magnets.{name}.rate = {magnet.rate!r}: must be at most {limits}")
    for i, sc in enumerate(world.scenarios):
        where = f"scenarios.{i}"
        if isinstance(sc, FailureScenario):
            lo, hi = sc.step
            if hi > horizon:
                out.append(
                    f"  {where}.step = {list(sc.step)}: beyond the episode of {horizon} steps"
                )
            if sc.actuator is not None and sc.actuator not in acts:
                out.append(
                    f"  {where}.actuator = {sc.actuator!r}: no such actuator; "
                    f"the task has {list(acts)}"
                )
            elif sc.value is not None:
                names = [sc.actuator] if sc.actuator is not None else list(acts)
                for name in names:
                    act = acts[name]
                    if not act.low <= sc.value <= act.high:
                        out.append(
                            f"  {where}.value = {sc.value!r}: outside the limits of {name} "
                            f"[{act.low:g}, {act.high:g}]{_unit(act)}"
                        )
        else:
            if sc.after >= horizon:
                out.append(
                    f"  {where}.after = {sc.after}: the change would begin after the episode "
                    f"of {horizon} steps"
                )
    cam = world.camera
    if cam is not None:
        binning = cam.binning if cam.binning is not None else task.screen.binning
        res = task.screen.resolution
        if res[0] % binning or res[1] % binning:
            out.append(
                f"  camera.binning = {binning}: must divide the screen resolution {list(res)}"
            )
        if task.screen.reading_noise > 0 or task.screen.quantise:
            out.append(
                "  camera: replaces the task's screen reading model; set the task's "
                "screen.reading_noise to 0 and screen.quantise to false"
            )
    return out


# ---------------------------------------------------------------------------- loading
def shipped_worlds() -> list[str]:
    """Names of the shipped world presets and scenario overlays."""
    names = [p.stem for p in sorted(WORLDS_DIR.glob("*.yaml"))]
    return names + [p.stem for p in sorted(SCENARIOS_DIR.glob("*.yaml"))]


def _locate(ref: str, relative_to: Path | None) -> Path:
    for folder in (WORLDS_DIR, SCENARIOS_DIR):
        candidate = folder / f"{ref}.yaml"
        if "/" not in ref and "\\" not in ref and candidate.is_file():
            return candidate
    path = Path(ref).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if path.is_file():
        return path
    raise WorldError(
        f"world {ref!r}: neither a shipped world ({', '.join(shipped_worlds())}) nor a file"
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise WorldError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorldError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, scenario lists add up."""
    out = dict(base)
    for key, value in over.items():
        if key == "scenarios" and isinstance(value, list):
            out[key] = list(out.get(key, [])) + list(value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _load_data(ref: str, relative_to: Path | None, seen: tuple[Path, ...]) -> tuple[dict, str]:
    path = _locate(ref, relative_to).resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise WorldError(f"{path}: worlds inherit from each other in a cycle: {chain}")
    data = _read(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise WorldError(f"{path}: base = {base!r}: must be the name or path of a world")
        parent, _ = _load_data(base, path.parent, (*seen, path))
        data = _merge(parent, data)
    return data, str(path)


def world_from_dict(data: Mapping[str, Any], source: str = "world") -> WorldSpec:
    """Validate a world mapping.

    :raises WorldError: Naming ``source``, the field, the value and the problem.
    """
    try:
        world = WorldSpec.model_validate(dict(data))
    except ValidationError as err:
        raise WorldError(format_validation_error(err, f"{source}: invalid world")) from None
    return world.with_source(source)


def load_world(
    world: str | Path | WorldSpec | Mapping[str, Any] | None = None,
    scenarios: Sequence[str | Path] = (),
    relative_to: str | Path | None = None,
) -> WorldSpec:
    """Load a world by name, path, mapping or model, with optional scenario overlays.

    ``"ares-realistic+q3-failure"`` composes a preset and overlays (the same as
    ``load_world("ares-realistic", scenarios=["q3-failure"])``). A world file may name a
    ``base:`` world it changes; mappings merge key by key and scenario lists add up.

    :param world: A shipped name (:func:`shipped_worlds`), a YAML path, a mapping, a
        :class:`WorldSpec`, or ``None`` for the ideal world.
    :param scenarios: Overlays (names or paths) applied on top, in order.
    :param relative_to: Folder that relative paths are relative to (default: the working
        directory).
    :raises WorldError: For an unknown name, a missing or invalid file, naming the file, the
        field and the value.
    """
    folder = Path(relative_to) if relative_to is not None else None
    refs: list[str | Path] = list(scenarios)
    if isinstance(world, str) and "+" in world and not Path(world).is_file():
        head, *tail = world.split("+")
        world, refs = head, [*tail, *refs]
    if isinstance(world, WorldSpec):
        data, source = world.model_dump(), world.source
    elif isinstance(world, Mapping):
        data, source = dict(world), "world"
    elif world is None:
        data, source = {}, "ideal"
    elif isinstance(world, (str, Path)):
        data, source = _load_data(str(world), folder, ())
    else:
        raise WorldError(f"world must be a name, a path, a mapping or a WorldSpec, got {world!r}")
    for ref in refs:
        overlay, where = _load_data(str(ref), folder, ())
        label = overlay.get("name") or Path(where).stem
        data = _merge(data, {k: v for k, v in overlay.items() if k not in ("name", "description")})
        data["name"] = f"{data.get('name') or 'ideal'}+{label}"
        source = f"{source}+{where}"
    return world_from_dict(data, source)
