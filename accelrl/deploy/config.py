"""Machine configuration: how an environment's knob and observation names map onto a real
(or virtual) machine, and the operator-owned limits the safety layer enforces.

A machine config is a YAML file in the top-level ``deploy/`` folder, validated here. Example
(abridged; see ``deploy/virtual_ares_ea_machine.yaml``)::

    name: virtual-ares-ea
    env_id: accelrl/AresEATransverseTuning-v0
    transport: ca                      # ca | pva | sim
    knobs:
      - name: Q1
        unit: 1/m^2
        setpoint: VA:AREAMQZM1:K1:SP
        readback: VA:AREAMQZM1:K1:RB
        busy: VA:AREAMQZM1:BUSY
        low: -30.0                     # hard limits, owned by the operator
        high: 30.0
        max_step: 3.0                  # largest change per write
        tolerance: 0.01                # |readback - setpoint| accepted as done
    observations:
      - {name: mu_x, unit: m, pv: VA:AREABSCR1:MU_X}
    frame_pv: VA:AREABSCR1:FRAME       # optional: all observations of one frame in one array
    interlock: {pv: VA:INTERLOCK, tripped_when: 1}
    beam_loss: {pv: VA:BEAM_LOSS, max: 0.5}
    heartbeat: {pv: VA:HEARTBEAT, max_age_s: 2.0}
    timing: {settle_timeout_s: 5.0, poll_interval_s: 0.02, connect_timeout_s: 3.0}
    rollback: {ramp_steps_max: 20}

Hard limits here are never widened by a policy, a bundle or the command line: the effective
limits of a knob are the intersection of this file's and the bundle's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accelrl.config import format_validation_error, load_yaml_mapping


class MachineConfigError(ValueError):
    """A machine config is missing, malformed or inconsistent (the message names the field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KnobConfig(_Model):
    """One actuator.

    :param name: Name used by the environment and the policy (e.g. ``"Q1"``).
    :param unit: SI unit of the value (documentation; values are never converted).
    :param setpoint: Setpoint PV (``None`` for the simulation transport).
    :param readback: Readback PV (defaults to the setpoint PV).
    :param busy: Optional PV that is non-zero while the actuator moves.
    :param low: Hard lower limit (SI).
    :param high: Hard upper limit (SI).
    :param max_step: Largest absolute change per write (SI, > 0).
    :param tolerance: Largest ``|readback - setpoint|`` accepted as arrived (SI, > 0).
    """

    name: str = Field(min_length=1)
    unit: str = ""
    setpoint: str | None = None
    readback: str | None = None
    busy: str | None = None
    low: float
    high: float
    max_step: float = Field(gt=0.0)
    tolerance: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> KnobConfig:
        for field_name in ("low", "high", "max_step", "tolerance"):
            value = getattr(self, field_name)
            if not math.isfinite(value):
                raise ValueError(f"knob {self.name!r}: {field_name} must be finite, got {value}")
        if not self.low < self.high:
            raise ValueError(
                f"knob {self.name!r}: low ({self.low}) must be below high ({self.high})"
            )
        return self

    @property
    def readback_pv(self) -> str | None:
        """The readback PV (the setpoint PV when no separate readback exists)."""
        return self.readback or self.setpoint


class ObservationConfig(_Model):
    """One observed quantity.

    :param name: Name used by the environment (e.g. ``"sigma_x"``).
    :param unit: SI unit.
    :param pv: PV holding the value (``None`` for the simulation transport).
    """

    name: str = Field(min_length=1)
    unit: str = ""
    pv: str | None = None


class InterlockConfig(_Model):
    """Interlock PV: writing stops when it reads ``tripped_when``."""

    pv: str | None = None
    tripped_when: float = 1.0


class BeamLossConfig(_Model):
    """Beam-loss PV: abort when it reads above ``max`` (machine units)."""

    pv: str | None = None
    max: float = 0.5


class HeartbeatConfig(_Model):
    """Heartbeat PV: abort when it has not changed for ``max_age_s`` [s]."""

    pv: str | None = None
    max_age_s: float = Field(2.0, gt=0.0)


class TimingConfig(_Model):
    """Timeouts and polling [s]."""

    settle_timeout_s: float = Field(5.0, gt=0.0)
    poll_interval_s: float = Field(0.02, gt=0.0)
    connect_timeout_s: float = Field(3.0, gt=0.0)
    reading_timeout_s: float = Field(5.0, gt=0.0)


class RollbackConfig(_Model):
    """Rollback to the initial settings: ramped at each knob's ``max_step`` per write, in at
    most ``ramp_steps_max`` writes."""

    ramp_steps_max: int = Field(50, ge=1)


class MachineConfig(_Model):
    """A whole machine config (see the module docstring for an example).

    :param name: Machine name (logs, plots).
    :param env_id: Environment id whose knobs/observations this machine provides.
    :param transport: ``"ca"`` (EPICS Channel Access), ``"pva"`` (PV Access) or ``"sim"``.
    :param knobs: Actuators, in the policy's action order.
    :param observations: Observed quantities, in the environment's order.
    :param frame_pv: Optional array PV holding one whole frame: the values of
        ``observations`` in their order, posted together with one time stamp (the separate
        observation PVs carry the same values and time stamp). Not part of :attr:`pv_names`.
    """

    name: str = Field(min_length=1)
    env_id: str = Field(min_length=1)
    transport: Literal["ca", "pva", "sim"] = "ca"
    knobs: tuple[KnobConfig, ...] = Field(min_length=1)
    observations: tuple[ObservationConfig, ...] = Field(min_length=1)
    frame_pv: str | None = Field(None, min_length=1)
    interlock: InterlockConfig = InterlockConfig()
    beam_loss: BeamLossConfig = BeamLossConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    timing: TimingConfig = TimingConfig()
    rollback: RollbackConfig = RollbackConfig()

    @model_validator(mode="after")
    def _check(self) -> MachineConfig:
        for kind, items in (("knob", self.knobs), ("observation", self.observations)):
            names = [item.name for item in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} names: {dupes}")
        if self.transport != "sim":
            for knob in self.knobs:
                if knob.setpoint is None:
                    raise ValueError(
                        f"knob {knob.name!r}: transport {self.transport!r} needs a setpoint PV"
                    )
            for obs in self.observations:
                if obs.pv is None:
                    raise ValueError(
                        f"observation {obs.name!r}: transport {self.transport!r} needs a pv"
                    )
        return self

    @property
    def knob_names(self) -> tuple[str, ...]:
        """Knob names in action order."""
        return tuple(k.name for k in self.knobs)

    @property
    def observation_names(self) -> tuple[str, ...]:
        """Observation names in order."""
        return tuple(o.name for o in self.observations)

    @property
    def pv_names(self) -> tuple[str, ...]:
        """Every PV of the config, each once, in a fixed order: per knob its setpoint,
        readback and busy flag, then the observations, interlock, beam loss and heartbeat
        (empty for ``transport: sim``)."""
        names: list[str | None] = []
        for k in self.knobs:
            names += [k.setpoint, k.readback_pv, k.busy]
        names += [o.pv for o in self.observations]
        names += [self.interlock.pv, self.beam_loss.pv, self.heartbeat.pv]
        return tuple(dict.fromkeys(n for n in names if n))

    def knob(self, name: str) -> KnobConfig:
        """The knob called ``name`` (``KeyError`` listing the known names)."""
        for knob in self.knobs:
            if knob.name == name:
                return knob
        raise KeyError(f"no knob {name!r}; known: {list(self.knob_names)}")


def load_machine_config(path: str | Path) -> MachineConfig:
    """Load and validate a machine config YAML.

    :param path: Path of the YAML file (e.g. ``deploy/virtual_ares_ea.yaml``).
    :raises MachineConfigError: If the file is missing, not YAML, not a mapping, or invalid;
        the message names the file, the field and the value.
    """
    data = load_yaml_mapping(path, MachineConfigError, "machine config")
    try:
        return MachineConfig.model_validate(data)
    except ValidationError as err:
        raise MachineConfigError(
            format_validation_error(err, f"invalid machine config {path}:")
        ) from None
