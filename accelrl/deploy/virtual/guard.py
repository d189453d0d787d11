"""The write guard of the virtual accelerator's EPICS IOC: it decides on every client write
to a setpoint or to the FAULT record before the record sees it, through EPICS access
security's trap-write hook, and turns refused writes away (see :class:`WriteGuard`).

This module imports EPICS base's libraries (epicscorelibs); import it only in the IOC
process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epicscorelibs.ioc import Com, dbCore

log = logging.getLogger("accelrl.virtual")

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
#: EPICS status "Field Disabled" (``S_db_putDisabled``, dbAccessDefs.h).
S_DB_PUT_DISABLED = (501 << 16) | 41
#: Server thread id -> the records whose current write the guard refused. (Not a
#: ``threading.local``: a callback from an EPICS thread gets a new Python thread state, and
#: new thread-local data, at every call.)
_REFUSED: dict[int, set[int]] = {}


def refused_writes() -> set[int]:
    """The records whose current write the guard refused, of this server thread."""
    return _REFUSED.setdefault(threading.get_ident(), set())


_asSetFilename = dbCore.asSetFilename
_asSetFilename.argtypes = (ctypes.c_char_p,)
_asSetFilename.restype = ctypes.c_int


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
            refused_writes().discard(head.precord)  # a mark left by an earlier write of this thread
            reason = guarded.guard(_written_value(message))
            if reason is not None:
                log.warning("write refused: %s", reason)
                guarded.disp[0] = 1
                refused_writes().add(head.precord)
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
