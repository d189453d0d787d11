"""What the EPICS transports of :class:`~accelrl.deploy.epics.EpicsMachine` share: the values
they return, the ``DBR_CTRL`` metadata of a channel, a write in flight, and the calls every
transport offers (:class:`Channels`).

Transports: :class:`~accelrl.deploy.epics.ca.CaChannels` (Channel Access, caproto's
client), :class:`~accelrl.deploy.epics.libca.LibcaChannels` (Channel Access, EPICS base's
libca through pyepics) and :class:`~accelrl.deploy.epics.pva.PvaChannels` (PV Access, p4p).

This module needs nothing beyond the standard library and :mod:`accelrl.deploy.machine`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from accelrl.deploy.machine import MachineError

#: EPICS alarm severity INVALID: the value must not be used.
INVALID_SEVERITY = 3
#: What :class:`~accelrl.deploy.epics.EpicsMachine` serves from monitors.
MONITOR_MODES = ("none", "observations", "synced", "all")
#: Channel Access client libraries (``ca_client`` of a machine config).
CA_CLIENTS = ("caproto", "pyepics")
#: Seconds between the EPICS epoch (1990-01-01 UTC) and the POSIX epoch.
EPICS_EPOCH = 631152000


@dataclass(frozen=True)
class ChannelValue:
    """One channel's value as read.

    :param value: The value (a float for numeric scalars, a str for strings, a sequence of
        floats for arrays).
    :param timestamp: Server time stamp [s since the epoch].
    :param severity: EPICS alarm severity (0 none, 1 minor, 2 major, 3 invalid).
    """

    value: Any
    timestamp: float
    severity: int = 0


@dataclass(frozen=True)
class ControlInfo:
    """A channel's ``DBR_CTRL`` metadata (Channel Access) or ``display``/``control``
    structure (PV Access): what the IOC says its value means.

    :param units: Engineering units (the record's ``EGU``; Channel Access carries at most
        7 characters of it).
    :param lower_ctrl_limit: Lower control limit (an ``ao``'s ``DRVL``; 0 and 0: none).
    :param upper_ctrl_limit: Upper control limit (an ``ao``'s ``DRVH``).
    :param lower_disp_limit: Lower display limit (``LOPR``).
    :param upper_disp_limit: Upper display limit (``HOPR``).
    :param precision: Display precision (``PREC``; ``None`` if not given).
    :param count: Element count of the channel (1 for a scalar).
    :param numeric: The native type is a number (not a string or enum).
    """

    units: str
    lower_ctrl_limit: float = math.nan
    upper_ctrl_limit: float = math.nan
    lower_disp_limit: float = math.nan
    upper_disp_limit: float = math.nan
    precision: int | None = None
    count: int = 1
    numeric: bool = True


def addresses_list(addresses: str | Sequence[str] | None) -> list[str] | None:
    """``addresses`` as a list of ``host[:port]`` (``None``: use the environment).

    :raises ValueError: If ``addresses`` is empty.
    """
    if addresses is None:
        return None
    items = addresses.split() if isinstance(addresses, str) else list(addresses)
    if not items:
        raise ValueError("addresses must name at least one host[:port]")
    return [str(a) for a in items]


def require_valid(values: Mapping[str, ChannelValue], names: Iterable[str]) -> None:
    """Raise :class:`MachineError` if a value of ``names`` is in INVALID alarm."""
    for name in names:
        v = values[name]
        if v.severity >= INVALID_SEVERITY:
            raise MachineError(f"{name}: value {v.value!r} is in INVALID alarm")


class PendingWrite(Protocol):
    """Writes sent with put-callback whose completions have not been collected yet."""

    #: PV name -> value written.
    values: Mapping[str, Any]

    def wait(self, timeout: float) -> None:
        """Wait for every completion (at most ``timeout`` [s] from now).

        :raises PutRejected: If the server refused a write (naming the PV, the value and
            the server's status).
        :raises Disconnected: If a completion did not come within ``timeout`` or its
            circuit closed.
        """


class DoneWrite:
    """A write that completed before it was returned (blocking transports)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def wait(self, timeout: float) -> None:
        """Nothing left to wait for."""


class Channels(Protocol):
    """The calls of an EPICS transport (see the module documentation).

    Every call covering several PVs sends their requests together and waits for all
    answers together: one round trip per call, not one per PV.
    """

    #: Reads (``round_trips``), monitor barriers (``barriers``) and calls the machine served
    #: from the monitors (``cached``) since the transport was made.
    stats: dict[str, int]
    #: The monitors' latest updates (``None``: the transport has no monitors).
    cache: Any

    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        """Connect ``names`` (idempotent); the names not connected after ``timeout`` [s]."""

    def connected(self, name: str) -> bool:
        """Whether ``name`` is connected now."""

    def circuit(self, name: str) -> Hashable | None:
        """The connection ``name`` is on now (``None``: not connected): monitor updates from
        an earlier connection are never served."""

    def monitor(self, names: Sequence[str]) -> None:
        """Subscribe to value and alarm changes of ``names`` (idempotent); their updates go
        to :attr:`cache`."""

    def read(self, names: Sequence[str], timeout: float) -> dict[str, ChannelValue]:
        """Values with server time stamps and alarm severities, in one round trip.

        :raises Disconnected: If a channel is not connected or the server does not answer
            within ``timeout`` [s].
        :raises MachineError: If the server answers with an error.
        """

    def read_control(self, names: Sequence[str], timeout: float) -> dict[str, ControlInfo]:
        """``DBR_CTRL`` metadata of ``names`` (connected), in one round trip."""

    def read_strings(self, names: Sequence[str], timeout: float) -> dict[str, str | None]:
        """``names`` (e.g. record fields ``X.RTYP``) read as strings; ``None`` for a name that
        does not connect within ``timeout`` [s] (no such field, or no record behind the PV)."""

    def start_write(self, values: Mapping[str, Any], timeout: float) -> PendingWrite:
        """Send writes with put-callback (in order, at most once) and return without waiting
        for their completions.

        :raises Disconnected: If a channel is not connected (nothing of it is sent).
        """

    def write(self, values: Mapping[str, Any], timeout: float) -> None:
        """:meth:`start_write` and wait for the completions."""

    def barrier(self, names: Sequence[str], timeout: float) -> None:
        """Return once every monitor update the server posted before this call has arrived
        on the connections of ``names``."""

    def close(self) -> None:
        """Release every channel (idempotent)."""
