"""The safety layer: every read the controller acts on and every write it makes goes through
:class:`SafetyLayer`.

The layer holds under any sequence of faults, including a failure after a call has taken
effect (a put that landed and then raised): what it knows of each knob is the set of values
the knob *may* hold (:class:`~accelrl.deploy.holdings.Holdings`), and every rule is applied
to the worst case of that set. Rules (all limits in SI units, per knob):

1. **Hard bounds from the machine config.** A setpoint is always within ``[low, high]`` of
   the machine config intersected with the bundle's knob limits -- never wider than either.
   Nothing the policy outputs can change them.
2. **Max change per write.** ``|setpoint - s| <= max_step`` for *every* value ``s`` the knob
   may hold, where ``max_step`` is the machine config's, narrowed by the bundle's largest
   action (delta mode). Clipping is towards the commanded setpoint, so it never leaves the
   hard bounds.
3. **Rollback stays possible.** A setpoint is at most ``ramp_steps_max * max_step`` from the
   initial setting, so the rollback ramp fits in ``ramp_steps_max`` writes.
4. **Start in bounds.** If a knob's initial setpoint or readback is outside the hard bounds,
   nothing is written (abort ``initial_out_of_bounds``).
5. **Verified writes.** The commanded setpoint is the last value that may have reached the
   machine: it is recorded *before* the put is sent. Before a write: health is checked and
   the setpoints read back must be values this run may have left there (abort
   ``setpoint_changed`` otherwise: another client wrote a knob). After the put: the machine
   settles (busy flags; ``SettleTimeout`` -> abort ``settle_timeout``); the *setpoints* read
   back must equal what was written -- a value this run may have left there but not the one
   written is ``put_rejected`` (the put was not applied), any other value is
   ``setpoint_changed`` (the put raced another client's write); the *readbacks* must come
   within ``tolerance`` before the settle timeout (``put_unverified``). Health is checked
   again. On a machine that reads readbacks, setpoints and health in one request
   (:class:`~accelrl.deploy.machine.ReadsState`) these reads are combined, and the
   pre-write check may be the health and setpoints read with the step's
   ``read_knobs(health=True)`` if its answer arrived at most ``SafetyLayer.state_reuse_s``
   (2 ms) before and nothing was put since.
6. **Fresh readings.** Only observations time-stamped after the last verified write (and
   after the previous observation used) are accepted; waiting longer than
   ``timing.reading_timeout_s`` aborts (``stale_reading``). NaN/inf readings abort
   (``nonfinite_reading``).
7. **Abort on** interlock, beam loss, disconnected channels, a heartbeat older than
   ``heartbeat.max_age_s`` (unless the config opts out of the heartbeat), a rejected or
   unverified put, NaN/inf from the policy (``nonfinite_action``) -- raised as
   :class:`SafetyAbort` with an :class:`AbortReason`.
8. **Rollback** (:meth:`SafetyLayer.rollback`, :mod:`accelrl.deploy.rollback`): back to the
   initial setpoints, only on knobs this run moved and no other client wrote since, each
   write within ``max_step`` of every value the knob may hold, waiting out an outage up to
   ``rollback.outage_deadline_s``; what it could not restore is reported knob by knob.

The seams: verified writes are :mod:`accelrl.deploy.verify`, the rollback
:mod:`accelrl.deploy.rollback`, the bookkeeping of possible values
:mod:`accelrl.deploy.holdings`, the limits arithmetic :mod:`accelrl.limits`. What remains here
(~530 lines, most of them these rules and the docstrings) is one class whose reads, proposals
and writes share the layer's state.

This module needs numpy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from accelrl.bundle import Manifest
from accelrl.deploy.aborts import AbortReason, SafetyAbort, machine_call
from accelrl.deploy.config import MachineConfig
from accelrl.deploy.holdings import Holdings
from accelrl.deploy.knob_limits import KnobLimit, effective_limits
from accelrl.deploy.machine import Health, Machine, Reading, State
from accelrl.deploy.rollback import RollbackResult
from accelrl.deploy.rollback import rollback as run_rollback
from accelrl.deploy.verify import WriteResult, put_and_verify, reconcile
from accelrl.limits import STEP_SLACK, StepLimits

__all__ = [
    "AbortReason",
    "Clip",
    "KnobLimit",
    "Proposal",
    "RollbackResult",
    "SafetyAbort",
    "SafetyLayer",
    "WriteResult",
    "effective_limits",
]


@dataclass(frozen=True)
class Clip:
    """One limit that changed a requested setpoint.

    :param knob: Knob name.
    :param rule: ``"max_step"``, ``"low"``, ``"high"`` or ``"rollback_reach"``.
    :param requested: Value before this rule (SI).
    :param applied: Value after it (SI).
    """

    knob: str
    rule: Literal["max_step", "low", "high", "rollback_reach"]
    requested: float
    applied: float


@dataclass(frozen=True)
class Proposal:
    """What the safety layer makes of one policy action (no I/O done yet).

    :param base: Setpoints the action applies to (the commanded ones).
    :param requested: Setpoints the policy asked for (``base + action`` or ``action``).
    :param setpoints: The safe setpoints to write.
    :param clips: The limits that changed ``requested``.
    """

    base: dict[str, float]
    requested: dict[str, float]
    setpoints: dict[str, float]
    clips: tuple[Clip, ...]


class SafetyLayer:
    """Guards a machine (see the module documentation for the rules).

    :param machine: The machine (connected or not; :meth:`start` connects it).
    :param config: Its machine config (hard limits, tolerances, timing, heartbeat, rollback).
    :param bundle_knobs: Knob -> ``(low, high)`` from the bundle (intersected, never widens).
    :param bundle_max_step: Knob -> the policy's largest change per step (narrows
        ``max_step``).
    :param clock: Wall-clock function [s since the epoch], the time base of readings.
    :param sleep: Sleep function [s] used while polling and waiting out an outage.
    :param monotonic: Monotonic clock [s] of every deadline (settle, fresh readings, the
        rollback's outage deadline); tests pass a fake one advanced by ``sleep``.
    """

    def __init__(
        self,
        machine: Machine,
        config: MachineConfig,
        bundle_knobs: Mapping[str, tuple[float, float]] | None = None,
        bundle_max_step: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if tuple(machine.knob_names) != config.knob_names:
            raise ValueError(
                f"machine knobs {tuple(machine.knob_names)} differ from the config's "
                f"{config.knob_names}"
            )
        self.machine = machine
        self.config = config
        self.limits = effective_limits(config, bundle_knobs, bundle_max_step)
        self.names: tuple[str, ...] = config.knob_names
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self.steps = StepLimits(
            [self.limits[n].low for n in self.names],
            [self.limits[n].high for n in self.names],
            [self.limits[n].max_step for n in self.names],
        )
        self._low, self._high, self._step = self.steps.low, self.steps.high, self.steps.max_step
        self._reach = self._step * config.rollback.ramp_steps_max
        #: Setpoints when :meth:`start` ran (the rollback target).
        self.initial: dict[str, float] | None = None
        #: What each knob may hold (set by :meth:`start`).
        self.holdings: Holdings | None = None
        #: Wall-clock time of the last verified write (or of :meth:`start`).
        self.last_settled: float = -math.inf
        self._last_reading_time: float = -math.inf
        #: Number of puts sent (a put that raised counts: it may have landed).
        self.writes = 0
        #: Longest time [s] since the answer of the health and setpoints read with the
        #: step's readbacks that :meth:`write` takes as its pre-write check (machines that
        #: read them together); older ones are read again. At most one read round trip: the
        #: health is then no older than that of a health read followed by a setpoints read.
        self.state_reuse_s = 0.002
        self._pre_write: tuple[float, int, State] | None = None
        #: Seconds spent waiting on the machine: in ``settle`` and in polling for fresh
        #: readings and arrived readbacks (every poll but the successful one) -- the part of
        #: a step that is not the controller's own work.
        self.wait_s = 0.0

    @classmethod
    def for_bundle(
        cls, machine: Machine, config: MachineConfig, manifest: Manifest, **kwargs: Any
    ) -> SafetyLayer:
        """The safety layer of ``machine`` for a bundle: the config's limits intersected with
        the bundle's knob limits and, for delta actions, ``max_step`` narrowed to the
        policy's largest change per step.

        :param kwargs: Forwarded to :class:`SafetyLayer` (``clock``, ``sleep``, ...).
        :raises ValueError: If the bundle's knobs are not the machine's.
        """
        if tuple(manifest.knob_names) != config.knob_names:
            raise ValueError(
                f"bundle knobs {manifest.knob_names} differ from machine {config.name!r} "
                f"knobs {config.knob_names}"
            )
        knobs = {k.name: (k.low, k.high) for k in manifest.knobs}
        step = None
        if manifest.action_mode == "delta":
            step = {
                q.name: max(abs(q.low), abs(q.high))
                for q in manifest.action
                if q.low is not None and q.high is not None
            }
        return cls(machine, config, knobs, step, **kwargs)

    # ------------------------------------------------------------------ internals
    def _wait(self, seconds: float) -> None:
        start = time.perf_counter()
        self._sleep(seconds)
        self.wait_s += time.perf_counter() - start

    def _poll_pause(self, seconds: float) -> None:
        """The pause between two polls: until the machine reports an update (machines with
        ``wait_for_update``, :class:`~accelrl.deploy.machine.WaitsForUpdates`) or
        ``seconds`` [s] passed."""
        wait = getattr(self.machine, "wait_for_update", None)
        if callable(wait):
            wait(seconds)
        else:
            self._sleep(seconds)

    _machine_call = staticmethod(machine_call)

    def _vector(self, values: Mapping[str, float]) -> np.ndarray:
        return np.array([float(values[n]) for n in self.names], np.float64)

    def _dict(self, values: np.ndarray) -> dict[str, float]:
        return dict(zip(self.names, np.asarray(values, np.float64).tolist(), strict=True))

    @property
    def reach(self) -> np.ndarray:
        """Largest distance from the initial settings rollback can undo, per knob (SI)."""
        return self._reach

    @property
    def commanded(self) -> dict[str, float] | None:
        """Per knob, the last value that may have reached the machine (the last put, or the
        last setpoint read when nothing was put since); ``None`` before :meth:`start`."""
        if self.holdings is None:
            return None
        return {n: self.holdings.latest(n) for n in self.names}

    def _require_started(self) -> Holdings:
        if self.holdings is None:
            raise RuntimeError("call SafetyLayer.start() first")
        return self.holdings

    # ------------------------------------------------------------------ health and reads
    def _read_state(self, what: str, knobs: bool, setpoints: bool, health: bool) -> State | None:
        """Readbacks, setpoints and health (those asked for) in one request, where the
        machine reads them together (:class:`~accelrl.deploy.machine.ReadsState`); ``None``
        for other machines (the caller makes the separate calls)."""
        read_state = getattr(self.machine, "read_state", None)
        if not callable(read_state):
            return None
        return machine_call(
            what, lambda: read_state(knobs=knobs, setpoints=setpoints, health=health)
        )

    def read_setpoints(self, what: str = "read setpoints") -> Reading:
        """The machine's setpoints (one request), as read -- not yet judged."""
        state = self._read_state(what, False, True, False)
        if state is None:
            return machine_call(what, self.machine.read_setpoints)
        return state.setpoints or Reading({}, -math.inf)

    def _recent_state(self) -> State | None:
        """The health and setpoints read with the last :meth:`read_knobs` ``(health=True)``,
        if read at most :attr:`state_reuse_s` ago and nothing was put since (then they are
        the pre-write check, as a read now would be); else ``None``. Used once."""
        recent, self._pre_write = self._pre_write, None
        if recent is None:
            return None
        at, writes, state = recent
        if writes != self.writes or self._monotonic() - at > self.state_reuse_s:
            return None
        if state.health is None or state.setpoints is None:
            return None
        return state

    def check_health(self) -> None:
        """Abort on disconnect, interlock, beam loss or a stale heartbeat."""
        self._judge_health(machine_call("health", self.machine.health))

    def _judge_health(self, h: Health | None) -> None:
        """:meth:`check_health` of a health state just read."""
        if h is None:
            raise SafetyAbort(AbortReason.machine_error, "the machine returned no health state")
        detail = "; ".join(h.detail)
        if not h.connected:
            raise SafetyAbort(AbortReason.disconnected, detail or "channels not connected")
        if h.interlock:
            raise SafetyAbort(AbortReason.interlock, detail or "interlock tripped")
        if h.beam_loss:
            raise SafetyAbort(AbortReason.beam_loss, detail or "beam loss above threshold")
        heartbeat = self.config.heartbeat
        age = h.heartbeat_age_s
        if not heartbeat.opted_out and age is not None and not age <= heartbeat.max_age_s:
            raise SafetyAbort(
                AbortReason.stale_heartbeat,
                f"heartbeat unchanged for {age} s (max {heartbeat.max_age_s} s)",
            )

    def start(self) -> dict[str, float]:
        """Connect, check health, and record the initial setpoints (the rollback target).

        :return: The initial setpoints (SI).
        :raises SafetyAbort: If the machine is unhealthy, a value is not finite, or a knob's
            setpoint or readback is outside its hard bounds (nothing is written then).
        """
        timing = self.config.timing
        machine_call("connect", lambda: self.machine.connect(timing.connect_timeout_s))
        self.check_health()
        sp = machine_call("read setpoints", self.machine.read_setpoints)
        rb = machine_call("read knobs", self.machine.read_knobs)
        try:
            sp_v, rb_v = self._vector(sp.values), self._vector(rb.values)
        except KeyError as err:
            raise SafetyAbort(AbortReason.machine_error, f"reading lacks a knob: {err}") from err
        for label, v in (("setpoint", sp_v), ("readback", rb_v)):
            bad = ~np.isfinite(v)
            if bad.any():
                raise SafetyAbort(
                    AbortReason.nonfinite_reading,
                    f"initial {label}s of {[self.names[i] for i in np.flatnonzero(bad)]} "
                    "are not finite",
                )
            outside = (v < self._low) | (v > self._high)
            if outside.any():
                i = int(np.flatnonzero(outside)[0])
                raise SafetyAbort(
                    AbortReason.initial_out_of_bounds,
                    f"initial {label} of {self.names[i]} = {v[i]!r} is outside the hard "
                    f"bounds [{self._low[i]!r}, {self._high[i]!r}]; nothing written",
                )
        self.initial = self._dict(sp_v)
        self.holdings = Holdings(self.initial, {n: self.limits[n].tolerance for n in self.names})
        self.last_settled = self._clock()
        self._last_reading_time = -math.inf
        return dict(self.initial)

    def read_observation(self, names: Sequence[str] | None = None) -> Reading:
        """A fresh observation: newer than the last verified write and the previous one.

        Polls every ``timing.poll_interval_s`` for up to ``timing.reading_timeout_s``.

        :param names: Values that must be present and finite (default: all read).
        :raises SafetyAbort: ``stale_reading`` on timeout, ``nonfinite_reading`` for NaN/inf.
        """
        timing = self.config.timing
        deadline = self._monotonic() + timing.reading_timeout_s
        not_before = max(self.last_settled, self._last_reading_time)
        first = time.perf_counter()
        while True:
            attempt = time.perf_counter()
            reading = machine_call("read observation", self.machine.read_observation)
            if reading.timestamp > not_before:
                self.wait_s += attempt - first  # polling for a fresh frame is waiting
                break
            if self._monotonic() >= deadline:
                raise SafetyAbort(
                    AbortReason.stale_reading,
                    f"no observation newer than {not_before:.3f} within "
                    f"{timing.reading_timeout_s} s (last at {reading.timestamp:.3f})",
                )
            self._poll_pause(timing.poll_interval_s)
        try:
            values = reading.array(list(names) if names is not None else list(reading.values))
        except KeyError as err:
            raise SafetyAbort(AbortReason.machine_error, str(err)) from err
        if not all(math.isfinite(v) for v in values):
            raise SafetyAbort(
                AbortReason.nonfinite_reading, f"observation is not finite: {dict(reading.values)}"
            )
        self._last_reading_time = reading.timestamp
        return reading

    def read_knobs(self, health: bool = False) -> Reading:
        """Readbacks of all knobs (abort ``nonfinite_reading`` on NaN/inf).

        :param health: Also :meth:`check_health` (after the readbacks' checks), in the same
            request where the machine reads them together.
        """
        self._pre_write = None
        state = self._read_state("read knobs and health", True, True, True) if health else None
        if state is not None:
            reading = state.knobs
            if reading is None:
                raise SafetyAbort(AbortReason.machine_error, "the machine returned no readbacks")
        else:
            reading = machine_call("read knobs", self.machine.read_knobs)
        values = reading.values
        try:
            v = [float(values[n]) for n in self.names]
        except KeyError as err:
            raise SafetyAbort(AbortReason.machine_error, str(err)) from err
        if not all(map(math.isfinite, v)):
            raise SafetyAbort(
                AbortReason.nonfinite_reading, f"readbacks not finite: {reading.values}"
            )
        if state is not None:
            self._judge_health(state.health)
            self._pre_write = (self._monotonic(), self.writes, state)
        elif health:
            self.check_health()
        return reading

    # ------------------------------------------------------------------ proposals
    def propose(self, action: Sequence[float] | np.ndarray, mode: str = "delta") -> Proposal:
        """Turn a policy action into safe setpoints (rules 1-3); no machine I/O.

        :param action: The policy's action ``[K]`` in knob order (SI): changes (``"delta"``)
            or settings (``"direct"``).
        :param mode: ``"delta"`` or ``"direct"``.
        :raises SafetyAbort: ``nonfinite_action`` if any component is NaN/inf.
        :raises ValueError: For a wrong size or mode.
        """
        holdings = self._require_started()
        if mode not in ("delta", "direct"):
            raise ValueError(f"mode must be 'delta' or 'direct', got {mode!r}")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (len(self.names),):
            raise ValueError(f"action must have {len(self.names)} values, got {np.shape(action)}")
        if not np.isfinite(a).all():
            bad = ~np.isfinite(a)
            raise SafetyAbort(
                AbortReason.nonfinite_action,
                "policy output is not finite: "
                + ", ".join(f"{self.names[i]}={a[i]!r}" for i in np.flatnonzero(bad)),
            )
        base_l = [holdings.latest(n) for n in self.names]
        base_d = dict(zip(self.names, base_l, strict=True))
        base = np.array(base_l, np.float64)
        if mode == "delta":
            with np.errstate(over="ignore", invalid="ignore"):
                requested = base + a
        else:
            requested = a.copy()
        initial = base if self.initial is None else self._vector(self.initial)
        limited = self.steps.apply(
            requested, base, reach=(initial - self.reach, initial + self.reach)
        )
        value = limited.value
        if not all(holdings.known(n) for n in self.names):  # worst case of what it may hold
            lo, hi = self._box()
            value = np.minimum(np.maximum(value, lo), hi)
        clips = tuple(
            Clip(self.names[i], "rollback_reach" if rule == "reach" else rule, before, after)  # type: ignore[arg-type]
            for i, rule, before, after in limited.changes
        )
        return Proposal(base_d, self._dict(requested), self._dict(value), clips)

    def _box(self) -> tuple[np.ndarray, np.ndarray]:
        """Where one write may put each knob: within ``max_step`` of every value it may
        hold, within the hard bounds."""
        holdings = self._require_started()
        spans = [holdings.span(n) for n in self.names]
        return self.steps.box_of(np.array([s[0] for s in spans]), np.array([s[1] for s in spans]))

    # ------------------------------------------------------------------ writes
    def _check_setpoints(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """Rule check of explicit setpoints (the last line of defence): each within the
        bounds and within ``max_step`` of every value its knob may hold; never a knob
        another client wrote."""
        holdings = self._require_started()
        unknown = sorted(set(setpoints) - set(self.names))
        if unknown:
            raise SafetyAbort(AbortReason.unsafe_setpoint, f"unknown knobs {unknown}")
        out = {n: float(v) for n, v in setpoints.items()}
        foreign = sorted(set(out) & set(holdings.foreign))
        if foreign:
            raise SafetyAbort(
                AbortReason.setpoint_changed,
                f"{foreign} were written by another client; this run does not write them",
            )
        for name, x in out.items():
            lim = self.limits[name]
            least, most = holdings.span(name)
            step = lim.max_step * (1 + STEP_SLACK)
            if not (lim.low <= x <= lim.high and most - step <= x <= least + step):
                raise SafetyAbort(
                    AbortReason.unsafe_setpoint,
                    f"{name} = {x!r} violates [{lim.low}, {lim.high}] or max_step "
                    f"{lim.max_step} from {holdings.may_hold(name)}",
                )
        return out

    def write(self, setpoints: Mapping[str, float]) -> WriteResult | None:
        """Write setpoints with full verification (rule 5).

        Only knobs whose value changes (or whose setpoint is not known) are put; ``None``
        when nothing changes.

        :param setpoints: Knob -> value (SI); must already satisfy rules 1-3 (use
            :meth:`propose`) -- otherwise ``unsafe_setpoint`` aborts before any I/O.
        :raises SafetyAbort: On any rule or machine failure.
        """
        values = self._check_setpoints(setpoints)
        holdings = self._require_started()
        changed = {
            n: v for n, v in values.items() if v != holdings.latest(n) or not holdings.known(n)
        }
        if not changed:
            return None
        state = self._recent_state()
        if state is None:
            state = self._read_state("health and setpoints", False, True, True)
        if state is None:
            self.check_health()
            current = machine_call("read setpoints", self.machine.read_setpoints)
        else:
            self._judge_health(state.health)
            current = state.setpoints or Reading({}, -math.inf)
        reconcile(self, current, {})
        result, health = put_and_verify(self, changed, with_health=True)
        if health is None:
            self.check_health()
        else:
            self._judge_health(health)
        return result

    # ------------------------------------------------------------------ rollback
    def rollback(
        self,
        on_write: Callable[[int, Mapping[str, Any]], None] | None = None,
        on_note: Callable[[Mapping[str, Any]], None] | None = None,
        outage_deadline_s: float | None = None,
    ) -> RollbackResult:
        """Roll back to the initial setpoints (rule 8; :func:`accelrl.deploy.rollback.rollback`):
        nothing happens if this layer has not put (a shadow run never writes, not even here).

        :param on_write: Called with ``(index, record)`` right after every ramp write attempt
            (to log it before the next one goes out): ``setpoints`` (knob -> value), ``attempt``,
            ``may_hold`` (knob -> values it may have held before), ``ok``, ``error``,
            ``readbacks``.
        :param on_note: Called with every other event as it happens (a knob another client
            wrote and that is left alone; an outage being waited out).
        :param outage_deadline_s: Overrides ``rollback.outage_deadline_s`` [s].
        :return: What was restored, what was left and why, and every write.
        """
        return run_rollback(self, on_write, on_note, outage_deadline_s)
