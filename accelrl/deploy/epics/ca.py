"""Channel Access plumbing of :class:`~accelrl.deploy.epics.EpicsMachine` (caproto's
threading client): connection of many PVs at once, ``DBR_TIME`` reads and put-with-callback
writes in one TCP send per call, monitors with their freshness bookkeeping, and the barrier
round trip that proves a circuit's monitors caught up.

This module needs numpy and caproto only. Its size (~580 lines) is one class: reads,
monitors, the barrier and writes share the circuits, the latest values and their freshness
bookkeeping, which must change together.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelrl.deploy.machine import (
    Disconnected,
    MachineError,
    PutRejected,
)

#: EPICS alarm severity INVALID: the value must not be used.
INVALID_SEVERITY = 3
#: What :class:`EpicsMachine` serves from Channel Access monitors.
MONITOR_MODES = ("none", "observations", "synced", "all")


@dataclass(frozen=True)
class ChannelValue:
    """One channel's value as read.

    :param value: The value (a float for scalars).
    :param timestamp: Server time stamp [s since the epoch].
    :param severity: EPICS alarm severity (0 none, 1 minor, 2 major, 3 invalid).
    """

    value: Any
    timestamp: float
    severity: int = 0


def _addresses(addresses: str | Sequence[str] | None) -> list[str] | None:
    if addresses is None:
        return None
    items = addresses.split() if isinstance(addresses, str) else list(addresses)
    if not items:
        raise ValueError("addresses must name at least one host[:port]")
    return [str(a) for a in items]


def _python_value(data: Any) -> Any:
    """A CA payload as a float (numeric scalar), a str (string) or the array itself."""
    if len(data) != 1:
        return data
    item = data[0]
    if isinstance(item, bytes):
        return item.decode(errors="replace")
    if isinstance(item, str):
        return item
    return float(item)


# --------------------------------------------------------------------------- CA transport
def _require_valid(values: Mapping[str, ChannelValue], names: Iterable[str]) -> None:
    """Raise :class:`MachineError` if a value of ``names`` is in INVALID alarm."""
    for name in names:
        v = values[name]
        if v.severity >= INVALID_SEVERITY:
            raise MachineError(f"{name}: value {v.value!r} is in INVALID alarm")


def _ignore_update(sub: Any, response: Any) -> None:
    """Subscription callback that keeps a monitor active; the monitor cache is filled on the
    client's receive thread instead (in order, without a thread hop)."""


def _skip_dispatch(command: Any) -> None:
    """Replaces a monitor's ``Subscription.process`` (callback dispatch to a thread pool)."""


class _Latch:
    """Wakes its waiter once ``count`` requests are done: caproto calls ``set()`` of a
    request's ``event`` when its response arrives and when its circuit dies."""

    __slots__ = ("_left", "_lock", "_done")

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()
        self._done = threading.Event()
        if count <= 0:
            self._done.set()

    def set(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout=max(0.0, timeout))


class _BarrierSubscription:
    """Stands in for a caproto subscription while a barrier waits for its first update."""

    __slots__ = ("pv", "_latch", "refused")

    def __init__(self, pv: Any, latch: _Latch) -> None:
        self.pv = pv
        self._latch = latch
        self.refused: Any = None  # the server's error response, if it refused

    def process(self, command: Any) -> None:
        if type(command).__name__ == "ErrorResponse":
            self.refused = command
        self._latch.set()


@dataclass(frozen=True)
class _Cached:
    """One monitor update: the value, the circuit that delivered it, its arrival order."""

    value: ChannelValue
    circuit: Any
    seq: int


class CaChannels:
    """Channel Access through caproto's threading client.

    Every read or write of a call goes out in one TCP send and is awaited together (one
    round trip per call, not one per PV). Channels named in :meth:`monitor` also keep a
    subscription (``DBR_TIME``, value and alarm changes); their latest update is served by
    :meth:`read` when ``max_lag`` allows it (see there).

    A server sends a client's monitor updates in the order it posts them, each time-stamped
    at or before posting; so once an update time-stamped ``t`` has arrived, every update the
    server posted before ``t`` has arrived too: the monitors of that circuit are complete up
    to ``t`` (``synced``), whatever the server's batching delay.
    """

    def __init__(self, addresses: list[str] | None) -> None:
        try:
            import caproto as ca
            from caproto._utils import get_address_and_port_from_string
            from caproto.threading import client as ca_client
        except ImportError as err:  # pragma: no cover - caproto is a [deploy] dependency
            raise MachineError(
                "transport 'ca' needs caproto: pip install 'accelrl[deploy]'"
            ) from err
        self._ca = ca
        self._client = ca_client
        self._host_port = get_address_and_port_from_string
        self._addresses = addresses
        self._context: Any = None
        self._pvs: dict[str, Any] = {}
        self._subscriptions: dict[str, Any] = {}
        self._cache: dict[str, _Cached] = {}
        self._synced: dict[Any, float] = {}  # circuit -> newest update's server time [s]
        self._seq = 0  # monitor updates received (the arrival order of the cache)
        self._updated = threading.Condition()
        self._written: dict[str, tuple[Any, int]] = {}  # PV -> (value put, seq at the put)
        #: Calls served from the monitors (``cached``) and by reads (``round_trips``).
        self.stats = {"cached": 0, "round_trips": 0, "barriers": 0}

    def _make_context(self, timeout: float) -> Any:
        ca, client = self._ca, self._client
        addresses = self._addresses
        host_port_of = self._host_port

        class _Broadcaster(client.SharedBroadcaster):
            """Searches only ``addresses`` (instead of the process environment's list)."""

            def send(self, *commands: Any) -> None:
                if addresses is None:
                    return super().send(*commands)
                port = self.environ["EPICS_CA_SERVER_PORT"]
                payload = self.broadcaster.send(*commands)
                for item in addresses:
                    host_port = host_port_of(item, port)
                    sock = self.udp_sock
                    if sock is None:
                        return None
                    try:
                        sock.sendto(payload, host_port)
                    except OSError as ex:
                        raise ca.CaprotoNetworkError(f"{ex} while searching {item}") from ex
                return None

        class _CircuitManager(client.VirtualCircuitManager):
            """Hands error responses to the request waiting for them (the threading client
            drops them, which would turn a refused write into a timeout), and monitor
            updates to the context's ``monitor_sink``."""

            __slots__ = ()

            def _process_command(self, command: Any) -> None:
                if isinstance(command, ca.ErrorResponse):
                    request = command.original_request
                    if request.command == ca.EventAddRequest.ID:
                        sub = self.subscriptions.get(request.parameter2)
                        if isinstance(sub, _BarrierSubscription):
                            sub.process(command)  # the barrier fails (no update follows)
                    info = (
                        None
                        if request.command == ca.EventAddRequest.ID
                        else self.ioids.pop(request.parameter2, None)
                    )
                    if info is not None:
                        info["response"] = command
                        if "event" in info:
                            info["event"].set()
                        if "callback" in info:
                            info["callback"](command)
                super()._process_command(command)
                if isinstance(command, ca.EventAddResponse):
                    sub = self.subscriptions.get(command.subscriptionid)
                    sink = getattr(self.context, "monitor_sink", None)
                    if sink is not None and isinstance(sub, client.Subscription):
                        sink(self, sub.pv, command)

        class _Context(client.Context):
            monitor_sink: Any = None

            def get_circuit_manager(self, address: Any, priority: int) -> Any:
                # caproto's own method, building the circuit manager above.
                with self._lock_during_get_circuit_manager:
                    cm = self.circuit_managers.get((address, priority), None)
                    if cm is None or cm.dead.is_set():
                        version = self.broadcaster.server_protocol_versions[address]
                        circuit = ca.VirtualCircuit(
                            our_role=ca.CLIENT,
                            address=address,
                            priority=priority,
                            protocol_version=version,
                        )
                        cm = _CircuitManager(self, circuit, self.selector)
                        self.circuit_managers[(address, priority)] = cm
                    return cm

        broadcaster = _Broadcaster()
        context = _Context(broadcaster, timeout=timeout)
        context.monitor_sink = self._on_update
        return context

    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        """Connect ``names``; return those not connected after ``timeout`` [s]."""
        if self._context is None:
            self._context = self._make_context(timeout)
        todo = [n for n in names if n not in self._pvs]
        if todo:
            for name, pv in zip(todo, self._context.get_pvs(*todo, timeout=timeout), strict=True):
                self._pvs[name] = pv
        deadline = time.monotonic() + timeout
        missing = []
        for name in names:
            left = max(0.0, deadline - time.monotonic())
            if not self._pvs[name].channel_ready.wait(timeout=left):
                missing.append(name)
        return missing

    def monitor(self, names: Sequence[str]) -> None:
        """Keep a subscription on ``names`` (connected with :meth:`connect`); caproto renews
        it on every new circuit. Idempotent."""
        mask = self._ca.SubscriptionType.DBE_VALUE | self._ca.SubscriptionType.DBE_ALARM
        for name in names:
            if name in self._subscriptions or name not in self._pvs:
                continue
            sub = self._pvs[name].subscribe(data_type="time", mask=mask)
            sub.add_callback(_ignore_update)
            # The cache is filled by the circuit manager (in order, on the receive thread):
            # skip handing each update to caproto's callback thread pool as well.
            sub.process = _skip_dispatch
            self._subscriptions[name] = sub

    def _on_update(self, circuit: Any, pv: Any, command: Any) -> None:
        """A monitor update (on caproto's receive thread, in the order of arrival)."""
        name = pv.name
        if name not in self._subscriptions:
            return
        value: ChannelValue | None = None
        if command.header.payload_size and command.status.name == "ECA_NORMAL":
            try:
                md = command.metadata
                value = ChannelValue(
                    _python_value(command.data), float(md.timestamp), int(md.severity)
                )
            except Exception:  # noqa: BLE001 - an undecodable update is no value
                value = None
        with self._updated:
            self._seq += 1
            if value is None:
                self._cache.pop(name, None)
            else:
                self._cache[name] = _Cached(value, circuit, self._seq)
                if value.timestamp > self._synced.get(circuit, -math.inf):
                    self._synced[circuit] = value.timestamp
            self._updated.notify_all()

    def latest(self, name: str) -> ChannelValue | None:
        """The latest monitor update of ``name`` from its current circuit (``None``: none, or
        the channel is not connected)."""
        pv = self._pvs.get(name)
        entry = self._cache.get(name)
        if pv is None or entry is None or not pv.connected:
            return None
        circuit = pv.circuit_manager
        if entry.circuit is not circuit or circuit.dead.is_set():
            return None
        return entry.value

    @property
    def updates(self) -> int:
        """Monitor updates received so far."""
        return self._seq

    def wait_for_update(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` monitor updates have arrived (``True``) or
        ``timeout`` [s] passed (``False``)."""
        with self._updated:
            return self._updated.wait_for(lambda: self._seq > after, max(0.0, timeout))

    def barrier(self, names: Sequence[str], timeout: float) -> None:
        """Return once every monitor update the server posted before it received this call's
        request has arrived, on the circuits of ``names``: one round trip, one PV per
        circuit.

        The request is a subscription (``EventAdd``) that is cancelled again: the server
        sends a new subscription's first update through the same queue as the circuit's
        other updates, behind every update posted before it, and the client handles a
        circuit's messages in order (a read's answer is sent past that queue, so it is no
        barrier).

        :raises Disconnected: If a channel is not connected, its circuit closes, or the
            server does not answer within ``timeout``.
        :raises MachineError: If the server refuses the subscription.
        """
        ca = self._ca
        first: dict[Any, str] = {}
        for name in names:
            self._require(name)
            pv = self._pvs[name]
            circuit = pv.circuit_manager
            if circuit is None or pv.channel is None or circuit.dead.is_set():
                raise Disconnected(f"{name}: channel not connected")
            first.setdefault(circuit, name)
        self.stats["barriers"] += 1
        latch = _Latch(len(first))
        subs: dict[Any, _BarrierSubscription] = {}
        pending: list[tuple[Any, Any, int]] = []
        deadline = time.monotonic() + timeout
        try:
            for circuit, name in first.items():
                pv = self._pvs[name]
                try:
                    subid = circuit._subscriptionid_counter()
                    command = pv.channel.subscribe(
                        mask=ca.SubscriptionType.DBE_VALUE, subscriptionid=subid
                    )
                    subs[circuit] = circuit.subscriptions[subid] = _BarrierSubscription(pv, latch)
                    pending.append((circuit, pv, subid))
                    circuit.send(command, extra={"pv": name})
                except (ca.CaprotoError, OSError) as err:
                    raise Disconnected(f"{name}: monitor barrier failed: {err}") from err
            answered = latch.wait(deadline - time.monotonic())
        finally:
            for circuit, pv, subid in pending:
                circuit.subscriptions.pop(subid, None)
                try:
                    circuit.send(pv.channel.unsubscribe(subid), extra={"pv": pv.name})
                except (ca.CaprotoError, OSError, AttributeError):
                    pass  # a closed circuit drops its subscriptions anyway
        for circuit, name in first.items():
            if circuit.dead.is_set():
                raise Disconnected(f"{name}: the circuit closed before the server answered")
        if not answered:
            raise Disconnected(f"{list(first.values())}: no answer within {timeout:.3g} s")
        for sub in subs.values():
            if sub.refused is not None:
                message = bytes(sub.refused.error_message).rstrip(b"\x00").decode(errors="replace")
                raise MachineError(
                    f"{sub.pv.name}: monitor barrier refused by the server "
                    f"({sub.refused.status.name}: {message})"
                )

    def connected(self, name: str) -> bool:
        pv = self._pvs.get(name)
        return pv is not None and bool(pv.connected)

    def read(
        self,
        names: Sequence[str],
        timeout: float,
        max_lag: float | None = None,
        synced: bool = True,
    ) -> dict[str, ChannelValue]:
        """Values of ``names`` with their server time stamps and alarm severities.

        :param names: PV names (connected).
        :param timeout: Seconds [s] to wait for the answers.
        :param max_lag: Serve the call from the monitors when every PV has one from its
            current circuit and that circuit is recent enough: with ``synced``, it is synced
            to within this many seconds [s] of now (an update time-stamped no earlier than
            ``time.time() - max_lag`` has arrived on it); otherwise it has received data
            within this many seconds (the server still answers). A PV written since also
            needs an update that arrived after the write and shows the written value.
            Otherwise (and with ``None``) every PV is read.
        :param synced: Which recency rule applies (see ``max_lag``).
        :raises Disconnected: If a channel is not connected, its circuit closes, or the
            server does not answer within ``timeout``.
        :raises MachineError: If the server answers a read with an error.
        """
        if max_lag is not None:
            hit = self._cached(names, max_lag, synced)
            if hit is not None:
                self.stats["cached"] += 1
                return hit
        self.stats["round_trips"] += 1
        responses = self._round_trip(names, "read", None, timeout)
        out = {}
        for name, response in responses.items():
            if isinstance(response, self._ca.ErrorResponse):
                message = bytes(response.error_message).rstrip(b"\x00").decode(errors="replace")
                raise MachineError(
                    f"{name}: read refused by the server ({response.status.name}: {message})"
                )
            md = response.metadata
            out[name] = ChannelValue(
                _python_value(response.data), float(md.timestamp), int(md.severity)
            )
        return out

    def _cached(
        self, names: Sequence[str], max_lag: float, synced: bool
    ) -> dict[str, ChannelValue] | None:
        now, clock = time.time(), time.monotonic()
        out: dict[str, ChannelValue] = {}
        confirmed = []
        for name in names:
            self._require(name)
            entry = self._cache.get(name)
            if entry is None:
                return None
            circuit = self._pvs[name].circuit_manager
            if entry.circuit is not circuit or circuit.dead.is_set():
                return None  # an update from a previous circuit
            if synced:
                if now - self._synced.get(circuit, -math.inf) > max_lag:
                    return None  # updates may be on their way (or the server went silent)
            elif circuit.last_tcp_receipt is None or clock - circuit.last_tcp_receipt > max_lag:
                return None  # a silent server: only a read shows whether it still answers
            written = self._written.get(name)
            if written is not None:
                value, seq = written
                if entry.seq <= seq or entry.value.value != value:
                    return None  # the server has not reported the written value yet
                confirmed.append(name)
            out[name] = entry.value
        for name in confirmed:
            self._written.pop(name, None)
        return out

    def write(self, values: Mapping[str, Any], timeout: float) -> None:
        """Write with put-callback and wait for every completion.

        :param values: PV name -> value.
        :param timeout: Seconds [s] to wait for the completions.
        :raises PutRejected: If the server answers with an error status or response.
        :raises Disconnected: If a channel is not connected, its circuit closes, or the
            server does not confirm within ``timeout``.
        """
        for name, value in values.items():
            if name in self._subscriptions:
                self._written[name] = (value, self._seq)
        ca = self._ca
        responses = self._round_trip(list(values), "write", values, timeout)
        for name, response in responses.items():
            if isinstance(response, ca.ErrorResponse):
                message = bytes(response.error_message).rstrip(b"\x00").decode(errors="replace")
                raise PutRejected(
                    f"{name}: write of {values[name]!r} refused by the server "
                    f"({response.status.name}: {message})"
                )
            status = response.status
            if status.name != "ECA_NORMAL":
                raise PutRejected(
                    f"{name}: write of {values[name]!r} refused by the server "
                    f"({status.name}: {status.description})"
                )

    def _round_trip(
        self,
        names: Sequence[str],
        kind: str,
        values: Mapping[str, Any] | None,
        timeout: float,
    ) -> dict[str, Any]:
        """Send the read (``DBR_TIME``) or put-callback requests of ``names`` in one TCP send
        per circuit and wait for all responses; PV name -> response."""
        ca = self._ca
        names = list(dict.fromkeys(names))
        what = "read" if kind == "read" else "write"
        latch = _Latch(len(names))
        deadline = time.monotonic() + timeout
        requests: dict[Any, list[tuple[str, int, Any]]] = {}
        for name in names:
            self._require(name)
            pv = self._pvs[name]
            circuit, channel = pv.circuit_manager, pv.channel
            if circuit is None or channel is None or circuit.dead.is_set():
                raise Disconnected(f"{name}: channel not connected")
            try:
                ioid = circuit._ioid_counter()
                if kind == "read":
                    command = channel.read(ioid=ioid, data_type="time", notify=True)
                else:
                    assert values is not None
                    command = channel.write([values[name]], ioid=ioid, notify=True)
            except (ca.CaprotoError, OSError) as err:
                raise Disconnected(f"{name}: {what} failed: {err}") from err
            requests.setdefault(circuit, []).append((name, ioid, command))
        infos: dict[str, tuple[Any, dict[str, Any]]] = {}
        for circuit, items in requests.items():
            for name, ioid, command in items:
                info = {"event": latch, "pv": self._pvs[name], "request": command}
                info["deadline"] = deadline
                circuit.ioids[ioid] = info
                infos[name] = (circuit, info)
            try:
                circuit.send(*(command for _, _, command in items), extra={"pv": items[0][0]})
            except (ca.CaprotoError, OSError) as err:
                for _, ioid, _ in items:  # never sent: no answer can come
                    circuit.ioids.pop(ioid, None)
                raise Disconnected(f"{[n for n, _, _ in items]}: {what} failed: {err}") from err
        latch.wait(deadline - time.monotonic())
        out = {}
        for name, (circuit, info) in infos.items():
            response = info.get("response")
            if response is not None:
                out[name] = response
            elif circuit.dead.is_set():
                raise Disconnected(f"{name}: the circuit closed before the server answered")
            elif kind == "read":
                raise Disconnected(f"{name}: no answer to a read within {timeout:.3g} s")
            else:
                raise Disconnected(
                    f"{name}: the server did not confirm the write of {values[name]!r} "  # type: ignore[index]
                    f"within {timeout:.3g} s (no answer)"
                )
        return out

    def _require(self, name: str) -> None:
        if not self.connected(name):
            raise Disconnected(f"{name}: channel not connected")

    def close(self) -> None:
        self._cache.clear()
        self._synced.clear()
        self._written.clear()
        if self._context is not None:
            context, self._context = self._context, None
            self._pvs = {}
            self._subscriptions = {}
            # Sockets close now; caproto's worker threads (daemons) end on their own.
            try:
                context.disconnect(wait=False)
            finally:
                if context.broadcaster.udp_sock is not None:
                    context.broadcaster.disconnect(wait=False)


# --------------------------------------------------------------------------- PVA transport
