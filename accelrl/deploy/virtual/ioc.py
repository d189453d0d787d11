"""The virtual accelerator on caproto (``server: caproto``): a pure-Python Channel Access
server backed by a :class:`~accelrl.deploy.plant.Plant`.

It serves plain PVs (values with time stamps, alarm status, units and limits in ``DBR_CTRL``)
but no EPICS record fields (``.DESC``, ``.DRVH``, ...), no PV Access and no beacons: use the
``softioc`` server (:mod:`accelrl.deploy.virtual.softioc_ioc`) for those. It needs no compiled
EPICS libraries.

PVs (names from the machine config; ``<P>`` is its common prefix, e.g. ``VA:``; ``<S>`` the
test-only prefix ``<P><sim_prefix>``, e.g. ``VA:SIM:``; the test-only PVs are also served
under their former names ``<P>FAULT``, ... for existing clients):

======================================  =======================================================
knob setpoint (``setpoint``)            writable, SI; control limits = the knob's limits; a
                                        write outside them is clamped (``records.refusal:
                                        clamp``) or fails with ``ECA_PUTFAIL`` (``reject``); NaN
                                        or a write under ``reject_put`` fails
knob readback (``readback``)            ramps linearly to the setpoint over
                                        ``magnets.settle_time_s``
knob busy (``busy``)                    1 from the accepted write until the ramp ends
screen observations (``observations``)  beam parameters [m] with reading noise, a new frame at
                                        ``screen.frame_rate_hz`` and right after settling
``interlock.pv``                        0 normal, 1 tripped
``beam_loss.pv``                        beam-loss monitor reading (machine units)
``heartbeat.pv``                        counter, +1 every ``heartbeat_period_s``
``frame_pv`` (optional)                 the observations of one frame, one array
``<S>FAULT``                            active faults, comma separated (``"none"``); writable
``<S>PUT_COUNT``                        setpoint writes received (accepted or not)
``<S>RESET``                            write 1: clear faults and counters, restore the
                                        initial knob settings at once
``<S>TRIAL``, ``<S>TRUE:MAE``           trial index; true mean absolute error to the trial's
                                        target [m] (diagnostics a real machine lacks)
``<P>AREABSCR1:IMAGE``                  screen image (uint8 waveform, with ``screen.image``)
======================================  =======================================================

Run it with ``accelrl serve-virtual`` or :func:`accelrl.deploy.virtual.serve_in_subprocess`.
This module imports torch (through the plant). Its size (~620 lines) is one server class, whose
write hooks, faults, reset and clock share the plant, the PVs and the knobs' power-supply state,
and the small caproto subclasses it needs (hooked and read-only PVs, a context that goes silent
while offline).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from caproto import (
    AccessRights,
    AlarmSeverity,
    AlarmStatus,
    CAStatus,
    ChannelByte,
    ChannelData,
    ChannelDouble,
    ChannelInteger,
    ChannelString,
    ChannelType,
)
from caproto._data import SkipWrite
from caproto.asyncio.server import Context as _AsyncioContext
from caproto.server import AsyncLibraryLayer

from accelrl.deploy.config import KnobConfig
from accelrl.deploy.virtual.config import FAULTS, LoadedConfig, common_prefix, scheduled_faults
from accelrl.deploy.virtual.core import ramped_readback

log = logging.getLogger("accelrl.virtual")


class WriteRefused(Exception):
    """A client write the IOC refuses (answered with ``ECA_PUTFAIL``)."""


class _Refusing:
    """Mixin: a :class:`WriteRefused` raised by ``verify_value`` is answered with
    ``ECA_PUTFAIL`` in the put-completion instead of an exception trace."""

    async def auth_write(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().auth_write(*args, **kwargs)  # type: ignore[misc]
        except WriteRefused as err:
            log.warning("write refused: %s", err)
            return CAStatus.ECA_PUTFAIL


class _HookedDouble(_Refusing, ChannelDouble):
    def __init__(self, *, hook: Callable[[float], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hook = hook

    async def verify_value(self, value: Any) -> Any:
        if self.alarm.severity != AlarmSeverity.NO_ALARM:
            await self.alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)
        return await self._hook(value)


class _HookedString(_Refusing, ChannelString):
    def __init__(self, *, hook: Callable[[str], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hook = hook

    async def verify_value(self, value: Any) -> Any:
        return await self._hook(value)


class _HookedInteger(_Refusing, ChannelInteger):
    def __init__(self, *, hook: Callable[[int], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hook = hook

    async def verify_value(self, value: Any) -> Any:
        return await self._hook(value)


class _ReadOnly:
    """Mixin: clients may read but not write (like a record's readback/status PV)."""

    def check_access(self, hostname: str, username: str) -> AccessRights:
        return AccessRights.READ


class _RODouble(_ReadOnly, ChannelDouble):
    pass


class _ROInteger(_ReadOnly, ChannelInteger):
    pass


class _ROByte(_ReadOnly, ChannelByte):
    pass


def _scalar(value: Any) -> Any:
    if isinstance(value, list | tuple | np.ndarray):
        return value[0] if len(value) else math.nan
    return value


@dataclass
class _Knob:
    """Power-supply state of one knob."""

    config: KnobConfig
    low: float
    high: float
    setpoint: float
    readback: float
    start: float = 0.0
    t0: float = 0.0
    t1: float = 0.0
    busy: bool = False
    frozen: bool = False  # the readback is held by the ``stuck`` fault
    pvs: dict[str, ChannelData] = field(default_factory=dict)


class VirtualAccelerator:
    """The IOC's state and PV database (start it with :func:`serve`).

    :param loaded: IOC config with its machine config.
    :param plant: The simulated beamline (its knobs must include the machine's knobs).
    :raises ValueError: If a machine knob is not a plant knob.
    """

    def __init__(self, loaded: LoadedConfig, plant: Any) -> None:
        self.loaded = loaded
        self.config = cfg = loaded.config
        self.machine = machine = loaded.machine
        self.plant = plant
        unknown = [n for n in machine.knob_names if n not in plant.knob_names]
        if unknown:
            raise ValueError(
                f"machine knobs {unknown} are not knobs of the simulation {plant.knob_names}"
            )
        self.prefix = common_prefix(machine)
        self.faults: set[str] = set(cfg.faults.active)
        self.fault_until: dict[str, float] = {}
        self.fault_writes: dict[str, int] = {}  # put fault -> writes it still affects
        self.stuck_knob = cfg.faults.stuck_knob or machine.knob_names[0]
        self.put_count = 0
        self.offline_until = 0.0
        self.started = time.time()
        self._fired: set[int] = set()
        self._context: _AsyncioContext | None = None
        self._next_frame = 0.0
        self._next_beat = 0.0
        self._beat = 0
        self._frame_due = False
        self._dirty = False

        knobs_now = plant.knobs()
        self.initial = dict(knobs_now)
        self.knobs: dict[str, _Knob] = {}
        self.pvdb: dict[str, ChannelData] = {}
        for kc in machine.knobs:
            low, high = kc.low, kc.high
            k = _Knob(kc, low, high, knobs_now[kc.name], knobs_now[kc.name])
            self.knobs[kc.name] = k
            sp = _HookedDouble(
                hook=self._setpoint_hook(k),
                value=k.setpoint,
                units=kc.unit,
                precision=6,
                lower_ctrl_limit=low,
                upper_ctrl_limit=high,
                lower_disp_limit=low,
                upper_disp_limit=high,
            )
            k.pvs["setpoint"] = sp
            self.pvdb[kc.setpoint] = sp  # type: ignore[index]
            if kc.readback and kc.readback != kc.setpoint:
                rb = _RODouble(value=k.readback, units=kc.unit, precision=6)
                k.pvs["readback"] = rb
                self.pvdb[kc.readback] = rb
            if kc.busy:
                busy = _ROInteger(value=0)
                k.pvs["busy"] = busy
                self.pvdb[kc.busy] = busy
        self.screen: dict[str, ChannelDouble] = {}
        for oc in machine.observations:
            pv = _RODouble(value=0.0, units=oc.unit, precision=9)
            self.screen[oc.name] = pv
            self.pvdb[oc.pv] = pv  # type: ignore[index]
        self.frame_pv: ChannelDouble | None = None
        if machine.frame_pv:
            n = len(machine.observations)
            self.frame_pv = _RODouble(value=[0.0] * n, max_length=n, units="m", precision=9)
            self.pvdb[machine.frame_pv] = self.frame_pv
        p = self.prefix
        s = loaded.sim_prefix
        self.interlock = self._maybe(machine.interlock.pv, _ROInteger(value=0))
        self.beam_loss = self._maybe(
            machine.beam_loss.pv,
            _RODouble(value=cfg.beam_loss_level, precision=4),
        )
        self.heartbeat = self._maybe(machine.heartbeat.pv, _ROInteger(value=0))
        self.fault_pv = _HookedString(hook=self._fault_hook, value=self._fault_text())
        self.put_count_pv = _ROInteger(value=0)
        self.reset_pv = _HookedInteger(hook=self._reset_hook, value=0)
        self.mae_pv = _RODouble(value=0.0, units="m", precision=9)
        trial = getattr(getattr(plant, "trial", None), "index", -1)
        own = {
            "FAULT": self.fault_pv,
            "PUT_COUNT": self.put_count_pv,
            "RESET": self.reset_pv,
            "TRIAL": _ROInteger(value=int(trial)),
            "TRUE:MAE": self.mae_pv,
        }
        for name, pv in own.items():
            self.pvdb[f"{s}{name}"] = pv
            self.pvdb.setdefault(f"{p}{name}", pv)  # the former names, same PVs
        self.image_pv: _ROByte | None = None
        if cfg.screen.image:
            w, h = cfg.screen.image_shape
            self.image_pv = _ROByte(value=np.zeros(w * h, np.uint8), max_length=w * h)
            self.pvdb[f"{p}AREABSCR1:IMAGE"] = self.image_pv
            self.pvdb[f"{p}AREABSCR1:WIDTH"] = _ROInteger(value=w)
            self.pvdb[f"{p}AREABSCR1:HEIGHT"] = _ROInteger(value=h)
        dupes = len(self.pvdb) - len(set(self.pvdb))
        if dupes:  # pragma: no cover - dict keys are unique; kept for clarity
            raise ValueError("duplicate PV names")

    def _maybe(self, name: str | None, pv: ChannelData) -> ChannelData | None:
        if name is None:
            return None
        self.pvdb[name] = pv
        return pv

    # ------------------------------------------------------------------ hooks
    def _setpoint_hook(self, knob: _Knob) -> Callable[[Any], Any]:
        async def hook(value: Any) -> Any:
            await self._check_schedule()  # faults due after the writes received so far
            self.put_count += 1
            await self.put_count_pv.write(self.put_count)
            v = float(_scalar(value))
            name, unit = knob.config.name, knob.config.unit
            if "reject_put" in self.faults:
                await self._count_fault_write("reject_put")
                raise WriteRefused(f"{name}: write of {v} refused (fault reject_put)")
            if not math.isfinite(v):
                raise WriteRefused(f"{name}: write of {v} refused: not a finite number")
            if self.config.records.refusal_of(name) == "clamp":
                v = min(max(v, knob.low), knob.high)  # what an EPICS ao does with DRVL/DRVH
            if not knob.low <= v <= knob.high:
                raise WriteRefused(
                    f"{name}: write of {v} {unit} refused: outside the limits "
                    f"[{knob.low}, {knob.high}] {unit}"
                )
            if "ignore_put" in self.faults:
                await self._count_fault_write("ignore_put")
                return SkipWrite
            await self._start_move(knob, v, time.time())
            return v

        return hook

    async def _count_fault_write(self, fault: str) -> None:
        if fault in self.fault_writes:
            self.fault_writes[fault] -= 1
            if self.fault_writes[fault] <= 0:
                await self._set_faults(self.faults - {fault})

    async def _start_move(self, knob: _Knob, value: float, now: float) -> None:
        knob.setpoint = value
        knob.start = knob.readback
        knob.t0 = now
        knob.t1 = now + self.config.magnets.settle_time_s
        knob.busy = True
        if "busy" in knob.pvs:
            await knob.pvs["busy"].write(1, timestamp=now)

    async def _fault_hook(self, value: Any) -> str:
        text = _scalar(value)
        text = text.decode() if isinstance(text, bytes) else str(text)
        faults, writes = self.parse_faults(text)
        await self._set_faults(faults, publish_text=False)
        self.fault_writes.update(writes)
        return self._fault_text()

    @staticmethod
    def parse_faults(text: str) -> tuple[set[str], dict[str, int]]:
        """The faults written as ``"stale,stuck"`` (``""``/``"none"``: no fault), and the
        write counts of ``"reject_put:N"``/``"ignore_put:N"`` (refuse or ignore N setpoint
        writes, then switch off).

        :raises WriteRefused: Naming unknown or malformed faults and the known ones.
        """
        faults: set[str] = set()
        writes: dict[str, int] = {}
        for token in text.replace(" ", ",").split(","):
            token = token.strip().lower()
            if not token or token == "none":
                continue
            name, _, count = token.partition(":")
            if name not in FAULTS:
                raise WriteRefused(f"unknown faults [{name!r}]; known: {list(FAULTS)}")
            if count:
                if name not in ("reject_put", "ignore_put") or not count.isdigit():
                    raise WriteRefused(
                        f"fault {token!r}: only reject_put:N and ignore_put:N take a count"
                    )
                writes[name] = max(1, int(count))
            faults.add(name)
        return faults, writes

    def _fault_text(self) -> str:
        return ",".join(sorted(self.faults)) or "none"

    async def _set_faults(
        self, faults: set[str], now: float | None = None, publish_text: bool = True
    ) -> None:
        now = time.time() if now is None else now
        old = self.faults
        self.faults = set(faults)
        for gone in old - self.faults:
            self.fault_until.pop(gone, None)
            self.fault_writes.pop(gone, None)
        if "disconnect" in self.faults and "disconnect" not in old:
            self._go_offline(now)
        if "stuck" in old and "stuck" not in self.faults:
            knob = self.knobs[self.stuck_knob]
            knob.frozen = False
            if knob.readback != knob.setpoint:
                await self._start_move(knob, knob.setpoint, now)
        if "stuck" in self.faults and "stuck" not in old:
            self.knobs[self.stuck_knob].frozen = True
        if self.interlock is not None:
            tripped = int("interlock" in self.faults)
            if self.interlock.value != tripped:
                await self.interlock.write(tripped, timestamp=now)
        if self.beam_loss is not None:
            level = (
                self.config.faults.beam_loss_level
                if "beam_loss" in self.faults
                else self.config.beam_loss_level
            )
            if self.beam_loss.value != level:
                await self.beam_loss.write(level, timestamp=now)
        if publish_text and self.fault_pv.value != self._fault_text():
            await self.fault_pv.write(self._fault_text(), verify_value=False)
        if old != self.faults:
            log.info("faults: %s", self._fault_text())

    def _go_offline(self, now: float) -> None:
        self.offline_until = now + self.config.faults.disconnect_s
        self.fault_until["disconnect"] = self.offline_until
        # Drop the circuits a moment later, so that the write that switched the fault on
        # still gets its completion.
        asyncio.get_running_loop().call_later(0.05, self._drop_circuits)
        log.info("disconnect: silent for %.3g s", self.config.faults.disconnect_s)

    def _drop_circuits(self) -> None:
        if self._context is not None and self.offline:
            for circuit in list(self._context.circuits):
                try:
                    circuit.client.close()
                except Exception:  # noqa: BLE001 - a circuit already closing is fine
                    pass

    @property
    def offline(self) -> bool:
        """Whether the ``disconnect`` fault keeps the IOC silent now."""
        return "disconnect" in self.faults and time.time() < self.offline_until

    async def _reset_hook(self, value: Any) -> int:
        if int(_scalar(value)) != 0:
            await self.reset()
        return 0

    async def reset(self) -> None:
        """Clear faults and counters and restore the initial knob settings at once."""
        now = time.time()
        await self._set_faults(set(self.config.faults.active), now)
        self._fired.clear()
        self.started = now
        self.put_count = 0
        await self.put_count_pv.write(0, timestamp=now)
        for name, knob in self.knobs.items():
            v = self.initial[name]
            knob.setpoint = knob.readback = knob.start = v
            knob.busy = False
            knob.frozen = "stuck" in self.faults and name == self.stuck_knob
            await knob.pvs["setpoint"].write(v, verify_value=False, timestamp=now)
            if "readback" in knob.pvs:
                await knob.pvs["readback"].write(v, timestamp=now)
            if "busy" in knob.pvs:
                await knob.pvs["busy"].write(0, timestamp=now)
        self.plant.set_knobs(self.initial)
        await self._publish_frame(now)
        log.info("reset to the initial settings")

    async def _check_schedule(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        faults = scheduled_faults(self, now)
        if faults != self.faults:
            await self._set_faults(faults, now)

    # ------------------------------------------------------------------ loops
    async def _publish_frame(self, now: float) -> None:
        if "stale" in self.faults:
            return
        reading = self.plant.observe()
        if self.frame_pv is not None:
            values = [float(reading[o.name]) for o in self.machine.observations]
            await self.frame_pv.write(values, timestamp=now)
        for name, pv in self.screen.items():
            await pv.write(float(reading[name]), timestamp=now)
        await self.mae_pv.write(float(self.plant.mae()), timestamp=now)
        if self.image_pv is not None:
            await self.image_pv.write(self._image(reading), timestamp=now)

    def _image(self, reading: dict[str, float]) -> np.ndarray:
        """The screen image (:meth:`Plant.screen_image`) as 8-bit pixels."""
        return (
            (255 * self.plant.screen_image(self.config.screen.image_shape, reading))
            .astype(np.uint8)
            .ravel()
        )

    async def tick(self) -> None:
        """One update: ramps, busy flags, plant, screen frames, heartbeat, fault timers."""
        now = time.time()
        await self._check_schedule(now)
        settled_now = False
        for knob in self.knobs.values():
            if not knob.busy:
                continue
            value = ramped_readback(knob, now)
            if value != knob.readback:
                knob.readback = value
                self._dirty = True
                if "readback" in knob.pvs:
                    await knob.pvs["readback"].write(value, timestamp=now)
            if now >= knob.t1:
                knob.busy = False
                settled_now = True
                if "busy" in knob.pvs:
                    await knob.pvs["busy"].write(0, timestamp=now)
        if self._dirty:
            self.plant.set_knobs({k.config.name: k.readback for k in self.knobs.values()})
            self._dirty = False
        all_settled = not any(k.busy for k in self.knobs.values())
        period = 1.0 / self.config.screen.frame_rate_hz
        if settled_now and all_settled and now < self._next_frame:
            await self._publish_frame(now)  # an extra frame as soon as the magnets settled
        if now >= self._next_frame:
            await self._publish_frame(now)
            # absolute deadlines: the configured rate on average; no bursts after a stall
            self._next_frame += period
            if self._next_frame <= now:
                self._next_frame = now + period
        if now >= self._next_beat:
            self._next_beat += self.config.heartbeat_period_s
            if self._next_beat <= now:
                self._next_beat = now + self.config.heartbeat_period_s
            if "heartbeat" not in self.faults and self.heartbeat is not None:
                self._beat += 1
                await self.heartbeat.write(self._beat, timestamp=now)

    async def run_updates(self, async_lib: AsyncLibraryLayer) -> None:
        """Startup hook: publish the first frame, then :meth:`tick` forever."""
        now = time.time()
        await self._set_faults(set(self.faults), now)
        await self._publish_frame(now)
        period = 1.0 / self.config.magnets.update_rate_hz
        self._next_frame = now + 1.0 / self.config.screen.frame_rate_hz
        self._next_beat = now + self.config.heartbeat_period_s
        print(f"READY {self.context_port} {self.prefix}", flush=True)
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the machine
                log.exception("update failed")
            now = time.time()
            due = min(self._next_frame, self._next_beat)
            if any(k.busy for k in self.knobs.values()):
                due = min(due, now + period)
            await asyncio.sleep(max(0.0, due - now))

    @property
    def context_port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._context.port) if self._context is not None else -1


class _Context(_AsyncioContext):
    """caproto's asyncio server context, made silent while the ``disconnect`` fault is on."""

    def __init__(self, pvdb: dict[str, ChannelData], interfaces: list[str], ioc: Any) -> None:
        super().__init__(pvdb, interfaces)
        self._ioc = ioc
        ioc._context = self

    async def _broadcaster_recv_datagram(self, bytes_received: bytes, address: Any) -> None:
        if self._ioc.offline:
            return
        await super()._broadcaster_recv_datagram(bytes_received, address)

    async def tcp_handler(self, client: Any, addr: Any) -> None:
        if self._ioc.offline:
            client.close()
            return
        # Answer each request at once (as EPICS's own servers do), not after Nagle's delay.
        sock = client.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await super().tcp_handler(client, addr)

    async def broadcast_beacon_loop(self) -> None:
        """No beacons: clients find this IOC by searching it directly (EPICS_CA_ADDR_LIST),
        and nothing is broadcast from a test or demo machine."""
        await asyncio.Event().wait()


def configure_server_environment(port: int) -> None:
    """Set the EPICS server variables of this process: ``EPICS_CA_SERVER_PORT`` = ``port``;
    beacons (not sent, see :class:`_Context`) would go to the loopback only."""
    os.environ["EPICS_CA_SERVER_PORT"] = str(port)
    os.environ["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"
    os.environ["EPICS_CAS_BEACON_ADDR_LIST"] = "127.0.0.1"


def build_plant(loaded: LoadedConfig) -> Any:
    """The :class:`~accelrl.deploy.plant.Plant` of the IOC config (trial, initial knobs,
    reading noise, seed): :func:`accelrl.deploy.virtual.core.build_plant`."""
    from accelrl.deploy.virtual.core import build_plant as build

    return build(loaded)


async def serve(loaded: LoadedConfig, plant: Any | None = None) -> None:
    """Serve the virtual accelerator until cancelled (prints ``READY <port> <prefix>`` once
    the PVs are served).

    :param loaded: IOC config with its machine config.
    :param plant: The simulation (default: :func:`build_plant`).
    """
    configure_server_environment(loaded.config.port)
    ioc = VirtualAccelerator(loaded, plant if plant is not None else build_plant(loaded))
    context = _Context(ioc.pvdb, [loaded.config.interface], ioc)
    context.ca_server_port = loaded.config.port
    await context.run(startup_hook=ioc.run_updates)


def run(loaded: LoadedConfig) -> None:
    """Blocking :func:`serve` (Ctrl-C / SIGTERM ends it)."""
    try:
        asyncio.run(serve(loaded))
    except KeyboardInterrupt:
        pass


__all__ = [
    "ChannelType",
    "VirtualAccelerator",
    "WriteRefused",
    "build_plant",
    "configure_server_environment",
    "run",
    "serve",
]
