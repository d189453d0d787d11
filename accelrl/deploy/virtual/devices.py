"""Python device support for the virtual accelerator's EPICS records (pythonSoftIOC).

Two kinds of records, each with its own device support type (DTYP):

* ``AccelrlPull`` (``ai``, ``bi``, ``longin``, ``waveform``): read-only records whose
  processing *pulls* their value, time stamp and alarm from a ``source`` callable -- the
  current state of the accelerator whenever EPICS processes them, so the order in which
  threads ask for processing never leaves a record with an older state. They are processed
  by :func:`process`.
* ``AccelrlWrite`` (``ao``, ``bo``, ``stringout``): writable records with asynchronous
  completion. A client's write sets PACT and is handed to ``on_write``; the IOC's machine
  thread applies it and calls :meth:`~_Write.complete`; EPICS then finishes the record
  (monitors, the client's put-callback). A write the trap-write guard refused but the server
  did not stop (PV Access) is undone here (see :mod:`accelrl.deploy.virtual.guard`).

This module imports pythonSoftIOC (EPICS base); import it only in the IOC process.
"""

from __future__ import annotations

import ctypes
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import epicsdbbuilder
import softioc.builder  # noqa: F401 - before pythonSoftIoc: it loads the record types
from epicscorelibs.ioc import dbCore
from softioc import alarm, device, imports, pythonSoftIoc
from softioc import softioc as _softioc
from softioc.device_core import LookupRecord

from accelrl.deploy.virtual.guard import S_DB_PUT_DISABLED, refused_writes

#: Device support type (DTYP) of the writable records and of the read-only ones.
DTYP_WRITE = "AccelrlWrite"
DTYP_PULL = "AccelrlPull"
_DBD = f"""\
device(ao, INST_IO, devAccelrlWriteAo, "{DTYP_WRITE}")
device(bo, INST_IO, devAccelrlWriteBo, "{DTYP_WRITE}")
device(stringout, INST_IO, devAccelrlWriteStringout, "{DTYP_WRITE}")
device(ai, INST_IO, devAccelrlPullAi, "{DTYP_PULL}")
device(bi, INST_IO, devAccelrlPullBi, "{DTYP_PULL}")
device(longin, INST_IO, devAccelrlPullLongin, "{DTYP_PULL}")
device(waveform, INST_IO, devAccelrlPullWaveform, "{DTYP_PULL}")
"""


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
        if record.record.value in refused_writes():
            # a write the guard refused and the server did not stop (PV Access): undo it
            refused_writes().discard(record.record.value)
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


def define_record(builder: Any, device_class: type, dtyp: str, name: str, **fields: Any) -> Any:
    """Define record ``name`` (fields as in a .db file) with Python device support; the
    device instance."""
    fields = {k: v for k, v in fields.items() if v is not None}
    pythonSoftIoc.PythonDevice.makeRecord(builder, device_class, dtyp)(name, **fields)
    return LookupRecord(name)
