"""Machine configuration: how an environment's knob and observation names map onto a real
(or virtual) machine, and the operator-owned limits the safety layer enforces.

A machine config is a YAML file in the top-level ``deploy/`` folder, validated here. Example
(abridged; see ``deploy/virtual_ares_ea_machine.yaml``)::

    name: virtual-ares-ea
    env_id: accelrl/AresEATransverseTuning-v0
    transport: ca                      # ca | pva | sim
    ca_client: pyepics                 # ca only: pyepics (EPICS base's libca) | caproto
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
    heartbeat: {none: "test stand: the IOC has no heartbeat record"}
    timing: {settle_timeout_s: 5.0, poll_interval_s: 0.02, connect_timeout_s: 3.0}
    rollback: {ramp_steps_max: 20, outage_deadline_s: 5.0}

Hard limits here are never widened by a policy, a bundle or the command line: the effective
limits of a knob are the intersection of this file's and the bundle's.

**Protections are explicit.** A machine reached over EPICS (``transport: ca`` or ``pva``)
must name a PV for each of ``interlock``, ``beam_loss`` and ``heartbeat``, or opt out of it
with ``{none: "<reason>"}``; a missing protection is refused, never silently off. The
opt-outs are shown when a run starts and written in its log's first record
(:meth:`MachineConfig.protections`). With ``transport: sim`` the simulation reports the
protections itself (:class:`~accelrl.deploy.sim.SimMachine`'s injected faults); a sim config
may opt out of one too, and the simulation then never reports it.

Every number is finite (NaN and infinity are refused wherever they appear: thresholds,
timeouts, limits); a knob's ``tolerance`` is below its ``max_step`` and its range (else a
rejected put or another client's write could not be told from an applied put); every PV
name is used once, in one role (a knob's readback may be its own setpoint PV).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accelrl.config import format_validation_error, load_yaml_mapping


class MachineConfigError(ValueError):
    """A machine config is missing, malformed or inconsistent (the message names the field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class KnobConfig(_Model):
    """One actuator.

    :param name: Name used by the environment and the policy (e.g. ``"Q1"``).
    :param unit: SI unit of the value (values are never converted). An EPICS machine
        refuses to run when the IOC's ``EGU`` of the setpoint or readback differs
        (:mod:`accelrl.deploy.epics.ioc_check`); empty: not checked.
    :param egu: The IOC's ``EGU`` string of this value when it is spelled differently from
        ``unit`` (the same unit, e.g. ``"m-2"`` for ``1/m^2``); ``""`` accepts an IOC that
        gives no unit. Default: ``unit``.
    :param setpoint: Setpoint PV (``None`` for the simulation transport).
    :param readback: Readback PV (defaults to the setpoint PV).
    :param busy: Optional PV that is non-zero while the actuator moves.
    :param low: Hard lower limit (SI).
    :param high: Hard upper limit (SI).
    :param max_step: Largest absolute change per write (SI, > 0).
    :param tolerance: Largest ``|readback - setpoint|`` accepted as arrived, and the
        resolution at which setpoints read back are compared with the values written (SI,
        > 0, below ``max_step`` and below ``high - low``).
    """

    name: str = Field(min_length=1)
    unit: str = ""
    egu: str | None = None
    setpoint: str | None = Field(None, min_length=1)
    readback: str | None = Field(None, min_length=1)
    busy: str | None = Field(None, min_length=1)
    low: float
    high: float
    max_step: float = Field(gt=0.0)
    tolerance: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> KnobConfig:
        for field_name in ("low", "high", "max_step", "tolerance"):
            value = getattr(self, field_name)
            if not math.isfinite(value):  # also refused by the model config; kept explicit
                raise ValueError(f"knob {self.name!r}: {field_name} must be finite, got {value}")
        if not self.low < self.high:
            raise ValueError(
                f"knob {self.name!r}: low ({self.low}) must be below high ({self.high})"
            )
        if not self.tolerance < self.high - self.low:
            raise ValueError(
                f"knob {self.name!r}: tolerance = {self.tolerance!r} must be below the knob's "
                f"range high - low = {self.high - self.low!r}"
            )
        if not self.tolerance < self.max_step:
            raise ValueError(
                f"knob {self.name!r}: tolerance = {self.tolerance!r} must be below max_step = "
                f"{self.max_step!r} (else a put that was not applied cannot be told from one "
                "that was)"
            )
        return self

    @property
    def readback_pv(self) -> str | None:
        """The readback PV (the setpoint PV when no separate readback exists)."""
        return self.readback or self.setpoint


class ObservationConfig(_Model):
    """One observed quantity.

    :param name: Name used by the environment (e.g. ``"sigma_x"``).
    :param unit: SI unit (checked against the IOC's ``EGU`` as a knob's).
    :param egu: The IOC's ``EGU`` string when spelled differently (as a knob's).
    :param pv: PV holding the value (``None`` for the simulation transport).
    """

    name: str = Field(min_length=1)
    unit: str = ""
    egu: str | None = None
    pv: str | None = Field(None, min_length=1)


class _ProtectionConfig(_Model):
    """A protection: its PV, or an explicit opt-out ``none: <reason>`` (not both).

    :param pv: The PV to watch.
    :param none: Why this machine has no such protection (printed at the start of every
        run and written in its log).
    """

    pv: str | None = Field(None, min_length=1)
    none: str | None = None

    @model_validator(mode="after")
    def _pv_or_none(self) -> _ProtectionConfig:
        if self.none is not None and not self.none.strip():
            raise ValueError("none: give the reason this machine has no such protection")
        if self.pv is not None and self.none is not None:
            raise ValueError(
                f"name either a pv ({self.pv!r}) or an opt-out none: {self.none!r}, not both"
            )
        return self

    @property
    def opted_out(self) -> bool:
        """The config says explicitly that this machine has no such protection."""
        return self.none is not None


class InterlockConfig(_ProtectionConfig):
    """Interlock PV: writing stops when it reads ``tripped_when`` (finite)."""

    tripped_when: float = 1.0


class BeamLossConfig(_ProtectionConfig):
    """Beam-loss PV: abort when it reads above ``max`` (machine units, finite)."""

    max: float = 0.5


class HeartbeatConfig(_ProtectionConfig):
    """Heartbeat PV: abort when it has not changed for ``max_age_s`` [s] (finite, > 0)."""

    max_age_s: float = Field(2.0, gt=0.0)


#: The protections of a machine config: field name -> what it guards against (messages).
PROTECTIONS: dict[str, str] = {
    "interlock": "an interlock",
    "beam_loss": "a beam-loss monitor",
    "heartbeat": "a heartbeat",
}


class TimingConfig(_Model):
    """Timeouts and polling [s] (finite, > 0)."""

    settle_timeout_s: float = Field(5.0, gt=0.0)
    poll_interval_s: float = Field(0.02, gt=0.0)
    connect_timeout_s: float = Field(3.0, gt=0.0)
    reading_timeout_s: float = Field(5.0, gt=0.0)


class RollbackConfig(_Model):
    """Rollback to the initial settings: ramped at each knob's ``max_step`` per write, in at
    most ``ramp_steps_max`` writes (when nothing fails).

    :param ramp_steps_max: Largest number of ramp writes a rollback may need (the safety
        layer keeps every setting within this many max steps of the initial one).
    :param outage_deadline_s: How long [s] the rollback keeps trying (reconnecting,
        re-reading the setpoints, retrying a write) without making progress before it gives
        up and reports what it could not restore (finite, >= 0).
    """

    ramp_steps_max: int = Field(50, ge=1)
    outage_deadline_s: float = Field(5.0, ge=0.0)


class MachineConfig(_Model):
    """A whole machine config (see the module docstring for an example).

    :param name: Machine name (logs, plots).
    :param env_id: Environment id whose knobs/observations this machine provides.
    :param transport: ``"ca"`` (EPICS Channel Access), ``"pva"`` (PV Access) or ``"sim"``.
    :param ca_client: The Channel Access client of ``transport: ca``: ``"caproto"``
        (default; pure Python) or ``"pyepics"`` (EPICS base's libca through pyepics: the
        fastest). Only with ``transport: ca``.
    :param knobs: Actuators, in the policy's action order.
    :param observations: Observed quantities, in the environment's order.
    :param frame_pv: Optional array PV holding one whole frame: the values of
        ``observations`` in their order, posted together with one time stamp (the separate
        observation PVs carry the same values and time stamp). Not part of :attr:`pv_names`.
    :param interlock: Interlock PV, or an opt-out (required for ``ca``/``pva``).
    :param beam_loss: Beam-loss PV, or an opt-out (required for ``ca``/``pva``).
    :param heartbeat: Heartbeat PV, or an opt-out (required for ``ca``/``pva``).
    :param timing: Timeouts and polling.
    :param rollback: Rollback ramp and outage deadline.
    """

    name: str = Field(min_length=1)
    env_id: str = Field(min_length=1)
    transport: Literal["ca", "pva", "sim"] = "ca"
    ca_client: Literal["caproto", "pyepics"] = "caproto"
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
        problems: list[str] = []
        for kind, items in (("knob", self.knobs), ("observation", self.observations)):
            names = [item.name for item in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                problems.append(f"duplicate {kind} names: {dupes}")
        default_client = type(self).model_fields["ca_client"].default
        if self.transport != "ca" and self.ca_client != default_client:  # a dump round-trips
            problems.append(
                f"ca_client: {self.ca_client!r} applies to transport 'ca' only (transport is "
                f"{self.transport!r})"
            )
        if self.transport != "sim":
            problems += [
                f"knobs.{i}.setpoint: knob {k.name!r}: transport {self.transport!r} needs a "
                "setpoint PV"
                for i, k in enumerate(self.knobs)
                if k.setpoint is None
            ]
            problems += [
                f"observations.{i}.pv: observation {o.name!r}: transport {self.transport!r} "
                "needs a pv"
                for i, o in enumerate(self.observations)
                if o.pv is None
            ]
            problems += [
                f"{key}: transport {self.transport!r} needs {what} PV ({key}: {{pv: ...}}) "
                f'or an explicit opt-out ({key}: {{none: "<reason>"}})'
                for key, what in PROTECTIONS.items()
                if getattr(self, key).pv is None and not getattr(self, key).opted_out
            ]
        problems += self._pv_role_problems()
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _pv_role_problems(self) -> list[str]:
        """Every PV in one role only (a knob's readback may be its own setpoint PV)."""
        roles: dict[str, list[str]] = {}
        for i, k in enumerate(self.knobs):
            roles.setdefault(k.setpoint or "", []).append(f"knobs.{i}.setpoint")
            if k.readback is not None and k.readback != k.setpoint:
                roles.setdefault(k.readback, []).append(f"knobs.{i}.readback")
            roles.setdefault(k.busy or "", []).append(f"knobs.{i}.busy")
        for i, o in enumerate(self.observations):
            roles.setdefault(o.pv or "", []).append(f"observations.{i}.pv")
        for key in PROTECTIONS:
            roles.setdefault(getattr(self, key).pv or "", []).append(f"{key}.pv")
        roles.pop("", None)
        return [
            f"every PV must have one role: PV {pv!r} is used by {' and '.join(r)}"
            for pv, r in roles.items()
            if len(r) > 1
        ]

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

    def protections(self) -> dict[str, dict[str, Any]]:
        """What guards the machine, per protection (``interlock``, ``beam_loss``,
        ``heartbeat``): ``{"pv": ..., <threshold>: ...}`` when a PV is named, ``{"none":
        <reason>}`` for an opt-out, ``{"simulated": True, <threshold>: ...}`` for a sim
        machine that names neither (the simulation reports it). Written in the run log's
        first record."""
        out: dict[str, dict[str, Any]] = {}
        for key in PROTECTIONS:
            p = getattr(self, key)
            if p.opted_out:
                out[key] = {"none": p.none}
                continue
            entry: dict[str, Any] = {"pv": p.pv} if p.pv is not None else {"simulated": True}
            entry.update(p.model_dump(exclude={"pv", "none"}))
            out[key] = entry
        return out

    def protection_lines(self) -> list[str]:
        """:meth:`protections` for people: one line each, opt-outs marked ``OFF``.

        >>> load_machine_config("deploy/sim_ares_ea.yaml").protection_lines()[0]
        'interlock: simulated (tripped_when 1.0)'
        """
        lines = []
        for key, entry in self.protections().items():
            rest = ", ".join(
                f"{k} {v}" for k, v in entry.items() if k not in ("pv", "none", "simulated")
            )
            if "none" in entry:
                lines.append(f"{key}: OFF (none: {entry['none']})")
            elif "pv" in entry:
                lines.append(f"{key}: {entry['pv']} ({rest})")
            else:
                lines.append(f"{key}: simulated ({rest})")
        return lines

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
