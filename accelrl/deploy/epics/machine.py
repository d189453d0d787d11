"""The EPICS machine: the :class:`~accelrl.deploy.machine.Machine` interface over Channel
Access (``transport: ca``; ``ca_client: caproto`` or ``pyepics``) or PV Access
(``transport: pva``, p4p).

Behaviour, in control-system terms:

* **Connect** searches all PVs of the config at once (and ``frame_pv``) and fails with
  :class:`~accelrl.deploy.machine.Disconnected` naming every PV that did not connect within
  the timeout. It is idempotent; called again it waits for lost channels to come back.
* **Trust nothing** (:mod:`~accelrl.deploy.epics.ioc_check`): at the first connect the
  machine reads ``DBR_CTRL`` of every knob's setpoint and readback and of the observations,
  and refuses to run (:class:`~accelrl.deploy.epics.ioc_check.IocMismatch`, before anything
  is written) when a unit (``EGU``) differs from the config's, when an IOC's drive limits
  (``DRVL``/``DRVH``) are narrower than the config's ``low``/``high``, or when a PV is not
  the number (array) the config needs.
* **Reads** fetch values with their IOC time stamps (``DBR_TIME``): a
  :class:`~accelrl.deploy.machine.Reading`'s ``timestamp`` is the oldest of the channels
  read. A channel in ``INVALID`` alarm fails the read. A call's requests go out together
  and are awaited together: one round trip per call, whatever the number of PVs;
  :meth:`~EpicsMachine.read_state` reads readbacks, setpoints and health in one.
* **Observations** of one frame are read atomically from ``frame_pv`` when the config has
  one (one array, one time stamp); else from the observation PVs (a reading's time is then
  the oldest of theirs). With monitors, a frame is served from them only when an update
  arrived that was not served before; otherwise the machine reads, so a record that posts
  no update for an unchanged value (``MDEL``) is still seen with its current time stamp.
  The safety layer's fresh-reading rule judges the IOC's time stamps either way.
* **Monitors** (``monitors``): ``"observations"`` (default) subscribes to the frame (or
  observations) and the busy flags; ``"synced"`` and ``"all"`` also serve readbacks,
  setpoints and health from monitors -- after a barrier round trip (``"synced"``), or while
  they provably lag the IOC by at most ``max_monitor_lag_s`` (``"all"``) -- but only of
  channels whose records post every change (``MDEL <= 0``, or a record type without
  deadband, read from ``.RTYP``/``.MDEL`` at connect); the others are read. A written
  setpoint is served only once an update that arrived after the put shows the written
  value. See ``docs/virtual_accelerator.md``.
* **Writes** use put-with-callback. :meth:`~EpicsMachine.put` returns once the requests are
  sent; :meth:`~EpicsMachine.settle` first waits for their completions (the IOC's
  processing of the writes), then for the busy flags. A refusal (error status or response)
  raises :class:`~accelrl.deploy.machine.PutRejected` with the server's message -- from
  ``settle``, or from the next ``put`` if no settle came between. A confirmed write is
  *not* taken as applied: the safety layer checks the setpoints and readbacks. Puts to a
  channel land in order and at most once, and a read after a put shows it (same circuit).
* **Settle** reads the busy PVs every ``timing.poll_interval_s`` until all are clear (knobs
  without a busy PV: until ``|readback - setpoint| <= tolerance``), else
  :class:`~accelrl.deploy.machine.SettleTimeout` naming the knobs still moving; with
  monitors a flag read set also counts as clear once its update shows 0 with a later IOC
  time stamp.
* **Health** reads interlock, beam loss and heartbeat; the heartbeat age is the time since
  the heartbeat's value last changed, from the IOC's time stamp of that change.
* Every operation has a timeout; a channel that is disconnected or silent raises
  :class:`~accelrl.deploy.machine.Disconnected` (never a hang).

Searches go to ``EPICS_CA_ADDR_LIST`` / ``EPICS_CA_AUTO_ADDR_LIST`` / ``EPICS_CA_SERVER_PORT``
(``EPICS_PVA_ADDR_LIST`` for PV Access) as usual, or to an explicit ``addresses`` list
(``["127.0.0.1:5064"]``) that overrides them for this machine only.

Example::

    >>> from accelrl.deploy.config import load_machine_config
    >>> from accelrl.deploy.epics import EpicsMachine
    >>> machine = EpicsMachine(load_machine_config("deploy/virtual_ares_ea_machine.yaml"),
    ...                        addresses=["127.0.0.1:5064"])      # doctest: +SKIP
    >>> machine.connect(timeout=3.0)                             # doctest: +SKIP
    >>> machine.read_observation().values["sigma_x"]             # doctest: +SKIP
    0.000406...

This module needs numpy and one EPICS client library (caproto, pyepics or p4p) only; it never
imports torch. Its size (~540 lines) is this docstring and one class under one lock: connect,
reads, puts and settle share the channels, the pending writes and the monitors' state.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.epics.channels import (
    INVALID_SEVERITY,
    MONITOR_MODES,
    Channels,
    ChannelValue,
    ControlInfo,
    PendingWrite,
    addresses_list,
    require_valid,
)
from accelrl.deploy.epics.frames import FrameSource
from accelrl.deploy.epics.health import HealthJudge
from accelrl.deploy.epics.ioc_check import (
    ControlCheck,
    check_control,
    control_pvs,
    exact_monitors,
    field_pvs,
)
from accelrl.deploy.machine import (
    Disconnected,
    Health,
    Reading,
    SettleTimeout,
    State,
)

log = logging.getLogger("accelrl.deploy.epics")

#: Longest wait [s] for the record fields (``.RTYP``, ``.MDEL``) read at connect: a server
#: without record fields never answers their search.
FIELD_TIMEOUT_S = 1.0


def transport_class(config: MachineConfig) -> type:
    """The channel class of ``config``'s transport (imported on demand)."""
    if config.transport == "pva":
        from accelrl.deploy.epics.pva import PvaChannels

        return PvaChannels
    if config.ca_client == "pyepics":
        from accelrl.deploy.epics.libca import LibcaChannels

        return LibcaChannels
    from accelrl.deploy.epics.ca import CaChannels

    return CaChannels


class EpicsMachine:
    """A machine reached over EPICS (see the module documentation).

    :param config: Machine config with ``transport: ca`` (``ca_client``: ``caproto`` or
        ``pyepics``) or ``pva``, and PV names.
    :param addresses: Search only these ``host[:port]`` addresses (default: the
        ``EPICS_CA_ADDR_LIST`` environment, or ``EPICS_PVA_ADDR_LIST`` for PV Access).
    :param monitors: What is served from Channel Access monitors (see the module
        documentation): ``"observations"`` (default), ``"synced"``, ``"all"`` or ``"none"``
        (every call reads). PV Access always reads.
    :param max_monitor_lag_s: Recency bound [s] of a call served from the monitors under
        ``"all"`` (default ``timing.poll_interval_s``): its channels' circuits must be
        synced to within it.
    :raises ValueError: If the config's transport is ``"sim"``, ``monitors`` is unknown, or
        ``max_monitor_lag_s < 0``.
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
        #: How far [s] the monitors may lag the IOC and still serve a call (``"all"``).
        self.max_monitor_lag_s = float(max_monitor_lag_s)
        self.config = config
        self.knob_names: tuple[str, ...] = config.knob_names
        self.observation_names: tuple[str, ...] = config.observation_names
        self.addresses = addresses_list(addresses)
        self._frame = config.frame_pv
        self._pv_names = list(dict.fromkeys([*config.pv_names, *filter(None, [self._frame])]))
        # reading name -> PV (the config's validation ensures PVs for transport ca/pva)
        self._readbacks: dict[str, Any] = {k.name: k.readback_pv for k in config.knobs}
        self._setpoints: dict[str, Any] = {k.name: k.setpoint for k in config.knobs}
        self._observations: dict[str, Any] = {o.name: o.pv for o in config.observations}
        self._knobs = {k.name: k for k in config.knobs}
        # the PVs of each read_state (knobs, setpoints, health), computed once
        self._state_names: dict[tuple[bool, bool, bool], tuple[str, ...]] = {}
        self._channels: Channels | None = None
        self._timeout = config.timing.reading_timeout_s
        self._pending: tuple[PendingWrite, float] | None = None  # (writes, their deadline)
        self._frames = FrameSource(config)
        self._judge = HealthJudge(config)
        self._wait_for: tuple[list[str], int] | None = None  # what wait_for_update awaits
        self._lock = threading.RLock()
        #: ``DBR_CTRL`` of the checked PVs, read at the first connect.
        self.control: dict[str, ControlInfo] = {}
        #: What the first connect found (``None`` before).
        self.ioc_check: ControlCheck | None = None
        #: The channels whose monitors post every change (``"synced"``, ``"all"``).
        self.exact_monitors: set[str] = set()

    # ----------------------------------------------------------------- connection
    @property
    def pv_names(self) -> list[str]:
        """Every PV the machine connects, in a fixed order (setpoints, readbacks, busy
        flags, observations, interlock, beam loss, heartbeat; then ``frame_pv``)."""
        return list(self._pv_names)

    @property
    def observation_pvs(self) -> list[str]:
        """The PVs an observation is read from: ``frame_pv``, else the observation PVs."""
        return list(self._frames.pvs)

    @property
    def monitored_pvs(self) -> list[str]:
        """The PVs with a monitor: the frame (or observations) and busy flags
        (``"observations"``); every PV but the observation PVs a frame PV stands for
        (``"synced"``, ``"all"``); none (``"none"``). Busy flags are never served from the
        monitors (:meth:`settle` reads them first: a read sent after a put's completion is
        answered after the IOC raised the flag, while the flag's monitor update may still
        be on its way); their updates end a settle early."""
        if self.monitors == "none":
            return []
        observed = set(self.observation_pvs)
        if self.monitors in ("synced", "all"):
            skipped = set(self._observations.values()) - observed
            return [n for n in self._pv_names if n not in skipped]
        wanted = observed | {k.busy for k in self.config.knobs if k.busy}
        return [n for n in self._pv_names if n in wanted]

    @property
    def stats(self) -> dict[str, int]:
        """Machine calls served from the monitors (``cached``), read round trips
        (``round_trips``; puts not counted) and barriers (``barriers``, ``"synced"``)
        since the first connect."""
        channels = self._channels
        if channels is None:
            return {"cached": 0, "round_trips": 0, "barriers": 0}
        return dict(channels.stats)

    def connect(self, timeout: float | None = None) -> None:
        """Connect every PV (idempotent: after an outage, waits for the channels to come
        back); at the first success, check the IOC against the config and start the
        monitors.

        :param timeout: Seconds to wait [s] (default ``timing.connect_timeout_s``).
        :raises Disconnected: Naming the PVs that did not connect (and where it searched).
        :raises IocMismatch: If the IOC's units, drive limits or types disagree with the
            config (:mod:`~accelrl.deploy.epics.ioc_check`; nothing was written).
        """
        timeout = self.config.timing.connect_timeout_s if timeout is None else float(timeout)
        with self._lock:
            if self._channels is None:
                self._channels = transport_class(self.config)(self.addresses)
            channels = self._channels
            missing = channels.connect(self.pv_names, timeout)
            if missing:
                where = (
                    " ".join(self.addresses)
                    if self.addresses
                    else "the environment's EPICS_CA_ADDR_LIST / EPICS_PVA_ADDR_LIST"
                )
                raise Disconnected(
                    f"{len(missing)} of {len(self.pv_names)} PVs of {self.config.name!r} did "
                    f"not connect within {timeout:.3g} s (searched {where}): {missing}"
                )
            if self.ioc_check is None:
                self._check_ioc(channels, timeout)
            if self.monitors != "none":
                channels.monitor(self.monitored_pvs)

    def _check_ioc(self, channels: Channels, timeout: float) -> None:
        """Units, drive limits and types (refuse on a disagreement); which monitors post
        every change."""
        stats = dict(channels.stats)
        self.control = channels.read_control(control_pvs(self.config), timeout)
        check = check_control(self.config, self.control, ca=self.config.transport == "ca")
        for line in check.notes:
            log.info("%s: %s", self.config.name, line)
        for line in check.unchecked:
            log.warning("%s: unit not checked: %s", self.config.name, line)
        check.raise_problems(self.config.name)
        if self.monitors in ("synced", "all"):
            served = [*self._state_pvs(True, True, True)]
            fields = channels.read_strings(field_pvs(served), min(timeout, FIELD_TIMEOUT_S))
            self.exact_monitors = exact_monitors(served, fields)
            read = sorted(set(served) - self.exact_monitors)
            if read:
                log.info("%s: read, not served from monitors (deadband or unknown): %s",
                         self.config.name, read)  # fmt: skip
        channels.stats.update(stats)  # the checks are not calls of the machine
        self.ioc_check = check

    def close(self) -> None:
        """Release all channels (idempotent)."""
        with self._lock:
            channels, self._channels = self._channels, None
            self._pending = None
        if channels is not None:
            channels.close()

    def __enter__(self) -> EpicsMachine:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ch(self) -> Channels:
        if self._channels is None:
            raise Disconnected(f"machine {self.config.name!r} is not connected (call connect)")
        return self._channels

    # ----------------------------------------------------------------- fetching
    def _fetch(self, names: Sequence[str], monitored: bool) -> dict[str, ChannelValue]:
        """Values of ``names``: from the monitors when the mode allows it (``monitored``,
        ``"synced"``/``"all"``, every channel posting every change) and they are recent
        enough, else by one read."""
        channels = self._ch()
        cache = channels.cache
        if (
            monitored
            and cache is not None
            and self.monitors in ("synced", "all")
            and all(n in self.exact_monitors for n in names)
        ):
            after = cache.updates
            if self.monitors == "synced":
                # every update posted before the barrier has arrived: what a read would show
                channels.barrier(names, self._timeout)
                served = cache.serve(names, channels.circuit, time.time(), None)
            else:
                served = cache.serve(names, channels.circuit, time.time(), self.max_monitor_lag_s)
            if served is not None:
                channels.stats["cached"] += 1
                self._wait_for = (list(names), after)
                return served
        self._wait_for = None
        return channels.read(names, self._timeout)

    def wait_for_update(self, timeout: float) -> None:
        """Wait until a monitor update of the channels the last read was served from (an
        observation, or the readbacks under ``"synced"``/``"all"``) has arrived since, at
        most ``timeout`` [s]; sleep ``timeout`` when that read went to the IOC without
        monitors behind it. Polling loops call it between reads.

        :param timeout: Longest wait [s].
        """
        channels, wanted = self._channels, self._wait_for
        if channels is not None and channels.cache is not None and wanted is not None:
            channels.cache.wait(wanted[0], wanted[1], timeout)
        else:
            time.sleep(max(0.0, timeout))

    # ----------------------------------------------------------------- reads
    def read_knobs(self) -> Reading:
        """Readbacks of all knobs (SI), time-stamped by the IOC."""
        return self.read_state(setpoints=False, health=False).knobs  # type: ignore[return-value]

    def read_setpoints(self) -> Reading:
        """Setpoints of all knobs (SI), time-stamped by the IOC."""
        return self.read_state(knobs=False, health=False).setpoints  # type: ignore[return-value]

    def read_observation(self) -> Reading:
        """The observation (SI) of one frame, time-stamped by the IOC
        (:mod:`~accelrl.deploy.epics.frames`: ``frame_pv``, monitors that brought a new
        frame, else a read).

        :raises MachineError: If a value is in INVALID alarm, or ``frame_pv`` holds fewer
            values than there are observations.
        """
        channels = self._ch()
        monitored = self.monitors != "none" and channels.cache is not None
        self._wait_for = (self._frames.pvs, channels.cache.updates) if monitored else None
        return self._frames.read(channels, monitored, self._timeout)

    def _state_pvs(self, knobs: bool, setpoints: bool, health: bool) -> tuple[str, ...]:
        """The PVs of a :meth:`read_state` (each once), computed once per combination."""
        key = (knobs, setpoints, health)
        names = self._state_names.get(key)
        if names is None:
            found: list[str] = []
            if knobs:
                found += self._readbacks.values()
            if setpoints:
                found += self._setpoints.values()
            if health:
                found += self._health_pvs()
            names = self._state_names[key] = tuple(dict.fromkeys(found))
        return names

    def read_state(self, knobs: bool = True, setpoints: bool = True, health: bool = True) -> State:
        """:meth:`read_knobs`, :meth:`read_setpoints` and :meth:`health` (those asked for)
        in one call: one round trip for all their PVs (or served from the monitors,
        ``"synced"``/``"all"``, under the rules of the module documentation). Every value is
        checked as by the separate calls.

        :raises Disconnected: If a channel cannot be read.
        :raises MachineError: If a readback or setpoint is in INVALID alarm.
        """
        names = self._state_pvs(knobs, setpoints, health)
        raw = self._fetch(names, True) if names else {}
        return State(
            knobs=self._valid_reading(raw, self._readbacks) if knobs else None,
            setpoints=self._valid_reading(raw, self._setpoints) if setpoints else None,
            health=self._health(raw) if health else None,
        )

    @staticmethod
    def _valid_reading(raw: Mapping[str, ChannelValue], pvs: Mapping[str, Any]) -> Reading:
        """The reading of ``pvs`` (name -> PV) from ``raw``, time-stamped by the oldest;
        :class:`~accelrl.deploy.machine.MachineError` for a value in INVALID alarm."""
        values: dict[str, float] = {}
        oldest = math.inf
        for name, pv in pvs.items():
            v = raw[pv]
            if v.severity >= INVALID_SEVERITY:
                require_valid(raw, [pv])  # raises, naming it
            values[name] = float(v.value)
            if v.timestamp < oldest:
                oldest = v.timestamp
        return Reading(values, oldest)

    # ----------------------------------------------------------------- writes
    def put(self, setpoints: Mapping[str, float]) -> None:
        """Send setpoints with put-callback and return (:meth:`settle` waits for the IOC's
        completions; see the module documentation).

        :param setpoints: Knob name -> setpoint (SI), a subset of the knobs.
        :raises KeyError: For unknown knob names.
        :raises ValueError: For NaN/inf values (never sent).
        :raises PutRejected: If the IOC refused an earlier put not yet settled (this one
            is not sent), or refuses this one at once (e.g. no write access).
        :raises Disconnected: If a channel is disconnected.
        """
        pvs = {}
        for name, value in setpoints.items():
            knob = self._knob(name)
            if not math.isfinite(float(value)):
                raise ValueError(f"knob {name!r}: setpoint must be finite, got {value!r}")
            pvs[knob.setpoint] = float(value)
        if not pvs:
            return
        self._complete_puts()
        channels = self._ch()
        if channels.cache is not None:
            channels.cache.before_put(pvs)
        pending = channels.start_write(pvs, self._timeout)
        self._pending = (pending, time.monotonic() + self._timeout)

    def _knob(self, name: str) -> Any:
        """The config of knob ``name`` (``KeyError`` listing the known names)."""
        knob = self._knobs.get(name)
        return self.config.knob(name) if knob is None else knob

    def _complete_puts(self) -> None:
        """Wait for the completions of the last put (within ``timing.reading_timeout_s`` of
        sending it)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            writes, deadline = pending
            writes.wait(max(0.0, deadline - time.monotonic()))

    def settle(self, names: Sequence[str], timeout: float | None = None) -> None:
        """Wait for the last put's completions, then until the named knobs are done moving:
        busy PVs read 0 (knobs without one: ``|readback - setpoint| <= tolerance``), read
        every ``timing.poll_interval_s``.

        With monitors, a knob whose busy flag was read set also counts as done as soon as
        the flag's monitor shows 0 with an IOC time stamp later than the one read (the IOC
        cleared it after raising it); the reads go on until then.

        :param names: Knob names.
        :param timeout: Seconds [s] (default ``timing.settle_timeout_s``).
        :raises PutRejected: If the IOC refused a write of the last put.
        :raises SettleTimeout: Naming the knobs still moving after ``timeout``.
        :raises Disconnected: If a channel drops meanwhile, or a put is not confirmed.
        """
        timeout = self.config.timing.settle_timeout_s if timeout is None else float(timeout)
        knobs = [self._knob(n) for n in names]
        deadline = time.monotonic() + timeout
        self._complete_puts()
        poll = self.config.timing.poll_interval_s
        channels = self._ch()
        cache = channels.cache if self.monitors != "none" else None
        while True:
            seen = cache.updates if cache is not None else 0
            moving, raised = self._moving(knobs)
            flags = list(raised)  # the busy flags read set: their updates may end the wait
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
                if cache is None:
                    time.sleep(pause)
                    continue
                if not flags:  # nothing an update could clear: wait for the next read
                    time.sleep(pause)
                    continue
                cache.wait(flags, seen, pause)
                seen = cache.updates
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
        raw = self._ch().read(list(dict.fromkeys(names)), self._timeout)
        require_valid(raw, raw)
        moving = [k for k in busy if float(raw[k.busy].value) != 0.0]
        raised = {k.busy: raw[k.busy].timestamp for k in moving}
        for k in other:
            if abs(float(raw[k.readback_pv].value) - float(raw[k.setpoint].value)) > k.tolerance:
                moving.append(k)
        return moving, raised

    @staticmethod
    def _cleared(channels: Channels, knob: Any, raised: Mapping[str, float]) -> bool:
        """Whether the busy flag of ``knob``, read set at ``raised[busy]``, has a monitor
        update 0 time-stamped after that."""
        if knob.busy not in raised:
            return False
        entry = channels.cache.latest(knob.busy, channels.circuit(knob.busy))
        return (
            entry is not None
            and entry.value.timestamp > raised[knob.busy]
            and float(entry.value.value) == 0.0
            and entry.value.severity < INVALID_SEVERITY
        )

    # ----------------------------------------------------------------- health
    def health(self) -> Health:
        """Interlock, beam loss, heartbeat age and connection state.

        :raises Disconnected: If an interlock, beam-loss or heartbeat PV cannot be read (an
            unknown protection state is not a healthy one).
        """
        return self.read_state(knobs=False, setpoints=False).health  # type: ignore[return-value]

    def _health_pvs(self) -> list[str]:
        return self._judge.pvs

    def _health(self, raw: Mapping[str, ChannelValue]) -> Health:
        """The health of the interlock, beam-loss and heartbeat values ``raw`` (PV -> value)
        and of the channels' connection state now."""
        channels = self._ch()
        connected = channels.connected
        return self._judge.judge(raw, [n for n in self._pv_names if not connected(n)])

    def __repr__(self) -> str:
        state = "connected" if self._channels is not None else "not connected"
        client = f"/{self.config.ca_client}" if self.config.transport == "ca" else ""
        return f"EpicsMachine({self.config.name!r}, {self.config.transport}{client}, {state})"
