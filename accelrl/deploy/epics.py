"""EPICS adapter of the :class:`~accelrl.deploy.machine.Machine` interface.

:class:`EpicsMachine` reaches a machine described by a
:class:`~accelrl.deploy.config.MachineConfig` over Channel Access (caproto's threading
client, ``transport: ca``) or PV Access (p4p, ``transport: pva``, optional).

Behaviour, in control-system terms:

* **Connect** searches all PVs of the config at once and fails with
  :class:`~accelrl.deploy.machine.Disconnected` naming every PV that did not connect within
  the timeout.
* **Reads** fetch values with their EPICS time stamps (``DBR_TIME``): a
  :class:`~accelrl.deploy.machine.Reading`'s ``timestamp`` is the oldest server time stamp
  of the channels read, so the fresh-reading rule judges the IOC's own times. A channel in
  ``INVALID`` alarm fails the read (:class:`~accelrl.deploy.machine.MachineError`). The
  requests of one call (reads or writes) go out in one TCP send and are awaited together:
  one round trip per call, whatever the number of PVs.
* **Combined reads**: :meth:`~EpicsMachine.read_state` reads readbacks, setpoints and health
  (those asked for) in one round trip.
* **Monitors** (``monitors``): ``DBR_TIME`` subscriptions whose latest updates serve
  :meth:`~EpicsMachine.read_observation` (default ``"observations"``; the IOC's time stamps
  still decide freshness) or every read: ``"synced"``, after a barrier round trip (a
  subscription of one PV per circuit, cancelled once its first update arrived: the server
  queues that update behind every update posted before, so all of them have arrived), or
  ``"all"``, only while the monitors provably lag the IOC by at most ``max_monitor_lag_s``
  (an update time-stamped within it has arrived, and a server delivers a client's updates
  in order). A call whose monitors are not recent enough, or whose channel is down, reads
  (or raises). See ``docs/virtual_accelerator.md``.
* **Writes** use put-with-callback (``WriteNotify``) and wait for the server's completion;
  an error status or error response raises :class:`~accelrl.deploy.machine.PutRejected`
  with the server's message. A confirmed write is *not* taken as applied: the safety layer
  checks the readbacks.
* **Settle** reads the busy PVs every ``timing.poll_interval_s`` until all are clear (knobs
  without a busy PV: until ``|readback - setpoint| <= tolerance``), else
  :class:`~accelrl.deploy.machine.SettleTimeout` naming the knobs still moving; with
  monitors a flag read set also counts as clear once its update shows 0 with a later IOC
  time stamp.
* **Health** reads interlock, beam loss and heartbeat; the heartbeat age is the time since
  the heartbeat's value last changed, from the server time stamp of that change.
* Every operation has a timeout; a channel that is disconnected or silent raises
  :class:`~accelrl.deploy.machine.Disconnected` (never a hang).

Searches go to ``EPICS_CA_ADDR_LIST`` / ``EPICS_CA_AUTO_ADDR_LIST`` / ``EPICS_CA_SERVER_PORT``
as usual, or to an explicit ``addresses`` list (``["127.0.0.1:5064"]``) that overrides them
for this machine only.

Example::

    >>> from accelrl.deploy.config import load_machine_config
    >>> from accelrl.deploy.epics import EpicsMachine
    >>> machine = EpicsMachine(load_machine_config("deploy/virtual_ares_ea_machine.yaml"),
    ...                        addresses=["127.0.0.1:5064"])      # doctest: +SKIP
    >>> machine.connect(timeout=3.0)                             # doctest: +SKIP
    >>> machine.read_observation().values["sigma_x"]             # doctest: +SKIP
    0.000406...

This module needs numpy and caproto (or p4p) only; it never imports torch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.machine import (
    Disconnected,
    Health,
    MachineError,
    PutRejected,
    Reading,
    SettleTimeout,
    State,
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


class _CaChannels:
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
class _PvaChannels:
    """PV Access through p4p's threading client (optional)."""

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
        self._context = Context("pva", conf=conf, useenv=conf is None)
        self._up: set[str] = set()
        self.stats = {"cached": 0, "round_trips": 0, "barriers": 0}

    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        results = self._context.get(list(names), timeout=timeout, throw=False)
        missing = [n for n, r in zip(names, results, strict=True) if isinstance(r, Exception)]
        self._up = set(names) - set(missing)
        return missing

    def connected(self, name: str) -> bool:
        return name in self._up

    def monitor(self, names: Sequence[str]) -> None:
        """No monitors over PV Access: every call reads."""

    def read(
        self,
        names: Sequence[str],
        timeout: float,
        max_lag: float | None = None,
        synced: bool = True,
    ) -> dict[str, ChannelValue]:
        """Read ``names`` concurrently (``max_lag``, ``synced``: ignored, no monitors)."""
        self.stats["round_trips"] += 1
        results = self._context.get(list(names), timeout=timeout, throw=False)
        out = {}
        for name, r in zip(names, results, strict=True):
            if isinstance(r, Exception):
                self._up.discard(name)
                raise Disconnected(f"{name}: read failed: {r!r}")
            out[name] = ChannelValue(
                float(r) if not hasattr(r, "__len__") else r,
                float(getattr(r, "timestamp", time.time())),
                int(getattr(r, "severity", 0)),
            )
        return out

    def write(self, values: Mapping[str, float], timeout: float) -> None:
        names = list(values)
        results = self._context.put(
            names, [values[n] for n in names], timeout=timeout, wait=True, throw=False
        )
        for name, r in zip(names, results or [None] * len(names), strict=True):
            if isinstance(r, TimeoutError):
                raise Disconnected(f"{name}: write not confirmed within {timeout:.3g} s")
            if isinstance(r, Exception):
                raise PutRejected(f"{name}: write of {values[name]!r} refused: {r}")

    def close(self) -> None:
        self._context.close()


# --------------------------------------------------------------------------- the machine
class EpicsMachine:
    """A machine reached over EPICS (see the module documentation).

    :param config: Machine config with ``transport: ca`` (or ``pva``) and PV names.
    :param addresses: Search only these ``host[:port]`` addresses (default: the
        ``EPICS_CA_ADDR_LIST`` environment, or ``EPICS_PVA_ADDR_LIST`` for PV Access).
    :param monitors: Channel Access monitors (see the module documentation):
        ``"observations"`` (default) serves :meth:`read_observation` from monitors and ends
        :meth:`settle` on the busy flags' updates; ``"synced"`` also serves
        :meth:`read_knobs`, :meth:`read_setpoints`, :meth:`health` and :meth:`read_state`
        from the monitors after one barrier round trip per call (they then show every
        change the IOC made before the call, as a read would); ``"all"`` serves those from
        monitors that lag the IOC by at most ``max_monitor_lag_s`` (no round trip; another
        client's change may show up to that much later); ``"none"``: every call reads. PV
        Access always reads.
    :param max_monitor_lag_s: Recency bound [s] of a call served from the monitors (default
        ``timing.poll_interval_s``): observations need a circuit that received data within
        it, ``"all"`` reads need monitors synced to within it.
    :raises ValueError: If the config's transport is ``"sim"``, ``monitors`` is unknown, or
        ``max_monitor_lag_s < 0``.
    :raises MachineError: If the transport's client library is missing.
    """

    def __init__(
        self,
        config: MachineConfig,
        *,
        addresses: str | Sequence[str] | None = None,
        monitors: str = "observations",
        max_monitor_lag_s: float | None = None,
    ) -> None:
        if config.transport not in ("ca", "pva"):
            raise ValueError(
                f"EpicsMachine needs transport 'ca' or 'pva'; machine {config.name!r} has "
                f"{config.transport!r} (use accelrl.deploy.sim for 'sim')"
            )
        if max_monitor_lag_s is None:
            max_monitor_lag_s = config.timing.poll_interval_s
        if not max_monitor_lag_s >= 0.0:
            raise ValueError(f"max_monitor_lag_s must be >= 0 s, got {max_monitor_lag_s!r}")
        if monitors not in MONITOR_MODES:
            raise ValueError(f"monitors must be one of {MONITOR_MODES}, got {monitors!r}")
        #: What is served from monitors (``"none"`` over PV Access).
        self.monitors = monitors if config.transport == "ca" else "none"
        #: How far [s] the monitors may lag the IOC and still serve a call.
        self.max_monitor_lag_s = float(max_monitor_lag_s)
        self.config = config
        self.knob_names: tuple[str, ...] = config.knob_names
        self.observation_names: tuple[str, ...] = config.observation_names
        self.addresses = _addresses(addresses)
        self._pv_names = config.pv_names
        # reading name -> PV (the config's validation ensures PVs for transport ca/pva)
        self._readbacks: dict[str, Any] = {k.name: k.readback_pv for k in config.knobs}
        self._setpoints: dict[str, Any] = {k.name: k.setpoint for k in config.knobs}
        self._observations: dict[str, Any] = {o.name: o.pv for o in config.observations}
        self._channels: _CaChannels | _PvaChannels | None = None
        self._timeout = config.timing.reading_timeout_s
        self._heartbeat: tuple[Any, float] | None = None  # (value, server time of change)
        self._seen = 0  # monitor updates received before the last read
        self._served = False  # the last read was served from the monitors
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- connection
    @property
    def pv_names(self) -> list[str]:
        """Every PV of the config, in a fixed order (setpoints, readbacks, busy flags,
        observations, interlock, beam loss, heartbeat)."""
        return list(self._pv_names)

    @property
    def monitored_pvs(self) -> list[str]:
        """The PVs with a monitor: observations and busy flags (``"observations"``), every
        PV (``"synced"``, ``"all"``), none (``"none"``). Busy flags are never served from the
        monitors (:meth:`settle` reads them first: a read sent after a put's completion is answered
        after the IOC raised the flag, while the flag's monitor update may still be on its
        way); their updates end a settle early."""
        if self.monitors in ("synced", "all"):
            return list(self._pv_names)
        if self.monitors == "observations":
            c = self.config
            wanted = {o.pv for o in c.observations} | {k.busy for k in c.knobs if k.busy}
            return [n for n in self._pv_names if n in wanted]
        return []

    @property
    def stats(self) -> dict[str, int]:
        """Machine calls served from the monitors (``cached``), by reads (``round_trips``;
        puts not counted) and barriers before serving (``barriers``, ``"synced"``) since
        :meth:`connect`."""
        channels = self._channels
        if channels is None:
            return {"cached": 0, "round_trips": 0, "barriers": 0}
        return dict(channels.stats)

    def connect(self, timeout: float | None = None) -> None:
        """Connect every PV of the config (and start the monitors, see :attr:`monitors`).

        :param timeout: Seconds to wait [s] (default ``timing.connect_timeout_s``).
        :raises Disconnected: Naming the PVs that did not connect (and where it searched).
        """
        timeout = self.config.timing.connect_timeout_s if timeout is None else float(timeout)
        with self._lock:
            if self._channels is None:
                transport = _CaChannels if self.config.transport == "ca" else _PvaChannels
                self._channels = transport(self.addresses)
            missing = self._channels.connect(self.pv_names, timeout)
            if self.monitors != "none":
                self._channels.monitor(self.monitored_pvs)
        if missing:
            where = (
                " ".join(self.addresses)
                if self.addresses
                else "EPICS_CA_ADDR_LIST / EPICS_CA_SERVER_PORT of the environment"
            )
            raise Disconnected(
                f"{len(missing)} of {len(self.pv_names)} PVs of {self.config.name!r} did not "
                f"connect within {timeout:.3g} s (searched {where}): {missing}"
            )

    def close(self) -> None:
        """Release all channels (idempotent)."""
        with self._lock:
            channels, self._channels = self._channels, None
        if channels is not None:
            channels.close()

    def __enter__(self) -> EpicsMachine:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ch(self) -> _CaChannels | _PvaChannels:
        if self._channels is None:
            raise Disconnected(f"machine {self.config.name!r} is not connected (call connect)")
        return self._channels

    def _read(self, names: Sequence[str], monitored: str = "") -> dict[str, ChannelValue]:
        """Values of ``names``; from the monitors when the mode allows it for this kind of
        read (``monitored``: ``"observations"`` or ``"all"``, see :attr:`monitors`) and
        they are recent enough, else by one concurrent read. A value in INVALID alarm
        fails."""
        values = self._fetch(names, monitored)
        _require_valid(values, values)
        return values

    def _fetch(self, names: Sequence[str], monitored: str) -> dict[str, ChannelValue]:
        channels = self._ch()
        allowed = monitored == "observations" and self.monitors != "none"
        allowed = allowed or (monitored == "all" and self.monitors in ("synced", "all"))
        if not (allowed and isinstance(channels, _CaChannels)):
            self._served = False
            return channels.read(names, self._timeout)
        if monitored == "all" and self.monitors == "synced":
            # One barrier round trip: every update posted before it has arrived, so the
            # monitors show what a read would (a PV without an update yet is read).
            channels.barrier(names, self._timeout)
            self._seen = channels.updates
            served = channels.stats["cached"]
            values = channels.read(names, self._timeout, math.inf, synced=False)
            self._served = channels.stats["cached"] > served
            return values
        self._seen = channels.updates
        served = channels.stats["cached"]
        # Observations are judged by their IOC time stamps (the fresh-reading rule): they
        # only need a server that still answers. Other values need monitors synced to
        # within the lag bound.
        values = channels.read(
            names, self._timeout, self.max_monitor_lag_s, synced=monitored == "all"
        )
        self._served = channels.stats["cached"] > served
        return values

    def wait_for_update(self, timeout: float) -> None:
        """Wait until a monitor update has arrived since the last read, at most ``timeout``
        [s]; sleep ``timeout`` when the last read was not served from the monitors (no
        monitors, or not synced: the next read goes to the IOC anyway). Polling loops call
        it between reads so that a new frame or readback is seen when it arrives.

        :param timeout: Longest wait [s].
        """
        channels = self._channels
        if self._served and isinstance(channels, _CaChannels):
            channels.wait_for_update(self._seen, timeout)
        else:
            time.sleep(max(0.0, timeout))

    def _reading(self, pvs: Mapping[str, Any], monitored: str) -> Reading:
        """``pvs``: reading name -> PV; ``monitored``: see :meth:`_read`."""
        raw = self._read(list(dict.fromkeys(pvs.values())), monitored)
        values = {name: float(raw[pv].value) for name, pv in pvs.items()}
        return Reading(values, min(raw[pv].timestamp for pv in pvs.values()))

    # ----------------------------------------------------------------- reads
    def read_knobs(self) -> Reading:
        """Readbacks of all knobs (SI), time-stamped by the IOC."""
        return self._reading(self._readbacks, "all")

    def read_setpoints(self) -> Reading:
        """Setpoints of all knobs (SI), time-stamped by the IOC."""
        return self._reading(self._setpoints, "all")

    def read_observation(self) -> Reading:
        """The observation (SI); ``timestamp`` is the oldest of the channels' IOC times."""
        return self._reading(self._observations, "observations")

    def read_state(self, knobs: bool = True, setpoints: bool = True, health: bool = True) -> State:
        """:meth:`read_knobs`, :meth:`read_setpoints` and :meth:`health` (those asked for)
        in one call: one round trip for all their PVs (or served from the monitors under
        the same rule as each of them, ``monitors="all"``). Every value is checked as by
        the separate calls.

        :raises Disconnected: If a channel cannot be read.
        :raises MachineError: If a readback or setpoint is in INVALID alarm.
        """
        parts: dict[str, Mapping[str, Any]] = {}
        if knobs:
            parts["knobs"] = self._readbacks
        if setpoints:
            parts["setpoints"] = self._setpoints
        names = [pv for pvs in parts.values() for pv in pvs.values()]
        guarded = set(names)
        if health:
            names += self._health_pvs()
        names = list(dict.fromkeys(names))
        raw = self._fetch(names, "all") if names else {}
        _require_valid(raw, guarded)
        out: dict[str, Any] = {}
        for part, pvs in parts.items():
            values = {n: float(raw[pv].value) for n, pv in pvs.items()}
            out[part] = Reading(values, min(raw[pv].timestamp for pv in pvs.values()))
        if health:
            out["health"] = self._health(raw)
        return State(**out)

    # ----------------------------------------------------------------- writes
    def put(self, setpoints: Mapping[str, float]) -> None:
        """Write setpoints with put-callback; return when the IOC confirmed them (not when
        the magnets arrived: see :meth:`settle`).

        :param setpoints: Knob name -> setpoint (SI), a subset of the knobs.
        :raises KeyError: For unknown knob names.
        :raises ValueError: For NaN/inf values (never sent).
        :raises PutRejected: If the IOC refuses a write (error status or error response).
        :raises Disconnected: If a channel is disconnected or the IOC does not answer within
            ``timing.reading_timeout_s``.
        """
        pvs = {}
        for name, value in setpoints.items():
            knob = self.config.knob(name)
            if not math.isfinite(float(value)):
                raise ValueError(f"knob {name!r}: setpoint must be finite, got {value!r}")
            pvs[knob.setpoint] = float(value)
        if pvs:
            self._ch().write(pvs, self._timeout)  # type: ignore[arg-type]

    def settle(self, names: Sequence[str], timeout: float | None = None) -> None:
        """Wait until the named knobs are done moving: busy PVs read 0 (knobs without one:
        ``|readback - setpoint| <= tolerance``), read every ``timing.poll_interval_s``.

        With monitors, a knob whose busy flag was read set also counts as done as soon as
        the flag's monitor shows 0 with an IOC time stamp later than the one read (the IOC
        cleared it after raising it); the reads go on until then.

        :param names: Knob names.
        :param timeout: Seconds [s] (default ``timing.settle_timeout_s``).
        :raises SettleTimeout: Naming the knobs still moving after ``timeout``.
        :raises Disconnected: If a channel drops meanwhile.
        """
        timeout = self.config.timing.settle_timeout_s if timeout is None else float(timeout)
        knobs = [self.config.knob(n) for n in names]
        deadline = time.monotonic() + timeout
        poll = self.config.timing.poll_interval_s
        channels = self._ch()
        monitored = self.monitors != "none" and isinstance(channels, _CaChannels)
        while True:
            seen = channels.updates if isinstance(channels, _CaChannels) else 0
            moving, raised = self._moving(knobs)
            next_read = time.monotonic() + poll
            while moving:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SettleTimeout(
                        f"knobs {[k.name for k in moving]} still moving after {timeout:.3g} s "
                        f"(busy set or readback away from setpoint)"
                    )
                pause = min(next_read - time.monotonic(), left)
                if pause <= 0:
                    break  # read again
                if not monitored:
                    time.sleep(pause)
                    continue
                assert isinstance(channels, _CaChannels)
                channels.wait_for_update(seen, pause)
                seen = channels.updates
                moving = [k for k in moving if not self._cleared(channels, k, raised)]
            if not moving:
                return

    def _moving(self, knobs: Sequence[Any]) -> tuple[list[Any], dict[str, float]]:
        """The knobs still moving, read from the IOC, and the IOC time stamps of the busy
        flags read set."""
        busy = [k for k in knobs if k.busy]
        other = [k for k in knobs if not k.busy]
        names = [k.busy for k in busy]
        for k in other:
            names += [k.setpoint, k.readback_pv]
        raw = self._read(list(dict.fromkeys(names)))
        moving = [k for k in busy if float(raw[k.busy].value) != 0.0]
        raised = {k.busy: raw[k.busy].timestamp for k in moving}
        for k in other:
            if abs(float(raw[k.readback_pv].value) - float(raw[k.setpoint].value)) > k.tolerance:
                moving.append(k)
        return moving, raised

    @staticmethod
    def _cleared(channels: _CaChannels, knob: Any, raised: Mapping[str, float]) -> bool:
        """Whether the busy flag of ``knob``, read set at ``raised[busy]``, has a monitor
        update 0 time-stamped after that."""
        if knob.busy not in raised:
            return False
        latest = channels.latest(knob.busy)
        return (
            latest is not None
            and latest.timestamp > raised[knob.busy]
            and float(latest.value) == 0.0
            and latest.severity < INVALID_SEVERITY
        )

    # ----------------------------------------------------------------- health
    def health(self) -> Health:
        """Interlock, beam loss, heartbeat age and connection state.

        :raises Disconnected: If an interlock, beam-loss or heartbeat PV cannot be read (an
            unknown protection state is not a healthy one).
        """
        names = self._health_pvs()
        return self._health(self._fetch(names, "all") if names else {})

    def _health_pvs(self) -> list[str]:
        c = self.config
        return [p for p in (c.interlock.pv, c.beam_loss.pv, c.heartbeat.pv) if p]

    def _health(self, raw: Mapping[str, ChannelValue]) -> Health:
        """The health of the interlock, beam-loss and heartbeat values ``raw`` (PV -> value)
        and of the channels' connection state now."""
        c = self.config
        channels = self._ch()
        detail: list[str] = []
        down = [n for n in self._pv_names if not channels.connected(n)]
        if down:
            detail.append(f"disconnected: {down}")
        interlock = beam_loss = False
        age = None
        if c.interlock.pv:
            v = raw[c.interlock.pv]
            interlock = float(v.value) == c.interlock.tripped_when or v.severity >= 3
            if interlock:
                detail.append(f"interlock {c.interlock.pv} = {v.value!r} (tripped)")
        if c.beam_loss.pv:
            v = raw[c.beam_loss.pv]
            beam_loss = float(v.value) > c.beam_loss.max or v.severity >= 3
            if beam_loss:
                detail.append(f"beam loss {c.beam_loss.pv} = {v.value!r} > {c.beam_loss.max}")
        if c.heartbeat.pv:
            v = raw[c.heartbeat.pv]
            with self._lock:
                if self._heartbeat is None or self._heartbeat[0] != v.value:
                    self._heartbeat = (v.value, v.timestamp)
                changed = self._heartbeat[1]
            age = max(0.0, time.time() - changed)
            if age > c.heartbeat.max_age_s:
                detail.append(
                    f"heartbeat {c.heartbeat.pv} unchanged for {age:.2f} s "
                    f"(> {c.heartbeat.max_age_s} s)"
                )
        return Health(
            connected=not down,
            interlock=interlock,
            beam_loss=beam_loss,
            heartbeat_age_s=age,
            detail=tuple(detail),
        )

    def __repr__(self) -> str:
        state = "connected" if self._channels is not None else "not connected"
        return f"EpicsMachine({self.config.name!r}, {self.config.transport}, {state})"
