"""The accelrl simulation as a :class:`~accelrl.deploy.machine.Machine`, with fault injection.

:class:`SimMachine` puts a :class:`~accelrl.deploy.plant.Plant` behind the machine protocol:
setpoints are applied after ``settle_delay_s`` (busy until then), readbacks follow, every
observation is a fresh "frame" time-stamped when it is read, and the heartbeat ticks. A
list of :class:`Fault` makes it misbehave the ways real machines do, so the safety layer
and the controller can be tested on every abort path:

=================  ============================================================================
kind               effect while active
=================  ============================================================================
interlock          :meth:`~SimMachine.health` reports a tripped interlock
beam_loss          :meth:`~SimMachine.health` reports beam loss
disconnect         every call raises :class:`~accelrl.deploy.machine.Disconnected`;
                   ``health()`` reports ``connected=False``
reject_put         ``put`` raises :class:`~accelrl.deploy.machine.PutRejected`
lost_reply         ``put`` is applied, then raises
                   :class:`~accelrl.deploy.machine.Disconnected` (the reply was lost)
ignore_put         ``put`` returns normally but nothing changes (a refusal the client does
                   not report; only the readback shows it)
readback_offset    the readback of ``knob`` (default: the first) is off by ``value`` (SI)
settle_timeout     knobs stay busy: ``settle`` raises
                   :class:`~accelrl.deploy.machine.SettleTimeout` after its timeout
stale_heartbeat    ``health()`` reports a heartbeat age of ``value`` seconds
stale_reading      observations repeat the last frame, with its old timestamp
nan_reading        observations read NaN
=================  ============================================================================

A fault becomes active once the machine has applied ``after_puts`` puts, and stays active
for ``times`` calls of the functions it affects (``None``: for good).

Protections: the simulation reports the interlock, beam loss and heartbeat of its faults.
A machine config that opts out of one (``interlock: {none: <reason>}``) has no such signal:
its fault cannot be injected (``ValueError``) and the heartbeat age is reported as ``None``.

Another client's write (an operator at the console) is :meth:`SimMachine.external_put`: the
setpoints change at once and nothing of it counts as this client's put.

>>> from accelrl.deploy.config import load_machine_config
>>> from accelrl.deploy.plant import Plant
>>> machine = SimMachine(Plant.from_trial(0), load_machine_config("deploy/sim_ares_ea.yaml"),
...                      faults=[Fault("interlock", after_puts=3)])  # doctest: +SKIP

This module imports the simulation (torch); the runtime modules do not need it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from accelrl.deploy.config import MachineConfig
from accelrl.deploy.machine import (
    Disconnected,
    Health,
    PutRejected,
    Reading,
    SettleTimeout,
)
from accelrl.deploy.plant import Plant

FaultKind = Literal[
    "interlock",
    "beam_loss",
    "disconnect",
    "reject_put",
    "lost_reply",
    "ignore_put",
    "readback_offset",
    "settle_timeout",
    "stale_heartbeat",
    "stale_reading",
    "nan_reading",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
#: Fault kind -> the protection of the machine config it needs.
PROTECTION_OF_FAULT = {"interlock": "interlock", "beam_loss": "beam_loss",
                       "stale_heartbeat": "heartbeat"}  # fmt: skip


@dataclass
class Fault:
    """One injected fault (see the module documentation for the kinds).

    :param kind: What goes wrong.
    :param after_puts: Active once this many puts have been applied.
    :param times: Number of affected calls it lasts (``None``: for good).
    :param knob: Knob affected by ``readback_offset`` (default: the first knob).
    :param value: Readback offset (SI) or heartbeat age [s].
    """

    kind: FaultKind
    after_puts: int = 0
    times: int | None = None
    knob: str | None = None
    value: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {list(FAULT_KINDS)}")
        if self.after_puts < 0 or (self.times is not None and self.times < 1):
            raise ValueError(f"fault {self.kind}: need after_puts >= 0 and times >= 1 or None")


class SimMachine:
    """A :class:`~accelrl.deploy.plant.Plant` behind the machine protocol.

    :param plant: The simulated beamline.
    :param config: Machine config (knob and observation names; ``transport`` is not
        checked, so a ``ca`` config's names can be simulated too).
    :param settle_delay_s: Time from a put until the knob reaches its setpoint [s]
        (busy until then).
    :param faults: Faults to inject.
    :param clock: Wall-clock function [s since the epoch] used for timestamps.
    :raises ValueError: If the config names knobs or observations the plant lacks.
    """

    def __init__(
        self,
        plant: Plant,
        config: MachineConfig,
        settle_delay_s: float = 0.0,
        faults: Sequence[Fault] = (),
        clock: object = time.time,
    ) -> None:
        if settle_delay_s < 0 or not math.isfinite(settle_delay_s):
            raise ValueError(f"settle_delay_s must be finite and >= 0 s, got {settle_delay_s}")
        unknown = sorted(set(config.knob_names) - set(plant.knob_names))
        if unknown:
            raise ValueError(
                f"config knobs {unknown} are not knobs of the plant {plant.knob_names}"
            )
        unknown = sorted(set(config.observation_names) - set(plant.observation_names))
        if unknown:
            raise ValueError(
                f"config observations {unknown} are not plant observations "
                f"{plant.observation_names}"
            )
        self.plant = plant
        self.config = config
        for fault in faults:
            self._check_protection(fault)
        self.knob_names: tuple[str, ...] = config.knob_names
        self.observation_names: tuple[str, ...] = config.observation_names
        self.settle_delay_s = float(settle_delay_s)
        self.faults = list(faults)
        self._remaining = {id(f): f.times for f in self.faults}
        self._clock = clock  # type: ignore[assignment]
        self._lock = threading.RLock()
        knobs = plant.knobs()
        self._setpoints = {n: knobs[n] for n in self.knob_names}
        self._pending: dict[str, tuple[float, float]] = {}  # name -> (value, due time)
        self._puts = 0
        self._connected = False
        self._last_frame: Reading | None = None
        #: Every put as ``(time, {name: value})`` (what was written, faults or not).
        self.put_log: list[tuple[float, dict[str, float]]] = []

    # ------------------------------------------------------------------ faults
    def _check_protection(self, fault: Fault) -> None:
        key = PROTECTION_OF_FAULT.get(fault.kind)
        if key is not None and getattr(self.config, key).opted_out:
            raise ValueError(
                f"fault {fault.kind!r}: machine {self.config.name!r} has no {key} "
                f"({key}: none: {getattr(self.config, key).none!r})"
            )

    def inject(self, fault: Fault) -> None:
        """Add a fault while running (``after_puts`` counts from the machine's start).

        :raises ValueError: For a protection the machine config opts out of.
        """
        self._check_protection(fault)
        with self._lock:
            self.faults.append(fault)
            self._remaining[id(fault)] = fault.times

    def _active(self, kind: str, consume: bool = True) -> Fault | None:
        for f in self.faults:
            if f.kind != kind or self._puts < f.after_puts:
                continue
            left = self._remaining[id(f)]
            if left is not None and left <= 0:
                continue
            if consume and left is not None:
                self._remaining[id(f)] = left - 1
            return f
        return None

    def _check_connected(self) -> None:
        if self._active("disconnect"):
            raise Disconnected(f"{self.config.name}: channels disconnected (injected)")

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def _advance(self) -> None:
        """Apply the pending setpoints whose settle time has come."""
        if not self._pending:
            return
        now = self._now()
        due = {n: v for n, (v, t) in self._pending.items() if t <= now}
        if due and not self._active("settle_timeout", consume=False):
            self.plant.set_knobs(due)
            for n in due:
                del self._pending[n]

    # ------------------------------------------------------------------ protocol
    def connect(self, timeout: float) -> None:
        """Connect (fails with :class:`Disconnected` while a ``disconnect`` fault is active)."""
        with self._lock:
            self._check_connected()
            self._connected = True

    def close(self) -> None:
        """Disconnect (idempotent)."""
        self._connected = False

    def read_knobs(self) -> Reading:
        """Readbacks (SI): the plant's settings, plus any ``readback_offset``."""
        with self._lock:
            self._check_connected()
            self._advance()
            knobs = self.plant.knobs()
            values = {n: knobs[n] for n in self.knob_names}
            fault = self._active("readback_offset")
            if fault is not None:
                name = fault.knob or self.knob_names[0]
                values[name] += fault.value
            return Reading(values, self._now())

    def read_setpoints(self) -> Reading:
        """The setpoints last accepted (SI)."""
        with self._lock:
            self._check_connected()
            return Reading(dict(self._setpoints), self._now())

    def read_observation(self) -> Reading:
        """A new frame: the plant's screen reading [m], time-stamped now."""
        with self._lock:
            self._check_connected()
            self._advance()
            if self._last_frame is not None and self._active("stale_reading"):
                return self._last_frame
            values = self.plant.observe()
            if self._active("nan_reading"):
                values = {n: math.nan for n in values}
            frame = Reading({n: values[n] for n in self.observation_names}, self._now())
            self._last_frame = frame
            return frame

    def put(self, setpoints: Mapping[str, float]) -> None:
        """Accept new setpoints; they reach the plant after ``settle_delay_s``.

        :raises PutRejected: For unknown knobs, non-finite values or a ``reject_put`` fault.
        """
        with self._lock:
            self._check_connected()
            unknown = sorted(set(setpoints) - set(self.knob_names))
            if unknown:
                raise PutRejected(f"unknown knobs {unknown}; known: {list(self.knob_names)}")
            values = {n: float(v) for n, v in setpoints.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise PutRejected(f"non-finite setpoints {values}")
            self.put_log.append((self._now(), dict(values)))
            if self._active("reject_put"):
                raise PutRejected(f"put of {sorted(values)} rejected (injected)")
            if self._active("ignore_put"):
                return
            lost = self._active("lost_reply") is not None
            self._puts += 1
            self._apply(values)
            if lost:
                raise Disconnected(f"put of {sorted(values)} applied, reply lost (injected)")

    def _apply(self, values: Mapping[str, float]) -> None:
        """New setpoints: reach the plant after ``settle_delay_s``."""
        self._setpoints.update(values)
        if self.settle_delay_s == 0 and not self._active("settle_timeout", consume=False):
            for name in values:  # a new setpoint supersedes one still on its way
                self._pending.pop(name, None)
            self.plant.set_knobs(values)
        else:
            due = self._now() + self.settle_delay_s
            self._pending.update({n: (v, due) for n, v in values.items()})

    def external_put(self, setpoints: Mapping[str, float]) -> None:
        """Another client's write (e.g. an operator's): applied like a put, but not
        counted as this client's (no ``put_log`` entry, no ``after_puts`` progress, no
        fault).

        :raises PutRejected: For unknown knobs or non-finite values.
        """
        with self._lock:
            unknown = sorted(set(setpoints) - set(self.knob_names))
            values = {n: float(v) for n, v in setpoints.items()}
            if unknown or not all(math.isfinite(v) for v in values.values()):
                raise PutRejected(f"invalid external write {dict(setpoints)}")
            self._apply(values)

    def settle(self, names: Sequence[str], timeout: float) -> None:
        """Wait until the named knobs are not busy.

        A ``settle_timeout`` fault counts one per call: the knobs stay busy for the whole
        call.

        :raises SettleTimeout: After ``timeout`` [s] with knobs still busy.
        """
        deadline = time.monotonic() + timeout
        poll = self.config.timing.poll_interval_s
        with self._lock:
            self._check_connected()
            stuck = self._active("settle_timeout") is not None
        while True:
            with self._lock:
                if not stuck:
                    self._advance()
                busy = sorted(n for n in names if n in self._pending)
                if not busy:
                    return
            if time.monotonic() >= deadline:
                raise SettleTimeout(f"knobs {busy} still busy after {timeout} s")
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    def health(self) -> Health:
        """Interlock, beam loss, heartbeat and connection (from the active faults)."""
        with self._lock:
            detail = []
            connected = self._active("disconnect") is None
            if not connected:
                detail.append("channels disconnected")
            interlock = self._active("interlock") is not None
            if interlock:
                detail.append("interlock tripped")
            beam_loss = self._active("beam_loss") is not None
            if beam_loss:
                detail.append("beam loss above threshold")
            hb = self._active("stale_heartbeat")
            age: float | None = float(hb.value) if hb is not None else 0.0
            if hb is not None:
                detail.append(f"heartbeat unchanged for {age} s")
            if self.config.heartbeat.opted_out:
                age = None
            return Health(
                connected=connected,
                interlock=interlock,
                beam_loss=beam_loss,
                heartbeat_age_s=age,
                detail=tuple(detail),
            )

    @property
    def puts_applied(self) -> int:
        """Number of puts accepted so far."""
        return self._puts
