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

This module imports pythonSoftIOC (EPICS base); import it only in the IOC process.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import epicsdbbuilder
import numpy as np
import softioc.builder  # noqa: F401 - before pythonSoftIoc: it loads the record types
from epicscorelibs.ioc import Com, dbCore
from softioc import alarm, device, imports, pythonSoftIoc
from softioc import softioc as _softioc
from softioc.device_core import LookupRecord

from accelrl.deploy.virtual.config import LoadedConfig, common_prefix
from accelrl.deploy.virtual.core import AcceleratorCore, Change, FaultSyntaxError

log = logging.getLogger("accelrl.virtual")

#: Digits after the decimal point of the screen readings [m]: 1 nm.
OBSERVATION_PRECISION = 9
#: Device support type (DTYP) of the writable records and of the read-only ones.
DTYP_WRITE = "AccelrlWrite"
DTYP_PULL = "AccelrlPull"
#: Access-security configuration: writes to ``DEFAULT`` records pass the trap-write
#: listener; ``READONLY`` records refuse every client write.
ACCESS_SECURITY = """\
ASG(DEFAULT) {
    RULE(1, READ)
    RULE(1, WRITE, TRAPWRITE)
}
ASG(READONLY) {
    RULE(1, READ)
}
"""
_DBD = f"""\
device(ao, INST_IO, devAccelrlWriteAo, "{DTYP_WRITE}")
device(bo, INST_IO, devAccelrlWriteBo, "{DTYP_WRITE}")
device(stringout, INST_IO, devAccelrlWriteStringout, "{DTYP_WRITE}")
device(ai, INST_IO, devAccelrlPullAi, "{DTYP_PULL}")
device(bi, INST_IO, devAccelrlPullBi, "{DTYP_PULL}")
device(longin, INST_IO, devAccelrlPullLongin, "{DTYP_PULL}")
device(waveform, INST_IO, devAccelrlPullWaveform, "{DTYP_PULL}")
"""

#: EPICS status "Field Disabled" (``S_db_putDisabled``, dbAccessDefs.h).
S_DB_PUT_DISABLED = (501 << 16) | 41
#: Server thread id -> the records whose current write the guard refused. (Not a
#: ``threading.local``: a callback from an EPICS thread gets a new Python thread state, and
#: new thread-local data, at every call.)
_REFUSED: dict[int, set[int]] = {}


def _refused() -> set[int]:
    """The records whose current write the guard refused, of this server thread."""
    return _REFUSED.setdefault(threading.get_ident(), set())


def _load_device_definitions() -> None:
    """Make the DTYPs above known to EPICS and to the database builder (once)."""
    if getattr(_load_device_definitions, "done", False):
        return
    with tempfile.TemporaryDirectory(prefix="accelrl-ioc-") as tmp:
        path = Path(tmp) / "accelrl.dbd"
        path.write_text(_DBD)
        _softioc.dbLoadDatabase(path.name, str(path.parent), None)
        epicsdbbuilder.LoadDbdFile(str(path))
    _load_device_definitions.done = True  # type: ignore[attr-defined]


_load_device_definitions()

# ---------------------------------------------------------------------- EPICS functions
_dbScanLock = dbCore.dbScanLock
_dbScanLock.argtypes = (ctypes.c_void_p,)
_dbScanLock.restype = None
_dbScanUnlock = dbCore.dbScanUnlock
_dbScanUnlock.argtypes = (ctypes.c_void_p,)
_dbScanUnlock.restype = None
_dbProcess = dbCore.dbProcess
_dbProcess.argtypes = (ctypes.c_void_p,)
_dbProcess.restype = ctypes.c_long
_asSetFilename = dbCore.asSetFilename
_asSetFilename.argtypes = (ctypes.c_char_p,)
_asSetFilename.restype = ctypes.c_int


def process(record: Any) -> None:
    """Process ``record`` (a pythonSoftIOC device) now, in this thread, under its lock: what
    a ``.PROC`` write does, regardless of ``DISP`` (ctypes releases the GIL meanwhile)."""
    pointer = record._record.record.value
    _dbScanLock(pointer)
    try:
        _dbProcess(pointer)
    finally:
        _dbScanUnlock(pointer)


# ---------------------------------------------------------------------- device support
#: ``(value, time [s] or None, severity, status)`` of a read-only record.
Pulled = tuple[Any, float | None, int, int]


class _Pull:
    """Mixin for read-only records: processing copies ``source()`` into the record."""

    source: Callable[[], Pulled]

    def _process(self, record: Any) -> int:
        value, stamp, severity, status = self.source()
        self._value = (self._value_to_epics(value), severity, status, stamp)  # type: ignore[attr-defined]
        return super()._process(record)  # type: ignore[misc]


class PullAi(_Pull, device.ai):
    """``ai`` whose value, time stamp and alarm come from ``source``."""

    _device_name_ = "devAccelrlPullAi"


class PullBi(_Pull, device.bi):
    """``bi`` whose state, time stamp and alarm come from ``source``."""

    _device_name_ = "devAccelrlPullBi"


class PullLongin(_Pull, device.longin):
    """``longin`` whose value, time stamp and alarm come from ``source``."""

    _device_name_ = "devAccelrlPullLongin"


class PullWaveform(_Pull, device.waveform):
    """``waveform`` whose array, time stamp and alarm come from ``source``."""

    _device_name_ = "devAccelrlPullWaveform"


class _Write:
    """Mixin for writable records with asynchronous completion.

    A client's write sets PACT and hands the value to ``on_write(device, value)``; the IOC's
    machine thread calls :meth:`complete` with the value the record is to show, and EPICS
    processes the record a second time to finish (monitors, put-callback). Processing
    asked for by :meth:`refresh` shows ``current()`` instead (an IOC-side change).
    """

    on_write: Callable[[Any, Any], None]
    current: Callable[[], Any]

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)  # type: ignore[call-arg]
        self._completion = imports.create_callback_capsule()
        self._final: Any = None
        self._refresher: int | None = None
        #: Set while no client write waits for its completion.
        self.idle = threading.Event()
        self.idle.set()

    def _process(self, record: Any) -> int:
        if record.PACT:  # second pass: the machine thread has handled the write
            self._show(record, self._final)
            self.idle.set()
            return device.EPICS_OK
        if self._refresher == threading.get_ident():
            self._show(record, self.current())
            return device.EPICS_OK
        if record.record.value in _refused():
            # a write the guard refused and the server did not stop (PV Access): undo it
            _refused().discard(record.record.value)
            self._write_value(record, self._value[0])  # type: ignore[attr-defined]
            return S_DB_PUT_DISABLED
        value = self._epics_to_value(self._read_value(record))  # type: ignore[attr-defined]
        record.PACT = 1
        self.idle.clear()
        self.on_write(self, value)
        return device.EPICS_OK

    def _show(self, record: Any, value: Any) -> None:
        epics = self._value_to_epics(value)  # type: ignore[attr-defined]
        self._write_value(record, epics)  # type: ignore[attr-defined]
        self._value = (epics, alarm.NO_ALARM, alarm.NO_ALARM)

    def complete(self, value: Any) -> None:
        """Finish the client's write; the record then shows ``value``."""
        self._final = value
        imports.signal_processing_complete(self._record, self._completion)  # type: ignore[attr-defined]

    def refresh(self) -> None:
        """Show ``current()`` now (processes the record in this thread)."""
        self._refresher = threading.get_ident()
        try:
            process(self)
        finally:
            self._refresher = None


class WriteAo(_Write, device.ao):
    """Writable ``ao`` (knob setpoints)."""

    _device_name_ = "devAccelrlWriteAo"


class WriteBo(_Write, device.bo):
    """Writable ``bo`` (RESET)."""

    _device_name_ = "devAccelrlWriteBo"


class WriteStringout(_Write, device.stringout):
    """Writable ``stringout`` (FAULT)."""

    _device_name_ = "devAccelrlWriteStringout"


def _record(builder: Any, device_class: type, dtyp: str, name: str, **fields: Any) -> Any:
    """Define record ``name`` (fields as in a .db file) with Python device support; the
    device instance."""
    fields = {k: v for k, v in fields.items() if v is not None}
    pythonSoftIoc.PythonDevice.makeRecord(builder, device_class, dtyp)(name, **fields)
    return LookupRecord(name)


# ---------------------------------------------------------------------- write guard
class _TrapWriteMessage(ctypes.Structure):
    """``asTrapWriteMessage`` (asTrapWrite.h)."""

    _fields_ = [
        ("userid", ctypes.c_char_p),
        ("hostid", ctypes.c_char_p),
        ("serverSpecific", ctypes.c_void_p),
        ("userPvt", ctypes.c_void_p),
        ("dbrType", ctypes.c_int),
        ("no_elements", ctypes.c_int),
        ("data", ctypes.c_void_p),
    ]


class _ChannelHead(ctypes.Structure):
    """The first members of ``dbChannel`` (dbChannel.h): its name and ``dbAddr``'s record and
    field pointers."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("precord", ctypes.c_void_p),
        ("pfield", ctypes.c_void_p),
    ]


_LISTENER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_TrapWriteMessage), ctypes.c_int)
_asTrapWriteRegisterListener = Com.asTrapWriteRegisterListener
_asTrapWriteRegisterListener.argtypes = (_LISTENER,)
_asTrapWriteRegisterListener.restype = ctypes.c_void_p

#: Channel Access DBR types (db_access.h) of plain values and their C types.
_DBR_CTYPES: dict[int, Any] = {
    1: ctypes.c_int16,  # DBR_SHORT
    2: ctypes.c_float,  # DBR_FLOAT
    3: ctypes.c_uint16,  # DBR_ENUM
    4: ctypes.c_uint8,  # DBR_CHAR
    5: ctypes.c_int32,  # DBR_LONG
    6: ctypes.c_double,  # DBR_DOUBLE
}
_DBR_STRING = 0


def _written_value(message: _TrapWriteMessage) -> Any:
    """The value a client writes (a number or a string), or ``None`` if the server does
    not tell (PV Access) or it is not a plain scalar."""
    if not message.data or message.no_elements != 1:
        return None
    if message.dbrType == _DBR_STRING:
        return ctypes.string_at(message.data, 40).split(b"\0", 1)[0].decode(errors="replace")
    ctype = _DBR_CTYPES.get(message.dbrType)
    if ctype is None:
        return None
    return float(ctypes.cast(message.data, ctypes.POINTER(ctype))[0])


#: A guard: the value written (or ``None``: unknown) -> why the write is refused, or ``None``.
Guard = Callable[[Any], "str | None"]


@dataclass
class _Guarded:
    guard: Guard
    value_field: int  # address of the record's VAL field
    disp: ctypes._Pointer  # the record's DISP field


class WriteGuard:
    """Decides on every client write to a guarded record before the record sees it, through
    EPICS access security's trap-write hook (Channel Access and PV Access servers call it for
    every write of a ``TRAPWRITE`` rule).

    A refused write is turned away by EPICS base itself: the guard sets the record's ``DISP``
    field for the duration of that one write, so the Channel Access server answers
    ``ECA_PUTFAIL`` (a write to the same record by another client during those microseconds
    to milliseconds is refused too). The PV Access server (QSRV2) checks ``DISP`` before this
    hook and processes the record after it; there the processing, in the same server thread,
    undoes the write and reports ``S_db_putDisabled``. (The guard marks the refused write for
    its thread; the next guarded write of that thread to the record clears the mark.) Writes
    to other fields (``.DESC``, ...) are not guarded.
    """

    def __init__(self) -> None:
        self._guarded: dict[int, _Guarded] = {}
        self._callback = _LISTENER(self._listener)
        self._registered = False

    def add(self, record: Any, guard: Guard) -> None:
        """Guard writes to the VAL field of ``record`` (a device, after iocInit)."""
        pointer = record._record.record.value
        offsets = record._record.fields
        disp_offset = offsets["DISP"][0]
        self._guarded[pointer] = _Guarded(
            guard,
            pointer + offsets["VAL"][0],
            ctypes.cast(pointer + disp_offset, ctypes.POINTER(ctypes.c_uint8)),
        )

    def register(self) -> None:
        """Start receiving the trap-write calls (once)."""
        if not self._registered:
            _asTrapWriteRegisterListener(self._callback)
            self._registered = True

    def _listener(self, pmessage: Any, after: int) -> None:
        try:
            message = pmessage.contents
            if not message.serverSpecific:
                return
            head = _ChannelHead.from_address(message.serverSpecific)
            guarded = self._guarded.get(head.precord or 0)
            if guarded is None or head.pfield != guarded.value_field:
                return
            if after:
                if message.userPvt:
                    guarded.disp[0] = 0
                return
            _refused().discard(head.precord)  # a mark left by an earlier write of this thread
            reason = guarded.guard(_written_value(message))
            if reason is not None:
                log.warning("write refused: %s", reason)
                guarded.disp[0] = 1
                _refused().add(head.precord)
                message.userPvt = 1
        except Exception:  # noqa: BLE001 - never let an exception cross into EPICS
            log.exception("write guard failed")


def install_access_security() -> Path:
    """Write the access-security file (:data:`ACCESS_SECURITY`) and tell EPICS to load it
    at iocInit; the file's path (remove it after iocInit)."""
    fd, name = tempfile.mkstemp(prefix="accelrl-ioc-", suffix=".acf")
    with os.fdopen(fd, "w") as f:
        f.write(ACCESS_SECURITY)
    if _asSetFilename(name.encode()) != 0:
        raise RuntimeError(f"asSetFilename({name}) failed")
    return Path(name)


# ---------------------------------------------------------------------- the database
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
            dev = _record(builder, cls, DTYP_PULL, name, **f)
            dev.source = source
            names.append(name)
            return dev

        def write(builder: Any, cls: type, name: str, key: str, current: Callable[[], Any], **f):
            dev = _record(builder, cls, DTYP_WRITE, name, **f)
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
