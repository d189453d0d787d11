"""The trial-set file format, validated (numpy-free: pydantic and PyYAML only).

A trial set is the YAML of the published ARES-EA evaluation (``rl-vs-bo/trials.yaml``): a
mapping ``index -> {incoming, misalignments, initial, target}`` in SI units. This module
reads and checks such a file without the simulation, so the torch-free deployment side (the
virtual accelerator's config) and the environments share one definition of a valid trial;
:func:`accelrl.envs.load_trials` turns the records into :class:`~accelrl.envs.trials.Trial`
objects.

Every value must be a finite number; the reference energy must be > 0 eV, every beam size,
divergence, bunch length, energy spread and target size >= 0; misalignment keys are
``<element>_x`` or ``<element>_y``; unknown keys are refused. Errors name the file, the
trial, the field, the value and the allowed range.

>>> from accelrl.trialset import read_trial_set
>>> records = read_trial_set()  # the 300 published trials  # doctest: +SKIP
>>> records[0][1].incoming.energy  # doctest: +SKIP
88360138.74539271
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from accelrl.config import field_value_errors
from accelrl.resources import shipped

#: The published trial set shipped with the package.
DEFAULT_TRIALS = shipped("envs", "ares_ea_trials_300.yaml")

#: Short element names used by the ARES-EA file -> lattice element names.
SHORT_ELEMENTS: dict[str, str] = {
    "q1": "AREAMQZM1",
    "q2": "AREAMQZM2",
    "q3": "AREAMQZM3",
    "screen": "AREABSCR1",
}
#: Short actuator names used by the ARES-EA file -> task actuator names.
SHORT_ACTUATORS: dict[str, str] = {"q1": "Q1", "q2": "Q2", "q3": "Q3", "cv": "CV", "ch": "CH"}

_MISALIGNMENT_KEY = re.compile(r"^(?P<element>.+)_(?P<axis>[xy])$")
#: How many invalid trials one error message lists.
MAX_REPORTED = 10
#: How many problems of one trial it lists.
MAX_LINES = 5


class TrialSetError(ValueError):
    """An invalid trial-set file; the message names the file, trial, field and value."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _alias(file_key: str, env_key: str) -> AliasChoices:
    return AliasChoices(file_key, env_key)


class IncomingRecord(_Record):
    """The incoming beam of a trial (file keys; the environment's names are accepted too).

    :param energy: Reference energy [eV], > 0.
    :param mu_x: Centroid position x [m].
    :param mu_xp: Centroid angle x [rad] (also ``mu_px``).
    :param mu_y: Centroid position y [m].
    :param mu_yp: Centroid angle y [rad] (also ``mu_py``).
    :param sigma_x: Rms size x [m], >= 0.
    :param sigma_xp: Rms divergence x [rad], >= 0 (also ``sigma_px``).
    :param sigma_y: Rms size y [m], >= 0.
    :param sigma_yp: Rms divergence y [rad], >= 0 (also ``sigma_py``).
    :param sigma_s: Rms bunch length [m], >= 0 (also ``sigma_tau``).
    :param sigma_p: Relative rms energy spread [1], >= 0.
    """

    energy: float = Field(gt=0.0)
    mu_x: float
    mu_xp: float = Field(validation_alias=_alias("mu_xp", "mu_px"))
    mu_y: float
    mu_yp: float = Field(validation_alias=_alias("mu_yp", "mu_py"))
    sigma_x: float = Field(ge=0.0)
    sigma_xp: float = Field(ge=0.0, validation_alias=_alias("sigma_xp", "sigma_px"))
    sigma_y: float = Field(ge=0.0)
    sigma_yp: float = Field(ge=0.0, validation_alias=_alias("sigma_yp", "sigma_py"))
    sigma_s: float = Field(ge=0.0, validation_alias=_alias("sigma_s", "sigma_tau"))
    sigma_p: float = Field(ge=0.0)

    def row(self) -> list[float]:
        """The beam in :data:`accelrl.names.INCOMING` order (SI)."""
        return [
            self.energy,
            self.mu_x,
            self.mu_xp,
            self.mu_y,
            self.mu_yp,
            self.sigma_x,
            self.sigma_xp,
            self.sigma_y,
            self.sigma_yp,
            self.sigma_s,
            self.sigma_p,
        ]


class TargetRecord(_Record):
    """The target beam ``(mu_x, sigma_x, mu_y, sigma_y)`` [m]; sizes >= 0."""

    mu_x: float
    sigma_x: float = Field(ge=0.0)
    mu_y: float
    sigma_y: float = Field(ge=0.0)

    def row(self) -> list[float]:
        """The target in :data:`accelrl.names.TRANSVERSE` order [m]."""
        return [self.mu_x, self.sigma_x, self.mu_y, self.sigma_y]


class TrialRecord(_Record):
    """One trial as written in the file.

    :param incoming: The incoming beam.
    :param misalignments: ``<element>_x``/``<element>_y`` -> misalignment [m] (ARES-EA
        short element names ``q1, q2, q3, screen`` or lattice element names).
    :param initial: Actuator -> stored start setting (SI; short names ``q1 ... ch`` or
        actuator names).
    :param target: The target beam.
    """

    incoming: IncomingRecord
    misalignments: dict[str, float] = {}
    initial: dict[str, float] = {}
    target: TargetRecord

    @field_validator("misalignments")
    @classmethod
    def _misalignment_keys(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if not _MISALIGNMENT_KEY.match(k)]
        if bad:
            raise ValueError(f"misalignment keys must be '<element>_x' or '<element>_y', got {bad}")
        seen: dict[str, str] = {}
        for key in v:
            name = element_axis(key)
            if name in seen:
                raise ValueError(f"{seen[name]!r} and {key!r} both misalign {name}")
            seen[name] = key
        return v

    @field_validator("initial")
    @classmethod
    def _initial_keys(cls, v: dict[str, float]) -> dict[str, float]:
        names = [SHORT_ACTUATORS.get(k, k) for k in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"initial gives actuators {dup} twice")
        return v

    def misalignments_by_element(self) -> dict[str, float]:
        """``"ELEMENT.x"``/``"ELEMENT.y"`` -> misalignment [m] (short names resolved)."""
        return {element_axis(k): v for k, v in self.misalignments.items()}

    def initial_by_actuator(self) -> dict[str, float]:
        """Actuator name -> stored start setting (SI; short names resolved)."""
        return {SHORT_ACTUATORS.get(k, k): v for k, v in self.initial.items()}


def element_axis(key: str) -> str:
    """``"q1_x"`` -> ``"AREAMQZM1.x"``; ``"AREABSCR1_y"`` -> ``"AREABSCR1.y"``."""
    match = _MISALIGNMENT_KEY.match(key)
    if match is None:
        raise ValueError(f"misalignment key {key!r} is not '<element>_x' or '<element>_y'")
    element = match["element"]
    return f"{SHORT_ELEMENTS.get(element, element)}.{match['axis']}"


def _index(key: object) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def read_trial_set(path: str | Path | None = None) -> list[tuple[int, TrialRecord]]:
    """The validated trials of a trial-set file, ordered by index.

    :param path: Trial-set YAML; default :data:`DEFAULT_TRIALS` (the 300 published trials).
    :return: ``(index, record)`` pairs in increasing index order (records are immutable;
        a file read before and unchanged since is not parsed again).
    :raises TrialSetError: Naming the file and, for each invalid trial (up to
        :data:`MAX_REPORTED`), the trial index, the field, the value and the allowed range.
    """
    path = Path(path) if path is not None else DEFAULT_TRIALS
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TrialSetError(f"{path}: trial set file not found") from None
    except OSError as err:
        raise TrialSetError(f"{path}: cannot read the trial set: {err}") from None
    return list(_read(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _read(name: str, mtime_ns: int, size: int) -> tuple[tuple[int, TrialRecord], ...]:
    """The records of the file ``name`` as it was at ``(mtime_ns, size)`` (cached)."""
    path = Path(name)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise TrialSetError(f"{path}: cannot read the trial set: {err}") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise TrialSetError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TrialSetError(f"{path}: expected a mapping index -> trial, got {type(data).__name__}")
    bad_keys = [k for k in data if _index(k) is None]
    if bad_keys:
        raise TrialSetError(
            f"{path}: trial indices must be integers >= 0, got {bad_keys[:MAX_REPORTED]}"
        )
    indices = sorted(data, key=_index)  # type: ignore[arg-type]
    records: list[tuple[int, TrialRecord]] = []
    problems: list[str] = []
    invalid = 0
    for key in indices:
        index = _index(key)
        assert index is not None
        try:
            records.append((index, TrialRecord.model_validate(data[key])))
        except ValidationError as err:
            invalid += 1
            if invalid <= MAX_REPORTED:
                lines = [f"    {line.strip()}" for line in field_value_errors(err)]
                if len(lines) > MAX_LINES:
                    lines[MAX_LINES:] = [f"    ... and {len(lines) - MAX_LINES} more"]
                problems += [f"  trial {index} is malformed:", *lines]
    if problems:
        more = f"\n  ... and {invalid - MAX_REPORTED} more trials" if invalid > MAX_REPORTED else ""
        raise TrialSetError(f"{path}: invalid trial set\n" + "\n".join(problems) + more)
    if len({i for i, _ in records}) != len(records):
        raise TrialSetError(f"{path}: trial indices repeat (e.g. 1 and '1')")
    return tuple(records)
