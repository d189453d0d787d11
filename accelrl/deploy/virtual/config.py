"""Configuration of the virtual accelerator (``deploy/virtual_ares_ea.yaml``), validated.

The IOC config references a machine config (:class:`~accelrl.deploy.config.MachineConfig`)
whose PV names the IOC serves, so PV names live in exactly one file. ``prefix`` serves the
same PVs under another common prefix (parallel IOCs on one host); :func:`with_prefix`
gives clients the machine config with the renamed PVs.

Faults (names accepted by ``faults.active``, ``faults.schedule`` and the ``<prefix>FAULT`` PV):

* ``disconnect``: the IOC drops every client circuit and answers nothing for
  ``faults.disconnect_s`` seconds (the ``softioc`` server restarts its IOC process: see
  :mod:`accelrl.deploy.virtual.supervisor`).
* ``stale``: the screen PVs stop updating (values and timestamps frozen).
* ``reject_put``: setpoint writes are refused with an error (``ECA_PUTFAIL``);
  ``reject_put:N`` (FAULT PV) or ``writes: N`` (schedule): only the next N writes.
* ``ignore_put``: setpoint writes are confirmed but silently not applied (``:N`` as above).
* ``interlock``: the interlock PV trips.
* ``beam_loss``: the beam-loss PV reads ``faults.beam_loss_level``.
* ``stuck``: the readback of ``faults.stuck_knob`` freezes (busy still clears).
* ``heartbeat``: the heartbeat counter stops.

Servers (``server``): ``softioc`` (default), an EPICS 7 IOC built with pythonSoftIOC that
serves Channel Access and PV Access from EPICS base's own servers, with real records
(``ao``/``ai``/``bi``/``longin``/``waveform``), fields and alarms; or ``caproto``, a pure-Python
Channel Access server (no compiled dependencies, plain PVs without record fields). See
``docs/virtual_accelerator.md``.

This module needs pydantic and PyYAML only (the trial set is checked with
:mod:`accelrl.trialset`, without the simulation). Its size (~520 lines): one pydantic schema
tree (the IOC config and its sections) with its loader and fault schedule; the docstrings
documenting every field and fault are nearly a third of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accelrl.config import format_validation_error, load_yaml_mapping
from accelrl.deploy.config import MachineConfig, load_machine_config
from accelrl.trialset import DEFAULT_TRIALS, TrialSetError, read_trial_set

#: A fault the virtual accelerator can inject.
FaultName = Literal[
    "disconnect",
    "stale",
    "reject_put",
    "ignore_put",
    "interlock",
    "beam_loss",
    "stuck",
    "heartbeat",
]
#: Faults the virtual accelerator can inject.
FAULTS: tuple[str, ...] = get_args(FaultName)
#: The servers that can serve the virtual accelerator.
ServerName = Literal["softioc", "caproto"]
#: How a setpoint write outside a knob's limits (DRVL/DRVH) is answered.
Refusal = Literal["clamp", "reject"]


class VirtualConfigError(ValueError):
    """An IOC config is missing, malformed or inconsistent (the message names the field)."""


class _Model(BaseModel):
    # Every float must be finite: NaN and +-inf are refused with the field named.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MagnetsConfig(_Model):
    """Power-supply dynamics.

    :param settle_time_s: Duration of every move: the readback ramps linearly from its
        value to the new setpoint over this time and ``BUSY`` reads 1 meanwhile [s]
        (0: moves are instantaneous).
    :param update_rate_hz: Readback updates per second while ramping [1/s].
    """

    settle_time_s: float = Field(0.3, ge=0.0, le=60.0)
    update_rate_hz: float = Field(50.0, gt=0.0, le=1000.0)


class ScreenConfig(_Model):
    """The screen (camera) that measures the beam.

    :param frame_rate_hz: New beam-parameter readings per second [1/s]; a reading is also
        published as soon as all magnets have settled.
    :param reading_noise: Standard deviation of the Gaussian noise on each centroid and
        size reading [m].
    :param seed: Seed of the reading noise.
    :param image: Also serve the screen image as a waveform PV ``<prefix>AREABSCR1:IMAGE``
        with ``:WIDTH``/``:HEIGHT`` (row 0 at the top, rows of ``width`` pixels): in a world
        with a camera, the camera's expected processed image of the beam (the image its
        readout works on), else a 2-D Gaussian of the read beam.
    :param image_shape: ``(width, height)`` of that image [px].
    :param image_dtype: Pixel type of the image waveform (``uint8``: 0..255, ``uint16``:
        0..65535; the caproto server serves ``uint8`` only).
    """

    frame_rate_hz: float = Field(10.0, gt=0.0, le=1000.0)
    reading_noise: float = Field(0.0, ge=0.0)
    seed: int = Field(0, ge=0, lt=2**63)
    image: bool = False
    image_shape: tuple[int, int] = (128, 96)
    image_dtype: Literal["uint8", "uint16"] = "uint8"

    @model_validator(mode="after")
    def _check(self) -> ScreenConfig:
        if not math.isfinite(self.reading_noise):
            raise ValueError(f"reading_noise must be finite, got {self.reading_noise}")
        w, h = self.image_shape
        if not (8 <= w <= 1024 and 8 <= h <= 1024):
            raise ValueError(f"image_shape must be within 8..1024 px each, got {self.image_shape}")
        return self


class FaultEvent(_Model):
    """A fault switched on by the IOC itself.

    :param fault: Fault name (see the module docstring).
    :param after_puts: Switch on when this many setpoint writes have been received.
    :param after_s: Switch on this long after the IOC started [s].
    :param duration_s: Switch off again after this long [s] (``None``: stays on;
        ``disconnect`` always lasts ``faults.disconnect_s``).
    :param writes: ``reject_put``/``ignore_put`` only: switch off after refusing or
        ignoring this many setpoint writes (e.g. 1: one lost write).
    """

    fault: FaultName
    after_puts: int | None = Field(None, ge=0)
    after_s: float | None = Field(None, ge=0.0)
    duration_s: float | None = Field(None, gt=0.0)
    writes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> FaultEvent:
        if (self.after_puts is None) == (self.after_s is None):
            raise ValueError(
                f"fault event {self.fault!r}: give exactly one of after_puts and after_s"
            )
        if self.writes is not None and self.fault not in ("reject_put", "ignore_put"):
            raise ValueError(
                f"fault event {self.fault!r}: writes applies to reject_put and ignore_put only"
            )
        return self


class FaultsConfig(_Model):
    """Fault injection.

    :param active: Faults on from the start (``disconnect`` only at run time or scheduled).
    :param stuck_knob: Knob whose readback ``stuck`` freezes (default: the first knob).
    :param beam_loss_level: Beam-loss reading while ``beam_loss`` is on (machine units, >= 0).
    :param disconnect_s: How long ``disconnect`` keeps the IOC silent [s].
    :param schedule: Faults the IOC switches on by itself.
    """

    active: tuple[FaultName, ...] = ()
    stuck_knob: str | None = None
    beam_loss_level: float = Field(1.0, ge=0.0)
    disconnect_s: float = Field(3.0, gt=0.0, le=600.0)
    schedule: tuple[FaultEvent, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> FaultsConfig:
        if "disconnect" in self.active:
            raise ValueError(
                "faults.active: 'disconnect' cannot be on from the start (no client could "
                "connect); schedule it (faults.schedule) or write it to the FAULT PV"
            )
        return self


class RecordsConfig(_Model):
    """EPICS record settings: how setpoint writes outside the limits are answered and the
    monitor deadbands.

    :param refusal: Every knob's answer to a setpoint write outside its limits (DRVL/DRVH
        of the ``ao`` record): ``"clamp"`` (what an EPICS ``ao`` record does: the value is
        clamped to the limit and the write reports success) or ``"reject"`` (the write is
        refused: ``ECA_PUTFAIL``, the setpoint keeps its value).
    :param refusal_by_knob: Knob name -> ``"clamp"``/``"reject"``, overriding ``refusal``.
    :param readback_deadband: Knob name -> monitor deadband of its readback (``ai`` fields
        MDEL and ADEL, in the knob's unit): a monitor gets an update only when the value
        moved by more than this since the last one (knobs not named: 0, every change).
    :param observation_deadband: MDEL/ADEL of the screen readings [m]; -1 (default): every
        frame is posted, even with unchanged values (a camera frame is a new measurement).
    """

    refusal: Refusal = "clamp"
    refusal_by_knob: dict[str, Refusal] = Field(default_factory=dict)
    readback_deadband: dict[str, float] = Field(default_factory=dict)
    observation_deadband: float = Field(-1.0, ge=-1.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> RecordsConfig:
        for knob, value in self.readback_deadband.items():
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(
                    f"readback_deadband[{knob!r}] must be a finite value >= 0, got {value}"
                )
        return self

    def refusal_of(self, knob: str) -> Refusal:
        """The refusal mode of ``knob``."""
        return self.refusal_by_knob.get(knob, self.refusal)


class VirtualConfig(_Model):
    """A whole IOC config (see ``deploy/virtual_ares_ea.yaml``).

    :param machine: Machine config whose PVs are served (path, relative to the IOC config).
    :param trial: Index of the published trial whose hidden state the plant simulates.
    :param trials_file: Trial-set YAML (default: the published ARES-EA set of accelrl).
    :param initial_knobs: ``"standard"`` (the task's start settings), ``"trial"`` (the
        trial's stored settings) or knob name -> setting (SI).
    :param server: ``"softioc"`` (EPICS base IOC, Channel Access and PV Access) or
        ``"caproto"`` (pure-Python Channel Access server).
    :param port: Channel Access server port (``EPICS_CA_SERVER_PORT``).
    :param pva_port: PV Access server port, TCP and UDP search (``softioc`` only).
    :param repeater_port: Port of the CA repeater that receives the IOC's beacons
        (``EPICS_CA_REPEATER_PORT``); the ``softioc`` server starts one on the interface if
        none runs there, so that clients learn at once when the IOC is back after an outage.
    :param prefix: Serve the PVs with this common prefix instead of the machine config's.
    :param sim_prefix: The test-only PVs (``FAULT``, ``PUT_COUNT``, ``RESET``, ``TRIAL``,
        ``TRUE:MAE``) are served as ``<prefix><sim_prefix>FAULT``, ... (``VA:SIM:FAULT``).
    :param interface: Network interface (address) to serve on.
    :param heartbeat_period_s: The heartbeat counter increments with this period [s].
    :param beam_loss_level: Beam-loss reading in normal operation (machine units, >= 0).
    :param records: EPICS record settings (refusal mode, deadbands).
    :param world: The world the simulation runs in (:mod:`accelrl.envs.world`): a shipped
        name (``ares-realistic``, overlays with ``+``) or a YAML path relative to the IOC
        config; ``None``: the task spec's (ideal). Its camera readout gives the screen
        readings, its magnets turn the readbacks into fields, its beam jitters and drifts
        (each simulation update is one step).
    """

    machine: Path
    trial: int = Field(0, ge=0)
    trials_file: Path | None = None
    initial_knobs: Literal["standard", "trial"] | dict[str, float] = "standard"
    server: ServerName = "softioc"
    port: int = Field(5064, ge=1024, le=65535)
    pva_port: int = Field(5075, ge=1024, le=65535)
    repeater_port: int = Field(5065, ge=1024, le=65535)
    prefix: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_:\-.]+$")
    sim_prefix: str = Field("SIM:", min_length=1, pattern=r"^[A-Za-z0-9_:\-.]+$")
    interface: str = "127.0.0.1"
    magnets: MagnetsConfig = MagnetsConfig()
    screen: ScreenConfig = ScreenConfig()
    heartbeat_period_s: float = Field(0.5, gt=0.0, le=60.0)
    beam_loss_level: float = Field(0.05, ge=0.0)
    faults: FaultsConfig = FaultsConfig()
    records: RecordsConfig = RecordsConfig()
    world: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check_ports(self) -> VirtualConfig:
        used = {"port": self.port, "pva_port": self.pva_port, "repeater_port": self.repeater_port}
        if len(set(used.values())) < len(used):
            raise ValueError(f"port, pva_port and repeater_port must differ, got {used}")
        return self


def common_prefix(machine: MachineConfig) -> str:
    """The prefix every PV of ``machine`` starts with: the text up to and including the
    first ``":"`` (e.g. ``"VA:"``).

    :raises VirtualConfigError: If the PVs do not share one such prefix.
    """
    names = machine.pv_names
    prefixes = {n.split(":", 1)[0] + ":" for n in names if ":" in n}
    if len(prefixes) != 1 or any(":" not in n for n in names):
        raise VirtualConfigError(
            f"machine {machine.name!r}: PV names must share one prefix ending in ':' to be "
            f"renamed, found {sorted(prefixes)}"
        )
    return prefixes.pop()


def with_prefix(machine: MachineConfig, prefix: str | None) -> MachineConfig:
    """``machine`` with its common PV prefix replaced by ``prefix`` (unchanged if ``None``).

    :param machine: Machine config whose PVs share one prefix (e.g. ``"VA:"``).
    :param prefix: New prefix (e.g. ``"VA7:"``).
    """
    if prefix is None:
        return machine
    old = common_prefix(machine)

    def rename(pv: str | None) -> str | None:
        return None if pv is None else prefix + pv[len(old) :]

    data = machine.model_dump()
    for knob in data["knobs"]:
        for key in ("setpoint", "readback", "busy"):
            knob[key] = rename(knob[key])
    for obs in data["observations"]:
        obs["pv"] = rename(obs["pv"])
    for key in ("interlock", "beam_loss", "heartbeat"):
        data[key]["pv"] = rename(data[key]["pv"])
    data["frame_pv"] = rename(data.get("frame_pv"))
    return MachineConfig.model_validate(data)


def _format(err: ValidationError, source: str) -> str:
    return format_validation_error(err, f"invalid virtual accelerator config {source}:")


class LoadedConfig:
    """An IOC config with its machine config loaded and checked against each other.

    :param config: The IOC config.
    :param machine: The machine config as written in its file.
    :param source: Where the IOC config came from (messages).
    :raises VirtualConfigError: If the two disagree (transport, stuck knob, initial knobs
        outside the knob limits) or the trial is not in its trial set.
    """

    def __init__(self, config: VirtualConfig, machine: MachineConfig, source: str = "") -> None:
        served = ("ca", "pva") if config.server == "softioc" else ("ca",)
        if machine.transport not in served:
            raise VirtualConfigError(
                f"{source}: the {config.server} server of the virtual accelerator serves "
                f"{' and '.join(served)}; machine config {machine.name!r} has transport "
                f"{machine.transport!r}"
            )
        names = set(machine.knob_names)
        for field_name in ("refusal_by_knob", "readback_deadband"):
            unknown = sorted(set(getattr(config.records, field_name)) - names)
            if unknown:
                raise VirtualConfigError(
                    f"{source}: records.{field_name} names unknown knobs {unknown} "
                    f"(knobs: {list(machine.knob_names)})"
                )
        limit = machine.beam_loss.max
        if not math.isfinite(limit):
            raise VirtualConfigError(
                f"{source}: machine config {machine.name!r}: beam_loss.max must be finite "
                f"(the IOC's HIHI alarm limit), got {limit}"
            )
        if machine.interlock.tripped_when not in (0.0, 1.0):
            raise VirtualConfigError(
                f"{source}: machine config {machine.name!r}: interlock.tripped_when must be "
                f"0 or 1 (a binary input), got {machine.interlock.tripped_when}"
            )
        stuck = config.faults.stuck_knob
        if stuck is not None and stuck not in names:
            raise VirtualConfigError(
                f"{source}: faults.stuck_knob {stuck!r} is not a knob of {machine.name!r} "
                f"(knobs: {list(machine.knob_names)})"
            )
        if isinstance(config.initial_knobs, dict):
            unknown = sorted(set(config.initial_knobs) - names)
            if unknown:
                raise VirtualConfigError(
                    f"{source}: initial_knobs names unknown knobs {unknown} "
                    f"(knobs: {list(machine.knob_names)})"
                )
        if config.server == "caproto" and config.screen.image_dtype != "uint8":
            raise VirtualConfigError(
                f"{source}: screen.image_dtype {config.screen.image_dtype!r}: the caproto "
                "server serves uint8 images only"
            )
        common_prefix(machine)  # the IOC's own PVs go under the common prefix
        _check_plant(config, machine, source)
        self.config = config
        self.base_machine = machine
        self.source = source

    @property
    def machine(self) -> MachineConfig:
        """The machine config with the PV names the IOC serves (``prefix`` applied)."""
        return with_prefix(self.base_machine, self.config.prefix)

    @property
    def sim_prefix(self) -> str:
        """Full prefix of the test-only PVs (e.g. ``"VA:SIM:"``)."""
        return common_prefix(self.machine) + self.config.sim_prefix

    def replace(self, **changes: object) -> LoadedConfig:
        """A copy with top-level IOC config fields changed (e.g. ``port=..., prefix=...``),
        validated again."""
        data = self.config.model_dump()
        data.update(changes)
        try:
            config = VirtualConfig.model_validate(data)
        except ValidationError as err:
            raise VirtualConfigError(_format(err, self.source)) from None
        return LoadedConfig(config, self.base_machine, self.source)


def _check_plant(config: VirtualConfig, machine: MachineConfig, source: str) -> None:
    """Check what the plant will be built from: the trial exists in its (valid) trial set and
    every initial knob setting lies within the machine config's knob limits.

    :raises VirtualConfigError: Naming the file, the field, the value and the allowed range.
    """
    path = config.trials_file if config.trials_file is not None else DEFAULT_TRIALS
    try:
        trials = read_trial_set(path)
    except TrialSetError as err:
        raise VirtualConfigError(f"{source}: trials_file: {err}") from None
    if not 0 <= config.trial < len(trials):
        raise VirtualConfigError(
            f"{source}: trial = {config.trial}: out of range; the trial set {path} has "
            f"{len(trials)} trials (0..{len(trials) - 1})"
        )
    if config.initial_knobs == "standard":
        return
    if config.initial_knobs == "trial":
        index, record = trials[config.trial]
        settings = record.initial_by_actuator()
        missing = [n for n in machine.knob_names if n not in settings]
        if missing:
            raise VirtualConfigError(
                f"{source}: initial_knobs = 'trial': trial {index} stores no setting for {missing}"
            )
        field = f"initial_knobs ('trial': trial {index})"
    else:
        settings, field = dict(config.initial_knobs), "initial_knobs"
    for knob in machine.knobs:
        value = settings.get(knob.name)
        if value is not None and not knob.low <= value <= knob.high:
            raise VirtualConfigError(
                f"{source}: {field}.{knob.name} = {value}: outside the knob limits "
                f"[{knob.low}, {knob.high}] of machine {machine.name!r}"
            )


def load_virtual_config(path: str | Path, **overrides: object) -> LoadedConfig:
    """Load and validate an IOC config and the machine config it references.

    :param path: IOC config YAML (e.g. ``deploy/virtual_ares_ea.yaml``).
    :param overrides: Top-level fields replacing the file's (e.g. ``port=5070``); ``None``
        values are ignored.
    :raises VirtualConfigError: Naming the file, the field and the value.
    """
    path = Path(path)
    data = load_yaml_mapping(path, VirtualConfigError, "virtual accelerator config")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = VirtualConfig.model_validate(data)
    except ValidationError as err:
        raise VirtualConfigError(_format(err, str(path))) from None
    machine_path = config.machine if config.machine.is_absolute() else path.parent / config.machine
    trials = config.trials_file
    if trials is not None and not trials.is_absolute():
        trials = path.parent / trials
    world = config.world
    if world is not None and (path.parent / world).is_file() and not Path(world).is_absolute():
        world = str(path.parent / world)
    config = config.model_copy(
        update={"machine": machine_path, "trials_file": trials, "world": world}
    )
    try:
        machine = load_machine_config(machine_path)
    except ValueError as err:
        raise VirtualConfigError(f"{path}: machine: {err}") from None
    if world is not None:
        check_world_name(world, machine.env_id, str(path))
    return LoadedConfig(config, machine, str(path))


class ScheduleState(Protocol):
    """What :func:`scheduled_faults` reads and updates (the simulation core and the caproto
    server both keep it)."""

    config: VirtualConfig
    faults: set[str]
    put_count: int
    started: float
    fault_until: dict[str, float]
    fault_writes: dict[str, int]
    _fired: set[int]


def scheduled_faults(state: ScheduleState, now: float) -> set[str]:
    """The faults active at ``now`` [s, epoch] under the config's fault schedule: the current
    ones, plus each event that became due (after its number of puts or seconds since the
    start; marked fired, with its end time and write count recorded in ``state``), minus
    those whose duration is over."""
    faults = set(state.faults)
    for i, event in enumerate(state.config.faults.schedule):
        if i in state._fired:
            continue
        due = (event.after_puts is not None and state.put_count >= event.after_puts) or (
            event.after_s is not None and now - state.started >= event.after_s
        )
        if due:
            state._fired.add(i)
            faults.add(event.fault)
            if event.duration_s is not None:
                state.fault_until[event.fault] = now + event.duration_s
            if event.writes is not None:
                state.fault_writes[event.fault] = event.writes
    for name, until in list(state.fault_until.items()):
        if now >= until and name in faults:
            faults.discard(name)
    return faults


def check_world_name(world: str, env_id: str, source: str) -> None:
    """Check that ``world`` loads and fits the task of ``env_id``.

    :raises VirtualConfigError: Naming the file, the field ``world`` and the problem.
    """
    from accelrl.envs import TASKS
    from accelrl.envs.world.spec import WorldError, load_world

    try:
        spec = load_world(world)
        if env_id in TASKS:
            spec.check(TASKS[env_id]())
    except WorldError as err:
        raise VirtualConfigError(f"{source}: world = {world!r}: {err}") from None
