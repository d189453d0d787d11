"""The tuning problem of a BO session: named variables, one objective, constraints (SI units).

A :class:`TuningProblem` is validated with pydantic; an invalid value fails with a
:class:`ProblemError` naming the field, the value and the allowed range.

>>> from accelrl.agents.bo.problem import TuningProblem
>>> problem = TuningProblem.model_validate({
...     "variables": [{"name": "Q1", "low": -72.0, "high": 72.0, "unit": "1/m^2", "max_step": 7.2}],
...     "objective": {"name": "mae", "minimise": True, "log": True},
...     "constraints": [{"name": "on_screen", "lower": 0.5, "critical": True}],
...     "initial": {"Q1": 10.0},
... })
>>> problem.names
('Q1',)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accelrl.config import format_validation_error
from accelrl.names import TRANSVERSE

__all__ = [
    "Constraint",
    "Objective",
    "ProblemError",
    "TuningProblem",
    "Variable",
    "ares_ea_problem",
    "from_protocol",
]


class ProblemError(ValueError):
    """An invalid tuning problem; the message names the field, the value and the allowed range."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


class Variable(_Model):
    """One tuning variable (an actuator setting).

    :param name: Name used in settings dictionaries (e.g. ``"Q1"``).
    :param low: Hard lower bound (SI units of the variable). Never widened.
    :param high: Hard upper bound (SI). Must be > ``low``.
    :param unit: Unit, for display only (e.g. ``"1/m^2"``, ``"rad"``).
    :param max_step: Largest absolute change per suggestion around the current read-back (SI);
        ``None``: no limit beyond the bounds.
    """

    name: str = Field(min_length=1)
    low: float
    high: float
    unit: str = ""
    max_step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Variable:
        _finite(f"variable {self.name}: low", self.low)
        _finite(f"variable {self.name}: high", self.high)
        if not self.high > self.low:
            raise ValueError(f"variable {self.name}: high ({self.high}) must be > low ({self.low})")
        if self.max_step is not None and not (self.max_step > 0 and math.isfinite(self.max_step)):
            raise ValueError(
                f"variable {self.name}: max_step must be a finite number > 0 "
                f"(SI units), got {self.max_step}"
            )
        return self


class Objective(_Model):
    """The quantity to optimise, a key of every result.

    :param name: Key of the objective in a result dictionary (e.g. ``"mae"`` [m]).
    :param minimise: Minimise (default) or maximise.
    :param log: Model the natural logarithm of the objective (it must then be > 0; values
        below ``floor`` are raised to ``floor``).
    :param floor: Smallest objective value used under ``log`` (SI units of the objective).
    """

    name: str = Field(min_length=1)
    minimise: bool = True
    log: bool = False
    floor: float = 1e-12

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if not (self.floor > 0 and math.isfinite(self.floor)):
            raise ValueError(f"objective {self.name}: floor must be > 0, got {self.floor}")
        return self

    def transform(self, value: float) -> float:
        """The modelled value of a raw objective value (log applied when ``log``); NaN stays
        NaN, ``inf`` stays ``inf``."""
        if self.log and math.isfinite(value):
            return math.log(max(value, self.floor))
        return float(value)


class Constraint(_Model):
    """An output that must stay within ``[lower, upper]``.

    :param name: Key of the constrained output in a result dictionary.
    :param lower: Smallest allowed value (``None``: unbounded).
    :param upper: Largest allowed value (``None``: unbounded).
    :param critical: A violation pauses the search and returns to the last safe setting
        (e.g. beam off the screen). Handled by the safety layer, not by the statistics.
    :param modelled: Fit a GP to this output and weight the acquisition by the probability of
        feasibility (LogEI only).
    """

    name: str = Field(min_length=1)
    lower: float | None = None
    upper: float | None = None
    critical: bool = False
    modelled: bool = False

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        if self.lower is None and self.upper is None:
            raise ValueError(f"constraint {self.name}: give lower, upper or both")
        if self.lower is not None and self.upper is not None and not self.upper >= self.lower:
            raise ValueError(
                f"constraint {self.name}: upper ({self.upper}) must be >= lower ({self.lower})"
            )
        return self

    def satisfied(self, value: float) -> bool:
        """Whether ``value`` is finite and within the bounds."""
        if not math.isfinite(value):
            return False
        if self.lower is not None and value < self.lower:
            return False
        return not (self.upper is not None and value > self.upper)


class TuningProblem(_Model):
    """Variables, objective and constraints of a tuning session (SI units).

    :param variables: The tuning variables, in the order of the model inputs.
    :param objective: What to optimise.
    :param constraints: Output constraints.
    :param initial: Setting at the start (name -> SI value); it is the rollback target.
        Default: the centre of the bounds.
    :param observables: Further result outputs (SI) that a prior may predict (e.g. the screen
        reading); they calibrate the prior (see :class:`accelrl.agents.bo.model.
        CalibratedMean`) and are recorded, but not optimised.
    """

    variables: tuple[Variable, ...] = Field(min_length=1)
    objective: Objective
    constraints: tuple[Constraint, ...] = ()
    observables: tuple[str, ...] = ()
    initial: dict[str, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> TuningProblem:
        names = [v.name for v in self.variables]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variables: duplicate names {duplicates}")
        outputs = [self.objective.name, *(c.name for c in self.constraints), *self.observables]
        if len(set(outputs)) != len(outputs):
            raise ValueError(
                f"objective, constraints and observables must name different outputs: {outputs}"
            )
        if self.initial is not None:
            missing = sorted(set(names) - set(self.initial))
            extra = sorted(set(self.initial) - set(names))
            if missing or extra:
                raise ValueError(
                    f"initial must set exactly the variables {names}; missing {missing}, "
                    f"unknown {extra}"
                )
            for v in self.variables:
                x = self.initial[v.name]
                if not (math.isfinite(x) and v.low <= x <= v.high):
                    raise ValueError(
                        f"initial.{v.name} = {x} is outside the bounds [{v.low}, {v.high}]"
                    )
        return self

    # -- construction with readable errors
    @classmethod
    def create(cls, data: Mapping[str, Any]) -> TuningProblem:
        """Validate ``data``; raise :class:`ProblemError` with every problem, one per line."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ProblemError(format_validation_error(err, "invalid tuning problem:")) from None

    # -- views
    @property
    def names(self) -> tuple[str, ...]:
        """Variable names, in model-input order."""
        return tuple(v.name for v in self.variables)

    @property
    def low(self) -> np.ndarray:
        """Hard lower bounds ``[d]`` (SI)."""
        return np.array([v.low for v in self.variables], dtype=np.float64)

    @property
    def high(self) -> np.ndarray:
        """Hard upper bounds ``[d]`` (SI)."""
        return np.array([v.high for v in self.variables], dtype=np.float64)

    @property
    def max_step(self) -> np.ndarray:
        """Largest change per suggestion ``[d]`` (SI; ``inf`` where unlimited)."""
        return np.array(
            [math.inf if v.max_step is None else v.max_step for v in self.variables],
            dtype=np.float64,
        )

    @property
    def initial_vector(self) -> np.ndarray:
        """Initial setting ``[d]`` (SI); the bound centres when none is given."""
        if self.initial is None:
            return 0.5 * (self.low + self.high)
        return np.array([self.initial[n] for n in self.names], dtype=np.float64)

    def vector(self, setting: Mapping[str, float], what: str = "setting") -> np.ndarray:
        """``[d]`` float64 array of a name -> value mapping.

        :raises ProblemError: For missing or unknown names.
        """
        if not isinstance(setting, Mapping):
            raise ProblemError(f"{what} must be a mapping name -> value, got {type(setting)}")
        missing = [n for n in self.names if n not in setting]
        extra = sorted(set(setting) - set(self.names))
        if missing or extra:
            raise ProblemError(f"{what}: missing variables {missing}, unknown {extra}")
        return np.array([float(setting[n]) for n in self.names], dtype=np.float64)

    def named(self, x: Sequence[float] | np.ndarray) -> dict[str, float]:
        """Name -> value (SI) of a ``[d]`` vector."""
        return {n: float(v) for n, v in zip(self.names, np.asarray(x).reshape(-1), strict=True)}


def from_protocol(problem: Any, max_step_factor: float | None = 1.0) -> TuningProblem:
    """The tuning problem of an :class:`accelrl.protocol.Problem` (ARES-style task:
    objective ``"mae"`` [m], minimised in log; beam on screen as a critical constraint).

    :param problem: The protocol problem (actuator names, limits, start, ``max_delta``).
    :param max_step_factor: Largest change per step in units of ``problem.max_delta``;
        ``None``: unlimited.
    """
    if max_step_factor is not None and not max_step_factor > 0:
        raise ProblemError(f"max_step_factor must be > 0 or None, got {max_step_factor}")
    variables = []
    for i, name in enumerate(problem.actuator_names):
        step = None
        if max_step_factor is not None and float(problem.max_delta[i]) > 0:
            step = max_step_factor * float(problem.max_delta[i])
        variables.append(
            {
                "name": name,
                "low": float(problem.low[i]),
                "high": float(problem.high[i]),
                "max_step": step,
            }
        )
    initial = dict(zip(problem.actuator_names, problem.start, strict=True))
    return _screen_tuning_problem(variables, initial)


def ares_ea_problem(
    initial: Sequence[float] | None = None, max_step_fraction: float | None = 0.1
) -> TuningProblem:
    """The ARES-EA transverse tuning problem from the shipped task spec (``envs/ares_ea.yaml``).

    :param initial: Start setting ``[5]`` (SI); default the task's standard start.
    :param max_step_fraction: Largest change per step as a fraction of ``max(|low|, |high|)``
        of each actuator (the task's ``delta_fraction`` is 0.1); ``None``: unlimited.
    """
    from accelrl.envs.ares_ea import ares_ea_spec

    spec = ares_ea_spec()
    start = list(spec.start) if initial is None else [float(v) for v in initial]
    variables = []
    for a in spec.actuators:
        step = None
        if max_step_fraction is not None:
            step = max_step_fraction * max(abs(a.low), abs(a.high))
        variables.append(
            {"name": a.name, "low": a.low, "high": a.high, "unit": a.unit, "max_step": step}
        )
    return _screen_tuning_problem(
        variables, dict(zip([a.name for a in spec.actuators], start, strict=True))
    )


def screen_result(reading: Any, target: Any, on_screen: bool) -> dict[str, float]:
    """The result of one measurement of a screen tuning problem: ``mae`` [m] of the beam
    reading ``(mu_x, sigma_x, mu_y, sigma_y)`` [m] to the ``target`` [m], ``on_screen``
    (1 when ``on_screen`` is true or 1, else 0: an unknown state is not on the screen) and
    the four reading values (the observables)."""
    beam = np.asarray(reading, np.float64).reshape(-1)
    result = {
        "mae": float(np.mean(np.abs(beam - np.asarray(target, np.float64).reshape(-1)))),
        "on_screen": 1.0 if on_screen is True or on_screen == 1 else 0.0,
    }
    result.update(zip(TRANSVERSE, (float(v) for v in beam), strict=True))
    return result


def _screen_tuning_problem(
    variables: list[dict[str, Any]], initial: Mapping[str, float]
) -> TuningProblem:
    """A transverse tuning problem on a screen: objective the MAE of the beam reading to
    its target [m], minimised in log; beam on the screen a critical constraint; the four
    transverse beam parameters recorded as observables."""
    return TuningProblem.create(
        {
            "variables": variables,
            "objective": {"name": "mae", "minimise": True, "log": True, "floor": 1e-9},
            "constraints": [{"name": "on_screen", "lower": 0.5, "critical": True}],
            "observables": list(TRANSVERSE),
            "initial": {n: float(v) for n, v in initial.items()},
        }
    )
