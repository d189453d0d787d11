"""Channel Access through EPICS base's own client library, libca, loaded by pyepics: the
``ca_client: pyepics`` transport of :class:`~accelrl.deploy.epics.EpicsMachine`.

pyepics provides the library (EPICS base from the ``epicscorelibs`` wheel when installed,
else the libca pyepics ships) and its ``DBR`` structure definitions; this module makes the
libca calls itself, in a libca context of its own (preemptive callbacks), so that

* the searches go only to the machine's ``addresses`` (libca reads ``EPICS_CA_ADDR_LIST``
  when a context creates its first channel: this module sets it for that moment only),
  independently of any other context in the process (pyepics's own included);
* a read of many PVs is one *synchronous group* (``ca_sg_array_get`` for each, one flush,
  ``ca_sg_block``): one round trip whose waiting happens in C, without a Python callback
  per PV, its answers written into one buffer and decoded with :mod:`struct`;
* writes are put-callbacks (``ca_array_put_callback``) whose completion status is looked
  at (``ECA_PUTFAIL`` is a refusal; pyepics's ``caput(wait=True)`` would return 1), and
  whose completions may be collected later (:meth:`LibcaChannels.start_write`);
* monitors (``ca_create_subscription``, ``DBR_TIME_DOUBLE``) post each update to a
  :class:`~accelrl.deploy.epics.cache.MonitorCache` from libca's receive thread, in the
  order the circuit delivers them; a barrier is a subscription cancelled after its first
  update (the server queues it behind every update posted before).

Every libca call runs with this transport's context attached to the calling thread, and the
thread's previous context (if any) is restored afterwards. libca's own messages (a circuit
lost, ...) go to the ``accelrl.deploy.epics`` logger instead of the terminal.

The ctypes declarations of the libca calls are in :mod:`accelrl.deploy.epics.libca_c`. This
module needs numpy and pyepics (with a libca) only. Its size (~600 lines) is one class: the
context, the connection, monitor and completion callbacks, the synchronous-group reads,
the put-callbacks and the barriers share the channels' state and the context's lock.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

from accelrl.deploy.epics.cache import MonitorCache
from accelrl.deploy.epics.channels import ChannelValue, ControlInfo
from accelrl.deploy.epics.libca_c import (
    CONNECTION_CB,
    DBE_ALARM,
    DBE_VALUE,
    DBF_NUMERIC,
    DBR_CTRL_DOUBLE,
    DBR_DOUBLE,
    DBR_STRING,
    DBR_TIME_DOUBLE,
    DBR_TIME_STRING,
    ECA_DISCONN,
    ECA_NORMAL,
    ECA_TIMEOUT,
    EVENT_CB,
    EXCEPTION_CB,
    OP_CONN_UP,
    UNFILLED,
    ConnectionArgs,
    EventArgs,
    ExceptionArgs,
    load_libca,
    stamp,
)
from accelrl.deploy.machine import Disconnected, MachineError, PutRejected

log = logging.getLogger("accelrl.deploy.epics")

#: Serialises the moments this process's environment names a context's search addresses.
_ENV_LOCK = threading.Lock()

#: ``struct dbr_time_double`` (db_access.h): status and severity (short), the time stamp's
#: seconds and nanoseconds (unsigned 32-bit), a pad, then the value(s) (double) at
#: :data:`_VALUE_OFFSET`; an array of ``count`` values takes ``_VALUE_OFFSET + 8 * count``
#: bytes. :func:`_check_layout` compares it with pyepics's ctypes definition.
_TIME_HEAD = struct.Struct("=hhII")
_VALUE_OFFSET = 16
_DOUBLE = struct.Struct("=d")
_SEVERITY = struct.Struct("=h")  # at offset 2


class _Channel:
    """One libca channel and its connection state."""

    __slots__ = ("name", "index", "chid", "up", "circuit", "count", "ftype", "event")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self.chid = ctypes.c_void_p()
        self.up = False
        self.circuit: Hashable | None = None
        self.count = 1
        self.ftype = -1
        self.event = ctypes.c_void_p()  # the monitor's subscription (evid)


class _Waiter:
    """Counts the callbacks a call waits for; keeps their statuses. ``_done`` is held until
    the last one came (a lock as a one-shot event: lighter than ``threading.Event``)."""

    __slots__ = ("left", "_done", "status", "lock")

    def __init__(self, count: int) -> None:
        self.left = count
        self._done = threading.Lock()
        self.status: dict[int, int] = {}
        self.lock = threading.Lock()
        if count > 0:
            self._done.acquire()

    def complete(self, key: int, status: int) -> None:
        with self.lock:
            if key in self.status:
                return
            self.status[key] = status
            self.left -= 1
            if self.left == 0:
                self._done.release()

    def wait(self, timeout: float) -> bool:
        """Whether every callback came, waiting at most ``timeout`` [s]."""
        if self._done.acquire(True, max(0.0, timeout)):
            self._done.release()
            return True
        return False


_LIVE: weakref.WeakSet[LibcaChannels] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Destroy every libca context before the interpreter ends (its threads would call
    into a finalised interpreter otherwise)."""
    for channels in list(_LIVE):
        channels.close()


class LibcaChannels:
    """Channel Access through libca (see the module documentation).

    :param addresses: Search only these ``host[:port]`` (``None``: the environment's
        ``EPICS_CA_ADDR_LIST``, ``EPICS_CA_AUTO_ADDR_LIST``, ``EPICS_CA_SERVER_PORT``).
    :raises MachineError: If pyepics or libca cannot be loaded.
    """

    def __init__(self, addresses: list[str] | None) -> None:
        from epics import dbr

        self._lib = load_libca()
        self._dbr = dbr
        _check_layout(dbr)
        self._addresses = addresses
        self._context: int | None = None
        self._lock = threading.RLock()  # one libca call sequence at a time
        self._up = threading.Condition()
        self._chans: dict[str, _Channel] = {}
        self._by_index: list[_Channel] = []
        self._epochs: dict[str, int] = {}  # host -> circuits lost so far
        self._requests: dict[int, tuple[_Waiter, int]] = {}  # usr -> (waiter, key)
        self._next_request = 1
        self._group = ctypes.c_uint()
        self._searched = False
        # the callbacks (kept referenced as long as the context lives)
        self._connection_cb = CONNECTION_CB(self._on_connection)
        self._update_cb = EVENT_CB(self._on_update)
        self._done_cb = EVENT_CB(self._on_done)
        self._exception_cb = EXCEPTION_CB(self._on_exception)
        #: The monitors' latest updates.
        self.cache = MonitorCache()
        #: Reads (``round_trips``), barriers (``barriers``) and calls served from the
        #: monitors (``cached``, counted by the machine).
        self.stats = {"cached": 0, "round_trips": 0, "barriers": 0}
        _LIVE.add(self)

    # ------------------------------------------------------------------ context
    def _attached(self) -> _Attached:
        """This transport's context attached to the calling thread (its previous one
        restored after), under the transport's lock; ``with`` gives libca."""
        return _Attached(self)

    def _ensure_context(self) -> None:
        lib = self._lib
        with self._lock:
            if self._context is not None:
                return
            previous = lib.ca_current_context()
            if previous:
                lib.ca_detach_context()
            try:
                status = lib.ca_context_create(1)  # preemptive callbacks
                if status != ECA_NORMAL:
                    raise MachineError(f"libca: no context: {lib.ca_message(status).decode()}")
                self._context = lib.ca_current_context()
                lib.ca_add_exception_event(self._exception_cb, None)
                lib.ca_sg_create(ctypes.byref(self._group))
            finally:
                lib.ca_detach_context()
                if previous:
                    lib.ca_attach_context(previous)

    @contextlib.contextmanager
    def _search_environment(self) -> Iterator[None]:
        """The environment naming only :attr:`addresses` while the context creates its
        first channel (when libca reads it)."""
        if self._searched or self._addresses is None:
            yield
            return
        wanted = {"EPICS_CA_ADDR_LIST": " ".join(self._addresses), "EPICS_CA_AUTO_ADDR_LIST": "NO"}
        with _ENV_LOCK:
            saved = {k: os.environ.get(k) for k in wanted}
            os.environ.update(wanted)
            try:
                yield
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    # ------------------------------------------------------------------ callbacks
    def _channel_of(self, usr: int | None) -> _Channel | None:
        index = (usr or 0) - 1
        return self._by_index[index] if 0 <= index < len(self._by_index) else None

    def _on_connection(self, args: ConnectionArgs) -> None:
        """A channel connected or disconnected (libca thread)."""
        lib = self._lib
        ch = self._channel_of(lib.ca_puser(args.chid))
        if ch is None:
            return
        host = (lib.ca_host_name(args.chid) or b"").decode(errors="replace")
        with self._up:
            if args.op == OP_CONN_UP:
                ch.ftype = int(lib.ca_field_type(args.chid))
                ch.count = max(1, int(lib.ca_element_count(args.chid)))
                ch.circuit = (host, self._epochs.get(host, 0))
                ch.up = True
            else:
                lost, ch.circuit, ch.up = ch.circuit, None, False
                if lost is not None:
                    self._epochs[lost[0]] = self._epochs.get(lost[0], 0) + 1  # type: ignore[index]
                    self.cache.forget_circuit(lost)
            self._up.notify_all()

    def _decode_time(self, address: int, count: int) -> ChannelValue:
        """A ``DBR_TIME_DOUBLE`` of ``count`` elements at ``address``."""
        return _decode(
            (ctypes.c_char * (_VALUE_OFFSET + 8 * count)).from_address(address), 0, count
        )

    def _on_update(self, args: EventArgs) -> None:
        """A monitor update (libca's receive thread, in the circuit's order)."""
        ch = self._channel_of(args.usr)
        if ch is None or ch.circuit is None:
            return
        value = None
        if args.status == ECA_NORMAL and args.dbr:
            value = self._decode_time(args.dbr, max(1, int(args.count)))
        self.cache.post(ch.name, ch.circuit, value)

    def _on_done(self, args: EventArgs) -> None:
        """A put completion or a barrier's first update (libca thread)."""
        request = self._requests.pop(args.usr or 0, None)
        if request is not None:
            waiter, key = request
            waiter.complete(key, int(args.status))

    def _on_exception(self, args: ExceptionArgs) -> None:
        """libca's asynchronous messages (a circuit lost, a refused plain put, ...)."""
        message = (self._lib.ca_message(args.stat) or b"").decode(errors="replace")
        context = (args.ctx or b"").decode(errors="replace")
        log.info("libca: %s (%s)", message, context)

    def _request(self, waiter: _Waiter, key: int) -> int:
        usr = self._next_request
        self._next_request += 1
        self._requests[usr] = (waiter, key)
        return usr

    # ------------------------------------------------------------------ connection
    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        """Connect ``names`` (idempotent); those not connected after ``timeout`` [s]."""
        self._ensure_context()
        new = [n for n in dict.fromkeys(names) if n not in self._chans]
        if new:
            with self._search_environment(), self._attached() as lib:
                for name in new:
                    ch = _Channel(name, len(self._by_index))
                    self._by_index.append(ch)
                    self._chans[name] = ch
                    status = lib.ca_create_channel(
                        name.encode(), self._connection_cb, ch.index + 1, 0, ctypes.byref(ch.chid)
                    )
                    if status != ECA_NORMAL:
                        raise MachineError(f"{name}: {lib.ca_message(status).decode()}")
                lib.ca_flush_io()
                self._searched = True
        deadline = time.monotonic() + timeout
        with self._up:
            self._up.wait_for(
                lambda: all(self._chans[n].up for n in names), max(0.0, deadline - time.monotonic())
            )
        return [n for n in names if not self._chans[n].up]

    def connected(self, name: str) -> bool:
        ch = self._chans.get(name)
        return ch is not None and ch.up

    def circuit(self, name: str) -> Hashable | None:
        """The circuit ``name`` is connected over now (``None``: not connected)."""
        ch = self._chans.get(name)
        return None if ch is None or not ch.up else ch.circuit

    def _require(self, name: str) -> _Channel:
        ch = self._chans.get(name)
        if ch is None or not ch.up:
            raise Disconnected(f"{name}: channel not connected")
        return ch

    def monitor(self, names: Sequence[str]) -> None:
        """Subscribe to value and alarm changes of ``names`` (connected with
        :meth:`connect`; libca renews the subscription on every new circuit). Idempotent."""
        with self._attached() as lib:
            for name in names:
                ch = self._chans.get(name)
                if ch is None or ch.event.value:
                    continue
                status = lib.ca_create_subscription(
                    DBR_TIME_DOUBLE, 0, ch.chid, DBE_VALUE | DBE_ALARM, self._update_cb,
                    ch.index + 1, ctypes.byref(ch.event),
                )  # fmt: skip
                if status != ECA_NORMAL:
                    raise MachineError(f"{name}: monitor: {lib.ca_message(status).decode()}")
            lib.ca_flush_io()

    @property
    def updates(self) -> int:
        """Monitor updates received so far."""
        return self.cache.updates

    def latest(self, name: str) -> ChannelValue | None:
        """The latest monitor update of ``name`` from its current circuit, if any."""
        entry = self.cache.latest(name, self.circuit(name))
        return None if entry is None else entry.value

    # ------------------------------------------------------------------ reads
    def _group_read(
        self, names: Sequence[str], dbr_type: int, size: int, value_size: int, timeout: float
    ) -> dict[str, tuple[_Channel, Any]]:
        """One synchronous-group read of ``names``: PV -> (channel, filled buffer)."""
        chans = [self._require(n) for n in dict.fromkeys(names)]
        buffers = []
        with self._attached() as lib:
            group = self._group.value
            for ch in chans:
                count = ch.count if dbr_type != DBR_TIME_STRING else 1
                buf = ctypes.create_string_buffer(size + value_size * (count - 1))
                ctypes.c_short.from_buffer(buf, 2).value = UNFILLED  # the severity
                status = lib.ca_sg_array_get(group, dbr_type, count, ch.chid, buf)
                if status != ECA_NORMAL:
                    lib.ca_sg_reset(group)
                    raise Disconnected(f"{ch.name}: read failed: {lib.ca_message(status).decode()}")
                buffers.append(buf)
            status = lib.ca_sg_block(group, max(timeout, 1e-3))
            if status != ECA_NORMAL:
                lib.ca_sg_reset(group)
        if status == ECA_TIMEOUT:
            slow = [ch.name for ch, buf in zip(chans, buffers, strict=True) if _unfilled(buf)]
            raise Disconnected(f"{slow}: no answer to a read within {timeout:.3g} s")
        out = {}
        for ch, buf in zip(chans, buffers, strict=True):
            if status != ECA_NORMAL or _unfilled(buf):
                raise Disconnected(f"{ch.name}: the circuit closed before the server answered")
            out[ch.name] = (ch, buf)
        return out

    def read(self, names: Sequence[str], timeout: float) -> dict[str, ChannelValue]:
        """Values of ``names`` with their server time stamps and alarm severities
        (``DBR_TIME_DOUBLE``), in one round trip: one synchronous group, every answer
        written into one buffer (each channel's part marked unfilled until libca fills it).

        :raises Disconnected: If a channel is not connected, its circuit closes, or the
            server does not answer within ``timeout`` [s].
        """
        self.stats["round_trips"] += 1
        chans = [self._require(n) for n in dict.fromkeys(names)]
        offsets, size = [], 0
        for ch in chans:
            offsets.append(size)
            size += _VALUE_OFFSET + 8 * ch.count  # a multiple of 8: every part aligned
        buf = ctypes.create_string_buffer(size)
        address = ctypes.addressof(buf)
        for offset in offsets:
            _SEVERITY.pack_into(buf, offset + 2, UNFILLED)
        with self._attached() as lib:
            group = self._group.value
            get = lib.ca_sg_array_get
            for ch, offset in zip(chans, offsets, strict=True):
                status = get(group, DBR_TIME_DOUBLE, ch.count, ch.chid, address + offset)
                if status != ECA_NORMAL:
                    lib.ca_sg_reset(group)
                    raise Disconnected(f"{ch.name}: read failed: {lib.ca_message(status).decode()}")
            status = lib.ca_sg_block(group, max(timeout, 1e-3))
            if status != ECA_NORMAL:
                lib.ca_sg_reset(group)
        unfilled = [
            ch.name
            for ch, offset in zip(chans, offsets, strict=True)
            if _SEVERITY.unpack_from(buf, offset + 2)[0] == UNFILLED
        ]
        if status == ECA_TIMEOUT:
            raise Disconnected(f"{unfilled}: no answer to a read within {timeout:.3g} s")
        if status != ECA_NORMAL or unfilled:
            name = chans[0].name if status != ECA_NORMAL else unfilled[0]
            raise Disconnected(f"{name}: the circuit closed before the server answered")
        return {
            ch.name: _decode(buf, offset, ch.count)
            for ch, offset in zip(chans, offsets, strict=True)
        }

    def read_control(self, names: Sequence[str], timeout: float) -> dict[str, ControlInfo]:
        """``DBR_CTRL_DOUBLE`` of ``names`` (connected) in one round trip."""
        ctrl = self._dbr.ctrl_double
        raw = self._group_read(names, DBR_CTRL_DOUBLE, ctypes.sizeof(ctrl), 8, timeout)
        out = {}
        for name, (ch, buf) in raw.items():
            md = ctrl.from_buffer(buf)
            out[name] = ControlInfo(
                units=bytes(md.units).split(b"\x00", 1)[0].decode(errors="replace"),
                lower_ctrl_limit=float(md.lower_ctrl_limit),
                upper_ctrl_limit=float(md.upper_ctrl_limit),
                lower_disp_limit=float(md.lower_disp_limit),
                upper_disp_limit=float(md.upper_disp_limit),
                precision=int(md.precision),
                count=ch.count,
                numeric=ch.ftype in DBF_NUMERIC,
            )
        return out

    def read_strings(self, names: Sequence[str], timeout: float) -> dict[str, str | None]:
        """``names`` read as strings (``DBR_STRING``); ``None`` for those that do not connect
        within ``timeout`` [s] (their channels are cleared again)."""
        deadline = time.monotonic() + timeout
        missing = set(self.connect(names, timeout))
        found = [n for n in names if n not in missing]
        out: dict[str, str | None] = dict.fromkeys(names)
        if missing:
            with self._attached() as lib:
                for name in missing:
                    ch = self._chans.pop(name)
                    lib.ca_clear_channel(ch.chid)
        if found:
            left = max(0.05, deadline - time.monotonic())
            size = ctypes.sizeof(self._dbr.time_string)
            raw = self._group_read(found, DBR_TIME_STRING, size, 0, left)
            offset = self._dbr.time_string.value.offset
            for name, (_, buf) in raw.items():
                text = buf.raw[offset : offset + 40].split(b"\x00", 1)[0]
                out[name] = text.decode(errors="replace")
        return out

    # ------------------------------------------------------------------ writes
    def start_write(self, values: Mapping[str, Any], timeout: float) -> _LibcaPending:
        """Send put-callback writes of ``values`` (PV -> float or str) in one flush; return
        without waiting for their completions (:meth:`_LibcaPending.wait`).

        :raises Disconnected: If a channel is not connected (nothing is sent).
        :raises PutRejected: If libca refuses to send a write (e.g. no write access); the
            writes before it in ``values`` are sent.
        """
        chans = {name: self._require(name) for name in values}
        waiter = _Waiter(len(chans))
        buffers: list[Any] = []
        refused = None
        with self._attached() as lib:
            for key, (name, ch) in enumerate(chans.items()):
                value = values[name]
                if isinstance(value, str):
                    buf: Any = ctypes.create_string_buffer(value.encode(), 40)
                    dbr_type = DBR_STRING
                else:
                    buf, dbr_type = (ctypes.c_double * 1)(float(value)), DBR_DOUBLE
                buffers.append(buf)
                usr = self._request(waiter, key)
                status = lib.ca_array_put_callback(dbr_type, 1, ch.chid, buf, self._done_cb, usr)
                if status != ECA_NORMAL:
                    self._requests.pop(usr, None)
                    refused = f"{name}: write of {value!r} refused: {self.message(status)}"
                    break
            lib.ca_flush_io()
        if refused is not None:
            raise PutRejected(refused)
        return _LibcaPending(self, dict(values), list(chans), waiter, buffers)

    def write(self, values: Mapping[str, Any], timeout: float) -> None:
        """:meth:`start_write` and wait (``timeout`` [s]) for the completions."""
        self.start_write(values, timeout).wait(timeout)

    def message(self, status: int) -> str:
        """libca's text of a status code."""
        return (self._lib.ca_message(status) or b"").decode(errors="replace")

    # ------------------------------------------------------------------ barrier
    def barrier(self, names: Sequence[str], timeout: float) -> None:
        """Return once every monitor update the server posted before it received this call's
        request has arrived, on the circuits of ``names``: a subscription of one PV per
        circuit, cancelled once its first update arrived (the server queues that update
        behind every update posted before; libca hands a circuit's updates over in order).

        :raises Disconnected: If a channel is not connected or the server does not answer
            within ``timeout`` [s].
        """
        first: dict[Hashable, _Channel] = {}
        for name in names:
            ch = self._require(name)
            first.setdefault(ch.circuit, ch)
        self.stats["barriers"] += 1
        waiter = _Waiter(len(first))
        events = []
        with self._attached() as lib:
            for key, ch in enumerate(first.values()):
                event = ctypes.c_void_p()
                usr = self._request(waiter, key)
                status = lib.ca_create_subscription(
                    DBR_TIME_DOUBLE, 1, ch.chid, DBE_VALUE, self._done_cb, usr, ctypes.byref(event)
                )
                if status != ECA_NORMAL:
                    self._requests.pop(usr, None)
                    waiter.complete(key, status)
                else:
                    events.append(event)
            lib.ca_flush_io()
        answered = waiter.wait(timeout)
        with self._attached() as lib:
            for event in events:
                lib.ca_clear_subscription(event)
            lib.ca_flush_io()
        chans = list(first.values())
        if not answered:
            raise Disconnected(f"{[c.name for c in chans]}: no answer within {timeout:.3g} s")
        for key, status in waiter.status.items():
            if status != ECA_NORMAL:
                raise Disconnected(
                    f"{chans[key].name}: monitor barrier failed: {self.message(status)}"
                )

    def close(self) -> None:
        """Destroy the context: every channel and subscription (idempotent)."""
        with self._lock:
            if self._context is None:
                return
            lib = self._lib
            previous = lib.ca_current_context()
            if previous:
                lib.ca_detach_context()
            lib.ca_attach_context(self._context)
            try:
                lib.ca_sg_delete(self._group.value)
                lib.ca_context_destroy()
            finally:
                self._context = None
                if previous and previous != lib.ca_current_context():
                    lib.ca_attach_context(previous)
            with self._up:
                for ch in self._chans.values():
                    ch.up, ch.circuit = False, None
                self._up.notify_all()
            self._chans = {}
            self.cache.clear()
        _LIVE.discard(self)


class _Attached:
    """:meth:`LibcaChannels._attached`: a context manager of its own (called several times
    a step; lighter than a generator's)."""

    __slots__ = ("_channels", "_previous", "_switched")

    def __init__(self, channels: LibcaChannels) -> None:
        self._channels = channels
        self._previous: Any = None
        self._switched = False

    def __enter__(self) -> Any:
        channels = self._channels
        lib = channels._lib
        channels._lock.acquire()
        try:
            if channels._context is None:
                raise Disconnected("the channels are closed")
            previous = lib.ca_current_context()
            if previous != channels._context:
                if previous:
                    lib.ca_detach_context()
                lib.ca_attach_context(channels._context)
                self._previous, self._switched = previous, True
        except BaseException:
            channels._lock.release()
            raise
        return lib

    def __exit__(self, *exc: object) -> None:
        channels = self._channels
        try:
            if self._switched:
                lib = channels._lib
                lib.ca_detach_context()
                if self._previous:
                    lib.ca_attach_context(self._previous)
        finally:
            channels._lock.release()


def _decode(buf: Any, offset: int, count: int) -> ChannelValue:
    """The ``DBR_TIME_DOUBLE`` of ``count`` elements at ``offset`` of ``buf``."""
    _, severity, secs, nsec = _TIME_HEAD.unpack_from(buf, offset)
    if count == 1:
        value: Any = _DOUBLE.unpack_from(buf, offset + _VALUE_OFFSET)[0]
    else:
        value = struct.unpack_from(f"={count}d", buf, offset + _VALUE_OFFSET)
    return ChannelValue(value, stamp(secs, nsec), severity)


def _check_layout(dbr: Any) -> None:
    """Raise :class:`MachineError` unless pyepics's ``time_double`` is the layout
    :func:`_decode` reads (the C structure's, on every platform libca supports)."""
    td = dbr.time_double
    layout = (td.status.offset, td.severity.offset, td.stamp.offset, td.value.offset)
    stamp_layout = (td.stamp.size, ctypes.sizeof(td))
    if layout != (0, 2, 4, _VALUE_OFFSET) or stamp_layout != (8, _VALUE_OFFSET + 8):
        raise MachineError(f"libca: unexpected dbr_time_double layout {layout} {stamp_layout}")


def _unfilled(buf: Any) -> bool:
    """Whether libca left the read buffer untouched (its severity still the marker)."""
    return ctypes.c_short.from_buffer(buf, 2).value == UNFILLED


class _LibcaPending:
    """Put-callback writes sent by :meth:`LibcaChannels.start_write`, completions pending."""

    def __init__(
        self,
        channels: LibcaChannels,
        values: dict[str, Any],
        names: list[str],
        waiter: _Waiter,
        buffers: list[Any],
    ) -> None:
        self.values = values
        self._channels = channels
        self._names = names
        self._waiter = waiter
        self._buffers = buffers  # libca copies them at the call; kept until completion anyway

    def wait(self, timeout: float) -> None:
        """Wait for every completion (at most ``timeout`` [s] from now).

        :raises PutRejected: If the server refused a write (``ECA_PUTFAIL``, ...).
        :raises Disconnected: If the circuit closed before a completion, or none came within
            ``timeout``.
        """
        self._waiter.wait(timeout)
        status = dict(self._waiter.status)
        for key, name in enumerate(self._names):
            value = self.values[name]
            if key not in status:
                if not self._channels.connected(name):
                    raise Disconnected(
                        f"{name}: the circuit closed before the server confirmed the write of "
                        f"{value!r}"
                    )
                raise Disconnected(
                    f"{name}: the server did not confirm the write of {value!r} within "
                    f"{timeout:.3g} s (no answer)"
                )
            if status[key] == ECA_DISCONN:
                raise Disconnected(
                    f"{name}: the circuit closed before the server confirmed the write of {value!r}"
                )
            if status[key] != ECA_NORMAL:
                raise PutRejected(
                    f"{name}: write of {value!r} refused by the server "
                    f"({self._channels.message(status[key])})"
                )
