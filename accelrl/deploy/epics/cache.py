"""The latest monitor update of every subscribed channel, and the rules under which
:class:`~accelrl.deploy.epics.EpicsMachine` may serve a call from them.

A transport posts every update here, in the order it arrives, from its receive thread
(:meth:`MonitorCache.post`), tagged with the connection (*circuit*) that delivered it. What
the updates prove:

* An update is the value the server *posted*: a record with a monitor deadband (``MDEL``)
  posts no update for a change within it, and no record posts one for an unchanged value.
  The time stamp of the latest update is therefore the time of the last posted change, not
  the age of the value; and the value itself is the current one only where the record posts
  every change. The machine serves values only of channels known to post every change, and
  observations only when an update arrived that it has not served yet (else it reads).
* A server sends a client's updates in the order it posts them, each time-stamped at or
  before posting: once an update time-stamped ``t`` has arrived on a circuit, every update
  the server posted on it before ``t`` has arrived too (:meth:`MonitorCache.synced_since`).
* After a put, the written channel is served only once an update that arrived after the
  put shows the written value (a read shows this client's own put; a late update must not
  hide it).

This module needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelrl.deploy.epics.channels import ChannelValue


@dataclass(frozen=True)
class Update:
    """One monitor update.

    :param value: The value, its server time stamp and alarm severity.
    :param circuit: The connection that delivered it.
    :param seq: Its arrival number (1, 2, ... over all channels of the cache).
    """

    value: ChannelValue
    circuit: Hashable
    seq: int


class MonitorCache:
    """Latest updates per channel, newest server time stamp per circuit, and this client's
    writes not yet confirmed by an update (see the module documentation). Thread-safe."""

    def __init__(self) -> None:
        self._latest: dict[str, Update] = {}
        self._synced: dict[Hashable, float] = {}  # circuit -> newest update's server time [s]
        self._written: dict[str, tuple[Any, int]] = {}  # PV -> (value put, seq at the put)
        self._seq = 0
        self._changed = threading.Condition()

    # ------------------------------------------------------------------ the receive side
    def post(self, name: str, circuit: Hashable, value: ChannelValue | None) -> None:
        """An update of ``name`` from ``circuit`` (``None``: an update that carried no usable
        value, e.g. an error status: the channel has no latest value until the next)."""
        with self._changed:
            self._seq += 1
            if value is None:
                self._latest.pop(name, None)
            else:
                self._latest[name] = Update(value, circuit, self._seq)
                if value.timestamp > self._synced.get(circuit, -math.inf):
                    self._synced[circuit] = value.timestamp
            self._changed.notify_all()

    def forget_circuit(self, circuit: Hashable) -> None:
        """``circuit`` closed: its updates are never served again."""
        with self._changed:
            self._synced.pop(circuit, None)
            for name in [n for n, u in self._latest.items() if u.circuit == circuit]:
                del self._latest[name]
            self._seq += 1
            self._changed.notify_all()

    # ------------------------------------------------------------------ the serving side
    @property
    def updates(self) -> int:
        """Updates received so far (the arrival number of the latest)."""
        return self._seq

    def latest(self, name: str, circuit: Hashable | None) -> Update | None:
        """The latest update of ``name`` if it came over ``circuit`` (the channel's current
        connection; ``None``: not connected, nothing is served)."""
        entry = self._latest.get(name)
        if entry is None or circuit is None or entry.circuit != circuit:
            return None
        return entry

    def synced_since(self, circuit: Hashable) -> float:
        """Server time [s] up to which every update posted on ``circuit`` has arrived."""
        return self._synced.get(circuit, -math.inf)

    def wait(self, names: Iterable[str] | None, after: int, timeout: float) -> bool:
        """Wait until an update of one of ``names`` (``None``: of any channel) newer than
        arrival number ``after`` is here (``True``) or ``timeout`` [s] passed (``False``)."""
        wanted = None if names is None else list(names)

        def arrived() -> bool:
            if wanted is None:
                return self._seq > after
            return any((u := self._latest.get(n)) is not None and u.seq > after for n in wanted)

        with self._changed:
            return self._changed.wait_for(arrived, max(0.0, timeout))

    def before_put(self, values: Mapping[str, Any]) -> None:
        """Record values about to be put: until an update that arrived after now shows the
        value, :meth:`serve` does not serve the channel."""
        with self._changed:
            for name, value in values.items():
                self._written[name] = (value, self._seq)

    def serve(
        self,
        names: Sequence[str],
        circuit_of: Callable[[str], Hashable | None],
        now: float,
        max_lag: float | None,
    ) -> dict[str, ChannelValue] | None:
        """The latest values of ``names`` if every one may be served, else ``None`` (read).

        :param names: The channels (each known to post every change of its value).
        :param circuit_of: A channel's current connection (``None``: not connected).
        :param now: Wall-clock time [s since the epoch].
        :param max_lag: Each channel's circuit must be synced to within this many seconds
            of ``now`` (an update time-stamped no earlier than ``now - max_lag`` has
            arrived on it); ``None``: no such rule (the caller made a barrier).
        """
        out: dict[str, ChannelValue] = {}
        confirmed = []
        latest, synced, writes = self._latest, self._synced, self._written
        with self._changed:
            for name in names:
                entry = latest.get(name)  # served only from the channel's current circuit
                if entry is None or entry.circuit is None or entry.circuit != circuit_of(name):
                    return None
                if max_lag is not None and now - synced.get(entry.circuit, -math.inf) > max_lag:
                    return None  # updates may be on their way (or the server went silent)
                written = writes.get(name)
                if written is not None:
                    value, seq = written
                    if entry.seq <= seq or entry.value.value != value:
                        return None  # the server has not reported the written value yet
                    confirmed.append(name)
                out[name] = entry.value
            for name in confirmed:
                self._written.pop(name, None)
        return out

    def clear(self) -> None:
        """Forget everything (the transport closed)."""
        with self._changed:
            self._latest.clear()
            self._synced.clear()
            self._written.clear()
            self._seq += 1
            self._changed.notify_all()
