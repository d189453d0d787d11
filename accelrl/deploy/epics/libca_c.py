"""libca's C interface as this package calls it through ctypes: constants, the callback
argument structures, the argument and result types of the calls, and loading the library
(through pyepics).

This module needs pyepics (with a libca) only when :func:`load_libca` is called.
"""

from __future__ import annotations

import ctypes
from typing import Any

from accelrl.deploy.epics.channels import EPICS_EPOCH
from accelrl.deploy.machine import MachineError

# libca constants (cadef.h, caerr.h, db_access.h)
ECA_NORMAL = 1
ECA_TIMEOUT = 80
ECA_DISCONN = 192
OP_CONN_UP = 6
CS_CONN = 2
DBR_STRING, DBR_DOUBLE, DBR_TIME_STRING, DBR_TIME_DOUBLE, DBR_CTRL_DOUBLE = 0, 6, 14, 20, 34
DBF_NUMERIC = (1, 2, 4, 5, 6)  # SHORT, FLOAT, CHAR, LONG, DOUBLE (not STRING 0, ENUM 3)
DBE_VALUE, DBE_ALARM = 1, 4
#: Marks a read buffer libca has not filled (valid alarm severities are 0..3).
UNFILLED = 0x7FFF


class EventArgs(ctypes.Structure):
    """``struct event_handler_args`` (cadef.h)."""

    _fields_ = [
        ("usr", ctypes.c_void_p),
        ("chid", ctypes.c_void_p),
        ("type", ctypes.c_long),
        ("count", ctypes.c_long),
        ("dbr", ctypes.c_void_p),
        ("status", ctypes.c_int),
    ]


class ConnectionArgs(ctypes.Structure):
    """``struct connection_handler_args`` (cadef.h)."""

    _fields_ = [("chid", ctypes.c_void_p), ("op", ctypes.c_long)]


class ExceptionArgs(ctypes.Structure):
    """``struct exception_handler_args`` (cadef.h)."""

    _fields_ = [
        ("usr", ctypes.c_void_p),
        ("chid", ctypes.c_void_p),
        ("type", ctypes.c_long),
        ("count", ctypes.c_long),
        ("addr", ctypes.c_void_p),
        ("stat", ctypes.c_long),
        ("op", ctypes.c_long),
        ("ctx", ctypes.c_char_p),
        ("pFile", ctypes.c_char_p),
        ("lineNo", ctypes.c_uint),
    ]


EVENT_CB = ctypes.CFUNCTYPE(None, EventArgs)
CONNECTION_CB = ctypes.CFUNCTYPE(None, ConnectionArgs)
EXCEPTION_CB = ctypes.CFUNCTYPE(None, ExceptionArgs)


def _declare(lib: Any) -> Any:
    """Argument and result types of the libca calls made here."""
    vp, ul, lg, d = ctypes.c_void_p, ctypes.c_ulong, ctypes.c_long, ctypes.c_double
    sig = {
        "ca_context_create": ([ctypes.c_int], ctypes.c_int),
        "ca_context_destroy": ([], None),
        "ca_current_context": ([], vp),
        "ca_attach_context": ([vp], ctypes.c_int),
        "ca_detach_context": ([], None),
        "ca_add_exception_event": ([EXCEPTION_CB, vp], ctypes.c_int),
        "ca_create_channel": (
            [ctypes.c_char_p, CONNECTION_CB, vp, ctypes.c_uint, ctypes.POINTER(vp)],
            ctypes.c_int,
        ),
        "ca_clear_channel": ([vp], ctypes.c_int),
        "ca_host_name": ([vp], ctypes.c_char_p),
        "ca_puser": ([vp], vp),
        "ca_field_type": ([vp], ctypes.c_short),
        "ca_element_count": ([vp], ul),
        "ca_state": ([vp], ctypes.c_int),
        "ca_flush_io": ([], ctypes.c_int),
        "ca_message": ([lg], ctypes.c_char_p),
        "ca_array_put_callback": ([lg, ul, vp, vp, EVENT_CB, vp], ctypes.c_int),
        "ca_create_subscription": (
            [lg, ul, vp, lg, EVENT_CB, vp, ctypes.POINTER(vp)],
            ctypes.c_int,
        ),
        "ca_clear_subscription": ([vp], ctypes.c_int),
        "ca_sg_create": ([ctypes.POINTER(ctypes.c_uint)], ctypes.c_int),
        "ca_sg_delete": ([ctypes.c_uint], ctypes.c_int),
        "ca_sg_array_get": ([ctypes.c_uint, lg, ul, vp, vp], ctypes.c_int),
        "ca_sg_block": ([ctypes.c_uint, d], ctypes.c_int),
        "ca_sg_reset": ([ctypes.c_uint], ctypes.c_int),
    }
    for name, (args, result) in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


_LIB: Any = None


def load_libca() -> Any:
    """libca (with its argument types declared): EPICS base from ``epicscorelibs`` when it
    is installed, else the one pyepics finds (``PYEPICS_LIBCA`` or its own).

    :raises MachineError: If pyepics or libca cannot be loaded.
    """
    global _LIB
    if _LIB is not None:
        return _LIB
    try:
        from epics import dbr  # noqa: F401 - pyepics: its DBR definitions are used below
    except ImportError as err:  # pragma: no cover - pyepics is a [deploy] dependency
        raise MachineError(
            "ca_client 'pyepics' needs pyepics: pip install 'accelrl[deploy]'"
        ) from err
    try:
        try:
            from epicscorelibs.path import get_lib

            path = get_lib("ca")
        except ImportError:
            from epics.ca import find_libca

            path = find_libca()
        _LIB = _declare(ctypes.CDLL(path))
    except (OSError, AttributeError) as err:
        raise MachineError(f"ca_client 'pyepics': cannot load libca: {err}") from err
    return _LIB


def stamp(secs: int, nsec: int) -> float:
    """An EPICS time stamp as seconds since the POSIX epoch."""
    return EPICS_EPOCH + secs + nsec * 1e-9
