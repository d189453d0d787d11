"""Channel Access through caproto's threading client: the ``ca_client: caproto`` transport
of :class:`~accelrl.deploy.epics.EpicsMachine` (pure Python, no compiled EPICS libraries).

Connection of many PVs at once; ``DBR_TIME``, ``DBR_CTRL`` and string reads and
put-callback writes in one TCP send per call; monitors whose updates go to a
:class:`~accelrl.deploy.epics.cache.MonitorCache` in order, on the client's receive thread;
and the barrier round trip that proves a circuit's monitors caught up.

This module needs numpy and caproto only. Its size (~640 lines) is one class and the
caproto internals it must reach into: error responses handed to the waiting request (the
threading client drops them), monitor updates taken on the receive thread, requests sent in
one TCP send per call, and the search schedule (the back-off caproto documents, and a
search as soon as a beacon says a server is (back) up).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from accelrl.deploy.epics.cache import MonitorCache
from accelrl.deploy.epics.channels import (
    INVALID_SEVERITY,
    MONITOR_MODES,
    ChannelValue,
    ControlInfo,
    addresses_list,
    require_valid,
)
from accelrl.deploy.machine import (
    Disconnected,
    MachineError,
    PutRejected,
)

__all__ = ["INVALID_SEVERITY", "MONITOR_MODES", "CaChannels", "ChannelValue", "ControlInfo"]

# Former private names, still imported by some callers.
_addresses = addresses_list
_require_valid = require_valid


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


def _text(raw: Any) -> str:
    """A CA string (bytes, NUL-padded) as text."""
    if isinstance(raw, bytes):
        return raw.split(b"\x00", 1)[0].decode(errors="replace")
    return str(raw)


def _server_message(response: Any) -> str:
    return bytes(response.error_message).rstrip(b"\x00").decode(errors="replace")


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


class CaChannels:
    """Channel Access through caproto's threading client (see the module documentation).

    Every read or write of a call goes out in one TCP send and is awaited together (one
    round trip per call, not one per PV). Channels named in :meth:`monitor` also keep a
    subscription (``DBR_TIME``, value and alarm changes) whose updates go to :attr:`cache`.

    :param addresses: Search only these ``host[:port]`` (``None``: the environment's
        ``EPICS_CA_ADDR_LIST``, ``EPICS_CA_AUTO_ADDR_LIST``, ``EPICS_CA_SERVER_PORT``).
    :raises MachineError: If caproto is not installed.
    """

    def __init__(self, addresses: list[str] | None) -> None:
        try:
            import caproto as ca
            from caproto._utils import get_address_and_port_from_string
            from caproto.threading import client as ca_client
        except ImportError as err:  # pragma: no cover - caproto is a [deploy] dependency
            raise MachineError(
                "ca_client 'caproto' needs caproto: pip install 'accelrl[deploy]'"
            ) from err
        self._ca = ca
        self._client = ca_client
        self._host_port = get_address_and_port_from_string
        self._addresses = addresses
        self._context: Any = None
        self._pvs: dict[str, Any] = {}
        self._subscriptions: dict[str, Any] = {}
        #: The monitors' latest updates.
        self.cache = MonitorCache()
        #: Reads (``round_trips``), barriers (``barriers``) and calls served from the
        #: monitors (``cached``, counted by the machine).
        self.stats = {"cached": 0, "round_trips": 0, "barriers": 0}

    def _make_context(self, timeout: float) -> Any:
        from caproto._constants import SEARCH_MAX_DATAGRAM_BYTES as max_datagram
        from caproto._utils import batch_requests
        from caproto.client import common

        ca, client = self._ca, self._client
        addresses = self._addresses
        host_port_of = self._host_port
        # the ports the servers of ``addresses`` answer searches from (None: any server)
        default_port = ca.get_environment_variables()["EPICS_CA_SERVER_PORT"]
        server_ports = (
            None
            if addresses is None
            else {host_port_of(item, default_port)[1] for item in addresses}
        )

        class _Broadcaster(client.SharedBroadcaster):
            """Searches only ``addresses`` (instead of the process environment's list), with
            the back-off caproto documents, and at once when a beacon announces a new or
            restarted server."""

            def _retry_unanswered_searches(self) -> None:
                # caproto's search loop (same retirement rules) with the back-off it
                # describes: an unanswered search goes out again after 30 ms, 60 ms, ... and
                # then every 5 s. caproto 1.3 compares a search's last send with the interval
                # it is about to wait (twice the one it waited), so it sends a search once and
                # then not again for 7.65 s: a client whose IOC was back after 1.7 s waited
                # 6 s more for its channels.
                shortest = common.MIN_RETRY_SEARCHES_INTERVAL
                waited = wait = shortest
                check_retired_at = time.monotonic() + common.RETRY_RETIRED_SEARCHES_INTERVAL
                version = ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION)
                while not self._close_event.is_set():
                    if not self._searching_enabled.wait(0.5):
                        continue
                    t = time.monotonic()
                    retired_too = t >= check_retired_at
                    if retired_too:
                        check_retired_at = t + common.RETRY_RETIRED_SEARCHES_INTERVAL
                    with self._search_lock:
                        # [name, queue, last sent, retirement deadline]; not sent in the
                        # last half interval (a burst of new searches sends each once)
                        due = [
                            (search_id, item)
                            for search_id, item in self.unanswered_searches.items()
                            if (retired_too or item[3] > t) and item[2] <= t - waited / 2
                        ]
                        for _, item in due:
                            item[2] = t
                    requests = [
                        ca.SearchRequest(item[0], search_id, ca.DEFAULT_PROTOCOL_VERSION)
                        for search_id, item in due
                    ]
                    if requests:
                        self.search_log.debug("Sending %d SearchRequests", len(requests))
                    for batch in batch_requests(requests, max_datagram - len(version)):
                        self.send(version, *batch)
                    if self._search_now.wait(max(0.0, wait - (time.monotonic() - t))):
                        self._search_now.clear()  # new searches: start the back-off again
                        check_retired_at = t
                        waited = wait = shortest
                    else:
                        waited, wait = wait, min(2 * wait, common.MAX_RETRY_SEARCHES_INTERVAL)

            def _new_server_found(self) -> None:
                # caproto calls this for the first beacon of a server and for a beacon
                # anomaly (a restarted server), and only re-activates retired searches.
                # Like libca on a beacon anomaly, search for every unanswered name again now
                # (the channels of a closed circuit among them) and back off from there.
                super()._new_server_found()
                self.search_now()

            def received(self, bytes_recv: bytes, address: Any) -> int:
                # caproto's own method, but with a search restricted to ``addresses`` only
                # their servers' answers are taken: a server answers a search from the port
                # it was sent to. A datagram from elsewhere (another client's search request,
                # which reads as a search response with a nonsense address when its id
                # matches one of ours: port 5, the request's DONT_REPLY flag) would otherwise
                # send the channel to that address, and the failed connection there stops
                # caproto's search-result thread for good. Beacons (forwarded by the CA
                # repeater from its own port) are kept.
                if not bytes_recv:
                    return 0
                commands = self.broadcaster.recv(bytes_recv, address)
                if server_ports is not None and address[1] not in server_ports:
                    commands = [c for c in commands if not isinstance(c, ca.SearchResponse)]
                if commands:
                    self.command_bundle_queue.put(commands)
                return 0

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
        self.cache.post(name, circuit, value)

    def circuit(self, name: str) -> Hashable | None:
        """The circuit ``name`` is connected over now (``None``: not connected)."""
        pv = self._pvs.get(name)
        if pv is None or not pv.connected:
            return None
        circuit = pv.circuit_manager
        if circuit is None or circuit.dead.is_set():
            return None
        return circuit

    def latest(self, name: str) -> ChannelValue | None:
        """The latest monitor update of ``name`` from its current circuit (``None``: none, or
        the channel is not connected)."""
        entry = self.cache.latest(name, self.circuit(name))
        return None if entry is None else entry.value

    @property
    def updates(self) -> int:
        """Monitor updates received so far."""
        return self.cache.updates

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

    def read(self, names: Sequence[str], timeout: float) -> dict[str, ChannelValue]:
        """Values of ``names`` with their server time stamps and alarm severities
        (``DBR_TIME``), in one round trip.

        :param names: PV names (connected).
        :param timeout: Seconds [s] to wait for the answers.
        :raises Disconnected: If a channel is not connected, its circuit closes, or the
            server does not answer within ``timeout``.
        :raises MachineError: If the server answers a read with an error.
        """
        self.stats["round_trips"] += 1
        out = {}
        for name, response in self._round_trip(names, "time", None, timeout).items():
            md = response.metadata
            out[name] = ChannelValue(
                _python_value(response.data), float(md.timestamp), int(md.severity)
            )
        return out

    def read_control(self, names: Sequence[str], timeout: float) -> dict[str, ControlInfo]:
        """``DBR_CTRL`` of ``names`` (connected) in one round trip: units, control and
        display limits, precision, element count, whether the value is numeric."""
        out = {}
        for name, response in self._round_trip(names, "control", None, timeout).items():
            md = response.metadata
            channel = self._pvs[name].channel
            native = getattr(channel, "native_data_type", None)
            numeric = native is not None and not any(t in native.name for t in ("STRING", "ENUM"))
            precision = getattr(md, "precision", None)
            out[name] = ControlInfo(
                units=_text(getattr(md, "units", b"")),
                lower_ctrl_limit=float(getattr(md, "lower_ctrl_limit", math.nan)),
                upper_ctrl_limit=float(getattr(md, "upper_ctrl_limit", math.nan)),
                lower_disp_limit=float(getattr(md, "lower_disp_limit", math.nan)),
                upper_disp_limit=float(getattr(md, "upper_disp_limit", math.nan)),
                precision=None if precision is None else int(precision),
                count=int(getattr(channel, "native_data_count", len(response.data))),
                numeric=numeric,
            )
        return out

    def read_strings(self, names: Sequence[str], timeout: float) -> dict[str, str | None]:
        """``names`` read as strings (``DBR_STRING``); ``None`` for those that do not connect
        within ``timeout`` [s]."""
        deadline = time.monotonic() + timeout
        missing = set(self.connect(names, timeout))
        found = [n for n in names if n not in missing]
        out: dict[str, str | None] = dict.fromkeys(names)
        if found:
            left = max(0.05, deadline - time.monotonic())
            for name, response in self._round_trip(found, "string", None, left).items():
                out[name] = _text(response.data[0]) if len(response.data) else ""
        return out

    def start_write(self, values: Mapping[str, Any], timeout: float) -> _CaPending:
        """Send put-callback writes of ``values`` (PV -> value) in one TCP send per circuit;
        return without waiting for their completions (:meth:`_CaPending.wait`).

        :raises Disconnected: If a channel is not connected (nothing of it is sent).
        """
        latch, infos = self._send(list(values), "write", values, time.monotonic() + timeout)
        return _CaPending(self, dict(values), latch, infos)

    def write(self, values: Mapping[str, Any], timeout: float) -> None:
        """Write with put-callback and wait for every completion.

        :param values: PV name -> value.
        :param timeout: Seconds [s] to wait for the completions.
        :raises PutRejected: If the server answers with an error status or response.
        :raises Disconnected: If a channel is not connected, its circuit closes, or the
            server does not confirm within ``timeout``.
        """
        self.start_write(values, timeout).wait(timeout)

    def _round_trip(
        self, names: Sequence[str], kind: str, values: Mapping[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        """Send the reads (``kind``: ``"time"``, ``"control"``, ``"string"``) of ``names`` in
        one TCP send per circuit and wait for all responses; PV name -> response.

        :raises MachineError: If the server answers a read with an error.
        """
        latch, infos = self._send(names, kind, values, time.monotonic() + timeout)
        responses = self._collect(latch, infos, kind, timeout, None)
        for name, response in responses.items():
            if isinstance(response, self._ca.ErrorResponse):
                raise MachineError(
                    f"{name}: read refused by the server ({response.status.name}: "
                    f"{_server_message(response)})"
                )
        return responses

    def _send(
        self, names: Sequence[str], kind: str, values: Mapping[str, Any] | None, deadline: float
    ) -> tuple[_Latch, dict[str, tuple[Any, dict[str, Any]]]]:
        """Send the requests of ``names`` in one TCP send per circuit; their latch and
        PV name -> (circuit, request info)."""
        ca = self._ca
        names = list(dict.fromkeys(names))
        what = "write" if kind == "write" else "read"
        latch = _Latch(len(names))
        requests: dict[Any, list[tuple[str, int, Any]]] = {}
        string = ca.ChannelType.STRING
        for name in names:
            self._require(name)
            pv = self._pvs[name]
            circuit, channel = pv.circuit_manager, pv.channel
            if circuit is None or channel is None or circuit.dead.is_set():
                raise Disconnected(f"{name}: channel not connected")
            try:
                ioid = circuit._ioid_counter()
                if kind == "write":
                    assert values is not None
                    command = channel.write([values[name]], ioid=ioid, notify=True)
                else:
                    data_type = string if kind == "string" else kind
                    command = channel.read(ioid=ioid, data_type=data_type, notify=True)
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
        return latch, infos

    @staticmethod
    def _collect(
        latch: _Latch,
        infos: Mapping[str, tuple[Any, dict[str, Any]]],
        kind: str,
        timeout: float,
        values: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Wait (``timeout`` [s]) for the responses of :meth:`_send`; PV name -> response."""
        latch.wait(timeout)
        out = {}
        for name, (circuit, info) in infos.items():
            response = info.get("response")
            if response is not None:
                out[name] = response
            elif circuit.dead.is_set():
                raise Disconnected(f"{name}: the circuit closed before the server answered")
            elif kind != "write":
                raise Disconnected(f"{name}: no answer to a read within {timeout:.3g} s")
            else:
                assert values is not None
                raise Disconnected(
                    f"{name}: the server did not confirm the write of {values[name]!r} "
                    f"within {timeout:.3g} s (no answer)"
                )
        return out

    def _require(self, name: str) -> None:
        if not self.connected(name):
            raise Disconnected(f"{name}: channel not connected")

    def close(self) -> None:
        self.cache.clear()
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


class _CaPending:
    """Put-callback writes sent by :meth:`CaChannels.start_write`, completions pending."""

    def __init__(
        self,
        channels: CaChannels,
        values: dict[str, Any],
        latch: _Latch,
        infos: Mapping[str, tuple[Any, dict[str, Any]]],
    ) -> None:
        self.values = values
        self._channels = channels
        self._latch = latch
        self._infos = infos

    def wait(self, timeout: float) -> None:
        """Wait for every completion (at most ``timeout`` [s] from now).

        :raises PutRejected: If the server answers with an error status or response.
        :raises Disconnected: If the circuit closes or no completion comes within
            ``timeout``.
        """
        ca = self._channels._ca
        responses = CaChannels._collect(self._latch, self._infos, "write", timeout, self.values)
        for name, response in responses.items():
            if isinstance(response, ca.ErrorResponse):
                raise PutRejected(
                    f"{name}: write of {self.values[name]!r} refused by the server "
                    f"({response.status.name}: {_server_message(response)})"
                )
            status = response.status
            if status.name != "ECA_NORMAL":
                raise PutRejected(
                    f"{name}: write of {self.values[name]!r} refused by the server "
                    f"({status.name}: {status.description})"
                )
