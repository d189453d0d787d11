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
  ``INVALID`` alarm fails the read (:class:`~accelrl.deploy.machine.MachineError`).
* **Writes** use put-with-callback (``WriteNotify``) and wait for the server's completion;
  an error status or error response raises :class:`~accelrl.deploy.machine.PutRejected`
  with the server's message. A confirmed write is *not* taken as applied: the safety layer
  checks the readbacks.
* **Settle** polls the busy PVs every ``timing.poll_interval_s`` until all are clear (knobs
  without a busy PV: until ``|readback - setpoint| <= tolerance``), else
  :class:`~accelrl.deploy.machine.SettleTimeout` naming the knobs still moving.
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
from collections.abc import Mapping, Sequence
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
)

#: EPICS alarm severity INVALID: the value must not be used.
INVALID_SEVERITY = 3


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
class _CaChannels:
    """Channel Access through caproto's threading client."""

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
            """Hands error responses to the write waiting for them (the threading client
            drops them, which would turn a refused write into a timeout)."""

            __slots__ = ()

            def _process_command(self, command: Any) -> None:
                if isinstance(command, ca.ErrorResponse):
                    info = self.ioids.pop(command.original_request.parameter2, None)
                    if info is not None:
                        info["response"] = command
                        if "event" in info:
                            info["event"].set()
                        if "callback" in info:
                            info["callback"](command)
                super()._process_command(command)

        class _Context(client.Context):
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
        return _Context(broadcaster, timeout=timeout)

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

    def connected(self, name: str) -> bool:
        pv = self._pvs.get(name)
        return pv is not None and bool(pv.connected)

    def read(self, names: Sequence[str], timeout: float) -> dict[str, ChannelValue]:
        ca = self._ca
        pending: dict[str, tuple[threading.Event, dict[str, Any]]] = {}
        deadline = time.monotonic() + timeout
        for name in names:
            self._require(name)
            event, box = threading.Event(), {}

            def done(response: Any, _event: threading.Event = event, _box: dict = box) -> None:
                _box["response"] = response
                _event.set()

            try:
                self._pvs[name].read(wait=False, callback=done, timeout=timeout, data_type="time")
            except (ca.CaprotoTimeoutError, TimeoutError, ca.CaprotoError, OSError) as err:
                raise Disconnected(f"{name}: read failed: {err}") from err
            pending[name] = (event, box)
        out = {}
        for name, (event, box) in pending.items():
            if not event.wait(timeout=max(0.0, deadline - time.monotonic())):
                raise Disconnected(f"{name}: no answer to a read within {timeout:.3g} s")
            response = box["response"]
            value = _python_value(response.data)
            md = response.metadata
            out[name] = ChannelValue(value, float(md.timestamp), int(md.severity))
        return out

    def write(self, values: Mapping[str, float], timeout: float) -> None:
        ca = self._ca
        pending = {}
        deadline = time.monotonic() + timeout
        for name, value in values.items():
            self._require(name)
            event, box = threading.Event(), {}

            def done(response: Any, _event: threading.Event = event, _box: dict = box) -> None:
                _box["response"] = response
                _event.set()

            try:
                self._pvs[name].write([value], wait=False, callback=done, timeout=timeout)
            except (ca.CaprotoTimeoutError, TimeoutError, ca.CaprotoError, OSError) as err:
                raise Disconnected(f"{name}: write failed: {err}") from err
            pending[name] = (event, box)
        for name, (event, box) in pending.items():
            event.wait(timeout=max(0.0, deadline - time.monotonic()))
            response = box.get("response")
            if response is None:
                raise Disconnected(
                    f"{name}: the server did not confirm the write of {values[name]!r} within "
                    f"{timeout:.3g} s (no answer)"
                )
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

    def _require(self, name: str) -> None:
        if not self.connected(name):
            raise Disconnected(f"{name}: channel not connected")

    def close(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            self._pvs = {}
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

    def connect(self, names: Sequence[str], timeout: float) -> list[str]:
        results = self._context.get(list(names), timeout=timeout, throw=False)
        missing = [n for n, r in zip(names, results, strict=True) if isinstance(r, Exception)]
        self._up = set(names) - set(missing)
        return missing

    def connected(self, name: str) -> bool:
        return name in self._up

    def read(self, names: Sequence[str], timeout: float) -> dict[str, ChannelValue]:
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
    :raises ValueError: If the config's transport is ``"sim"``.
    :raises MachineError: If the transport's client library is missing.
    """

    def __init__(
        self, config: MachineConfig, *, addresses: str | Sequence[str] | None = None
    ) -> None:
        if config.transport not in ("ca", "pva"):
            raise ValueError(
                f"EpicsMachine needs transport 'ca' or 'pva'; machine {config.name!r} has "
                f"{config.transport!r} (use accelrl.deploy.sim for 'sim')"
            )
        self.config = config
        self.knob_names: tuple[str, ...] = config.knob_names
        self.observation_names: tuple[str, ...] = config.observation_names
        self.addresses = _addresses(addresses)
        self._channels: _CaChannels | _PvaChannels | None = None
        self._timeout = config.timing.reading_timeout_s
        self._heartbeat: tuple[Any, float] | None = None  # (value, server time of change)
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- connection
    @property
    def pv_names(self) -> list[str]:
        """Every PV of the config, in a fixed order (setpoints, readbacks, busy flags,
        observations, interlock, beam loss, heartbeat)."""
        c = self.config
        names: list[str] = []
        for k in c.knobs:
            names += [p for p in (k.setpoint, k.readback_pv, k.busy) if p and p not in names]
        names += [o.pv for o in c.observations if o.pv and o.pv not in names]
        for p in (c.interlock.pv, c.beam_loss.pv, c.heartbeat.pv):
            if p and p not in names:
                names.append(p)
        return names

    def connect(self, timeout: float | None = None) -> None:
        """Connect every PV of the config.

        :param timeout: Seconds to wait [s] (default ``timing.connect_timeout_s``).
        :raises Disconnected: Naming the PVs that did not connect (and where it searched).
        """
        timeout = self.config.timing.connect_timeout_s if timeout is None else float(timeout)
        with self._lock:
            if self._channels is None:
                transport = _CaChannels if self.config.transport == "ca" else _PvaChannels
                self._channels = transport(self.addresses)
            missing = self._channels.connect(self.pv_names, timeout)
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

    def _read(self, names: Sequence[str]) -> dict[str, ChannelValue]:
        values = self._ch().read(names, self._timeout)
        for name, v in values.items():
            if v.severity >= INVALID_SEVERITY:
                raise MachineError(f"{name}: value {v.value!r} is in INVALID alarm")
        return values

    def _reading(self, pvs: Mapping[str, str]) -> Reading:
        """``pvs``: reading name -> PV."""
        raw = self._read(list(dict.fromkeys(pvs.values())))
        values = {name: float(raw[pv].value) for name, pv in pvs.items()}
        return Reading(values, min(raw[pv].timestamp for pv in pvs.values()))

    # ----------------------------------------------------------------- reads
    def read_knobs(self) -> Reading:
        """Readbacks of all knobs (SI), time-stamped by the IOC."""
        return self._reading({k.name: k.readback_pv for k in self.config.knobs})  # type: ignore[misc]

    def read_setpoints(self) -> Reading:
        """Setpoints of all knobs (SI), time-stamped by the IOC."""
        return self._reading({k.name: k.setpoint for k in self.config.knobs})  # type: ignore[misc]

    def read_observation(self) -> Reading:
        """The observation (SI); ``timestamp`` is the oldest of the channels' IOC times."""
        return self._reading({o.name: o.pv for o in self.config.observations})  # type: ignore[misc]

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
        ``|readback - setpoint| <= tolerance``), polled every ``timing.poll_interval_s``.

        :param names: Knob names.
        :param timeout: Seconds [s] (default ``timing.settle_timeout_s``).
        :raises SettleTimeout: Naming the knobs still moving after ``timeout``.
        :raises Disconnected: If a channel drops meanwhile.
        """
        timeout = self.config.timing.settle_timeout_s if timeout is None else float(timeout)
        knobs = [self.config.knob(n) for n in names]
        deadline = time.monotonic() + timeout
        poll = self.config.timing.poll_interval_s
        while True:
            moving = self._moving(knobs)
            if not moving:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise SettleTimeout(
                    f"knobs {moving} still moving after {timeout:.3g} s "
                    f"(busy set or readback away from setpoint)"
                )
            time.sleep(min(poll, left))

    def _moving(self, knobs: Sequence[Any]) -> list[str]:
        busy = [k for k in knobs if k.busy]
        other = [k for k in knobs if not k.busy]
        names = [k.busy for k in busy]
        for k in other:
            names += [k.setpoint, k.readback_pv]
        raw = self._read(list(dict.fromkeys(names)))
        moving = [k.name for k in busy if float(raw[k.busy].value) != 0.0]
        for k in other:
            if abs(float(raw[k.readback_pv].value) - float(raw[k.setpoint].value)) > k.tolerance:
                moving.append(k.name)
        return moving

    # ----------------------------------------------------------------- health
    def health(self) -> Health:
        """Interlock, beam loss, heartbeat age and connection state.

        :raises Disconnected: If an interlock, beam-loss or heartbeat PV cannot be read (an
            unknown protection state is not a healthy one).
        """
        c = self.config
        channels = self._ch()
        detail: list[str] = []
        down = [n for n in self.pv_names if not channels.connected(n)]
        if down:
            detail.append(f"disconnected: {down}")
        names = [p for p in (c.interlock.pv, c.beam_loss.pv, c.heartbeat.pv) if p]
        raw = channels.read(names, self._timeout) if names else {}
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
