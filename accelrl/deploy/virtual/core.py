"""What the virtual accelerator does, whichever server serves it: power supplies with ramps,
busy flags, limits and refusals, a camera with a fixed frame rate, interlock, beam loss,
heartbeat, fault injection and reset.

:class:`AcceleratorCore` holds that state and changes it on three kinds of events: a client's
write (first :meth:`~AcceleratorCore.check_setpoint_write` before the write reaches the record,
then :meth:`~AcceleratorCore.write_setpoint` when the record processes it), the passage of time
(:meth:`~AcceleratorCore.tick`, at the deadlines it returns) and a reset. Every change is
recorded as a :data:`Change` key; the server takes them (:meth:`~AcceleratorCore.take_changes`)
and publishes the current values of those PVs. The server never gets a value it has to keep in
order: it always publishes the state as it is when it publishes.

All methods are thread-safe (one lock) and never block on anything but that lock. Times are
wall-clock seconds since the epoch (:func:`time.time`), the clock of the EPICS time stamps.

This module imports numpy only; the plant it drives imports torch. Its size (~570 lines) is one
class under one lock: writes, ticks, faults, reset and the outage hand-over share the knobs',
the camera's and the faults' state and the pending changes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from accelrl.deploy.config import KnobConfig
from accelrl.deploy.virtual.config import FAULTS, LoadedConfig, Refusal, scheduled_faults

log = logging.getLogger("accelrl.virtual")

#: A PV whose value changed: ``("setpoint", knob)``, ``("readback", knob)``,
#: ``("busy", knob)``, ``"interlock"``, ``"beam_loss"``, ``"heartbeat"``, ``"faults"``,
#: ``"put_count"``, or ``"disconnect"`` (the outage fault began). New camera frames are
#: not changes but a queue (:meth:`AcceleratorCore.take_frames`): every frame is published.
Change = Hashable
#: The camera catches up with at most this many late frames after a stall of its thread
#: (their time stamps are the times they were due); after a longer stall it skips them.
MAX_LATE_FRAMES = 10

#: Faults that take a write count (``reject_put:N``).
COUNTED_FAULTS = ("reject_put", "ignore_put")


class FaultSyntaxError(ValueError):
    """A fault text (``"stale,reject_put:2"``) names an unknown fault or a bad count."""


def parse_faults(text: str) -> tuple[set[str], dict[str, int]]:
    """The faults written as ``"stale,stuck"`` (``""``/``"none"``: no fault) and the write
    counts of ``"reject_put:N"``/``"ignore_put:N"`` (refuse or ignore the next N setpoint
    writes, then switch off).

    :param text: Fault names separated by commas or spaces.
    :raises FaultSyntaxError: Naming the unknown or malformed faults and the known ones.

    Example::

        >>> parse_faults("stale, reject_put:2")
        ({'reject_put', 'stale'}, {'reject_put': 2})
    """
    faults: set[str] = set()
    writes: dict[str, int] = {}
    for token in text.replace(" ", ",").split(","):
        token = token.strip().strip("'\"").lower()
        if not token or token == "none":
            continue
        name, _, count = token.partition(":")
        if name not in FAULTS:
            raise FaultSyntaxError(f"unknown faults [{name!r}]; known: {list(FAULTS)}")
        if count:
            if name not in COUNTED_FAULTS or not count.isdigit():
                raise FaultSyntaxError(
                    f"fault {token!r}: only reject_put:N and ignore_put:N take a count"
                )
            writes[name] = max(1, int(count))
        faults.add(name)
    return faults, writes


class Ramp(Protocol):
    """A power supply's move, as :func:`ramped_readback` reads it."""

    setpoint: float
    readback: float
    start: float
    t0: float
    t1: float
    frozen: bool


def ramped_readback(knob: Ramp, now: float) -> float:
    """The readback of a supply ramping linearly from ``start`` at ``t0`` to ``setpoint`` at
    ``t1`` [s], at time ``now`` [s]; held where the ``stuck`` fault froze it."""
    if knob.frozen:
        return knob.readback
    if now >= knob.t1:
        return knob.setpoint
    f = (now - knob.t0) / (knob.t1 - knob.t0)
    return knob.start + f * (knob.setpoint - knob.start)


@dataclass
class KnobState:
    """Power-supply state of one knob.

    :param config: The knob's machine config (name, unit, PVs, limits).
    :param refusal: How a write outside ``[config.low, config.high]`` is answered.
    :param setpoint: The setpoint served (SI).
    :param readback: The readback served (SI).
    :param start: Readback when the current move began (SI).
    :param t0: Start of the current move [s].
    :param t1: End of the current move [s].
    :param busy: Whether the supply is moving (the busy flag).
    :param frozen: Whether the ``stuck`` fault holds the readback.
    :param readback_time: Time stamp of the readback [s].
    """

    config: KnobConfig
    refusal: Refusal
    setpoint: float
    readback: float
    start: float = 0.0
    t0: float = 0.0
    t1: float = 0.0
    busy: bool = False
    frozen: bool = False
    readback_time: float = 0.0

    @property
    def low(self) -> float:
        """Lower limit (DRVL) [SI]."""
        return self.config.low

    @property
    def high(self) -> float:
        """Upper limit (DRVH) [SI]."""
        return self.config.high


@dataclass(frozen=True)
class Frame:
    """One camera frame: every observation, measured at one time.

    :param values: The readings in the machine config's observation order [m].
    :param time: When the frame was taken [s].
    :param mae: True mean absolute error of the beam to the trial's target then [m].
    :param image: The screen image (row-major, ``height x width``), or ``None``.
    """

    values: tuple[float, ...]
    time: float
    mae: float
    image: np.ndarray | None = None


class AcceleratorCore:
    """The virtual accelerator's state and behaviour (see the module docstring).

    :param loaded: IOC config with its machine config (PV names with the prefix applied).
    :param plant: The simulated beamline (:class:`~accelrl.deploy.plant.Plant`); its knobs
        must include the machine's.
    :param clock: Wall clock [s] (tests may pass their own).
    :raises ValueError: If a machine knob is not a plant knob.
    """

    def __init__(
        self, loaded: LoadedConfig, plant: Any, clock: Callable[[], float] = time.time
    ) -> None:
        self.loaded = loaded
        self.config = cfg = loaded.config
        self.machine = machine = loaded.machine
        self.plant = plant
        self.clock = clock
        unknown = [n for n in machine.knob_names if n not in plant.knob_names]
        if unknown:
            raise ValueError(
                f"machine knobs {unknown} are not knobs of the simulation {plant.knob_names}"
            )
        self.lock = threading.RLock()
        self._changes: set[Change] = set()
        now = clock()
        self.faults: set[str] = set(cfg.faults.active)
        self.fault_until: dict[str, float] = {}
        self.fault_writes: dict[str, int] = {}
        self.stuck_knob = cfg.faults.stuck_knob or machine.knob_names[0]
        self.put_count = 0
        self.started = now
        self.offline_until = 0.0
        self._fired: set[int] = set()
        self.beat = 0
        self.beat_time = now
        knobs_now = plant.knobs()
        self.initial = {name: knobs_now[name] for name in machine.knob_names}
        self.knobs: dict[str, KnobState] = {
            kc.name: KnobState(
                kc,
                cfg.records.refusal_of(kc.name),
                knobs_now[kc.name],
                knobs_now[kc.name],
                readback_time=now,
            )
            for kc in machine.knobs
        }
        self.knobs[self.stuck_knob].frozen = "stuck" in self.faults
        self.interlock = "interlock" in self.faults
        self.interlock_time = now
        self.beam_loss = self._beam_loss_level()
        self.beam_loss_time = now
        self.frame = self._take_frame(now)
        self._frames: list[Frame] = []
        # frame k is due at frame_t0 + k / frame_rate_hz (no sum of rounded periods)
        self._frame_t0, self._frame_k = now, 1
        self._next_frame = now + 1.0 / cfg.screen.frame_rate_hz
        self._next_beat = now + cfg.heartbeat_period_s
        self._next_ramp = now
        self._dirty = False

    # ------------------------------------------------------------------ changes
    def take_changes(self) -> set[Change]:
        """The PVs changed since the last call (the server publishes their current values)."""
        with self.lock:
            changes, self._changes = self._changes, set()
            return changes

    def _changed(self, *changes: Change) -> None:
        self._changes.update(changes)

    def take_frames(self) -> list[Frame]:
        """The frames taken since the last call, oldest first (the server publishes each)."""
        with self.lock:
            frames, self._frames = self._frames, []
            return frames

    # ------------------------------------------------------------------ client writes
    def check_setpoint_write(self, knob: str, value: float | None) -> str | None:
        """Count a client's setpoint write before it reaches the record, switch on the
        scheduled faults that are due, and decide whether the write is refused.

        :param knob: Knob name.
        :param value: The value written (SI), or ``None`` if the server cannot tell.
        :return: Why the write is refused (``reject_put`` fault; a non-finite value; a value
            outside the limits of a ``reject`` knob), or ``None``: let it through.
        """
        with self.lock:
            now = self.clock()
            self._check_schedule(now)  # faults due after the writes received so far
            self.put_count += 1
            self._changed("put_count")
            state = self.knobs[knob]
            unit = state.config.unit
            if "reject_put" in self.faults:
                self._count_fault_write("reject_put", now)
                return f"{knob}: write of {value} refused (fault reject_put)"
            if value is None:
                return None
            if not math.isfinite(value):
                return f"{knob}: write of {value} refused: not a finite number"
            if state.refusal == "reject" and not state.low <= value <= state.high:
                return (
                    f"{knob}: write of {value} {unit} refused: outside the limits "
                    f"[{state.low}, {state.high}] {unit}"
                )
            return None

    def write_setpoint(self, knob: str, value: float) -> float:
        """Apply a setpoint write that :meth:`check_setpoint_write` let through.

        :param knob: Knob name.
        :param value: The value the record received (SI); clamped to the limits here too.
        :return: The setpoint the record now serves: ``value``, or the previous setpoint if
            the write was not applied (``ignore_put`` fault, a non-finite value).
        """
        with self.lock:
            now = self.clock()
            state = self.knobs[knob]
            if not math.isfinite(value):
                log.warning("%s: write of %s ignored: not a finite number", knob, value)
                return state.setpoint
            if "ignore_put" in self.faults:
                self._count_fault_write("ignore_put", now)
                log.info("%s: write of %s ignored (fault ignore_put)", knob, value)
                return state.setpoint
            value = min(max(float(value), state.low), state.high)
            self._start_move(state, value, now)
            return value

    def _start_move(self, state: KnobState, value: float, now: float) -> None:
        state.setpoint = value
        state.start = state.readback
        state.t0 = now
        state.t1 = now + self.config.magnets.settle_time_s
        state.busy = True
        self._next_ramp = min(self._next_ramp, now)
        self._changed(("setpoint", state.config.name), ("busy", state.config.name))

    def _count_fault_write(self, fault: str, now: float) -> None:
        if fault in self.fault_writes:
            self.fault_writes[fault] -= 1
            if self.fault_writes[fault] <= 0:
                self._set_faults(self.faults - {fault}, now)

    def check_fault_text(self, text: str) -> str | None:
        """Why a client's write of ``text`` to the FAULT PV is refused, or ``None``."""
        try:
            parse_faults(text)
        except FaultSyntaxError as err:
            return str(err)
        return None

    def write_faults(self, text: str) -> str:
        """Switch the active faults to those of ``text`` (see :func:`parse_faults`).

        :return: The fault text the FAULT PV serves now (e.g. ``"reject_put,stale"``).
        :raises FaultSyntaxError: If ``text`` is not valid (nothing changes then).
        """
        faults, writes = parse_faults(text)
        with self.lock:
            now = self.clock()
            self._set_faults(faults, now)
            self.fault_writes.update(writes)
            return self.fault_text()

    def fault_text(self) -> str:
        """The active faults, comma separated (``"none"``)."""
        with self.lock:
            return ",".join(sorted(self.faults)) or "none"

    def _beam_loss_level(self) -> float:
        cfg = self.config
        return cfg.faults.beam_loss_level if "beam_loss" in self.faults else cfg.beam_loss_level

    def _set_faults(self, faults: set[str], now: float) -> None:
        old = self.faults
        self.faults = set(faults)
        for gone in old - self.faults:
            self.fault_until.pop(gone, None)
            self.fault_writes.pop(gone, None)
        if "disconnect" in self.faults and "disconnect" not in old:
            self.offline_until = now + self.config.faults.disconnect_s
            self.fault_until["disconnect"] = self.offline_until
            self._changed("disconnect")
            log.info("disconnect: silent for %.3g s", self.config.faults.disconnect_s)
        stuck = self.knobs[self.stuck_knob]
        if "stuck" in old and "stuck" not in self.faults:
            stuck.frozen = False
            if stuck.readback != stuck.setpoint:
                self._start_move(stuck, stuck.setpoint, now)
        if "stuck" in self.faults and "stuck" not in old:
            stuck.frozen = True
        tripped = "interlock" in self.faults
        if tripped != self.interlock:
            self.interlock, self.interlock_time = tripped, now
            self._changed("interlock")
        level = self._beam_loss_level()
        if level != self.beam_loss:
            self.beam_loss, self.beam_loss_time = level, now
            self._changed("beam_loss")
        if old != self.faults:
            self._changed("faults")
            log.info("faults: %s", self.fault_text())

    def _check_schedule(self, now: float) -> None:
        faults = scheduled_faults(self, now)
        if faults != self.faults:
            self._set_faults(faults, now)

    def reset(self) -> None:
        """Clear faults and counters and restore the initial knob settings at once (no
        ramp), then take a frame."""
        with self.lock:
            now = self.clock()
            self._set_faults(set(self.config.faults.active), now)
            self._fired.clear()
            self.started = now
            self.put_count = 0
            self._changed("put_count", "faults")
            for name, state in self.knobs.items():
                value = self.initial[name]
                state.setpoint = state.readback = state.start = value
                state.readback_time = now
                state.busy = False
                state.frozen = "stuck" in self.faults and name == self.stuck_knob
                self._changed(("setpoint", name), ("readback", name), ("busy", name))
            self.plant.set_knobs(self.initial)
            self._publish_frame(now)
            log.info("reset to the initial settings")

    # ------------------------------------------------------------------ time
    def _take_frame(self, now: float) -> Frame:
        reading = self.plant.observe()
        values = tuple(float(reading[o.name]) for o in self.machine.observations)
        image = self._image(reading) if self.config.screen.image else None
        return Frame(values, now, float(self.plant.mae()), image)

    def _publish_frame(self, now: float) -> None:
        if "stale" in self.faults:
            return
        self.frame = self._take_frame(now)
        self._frames.append(self.frame)
        del self._frames[: -4 * MAX_LATE_FRAMES]  # nobody takes them: keep the newest

    def _image(self, reading: dict[str, float]) -> np.ndarray:
        """The screen image as the waveform serves it (:meth:`Plant.screen_image`: the world
        camera's image, else a 2-D Gaussian of the read beam), full scale of the pixel type."""
        screen = self.config.screen
        dtype = np.dtype(screen.image_dtype)
        level = self.plant.screen_image(screen.image_shape, reading)
        return (float(np.iinfo(dtype).max) * level).astype(dtype).ravel()

    def tick(self) -> float:
        """Advance to now: ramps, busy flags, plant, frames, heartbeat, fault timers.

        :return: When the next thing is due [s since the epoch]: call again then (or earlier).
        """
        with self.lock:
            now = self.clock()
            self._check_schedule(now)
            frame_period = 1.0 / self.config.screen.frame_rate_hz
            # absolute deadlines: frames are due at fixed times and time-stamped with them,
            # so the configured rate holds; frames that fell due while this thread was held
            # up are taken now (a camera's buffered frames), up to MAX_LATE_FRAMES
            if now - self._next_frame > MAX_LATE_FRAMES * frame_period:
                self._frame_t0, self._frame_k = now - frame_period, 1
                self._next_frame = now
            while now >= self._next_frame:
                self._publish_frame(self._next_frame)
                self._frame_k += 1
                self._next_frame = self._frame_t0 + self._frame_k * frame_period
            self._tick_magnets(now)  # after the frames due before now; may add one at now
            if now >= self._next_beat:
                period = self.config.heartbeat_period_s
                self._next_beat += period
                if self._next_beat <= now:
                    self._next_beat = now + period
                if "heartbeat" not in self.faults:
                    self.beat += 1
                    self.beat_time = now
                    self._changed("heartbeat")
            return self._next_deadline(now)

    def _tick_magnets(self, now: float) -> None:
        moving = [k for k in self.knobs.values() if k.busy]
        if not moving:
            return
        if now < self._next_ramp and all(now < k.t1 for k in moving):
            return
        self._next_ramp = now + 1.0 / self.config.magnets.update_rate_hz
        settled_now = False
        for state in moving:
            value = ramped_readback(state, now)
            if value != state.readback:
                state.readback, state.readback_time = value, now
                self._dirty = True
                self._changed(("readback", state.config.name))
            if now >= state.t1:
                state.busy = False
                settled_now = True
                self._changed(("busy", state.config.name))
        if self._dirty:
            self.plant.set_knobs({name: k.readback for name, k in self.knobs.items()})
            self._dirty = False
        if settled_now and not any(k.busy for k in self.knobs.values()):
            self._publish_frame(now)  # a fresh frame as soon as the magnets have settled

    def _next_deadline(self, now: float) -> float:
        deadlines = [self._next_frame, self._next_beat]
        moving = [k for k in self.knobs.values() if k.busy]
        if moving:
            deadlines.append(self._next_ramp)
            deadlines += [k.t1 for k in moving]
        deadlines += list(self.fault_until.values())
        for i, event in enumerate(self.config.faults.schedule):
            if i not in self._fired and event.after_s is not None:
                deadlines.append(self.started + event.after_s)
        return max(now, min(deadlines))

    # ------------------------------------------------------------------ outage hand-over
    def snapshot(self) -> dict[str, Any]:
        """The state a restarted IOC continues from (JSON-serialisable)."""
        with self.lock:
            return {
                "faults": sorted(self.faults),
                "fault_until": dict(self.fault_until),
                "fault_writes": dict(self.fault_writes),
                "put_count": self.put_count,
                "started": self.started,
                "fired": sorted(self._fired),
                "beat": self.beat,
                "offline_until": self.offline_until,
                "frame": {
                    "values": list(self.frame.values),
                    "time": self.frame.time,
                    "mae": self.frame.mae,
                },
                "knobs": {
                    name: {
                        "setpoint": k.setpoint,
                        "readback": k.readback,
                        "start": k.start,
                        "t0": k.t0,
                        "t1": k.t1,
                        "busy": k.busy,
                        "frozen": k.frozen,
                    }
                    for name, k in self.knobs.items()
                },
            }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from :meth:`snapshot` of an earlier IOC process; the ``disconnect``
        fault that ended that process is over."""
        with self.lock:
            now = self.clock()
            self.faults = set(snapshot["faults"]) - {"disconnect"}
            self.fault_until = {
                k: float(v) for k, v in snapshot["fault_until"].items() if k != "disconnect"
            }
            self.fault_writes = {k: int(v) for k, v in snapshot["fault_writes"].items()}
            self.put_count = int(snapshot["put_count"])
            self.started = float(snapshot["started"])
            self._fired = {int(i) for i in snapshot["fired"]}
            self.beat = int(snapshot["beat"])
            for name, values in snapshot["knobs"].items():
                state = self.knobs[name]
                for key in ("setpoint", "readback", "start", "t0", "t1"):
                    setattr(state, key, float(values[key]))
                state.busy = bool(values["busy"])
                state.frozen = bool(values["frozen"])
                state.readback_time = now
            self.plant.set_knobs({name: k.readback for name, k in self.knobs.items()})
            self.interlock = "interlock" in self.faults
            self.beam_loss = self._beam_loss_level()
            self.interlock_time = self.beam_loss_time = self.beat_time = now
            self._next_ramp = now
            self._frame_t0, self._frame_k = now, 1
            self._next_frame = now + 1.0 / self.config.screen.frame_rate_hz
            frame = snapshot.get("frame")
            if frame is not None:  # the last frame the clients saw (frozen under ``stale``)
                values = tuple(float(v) for v in frame["values"])
                reading = dict(zip(self.machine.observation_names, values, strict=True))
                image = self._image(reading) if self.config.screen.image else None
                self.frame = Frame(values, float(frame["time"]), float(frame["mae"]), image)
            else:
                self.frame = self._take_frame(now)
            self._frames = []
            self._changes = set()

    @property
    def offline(self) -> bool:
        """Whether the ``disconnect`` fault keeps the IOC silent now."""
        return "disconnect" in self.faults and self.clock() < self.offline_until


def build_plant(loaded: LoadedConfig) -> Any:
    """The :class:`~accelrl.deploy.plant.Plant` of an IOC config (trial, initial knobs,
    reading noise, seed, world); imports torch."""
    from accelrl.deploy.plant import Plant

    cfg = loaded.config
    initial: Any = None if cfg.initial_knobs == "standard" else cfg.initial_knobs
    return Plant.from_trial(
        cfg.trial,
        trials_path=cfg.trials_file,
        env_id=loaded.machine.env_id,
        initial_knobs=initial,
        reading_noise=cfg.screen.reading_noise,
        seed=cfg.screen.seed,
        world=cfg.world,
    )
