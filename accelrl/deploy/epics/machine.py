"""The EPICS machine: the :class:`~accelrl.deploy.machine.Machine` interface.

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
from collections.abc import Mapping, Sequence
from typing import Any

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.epics.ca import (
    INVALID_SEVERITY,
    MONITOR_MODES,
    CaChannels,
    ChannelValue,
    _addresses,
    _require_valid,
)
from accelrl.deploy.epics.pva import PvaChannels
from accelrl.deploy.machine import (
    Disconnected,
    Health,
    Reading,
    SettleTimeout,
    State,
)


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
        self._channels: CaChannels | PvaChannels | None = None
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
                transport = CaChannels if self.config.transport == "ca" else PvaChannels
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

    def _ch(self) -> CaChannels | PvaChannels:
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
        if not (allowed and isinstance(channels, CaChannels)):
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
        if self._served and isinstance(channels, CaChannels):
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
        monitored = self.monitors != "none" and isinstance(channels, CaChannels)
        while True:
            seen = channels.updates if isinstance(channels, CaChannels) else 0
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
                assert isinstance(channels, CaChannels)
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
    def _cleared(channels: CaChannels, knob: Any, raised: Mapping[str, float]) -> bool:
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
