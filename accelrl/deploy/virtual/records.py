"""The EPICS records of the virtual accelerator on an EPICS 7 IOC (pythonSoftIOC).

The records are EPICS base's own record types with Python device support (pythonSoftIOC),
so clients see every field and alarm an IOC has (``.DESC .EGU .DRVH .HOPR .PREC .SEVR .STAT
.RTYP ...``). ``<P>`` is the machine config's common prefix (``VA:``), ``<S>`` the test-only
prefix (``<P>SIM:``):

=======================================  ========  ===========================================
PV (machine config role)                 record    fields
=======================================  ========  ===========================================
knob ``setpoint``                        ao        DRVL/DRVH = LOPR/HOPR = the knob's limits,
                                                   EGU, PREC, DESC; writable
knob ``readback``                        ai        EGU, PREC, HOPR/LOPR, MDEL/ADEL
                                                   (``records.readback_deadband``)
knob ``busy``                            bi        ZNAM ``IDLE`` / ONAM ``BUSY``
``observations``                         ai        EGU ``m``, PREC 9, HOPR/LOPR (screen size),
                                                   MDEL/ADEL (``records.observation_deadband``)
``frame_pv`` (optional)                  waveform  DOUBLE[n]: the observations of one frame
``interlock.pv``                         bi        ZNAM ``OK`` / ONAM ``TRIPPED``; tripped:
                                                   MAJOR alarm (OSV/ZSV)
``beam_loss.pv``                         ai        HIHI = ``beam_loss.max``, HHSV MAJOR
``heartbeat.pv``                         longin    counter
``<P>AREABSCR1:IMAGE``, ``:WIDTH/HEIGHT`` waveform  UCHAR or USHORT image (``screen.image``)
``<S>FAULT``                             stringout active faults; writable
``<S>PUT_COUNT``, ``<S>TRIAL``           longin    setpoint writes received; trial index
``<S>RESET``                             bo        write 1: reset
``<S>TRUE:MAE``                          ai        true MAE to the trial's target [m]
=======================================  ========  ===========================================

Every record has a DESC. Read-only records are in access-security group ``READONLY`` (a
client sees no write access; a write fails with ``ECA_NOWTACCESS``).

**Time stamps and frames.** Readbacks, frames, interlock, beam loss and heartbeat carry the
time of the change they report (``TSE = -2``). The records of one frame -- ``frame_pv``, the
observations, ``TRUE:MAE`` and the image -- are one forward-link chain processed in one go
under one lock, all with the frame's time stamp: a monitor receives them back to back with
identical time stamps, no read of one of them sees the chain half done, and ``frame_pv``
carries the whole frame in one value.

**Writes.** A client's write to a setpoint or to FAULT first passes an access-security
*trap-write* listener (:class:`WriteGuard`), which sees the written value before the record
does. To refuse the write (``reject_put`` fault; a ``reject`` knob's value outside its limits;
a non-finite value; an unknown fault name), the guard disables puts to the record for that one
write (``DISP``), and EPICS base answers the client with ``ECA_PUTFAIL``. A write that passes
is processed asynchronously: the record hands it to the IOC's machine thread and completes
(put-callback) once the machine thread has applied it and published its effects (the busy
flag is set before the put completes).

Every record is *pulled*: processing copies the current state of the
:class:`~accelrl.deploy.virtual.core.AcceleratorCore` into it, so the order in which threads
ask for processing never leaves a record with an older state.

Device support: :mod:`accelrl.deploy.virtual.devices`; the write guard:
:mod:`accelrl.deploy.virtual.guard`. This module imports pythonSoftIOC (EPICS base); import
it only in the IOC process. Its size (~580 lines) is one class: :meth:`Records.build` makes
every record of the table above, and the sources that pull the core's state into them, the write
guard and the publishing share those records and the core.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import epicsdbbuilder
import numpy as np

from accelrl.deploy.virtual.config import LoadedConfig, common_prefix
from accelrl.deploy.virtual.core import AcceleratorCore, Change, FaultSyntaxError
from accelrl.deploy.virtual.devices import (
    DTYP_PULL,
    DTYP_WRITE,
    PullAi,
    PullBi,
    Pulled,
    PullLongin,
    PullWaveform,
    WriteAo,
    WriteBo,
    WriteStringout,
    define_record,
    process,
)
from accelrl.deploy.virtual.guard import Guard, WriteGuard

log = logging.getLogger("accelrl.virtual")

#: Digits after the decimal point of the screen readings [m]: 1 nm.
OBSERVATION_PRECISION = 9


def _publish_order(change: Change) -> int:
    """Readbacks first, then busy flags, then the rest."""
    if isinstance(change, tuple):
        return {"readback": 0, "busy": 1}.get(change[0], 2)
    return 2


def _precision(tolerance: float) -> int:
    """Digits after the decimal point that resolve a tenth of ``tolerance``."""
    return max(0, math.ceil(-math.log10(tolerance)) + 1)


class Records:
    """The record database of one virtual accelerator, and how its records are published.

    Build it before iocInit (:meth:`build`), then call :meth:`attach` after iocInit.

    :param loaded: IOC config with its machine config.
    :param core: The accelerator's state.
    :param on_write: Receives every client write that passed the guard:
        ``on_write(records, device, value)`` (called in an EPICS server thread; the IOC hands
        it to its machine thread, which calls :meth:`handle_write`).
    :param defer: Receives the changes a guard (an EPICS server thread) could not publish
        itself (writable records, ``"disconnect"``), for the machine thread.
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        core: AcceleratorCore,
        on_write: Callable[[Records, Any, Any], None],
        defer: Callable[[set[Change]], None],
    ) -> None:
        self.loaded = loaded
        self.core = core
        self.machine = loaded.machine
        self.prefix = common_prefix(self.machine)
        self.sim = loaded.sim_prefix
        self._on_write = on_write
        self._defer = defer
        self.setpoints: dict[str, WriteAo] = {}
        self.readbacks: dict[str, PullAi] = {}
        self.busy: dict[str, PullBi] = {}
        self.frame_head: Any = None
        self.singles: dict[str, Any] = {}
        self.guard = WriteGuard()
        self._chain_frame = core.frame
        self._writers: dict[int, str] = {}  # id(device) -> knob name, "faults" or "reset"

    # ------------------------------------------------------------------ building
    def build(self) -> list[str]:
        """Define every record (before iocInit); the names, in definition order."""
        core, cfg, machine = self.core, self.loaded.config, self.machine
        records = epicsdbbuilder.records
        names: list[str] = []

        def pull(builder: Any, cls: type, name: str, source: Callable[[], Pulled], **f: Any):
            f.setdefault("SCAN", "Passive")
            f.setdefault("PINI", "YES")
            f.setdefault("ASG", "READONLY")
            dev = define_record(builder, cls, DTYP_PULL, name, **f)
            dev.source = source
            names.append(name)
            return dev

        def write(builder: Any, cls: type, name: str, key: str, current: Callable[[], Any], **f):
            dev = define_record(builder, cls, DTYP_WRITE, name, **f)
            dev.on_write = self._client_write
            dev.current = current
            self._writers[id(dev)] = key
            names.append(name)
            return dev

        for kc in machine.knobs:
            state = core.knobs[kc.name]
            prec = _precision(kc.tolerance)
            unit = kc.unit[:15]
            self.setpoints[kc.name] = write(
                records.ao,
                WriteAo,
                kc.setpoint,
                kc.name,
                self._setpoint_of(kc.name),
                DESC=f"{kc.name} setpoint"[:40],
                EGU=unit,
                PREC=prec,
                DRVL=kc.low,
                DRVH=kc.high,
                LOPR=kc.low,
                HOPR=kc.high,
                OMSL="supervisory",
                initial_value=state.setpoint,
            )
            if kc.readback and kc.readback != kc.setpoint:
                deadband = cfg.records.readback_deadband.get(kc.name, 0.0)
                self.readbacks[kc.name] = pull(
                    records.ai,
                    PullAi,
                    kc.readback,
                    self._readback_of(kc.name),
                    DESC=f"{kc.name} readback"[:40],
                    EGU=unit,
                    PREC=prec,
                    LOPR=kc.low,
                    HOPR=kc.high,
                    MDEL=deadband,
                    ADEL=deadband,
                    TSE=-2,
                )
            if kc.busy:
                self.busy[kc.name] = pull(
                    records.bi,
                    PullBi,
                    kc.busy,
                    self._busy_of(kc.name),
                    DESC=f"{kc.name} power supply moving"[:40],
                    ZNAM="IDLE",
                    ONAM="BUSY",
                )

        # one frame: [frame_pv] -> observations -> TRUE:MAE -> [IMAGE], one FLNK chain
        hx, hy = self._half_extent()
        chain: list[tuple[Any, tuple, Callable[[], Pulled], dict[str, Any]]] = []
        if machine.frame_pv:
            n = len(machine.observations)
            chain.append(
                (
                    records.waveform,
                    (PullWaveform, machine.frame_pv),
                    self._frame_array,
                    dict(
                        DESC="Screen frame: " + " ".join(machine.observation_names)[:26],
                        EGU="m",
                        PREC=OBSERVATION_PRECISION,
                        LOPR=-max(hx, hy),
                        HOPR=max(hx, hy),
                        FTVL="DOUBLE",
                        NELM=n,
                        _wf_nelm=n,
                        _wf_dtype=np.dtype("float64"),
                        initial_value=np.array(core.frame.values, np.float64),
                    ),
                )
            )
        deadband = cfg.records.observation_deadband
        for i, oc in enumerate(machine.observations):
            half = hx if oc.name.endswith("_x") else hy
            low = 0.0 if oc.name.startswith("sigma") else -half
            chain.append(
                (
                    records.ai,
                    (PullAi, oc.pv),
                    self._observation(i),
                    dict(
                        DESC=f"Screen reading {oc.name}"[:40],
                        EGU=(oc.unit or "m")[:15],
                        PREC=OBSERVATION_PRECISION,
                        LOPR=low,
                        HOPR=half,
                        MDEL=deadband,
                        ADEL=deadband,
                    ),
                )
            )
        chain.append(
            (
                records.ai,
                (PullAi, f"{self.sim}TRUE:MAE"),
                self._mae,
                dict(
                    DESC="True MAE to the target (test only)",
                    EGU="m",
                    PREC=OBSERVATION_PRECISION,
                    LOPR=0.0,
                    HOPR=max(hx, hy),
                    MDEL=-1,
                ),
            )
        )
        if cfg.screen.image:
            w, h = cfg.screen.image_shape
            dtype = np.dtype(cfg.screen.image_dtype)
            chain.append(
                (
                    records.waveform,
                    (PullWaveform, f"{self.prefix}AREABSCR1:IMAGE"),
                    self._image,
                    dict(
                        DESC=f"Screen image {w}x{h}, row-major",
                        EGU="counts",
                        FTVL="UCHAR" if dtype == np.uint8 else "USHORT",
                        NELM=w * h,
                        _wf_nelm=w * h,
                        _wf_dtype=dtype,
                        initial_value=core.frame.image
                        if core.frame.image is not None
                        else np.zeros(w * h, dtype),
                    ),
                )
            )
        links = [spec[1][1] for spec in chain[1:]] + [None]
        for i, ((builder, (cls, name), source, fields), next_name) in enumerate(
            zip(chain, links, strict=True)
        ):
            pini = "YES" if i == 0 else "NO"  # the head processes the chain
            dev = pull(builder, cls, name, source, TSE=-2, FLNK=next_name, PINI=pini, **fields)
            if self.frame_head is None:
                self.frame_head = dev

        if machine.interlock.pv:
            tripped = int(machine.interlock.tripped_when)
            names_ = ("OK", "TRIPPED") if tripped == 1 else ("TRIPPED", "OK")
            self.singles["interlock"] = pull(
                records.bi,
                PullBi,
                machine.interlock.pv,
                self._interlock,
                DESC="Interlock",
                ZNAM=names_[0],
                ONAM=names_[1],
                ZSV="NO_ALARM" if tripped == 1 else "MAJOR",
                OSV="MAJOR" if tripped == 1 else "NO_ALARM",
                TSE=-2,
            )
        if machine.beam_loss.pv:
            limit = machine.beam_loss.max
            top = max(2.0 * abs(limit), cfg.faults.beam_loss_level, cfg.beam_loss_level)
            self.singles["beam_loss"] = pull(
                records.ai,
                PullAi,
                machine.beam_loss.pv,
                self._beam_loss,
                DESC="Beam-loss monitor",
                PREC=4,
                LOPR=0.0,
                HOPR=top,
                HIHI=limit,
                HHSV="MAJOR",
                TSE=-2,
            )
        if machine.heartbeat.pv:
            self.singles["heartbeat"] = pull(
                records.longin,
                PullLongin,
                machine.heartbeat.pv,
                self._heartbeat,
                DESC="IOC heartbeat counter",
                TSE=-2,
            )
        if cfg.screen.image:
            w, h = cfg.screen.image_shape
            for key, value in (("WIDTH", w), ("HEIGHT", h)):
                pull(
                    records.longin,
                    PullLongin,
                    f"{self.prefix}AREABSCR1:{key}",
                    self._constant(value),
                    DESC=f"Screen image {key.lower()}",
                    EGU="px",
                )

        # test-only PVs
        self.singles["faults"] = write(
            records.stringout,
            WriteStringout,
            f"{self.sim}FAULT",
            "faults",
            core.fault_text,
            DESC="Active faults (test only)",
            initial_value=core.fault_text(),
        )
        self.singles["reset"] = write(
            records.bo,
            WriteBo,
            f"{self.sim}RESET",
            "reset",
            lambda: 0,
            DESC="Write 1: reset the machine (test only)",
            ZNAM="IDLE",
            ONAM="RESET",
            initial_value=0,
        )
        self.singles["put_count"] = pull(
            records.longin,
            PullLongin,
            f"{self.sim}PUT_COUNT",
            self._put_count,
            DESC="Setpoint writes received (test only)",
        )
        trial = getattr(getattr(core.plant, "trial", None), "index", -1)
        pull(
            records.longin,
            PullLongin,
            f"{self.sim}TRIAL",
            self._constant(int(trial)),
            DESC="Trial simulated (test only)",
        )
        return names

    def _half_extent(self) -> tuple[float, float]:
        hx, hy = self.core.plant.spec.screen.half_extent
        return float(hx), float(hy)

    # ------------------------------------------------------------------ sources
    def _setpoint_of(self, knob: str) -> Callable[[], float]:
        return lambda: self.core.knobs[knob].setpoint

    def _readback_of(self, knob: str) -> Callable[[], Pulled]:
        def source() -> Pulled:
            with self.core.lock:
                state = self.core.knobs[knob]
                return state.readback, state.readback_time, 0, 0

        return source

    def _busy_of(self, knob: str) -> Callable[[], Pulled]:
        return lambda: (int(self.core.knobs[knob].busy), None, 0, 0)

    def _frame_array(self) -> Pulled:
        frame = self._chain_frame
        return np.array(frame.values, np.float64), frame.time, 0, 0

    def _observation(self, index: int) -> Callable[[], Pulled]:
        def source() -> Pulled:
            frame = self._chain_frame
            return frame.values[index], frame.time, 0, 0

        return source

    def _mae(self) -> Pulled:
        frame = self._chain_frame
        return frame.mae, frame.time, 0, 0

    def _image(self) -> Pulled:
        frame = self._chain_frame
        return frame.image, frame.time, 0, 0

    def _interlock(self) -> Pulled:
        with self.core.lock:
            tripped = self.core.interlock
            when = int(self.machine.interlock.tripped_when)
            return (when if tripped else 1 - when), self.core.interlock_time, 0, 0

    def _beam_loss(self) -> Pulled:
        with self.core.lock:
            return self.core.beam_loss, self.core.beam_loss_time, 0, 0

    def _heartbeat(self) -> Pulled:
        with self.core.lock:
            return self.core.beat, self.core.beat_time, 0, 0

    def _put_count(self) -> Pulled:
        return self.core.put_count, None, 0, 0

    @staticmethod
    def _constant(value: Any) -> Callable[[], Pulled]:
        return lambda: (value, None, 0, 0)

    def writes_completed(self) -> bool:
        """Whether no client write waits for its completion (its second processing)."""
        devices = [*self.setpoints.values(), self.singles["faults"], self.singles["reset"]]
        return all(dev.idle.is_set() for dev in devices)

    def restore_writable(self) -> None:
        """Give the writable records the core's current values as their initial values
        (after :meth:`~accelrl.deploy.virtual.core.AcceleratorCore.restore`, before
        iocInit); the read-only records pull theirs when iocInit processes them."""
        for knob, dev in self.setpoints.items():
            dev._value = (dev._value_to_epics(self.core.knobs[knob].setpoint), 0, 0)
        faults = self.singles["faults"]
        faults._value = (faults._value_to_epics(self.core.fault_text()), 0, 0)
        self._chain_frame = self.core.frame

    # ------------------------------------------------------------------ after iocInit
    def attach(self) -> None:
        """Guard the writable records (call after iocInit)."""
        for knob, dev in self.setpoints.items():
            self.guard.add(dev, self._setpoint_guard(knob))
        self.guard.add(self.singles["faults"], self._fault_guard)
        self.guard.register()

    def _setpoint_guard(self, knob: str) -> Guard:
        def guard(value: Any) -> str | None:
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    value = None  # EPICS refuses the conversion itself
            reason = self.core.check_setpoint_write(knob, value)
            rest = self.publish(self.core.take_changes())
            if rest:
                self._defer(rest)
            return reason

        return guard

    def _fault_guard(self, value: Any) -> str | None:
        if value is None:
            return None  # PV Access: checked when the record processes it
        return self.core.check_fault_text(str(value))

    # ------------------------------------------------------------------ writes
    def _client_write(self, dev: Any, value: Any) -> None:
        self._on_write(self, dev, value)

    def handle_write(self, dev: Any, value: Any) -> set[Change]:
        """Apply a client's write and publish its effects, then complete the write (call in
        the IOC's machine thread): the client's put-callback completes after the effects
        (busy flag, faults, reset values) are served.

        :return: The changes left to the IOC (``"disconnect"``).
        """
        key = self._writers[id(dev)]
        final: Any = dev.current()
        rest: set[Change] = set()
        try:
            if key == "faults":
                try:
                    final = self.core.write_faults(str(value))
                except FaultSyntaxError as err:  # a PV Access write the guard could not see
                    log.warning("write refused: %s", err)
                changes = self.core.take_changes()
                changes.discard("faults")  # the completion shows the new text
            elif key == "reset":
                if int(value) != 0:
                    self.core.reset()
                final = 0
                changes = self.core.take_changes()
            else:
                final = self.core.write_setpoint(key, float(value))
                changes = self.core.take_changes()
                changes.discard(("setpoint", key))  # the completion shows it
            rest = self.publish(changes)
            self.publish_writable(rest)
            self.publish_frames(self.core.take_frames())
        finally:
            dev.complete(final)
        return rest

    # ------------------------------------------------------------------ publishing
    def publish_frames(self, frames: list[Any]) -> None:
        """Publish camera frames, oldest first: each is one processing of the frame chain
        (call in the machine thread only)."""
        for frame in frames:
            self._chain_frame = frame
            process(self.frame_head)

    def publish(self, changes: set[Change]) -> set[Change]:
        """Process the read-only records of ``changes`` now, in this thread (they pull the
        current state).

        :return: The changes of writable records (FAULT, setpoints), for
            :meth:`publish_writable` in the machine thread, and ``"disconnect"``.
        """
        rest: set[Change] = set()
        # readbacks before busy flags: a client that sees a flag clear reads the final value
        for change in sorted(changes, key=_publish_order):
            if isinstance(change, tuple):
                kind, knob = change
                if kind == "setpoint":
                    rest.add(change)
                    continue
                table = {"readback": self.readbacks, "busy": self.busy}.get(kind, {})
                if knob in table:
                    process(table[knob])
            elif change in ("interlock", "beam_loss", "heartbeat", "put_count"):
                if change in self.singles:
                    process(self.singles[change])
            else:
                rest.add(change)  # "faults", "disconnect"
        return rest

    def publish_writable(self, changes: set[Change]) -> None:
        """Show IOC-side changes of the writable records (FAULT text, setpoints after a
        reset); call in the machine thread. ``"disconnect"`` is left to the IOC."""
        for change in changes:
            if change == "faults":
                dev = self.singles["faults"]
            elif isinstance(change, tuple) and change[0] == "setpoint":
                dev = self.setpoints.get(change[1])
            else:
                continue
            if dev is None:
                continue
            try:
                dev.refresh()
            except Exception:  # noqa: BLE001 - one record must not stop the others
                log.exception("refresh of %s failed", change)
