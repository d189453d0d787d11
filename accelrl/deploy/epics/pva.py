"""PV Access through p4p's threading client: the ``transport: pva`` transport of
:class:`~accelrl.deploy.epics.EpicsMachine` (the calls of
:class:`~accelrl.deploy.epics.channels.Channels`, without monitors: every call reads).

Reads ask only for the fields the machine uses (``value``, ``alarm.severity``,
``timeStamp``); the ``DBR_CTRL`` check reads ``display.units``, ``display.limitLow/High``,
``display.precision`` and ``control.limitLow/High`` (an IOC's QSRV serves an ``ao``'s
``DRVL``/``DRVH`` there). Writes wait for the record's processing (put with ``block``).

This module needs numpy and p4p (optional) only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from accelrl.deploy.epics.channels import ChannelValue, ControlInfo, DoneWrite
from accelrl.deploy.machine import (
    Disconnected,
    MachineError,
    PutRejected,
)

#: What a read asks the server for.
VALUE_REQUEST = "field(value,alarm.severity,timeStamp)"
#: What the DBR_CTRL check asks for.
CONTROL_REQUEST = (
    "field(value,display.units,display.limitLow,display.limitHigh,display.precision,"
    "control.limitLow,control.limitHigh)"
)


def _field(value: Any, path: str, default: Any) -> Any:
    """``value[path]`` of a p4p structure (``"display.units"``), or ``default``."""
    try:
        return value[path]
    except (KeyError, TypeError, AttributeError):
        return default


def _value(raw: Any) -> Any:
    """A PVA ``value`` as a float, the index of an enum (NTEnum: ``bi``, ``mbbi``), a str,
    or a tuple of floats (arrays)."""
    if isinstance(raw, str):
        return raw
    if hasattr(raw, "getID"):  # a structure: NTEnum's {index, choices}
        return float(raw["index"])
    if hasattr(raw, "__len__"):
        return tuple(float(v) for v in raw)
    return float(raw)


class PvaChannels:
    """PV Access through p4p's threading client (optional).

    :param addresses: Search only these ``host[:port]`` (``None``: the environment's
        ``EPICS_PVA_ADDR_LIST``, ...).
    :raises MachineError: If p4p is not installed.
    """

    def __init__(self, addresses: list[str] | None) -> None:
        try:
            from p4p.client.thread import Context
        except ImportError as err:
            raise MachineError(
                "transport 'pva' needs p4p, which is not installed: pip install p4p "
                "(or use transport: ca)"
            ) from err
        conf = None
        if addresses is not None:
            conf = {"EPICS_PVA_ADDR_LIST": " ".join(addresses), "EPICS_PVA_AUTO_ADDR_LIST": "NO"}
        self._context = Context("pva", conf=conf, useenv=conf is None, unwrap=False)
        self._up: set[str] = set()
        #: No monitors over PV Access.
        self.cache = None
        #: Reads (``round_trips``); ``cached`` and ``barriers`` stay 0.
        self.stats = {"cached": 0, "round_trips": 0, "barriers": 0}

    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        """Reach ``names`` (one read each, together); those that did not answer within
        ``timeout`` [s]."""
        names = list(names)
        results = self._context.get(
            names, [VALUE_REQUEST] * len(names), timeout=timeout, throw=False
        )
        missing = [n for n, r in zip(names, results, strict=True) if isinstance(r, Exception)]
        self._up |= set(names) - set(missing)
        self._up -= set(missing)
        return missing

    def connected(self, name: str) -> bool:
        return name in self._up

    def circuit(self, name: str) -> Hashable | None:
        """No monitors: nothing is served from a connection."""
        return None

    def monitor(self, names: Sequence[str]) -> None:
        """No monitors over PV Access: every call reads."""

    def _get(self, names: Sequence[str], request: str, timeout: float) -> list[Any]:
        names = list(names)
        results = self._context.get(names, [request] * len(names), timeout=timeout, throw=False)
        for name, r in zip(names, results, strict=True):
            if isinstance(r, TimeoutError):
                self._up.discard(name)
                raise Disconnected(f"{name}: no answer to a read within {timeout:.3g} s")
            if isinstance(r, Exception):
                self._up.discard(name)
                raise Disconnected(f"{name}: read failed: {r!r}")
        return results

    def read(self, names: Sequence[str], timeout: float) -> dict[str, ChannelValue]:
        """Values with time stamps and alarm severities, all requests at once."""
        self.stats["round_trips"] += 1
        out = {}
        for name, r in zip(names, self._get(names, VALUE_REQUEST, timeout), strict=True):
            value = _value(r["value"])
            stamp = _field(r, "timeStamp.secondsPastEpoch", 0) + 1e-9 * _field(
                r, "timeStamp.nanoseconds", 0
            )
            out[name] = ChannelValue(value, float(stamp), int(_field(r, "alarm.severity", 0)))
        return out

    def read_control(self, names: Sequence[str], timeout: float) -> dict[str, ControlInfo]:
        """``display`` and ``control`` of ``names`` (NTScalar, NTScalarArray)."""
        out = {}
        for name, r in zip(names, self._get(names, CONTROL_REQUEST, timeout), strict=True):
            raw = r["value"]
            precision = _field(r, "display.precision", None)
            out[name] = ControlInfo(
                units=str(_field(r, "display.units", "")),
                lower_ctrl_limit=float(_field(r, "control.limitLow", math.nan)),
                upper_ctrl_limit=float(_field(r, "control.limitHigh", math.nan)),
                lower_disp_limit=float(_field(r, "display.limitLow", math.nan)),
                upper_disp_limit=float(_field(r, "display.limitHigh", math.nan)),
                precision=None if precision is None else int(precision),
                count=len(raw) if hasattr(raw, "__len__") and not hasattr(raw, "getID") else 1,
                numeric=not isinstance(raw, str) and not hasattr(raw, "getID"),
            )
        return out

    def read_strings(self, names: Sequence[str], timeout: float) -> dict[str, str | None]:
        """Record fields are not PVs over PV Access: ``None`` for each."""
        return dict.fromkeys(names)

    def start_write(self, values: Mapping[str, Any], timeout: float) -> DoneWrite:
        """Write and wait for the records' processing (p4p has no put-callback to collect
        later): the write is complete when this returns."""
        self.write(values, timeout)
        return DoneWrite(values)

    def write(self, values: Mapping[str, Any], timeout: float) -> None:
        """Write ``values`` (PV -> value) and wait for the records' processing.

        :raises PutRejected: If the server refuses a write.
        :raises Disconnected: If it does not confirm within ``timeout`` [s].
        """
        names = list(values)
        results = self._context.put(
            names, [values[n] for n in names], timeout=timeout, wait=True, throw=False
        )
        for name, r in zip(names, results or [None] * len(names), strict=True):
            if isinstance(r, TimeoutError):
                raise Disconnected(
                    f"{name}: write of {values[name]!r} not confirmed within {timeout:.3g} s"
                )
            if isinstance(r, Exception):
                raise PutRejected(f"{name}: write of {values[name]!r} refused: {r}")

    def barrier(self, names: Sequence[str], timeout: float) -> None:
        """No monitors, nothing to catch up with."""

    def close(self) -> None:
        self._context.close()
