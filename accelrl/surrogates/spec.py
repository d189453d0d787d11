"""Dataset specifications: the YAML files in the top-level ``surrogates/`` folder.

A dataset spec names the simulator, the varied inputs with their bounds and units, the
outputs computed from each run, the fixed physical parameters, the fidelity settings
(resolution, stage length, ...) and the design of experiments. Every value is in SI units.
An invalid file fails with a :class:`DatasetSpecError` naming the file, the field, the value
and the problem.

>>> from accelrl.surrogates.spec import DatasetSpec
>>> spec = DatasetSpec.from_yaml("surrogates/lpa_beamloading.yaml")  # doctest: +SKIP
>>> spec.input_names  # doctest: +SKIP
['a0', 'plasma_density', ...]
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from accelrl.config import format_validation_error, load_yaml_mapping

#: Columns of every dataset table besides the input and output columns.
RESERVED_COLUMNS: tuple[str, ...] = (
    "sample",
    "status",
    "message",
    "fidelity",
    "simulator",
    "wall_time_s",
)
#: Simulators a spec can name.
SIMULATORS: tuple[str, ...] = ("wake-t", "fbpic")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class DatasetSpecError(ValueError):
    """An invalid dataset specification; the message names the field, value and problem."""


class _Model(BaseModel):
    # Every float must be finite: NaN and +-inf are refused with the field named.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_column_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"name {name!r} must be a Python identifier (letters, digits, '_'; not starting "
            "with a digit)"
        )
    if name in RESERVED_COLUMNS:
        raise ValueError(f"name {name!r} is reserved for a table column {RESERVED_COLUMNS}")
    return name


class InputSpec(_Model):
    """One varied input of the design.

    :param name: Column name (a Python identifier), e.g. ``"plasma_density"``.
    :param unit: SI unit, for display (``"m^-3"``, ``"J"``, ``"A"``, ``"m"``, ``""``).
    :param low: Lower bound (SI).
    :param high: Upper bound (SI), strictly above ``low``.
    :param description: What the input is.
    :param scale: ``"linear"`` (design uniform in the value) or ``"log"`` (uniform in its
        logarithm; needs ``low > 0``).
    """

    name: str
    unit: str
    low: float
    high: float
    description: str = ""
    scale: Literal["linear", "log"] = "linear"

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return _check_column_name(v)

    @model_validator(mode="after")
    def _bounds(self) -> InputSpec:
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise ValueError(
                f"bounds of {self.name!r} must be finite, got [{self.low}, {self.high}]"
            )
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) of {self.name!r} must be > low ({self.low})")
        if self.scale == "log" and not self.low > 0:
            raise ValueError(f"scale 'log' of {self.name!r} needs low > 0, got low = {self.low}")
        return self


class OutputSpec(_Model):
    """One output computed from each run.

    :param name: Column name (a Python identifier), e.g. ``"energy_median"``.
    :param unit: SI unit, for display (``"C"``, ``"eV"``, ``"m rad"``, ``""``).
    :param description: What the output is.
    """

    name: str
    unit: str
    description: str = ""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        return _check_column_name(v)


class DesignSpec(_Model):
    """Design of experiments.

    :param method: ``"sobol"``: scrambled Sobol sequence (:class:`scipy.stats.qmc.Sobol`).
    :param n_samples: Number of design points (> 0; a power of two keeps the Sobol balance).
    :param seed: Seed of the scrambling; the same seed gives the same design.
    """

    method: Literal["sobol"] = "sobol"
    n_samples: int = Field(gt=0)
    seed: int = Field(ge=0)


Scalar = float | int | str | bool


def _finite_scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


#: A fixed parameter or fidelity setting: a number (finite), a string or a flag.
FiniteScalar = Annotated[Scalar, BeforeValidator(_finite_scalar)]

#: Physical parameters whose allowed range is not simply ``> 0``: name -> (low, low
#: included, high) (SI; ``high`` included, ``None``: unbounded).
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "beam_energy_spread": (0.0, True, None),
    "min_charge_fraction": (0.0, True, 1.0),
    "intact_charge_fraction": (0.0, False, 1.0),
}


def parameter_problem(name: str, value: float) -> str | None:
    """Why ``value`` is not a meaningful value of the physical parameter ``name`` (every
    parameter of :data:`~accelrl.surrogates.simulators.lpa.PARAMETERS` is > 0 unless listed
    in ``_RANGES``), or ``None``."""
    low, closed, high = _RANGES.get(name, (0.0, False, None))
    if (value < low if closed else value <= low) or (high is not None and value > high):
        allowed = f"{'[' if closed else '('}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
        return f"{name} must be in {allowed}"
    return None


def _simulator_fidelity(simulator: str) -> tuple[Any, dict[str, Any]]:
    """The fidelity check and the defaults of ``simulator``'s adapter."""
    if simulator == "fbpic":
        from accelrl.surrogates.simulators.fbpic_sim import FBPIC_FIDELITY, FBPICSimulator

        return FBPICSimulator.fidelity_settings, FBPIC_FIDELITY
    from accelrl.surrogates.simulators.waket import WAKET_FIDELITY, WakeTSimulator

    return WakeTSimulator.fidelity_settings, WAKET_FIDELITY


class Columns:
    """Names and bounds of the ``inputs`` (each with ``name``, ``low``, ``high``) and
    ``outputs`` (each with ``name``) of a dataset spec or a model trained on one."""

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs, in column order."""
        return [i.name for i in self.inputs]  # type: ignore[attr-defined]

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs, in column order."""
        return [o.name for o in self.outputs]  # type: ignore[attr-defined]

    @property
    def bounds(self) -> np.ndarray:
        """Input bounds ``[d, 2]`` (low, high), SI."""
        return np.array(
            [[i.low, i.high] for i in self.inputs],  # type: ignore[attr-defined]
            dtype=np.float64,
        )


class DatasetSpec(_Model, Columns):
    """A dataset: simulator, inputs, outputs, fixed parameters, fidelity and design.

    :param name: Dataset name (file stem of ``surrogates/<name>.parquet``).
    :param description: One paragraph on the physics.
    :param simulator: ``"wake-t"`` or ``"fbpic"``.
    :param inputs: Varied inputs (at least one; unique names).
    :param outputs: Outputs (at least one; unique names, distinct from the inputs).
    :param fixed: Fixed physical parameters (SI; names and ranges of
        :data:`~accelrl.surrogates.simulators.lpa.PARAMETERS`), read by the simulator adapter.
    :param fidelity: Numerical settings (resolution, stage length, ...) known to the
        simulator's adapter, checked by it; ``label`` (optional) is the fidelity label
        written in each row.
    :param design: Design of experiments.
    """

    name: str
    description: str = ""
    simulator: Literal["wake-t", "fbpic"]
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    fixed: dict[str, FiniteScalar] = Field(default_factory=dict)
    fidelity: dict[str, FiniteScalar] = Field(default_factory=dict)
    design: DesignSpec

    @field_validator("name")
    @classmethod
    def _dataset_name(cls, v: str) -> str:
        if not _DATASET_NAME.match(v):
            raise ValueError(f"dataset name {v!r} may only hold letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _unique(self) -> DatasetSpec:
        names = [i.name for i in self.inputs] + [o.name for o in self.outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"input and output names must be unique, repeated: {dup}")
        both = sorted(set(self.input_names) & set(self.fixed))
        if both:
            raise ValueError(f"{both} are given both as inputs and as fixed parameters")
        self._check_fixed()
        self._check_inputs()
        self._check_fidelity()
        return self

    def _check_fixed(self) -> None:
        """Fixed values: known physical parameters, numbers in their allowed ranges."""
        from accelrl.surrogates.simulators.lpa import PARAMETERS

        for name, value in self.fixed.items():
            where = f"fixed.{name} = {value!r}"
            if name not in PARAMETERS:
                raise ValueError(
                    f"{where}: unknown physical parameter; known: {sorted(PARAMETERS)}"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}: must be a number (SI)")
            problem = parameter_problem(name, float(value))
            if problem:
                raise ValueError(f"{where}: {problem}")

    def _check_inputs(self) -> None:
        """Inputs that are physical parameters of the stage: bounds in the allowed range."""
        from accelrl.surrogates.simulators.lpa import PARAMETERS

        for i, spec in enumerate(self.inputs):
            if spec.name in PARAMETERS:
                for side in ("low", "high"):
                    value = getattr(spec, side)
                    problem = parameter_problem(spec.name, value)
                    if problem:
                        raise ValueError(f"inputs.{i}.{side} = {value!r}: {problem}")

    def _check_fidelity(self) -> None:
        """Fidelity settings: known to the simulator, numbers where the default is one
        (integers where it is an integer), in range (the adapter's own check)."""
        check, defaults = _simulator_fidelity(self.simulator)
        for key, value in self.fidelity.items():
            default = defaults.get(key)
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                continue
            if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"fidelity.{key} = {value!r}: must be an integer")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"fidelity.{key} = {value!r}: must be a number")
        try:
            check(dict(self.fidelity))
        except (TypeError, ValueError) as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith("fidelity") else f"fidelity: {msg}") from None

    # ------------------------------------------------------------------ convenience
    @property
    def fidelity_label(self) -> str:
        """Label written in the ``fidelity`` column: ``fidelity["label"]`` or ``k=v;...``."""
        if "label" in self.fidelity:
            return str(self.fidelity["label"])
        return ";".join(f"{k}={v}" for k, v in sorted(self.fidelity.items()))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping (the YAML content)."""
        return self.model_dump(mode="json")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetSpec:
        """Load and validate a spec file.

        :param path: YAML file.
        :raises DatasetSpecError: Naming the file, field, value and the problem.
        """
        data = load_yaml_mapping(path, DatasetSpecError, "dataset spec")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> DatasetSpec:
        """Validate a mapping.

        :param source: Name used in error messages (file name).
        :raises DatasetSpecError: Naming the field, value and the problem.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            message = format_validation_error(err, f"{source}: invalid dataset spec")
            raise DatasetSpecError(message) from None


def load_spec(path: str | Path) -> DatasetSpec:
    """Load and validate the dataset spec at ``path`` (see :meth:`DatasetSpec.from_yaml`)."""
    return DatasetSpec.from_yaml(path)
