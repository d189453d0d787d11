"""A machine on which any call may fail, before or after its effect, for the safety layer's
property test: no sleeps, a fake clock, and a record of every setpoint change.

:class:`FaultMachine` implements the machine protocol over plain dicts. Every call draws its
faults from a seeded :class:`random.Random` (:class:`Rates`):

* **outages**: from a call on, every call raises ``Disconnected`` for a while (seconds of
  the fake clock, or a number of calls), without effect;
* **failure after the effect**: the call does what it does (a put lands), then raises
  ``Disconnected`` -- sometimes starting an outage too;
* puts that are **rejected** (``PutRejected``, no effect), **dropped** silently, or that
  **land late** (a few calls later, before any later put: puts to a channel land in order
  and at most once);
* **another client's writes** at the start of any call but a put (the call sees them) and
  right after a put has landed (racing it). The one race no client can detect -- a write
  between the safety layer's last setpoint read and its put -- is not generated;
* interlock and beam-loss trips, readbacks off their setpoints, stale and NaN frames,
  settle timeouts.

Every change of a setpoint is checked as it happens: :attr:`FaultMachine.max_step_ratio` is
the largest ``|new - old| / max_step`` of a put landing, :attr:`FaultMachine.out_of_bounds`
counts values put outside the hard bounds, :attr:`FaultMachine.foreign_overwritten` counts
puts this run sent to a knob another client wrote during the run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deploy_testlib import BEAM, KNOBS

from accelrl.deploy.machine import (
    Disconnected,
    Health,
    PutRejected,
    Reading,
    SettleTimeout,
    State,
)


class FakeClock:
    """Wall and monotonic time [s] that move only when slept on (and a microsecond per
    machine call, so readings are time-stamped in order)."""

    def __init__(self, start: float = 1.0e6) -> None:
        self.t = start

    def time(self) -> float:
        return self.t

    monotonic = time

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, float(seconds))


@dataclass(frozen=True)
class Rates:
    """Probabilities per call (and the lengths of outages).

    :param outage: An outage starts (before the call's effect).
    :param after_effect: The call takes effect, then raises ``Disconnected``.
    :param long_outage: Given an outage, it outlasts every deadline (20 s).
    :param foreign: Another client writes a knob (at the start of a call that is no put).
    :param foreign_after_put: Another client writes a knob the put just wrote.
    :param put_fault: A put is rejected, dropped or lands late (one of the three).
    :param health: The interlock or beam loss trips (one call).
    :param reading: A frame repeats (stale) or reads NaN; a readback is off.
    """

    outage: float = 0.02
    after_effect: float = 0.03
    long_outage: float = 0.2
    foreign: float = 0.01
    foreign_after_put: float = 0.03
    put_fault: float = 0.05
    health: float = 0.01
    reading: float = 0.01


@dataclass
class PutRecord:
    """One put the safety layer sent: ``values``, the run, and what became of it
    (``"landed"``, ``"late"`` (may still land), ``"rejected"``, ``"dropped"``,
    ``"refused"`` (outage, no effect)); ``late`` once it was held back to land later."""

    run: int
    values: dict[str, float]
    fate: str = "landed"
    late: bool = False


@dataclass
class FaultMachine:
    """See the module documentation.

    :param initial: Initial setpoints (SI).
    :param limits: Knob -> ``(low, high, max_step)`` the safety layer enforces.
    :param tolerance: Knob -> tolerance (SI).
    :param rng: The fault draws.
    :param rates: Fault probabilities.
    :param clock: The fake clock.
    """

    initial: Mapping[str, float]
    limits: Mapping[str, tuple[float, float, float]]
    tolerance: Mapping[str, float]
    rng: random.Random
    rates: Rates
    clock: FakeClock
    knob_names: tuple[str, ...] = KNOBS
    observation_names: tuple[str, ...] = BEAM
    setpoints: dict[str, float] = field(init=False)
    puts: list[PutRecord] = field(default_factory=list)
    faults: int = 0
    max_step_ratio: float = 0.0
    out_of_bounds: int = 0
    foreign_overwritten: int = 0

    def __post_init__(self) -> None:
        self.setpoints = dict(self.initial)
        self.run = 0
        self._pending: list[tuple[int, PutRecord]] = []  # (calls left, put) landing late
        self._outage_until = -math.inf
        self._outage_calls = 0
        self._frame: Reading | None = None
        #: Knob -> values another client wrote during the current run.
        self.foreign_in_run: dict[str, list[float]] = {}
        #: Knob -> every value the current run may have left there (its start, its puts).
        self.own_values: dict[str, list[float]] = {}
        self.begin_run()

    # ------------------------------------------------------------------ bookkeeping
    def begin_run(self) -> None:
        """A new run (a new safety layer) starts from where the machine is, once it
        answers again."""
        self._land(all_pending=True)
        self._outage_until, self._outage_calls = -math.inf, 0
        self.run += 1
        self.foreign_in_run = {}
        self.own_values = {n: [v] for n, v in self.setpoints.items()}

    def run_started(self, initial: Mapping[str, float]) -> None:
        """The run read ``initial`` as its starting setpoints: another client's writes it
        started from are not writes during the run."""
        for name, value in initial.items():
            if self.foreign_in_run.get(name, [None])[-1] == value:
                del self.foreign_in_run[name]
            self.own_values[name].append(value)

    def settle_all(self) -> None:
        """Let every late put land (the state after the machine caught up)."""
        self._land(all_pending=True)

    def _apply(self, put: PutRecord) -> None:
        for name, value in put.values.items():
            step = self.limits[name][2]
            self.max_step_ratio = max(self.max_step_ratio, abs(value - self.setpoints[name]) / step)
            self.setpoints[name] = value

    def _land(self, all_pending: bool = False) -> None:
        keep = []
        for left, put in self._pending:
            if all_pending or left <= 1:
                put.fate = "landed"
                self._apply(put)
            else:
                keep.append((left - 1, put))
        self._pending = keep

    def _foreign(self, names: Sequence[str] | None = None) -> None:
        """Another client writes one knob: a value no run of ours may have left there."""
        self._land(all_pending=True)  # a late put lands before it, never over it
        name = self.rng.choice(list(names or self.knob_names))
        low, high, step = self.limits[name]
        tol = self.tolerance[name]
        for _ in range(10):
            value = self.rng.uniform(low, high) if self.rng.random() < 0.9 else high + step
            if all(abs(value - v) > 4 * tol for v in self.own_values[name]):
                break
        else:
            return
        self.faults += 1
        self.setpoints[name] = value
        self.foreign_in_run.setdefault(name, []).append(value)

    def _enter(self, kind: str) -> None:
        """Before a call's effect: time, late puts, outages, another client's write."""
        self.clock.t += 1e-6
        self._land()
        if self._outage_calls > 0 or self.clock.t < self._outage_until:
            self._outage_calls -= 1
            if self.rng.random() < 0.3:
                self.clock.sleep(0.05)  # a call that times out costs time
            raise Disconnected(f"{kind}: no answer (outage)")
        r = self.rates
        if self.rng.random() < r.outage:
            self._start_outage()
            raise Disconnected(f"{kind}: no answer (outage starts)")
        if kind != "put" and self.rng.random() < r.foreign:
            self._foreign()

    def _start_outage(self) -> None:
        self.faults += 1
        if self.rng.random() < self.rates.long_outage:
            self._outage_until = self.clock.t + 20.0
        elif self.rng.random() < 0.5:
            self._outage_until = self.clock.t + self.rng.choice([0.01, 0.3, 1.0, 3.0])
        else:
            self._outage_calls = self.rng.randint(1, 40)

    def _exit(self, kind: str) -> None:
        """After a call's effect: maybe it fails now (and an outage starts)."""
        if self.rng.random() < self.rates.after_effect:
            self.faults += 1
            if self.rng.random() < 0.3:
                self._start_outage()
            raise Disconnected(f"{kind}: took effect, then the connection dropped")

    # ------------------------------------------------------------------ protocol
    def connect(self, timeout: float) -> None:
        self._enter("connect")

    def close(self) -> None:
        pass

    def _knobs(self) -> Reading:
        values = dict(self.setpoints)
        if self.rng.random() < self.rates.reading:
            self.faults += 1
            name = self.rng.choice(self.knob_names)
            values[name] = values[name] + 100 * self.tolerance[name]
        return Reading(values, self.clock.t)

    def read_knobs(self) -> Reading:
        self._enter("read_knobs")
        out = self._knobs()
        self._exit("read_knobs")
        return out

    def read_setpoints(self) -> Reading:
        self._enter("read_setpoints")
        out = Reading(dict(self.setpoints), self.clock.t)
        self._exit("read_setpoints")
        return out

    def read_observation(self) -> Reading:
        self._enter("read_observation")
        r = self.rng.random()
        if self._frame is not None and r < self.rates.reading:
            self.faults += 1
            frame = self._frame  # stale: the same frame again
        elif r < 2 * self.rates.reading:
            self.faults += 1
            frame = Reading(dict.fromkeys(BEAM, math.nan), self.clock.t)
        else:
            x = sum(self.setpoints.values())
            frame = Reading({"mu_x": 1e-4 * math.tanh(x), "sigma_x": 1e-4, "mu_y": 0.0,
                             "sigma_y": 2e-4}, self.clock.t)  # fmt: skip
        self._frame = frame
        self._exit("read_observation")
        return frame

    def _health(self) -> Health:
        trip = self.rng.random() < self.rates.health
        if trip:
            self.faults += 1
        interlock = trip and self.rng.random() < 0.5
        return Health(interlock=interlock, beam_loss=trip and not interlock, heartbeat_age_s=0.1)

    def health(self) -> Health:
        self._enter("health")
        out = self._health()
        self._exit("health")
        return out

    def put(self, setpoints: Mapping[str, float]) -> None:
        values = {n: float(v) for n, v in setpoints.items()}
        put = PutRecord(self.run, values, fate="refused")
        self.puts.append(put)
        for name, value in values.items():
            low, high, _ = self.limits[name]
            if not (math.isfinite(value) and low <= value <= high):
                self.out_of_bounds += 1
            if name in self.foreign_in_run:
                self.foreign_overwritten += 1
        for name, value in values.items():
            self.own_values[name].append(value)
        self._enter("put")
        self._land(all_pending=True)  # earlier puts land first
        r = self.rng.random()
        if r < self.rates.put_fault:
            self.faults += 1
            put.fate = self.rng.choice(["rejected", "dropped", "late"])
            if put.fate == "rejected":
                raise PutRejected("refused by the server")
            if put.fate == "late":
                put.late = True
                self._pending.append((self.rng.randint(1, 4), put))
                if self.rng.random() < 0.5:
                    raise Disconnected("put: sent, no answer")
            return
        put.fate = "landed"
        self._apply(put)
        if self.rng.random() < self.rates.foreign_after_put:
            self._foreign(list(values))
        self._exit("put")

    def settle(self, names: Sequence[str], timeout: float) -> None:
        self._enter("settle")
        if self.rng.random() < self.rates.reading:
            self.faults += 1
            self.clock.sleep(timeout)
            raise SettleTimeout(f"{list(names)} still busy")
        self._exit("settle")


class FaultStateMachine(FaultMachine):
    """:class:`FaultMachine` that also reads readbacks, setpoints and health in one request
    (:class:`~accelrl.deploy.machine.ReadsState`)."""

    def read_state(self, knobs: bool = True, setpoints: bool = True, health: bool = True) -> State:
        self._enter("read_state")
        out = State(
            knobs=self._knobs() if knobs else None,
            setpoints=Reading(dict(self.setpoints), self.clock.t) if setpoints else None,
            health=self._health() if health else None,
        )
        self._exit("read_state")
        return out
