"""Declarative, validated task specifications (YAML in the top-level ``envs/`` folder).

A task spec names the lattice, the actuators and their operator limits, the screen, the
start settings, the distributions of everything the agent cannot observe (incoming beam,
misalignments, target, reading noise, drifts, actuator failures, calibration errors) and
the world the task runs in (camera, magnets, beam; :mod:`accelrl.envs.world`). Every value
is in SI units. Invalid input fails with a message naming the field, the value and the
allowed range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from accelrl.config import format_validation_error, load_yaml_mapping
from accelrl.envs import validation
from accelrl.envs.world.spec import (
    ActuatorFailure,
    Drift,
    WorldError,
    WorldSpec,
    check_world,
    load_world,
)
from accelrl.physics.beam import INCOMING

__all__ = [
    "ActuatorFailure",
    "Actuator",
    "Drift",
    "Randomisation",
    "ScreenSpec",
    "SpecError",
    "TaskSpec",
    "Termination",
    "Uniform",
    "shipped_spec_path",
]


class SpecError(ValueError):
    """An invalid task specification; the message names the field, value and allowed range."""


class _Model(BaseModel):
    # Every float must be finite: NaN and +-inf are refused with the field named.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: A threshold or size that must be > 0 (SI).
Positive = Annotated[float, Field(gt=0.0)]


class Uniform(_Model):
    """Uniform distribution on ``[low, high]`` (SI units of the quantity)."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.high >= self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    @classmethod
    def symmetric(cls, half_width: float) -> Uniform:
        return cls(low=-half_width, high=half_width)


class Actuator(_Model):
    """One knob: element attribute, operator limits and unit.

    :param name: Short name used in observations and logs (e.g. ``"Q1"``).
    :param element: Cheetah element name.
    :param attribute: Element attribute (``k1`` [1/m^2], ``angle`` [rad], ...).
    :param low: Lower operator limit (SI).
    :param high: Upper operator limit (SI).
    :param unit: Unit of the attribute, for display.
    """

    name: str
    element: str
    attribute: str
    low: float
    high: float
    unit: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Actuator:
        if not self.high > self.low:
            raise ValueError(f"actuator {self.name}: high ({self.high}) must be > low ({self.low})")
        return self


class ScreenSpec(_Model):
    """Camera screen: resolution [px], pixel size [m], binning, reading model.

    :param reading_noise: Standard deviation of Gaussian noise added to each reading [m].
    :param quantise: Round readings to the (binned) pixel size.
    """

    element: str
    resolution: tuple[int, int] = (2448, 2040)
    pixel_size: tuple[float, float] = (3.5488e-6, 2.5003e-6)
    binning: int = Field(1, ge=1)
    reading_noise: float = Field(0.0, ge=0.0)
    quantise: bool = False

    @field_validator("resolution")
    @classmethod
    def _positive_res(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) <= 0:
            raise ValueError(f"resolution must be positive pixels, got {v}")
        return v

    @field_validator("pixel_size")
    @classmethod
    def _positive_px(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) <= 0:
            raise ValueError(f"pixel_size must be positive metres, got {v}")
        return v

    @property
    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the screen [m]."""
        return (
            self.resolution[0] * self.pixel_size[0] / 2,
            self.resolution[1] * self.pixel_size[1] / 2,
        )


class Randomisation(_Model):
    """Distributions of the hidden state, drawn at every reset.

    :param incoming: Uniform ranges of the incoming-beam moments (keys of ``INCOMING``).
    :param misalignments: Uniform half-range [m] of the (x, y) misalignment per element.
    :param target_mu: Uniform half-range of the target centroids [m].
    :param target_sigma: Uniform range of the target sizes [m].
    :param gain_error: Half-range of a relative calibration error per actuator (the machine
        applies ``setting * (1 + g)``).
    :param drift: Incoming-beam drift during the episode.
    :param failure: Actuator failure.
    """

    incoming: dict[str, Uniform]
    misalignments: dict[str, float] = {}
    target_mu: float = Field(2e-3, ge=0.0)
    target_sigma: Uniform = Uniform(low=0.0, high=2e-3)
    gain_error: float = Field(0.0, ge=0.0, lt=1.0)
    drift: Drift = Drift()
    failure: ActuatorFailure = ActuatorFailure()

    @field_validator("incoming")
    @classmethod
    def _all_moments(cls, v: dict[str, Uniform]) -> dict[str, Uniform]:
        missing = [k for k in INCOMING if k not in v]
        unknown = [k for k in v if k not in INCOMING]
        if missing or unknown:
            raise ValueError(
                f"incoming needs exactly {INCOMING}; missing {missing}, unknown {unknown}"
            )
        for key in ("energy", "sigma_x", "sigma_px", "sigma_y", "sigma_py", "sigma_tau", "sigma_p"):
            if v[key].low <= 0:
                raise ValueError(f"incoming.{key}.low must be > 0, got {v[key].low}")
        return v

    @field_validator("misalignments")
    @classmethod
    def _nonneg(cls, v: dict[str, float]) -> dict[str, float]:
        for name, half in v.items():
            if not name:
                raise ValueError("misalignments: element names must not be empty")
            if half < 0:
                raise ValueError(f"misalignments.{name} must be >= 0 m, got {half}")
        return v

    @field_validator("target_sigma")
    @classmethod
    def _sizes(cls, v: Uniform) -> Uniform:
        if v.low < 0:
            raise ValueError(f"target_sigma.low = {v.low}: target sizes must be >= 0 m")
        return v


class Termination(_Model):
    """Target reached when all four errors are below ``thresholds`` [m] for ``hold`` steps."""

    enabled: bool = True
    thresholds: tuple[Positive, Positive, Positive, Positive] = (2e-5, 2e-5, 2e-5, 2e-5)
    hold: int = Field(1, ge=1)


class TaskSpec(_Model):
    """A transverse beam-tuning task.

    :param id: Environment id, e.g. ``accelrl/AresEATransverseTuning-v0``.
    :param lattice: A shipped lattice (``ares_ea``) or a lattice file, relative to the spec
        file (LatticeJSON ``.json``, Bmad ``.bmad``, Elegant ``.lte``; read by
        :func:`accelrl.physics.load_lattice`); or pass a Cheetah segment to the environment,
        :func:`accelrl.envs.register_task` or :func:`accelrl.envs.make_tuning_env`.
    :param lattice_line: The beamline to read from an Elegant file.
    :param actuators: The knobs in action order.
    :param screen: The observing screen.
    :param start: Default start settings, one per actuator (SI).
    :param delta_fraction: Largest change per step in ``"delta"`` mode as a fraction of each
        actuator's largest magnitude ``max(|low|, |high|)``.
    :param max_episode_steps: Default TimeLimit.
    :param world: The world the task runs in by default: a shipped name (``"ideal"``,
        ``"ares-realistic"``, ...), a path (relative to the spec file) or an inline mapping
        (:class:`~accelrl.envs.world.WorldSpec`); ``None``: the ideal world. Environments
        take another with ``world=``.
    """

    id: str
    description: str = ""
    lattice: str | None = None
    lattice_line: str | None = None
    actuators: list[Actuator]
    screen: ScreenSpec
    start: list[float]
    delta_fraction: float = Field(0.1, gt=0.0, le=1.0)
    randomisation: Randomisation
    termination: Termination = Termination()
    max_episode_steps: int = Field(50, ge=1)
    reward: str | list[dict] = "icml"
    world: WorldSpec | None = None

    @field_validator("world", mode="before")
    @classmethod
    def _load_world(cls, v: object) -> object:
        if isinstance(v, str):
            return load_world(v)
        return v

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, v: str | list[dict]) -> str | list[dict]:
        return validation.check_reward(v)

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.randomisation.failure.probability > 0:
            validation.check_within_episode(
                self.randomisation.failure.step,
                self.max_episode_steps,
                "randomisation.failure.step",
            )
        validation.check_within_episode(
            (self.termination.hold, self.termination.hold),
            self.max_episode_steps,
            "termination.hold",
        )
        if len(self.start) != len(self.actuators):
            raise ValueError(
                f"start has {len(self.start)} values but there are {len(self.actuators)} actuators"
            )
        for value, act in zip(self.start, self.actuators, strict=True):
            if not act.low <= value <= act.high:
                raise ValueError(
                    f"start value {value} of {act.name} is outside its limits "
                    f"[{act.low}, {act.high}]"
                )
        names = [a.name for a in self.actuators]
        if len(set(names)) != len(names):
            raise ValueError(f"actuator names must be unique, got {names}")
        failure = self.randomisation.failure
        if failure.actuator is not None and failure.actuator not in names:
            raise ValueError(
                f"randomisation.failure.actuator = {failure.actuator!r}: no such actuator; "
                f"the task has {names}"
            )
        if failure.value is not None:
            failing = [a for a in self.actuators if failure.actuator in (None, a.name)]
            for act in failing:
                if not act.low <= failure.value <= act.high:
                    raise ValueError(
                        f"randomisation.failure.value = {failure.value!r}: outside the limits "
                        f"of {act.name} [{act.low}, {act.high}]"
                    )
        if self.world is not None:
            problems = check_world(self.world, self)
            if problems:
                raise ValueError("\n".join([f"world {self.world.source}:", *problems]))
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> TaskSpec:
        """Load and validate a spec file.

        :raises SpecError: Naming the file, field, value and the problem.
        """
        data = load_yaml_mapping(path, SpecError, "task spec")
        if isinstance(data.get("world"), str):  # a path relative to the spec file
            try:
                data["world"] = load_world(data["world"], relative_to=Path(path).parent)
            except WorldError as err:
                raise SpecError(f"{path}: invalid task spec\n  world: {err}") from None
        lattice = data.get("lattice")
        if isinstance(lattice, str) and _is_lattice_file(lattice):  # relative to the spec file
            file = (Path(path).parent / lattice).resolve()
            if not file.is_file():
                raise SpecError(
                    f"{path}: invalid task spec\n  lattice: {lattice!r}: no such file ({file})"
                )
            data["lattice"] = str(file)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "spec") -> TaskSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise SpecError(format_validation_error(err, f"{source}: invalid task spec")) from None


#: Suffixes that make ``lattice:`` a file name rather than a shipped lattice's name.
LATTICE_FILE_SUFFIXES: tuple[str, ...] = (".json", ".bmad", ".lte", ".py")


def _is_lattice_file(name: str) -> bool:
    return Path(name).suffix.lower() in LATTICE_FILE_SUFFIXES


def shipped_spec_path(name: str) -> Path:
    """Path of a spec shipped with the package (``accelrl/data/<name>.yaml``)."""
    from accelrl.resources import shipped

    return shipped("envs", f"{name}.yaml")
