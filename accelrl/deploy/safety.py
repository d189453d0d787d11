"""The safety layer: every read the controller acts on and every write it makes goes through
:class:`SafetyLayer`.

Rules (all limits in SI units, per knob):

1. **Hard bounds from the machine config.** A setpoint is always within ``[low, high]`` of
   the machine config intersected with the bundle's knob limits -- never wider than either.
   Nothing the policy outputs can change them.
2. **Max change per write.** ``|setpoint - current setpoint| <= max_step``, where
   ``max_step`` is the machine config's, narrowed by the bundle's largest action (delta
   mode). Clipping is towards the current setpoint, so it never leaves the hard bounds.
3. **Rollback stays possible.** A setpoint is at most ``ramp_steps_max * max_step`` from the
   initial setting, so the rollback ramp always fits in ``ramp_steps_max`` writes.
4. **Start in bounds.** If a knob's initial setpoint or readback is outside the hard bounds,
   nothing is written (abort ``initial_out_of_bounds``).
5. **Verified writes.** Before a write: health is checked and the setpoints read back must
   still be the ones last written (abort ``setpoint_changed`` otherwise: another client moved
   a knob). After the put: the machine settles (busy flags; ``SettleTimeout`` -> abort
   ``settle_timeout``), the *setpoints* read back must equal what was written (a put that a
   client library did not report as rejected is caught here: ``put_rejected``), and the
   *readbacks* must come within ``tolerance`` before the settle timeout (``put_unverified``).
   Health is checked again. On a machine that reads readbacks, setpoints and health in one
   request (:class:`~accelrl.deploy.machine.ReadsState`) these reads are combined, and the
   pre-write check may be the health and setpoints read with the step's
   ``read_knobs(health=True)`` if its answer arrived at most ``SafetyLayer.state_reuse_s``
   (2 ms) before and nothing was put since -- no older than the health of a separate health
   read followed by a setpoints read was when the put went out.
6. **Fresh readings.** Only observations time-stamped after the last verified write (and
   after the previous observation used) are accepted; waiting longer than
   ``timing.reading_timeout_s`` aborts (``stale_reading``). NaN/inf readings abort
   (``nonfinite_reading``).
7. **Abort on** interlock, beam loss, disconnected channels, a heartbeat older than
   ``heartbeat.max_age_s``, a rejected or unverified put, NaN/inf from the policy
   (``nonfinite_action``) -- raised as :class:`SafetyAbort` with an :class:`AbortReason`.
8. **Rollback** (:meth:`SafetyLayer.rollback`): from the last written setpoints back to the
   initial ones on a straight ramp, each write at most ``max_step`` per knob, every write
   verified; it continues through the fault that caused the abort (it is the way back to
   known-good settings) and retries a failed write before giving up.

This module needs numpy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from accelrl.bundle import Manifest
from accelrl.deploy.config import MachineConfig
from accelrl.deploy.machine import (
    Disconnected,
    Health,
    Machine,
    MachineError,
    PutRejected,
    Reading,
    SettleTimeout,
    State,
)
from accelrl.limits import StepLimits


class AbortReason(StrEnum):
    """Why a run was aborted."""

    interlock = "interlock"
    beam_loss = "beam_loss"
    disconnected = "disconnected"
    stale_heartbeat = "stale_heartbeat"
    put_rejected = "put_rejected"
    put_unverified = "put_unverified"
    settle_timeout = "settle_timeout"
    setpoint_changed = "setpoint_changed"
    stale_reading = "stale_reading"
    nonfinite_reading = "nonfinite_reading"
    nonfinite_action = "nonfinite_action"
    initial_out_of_bounds = "initial_out_of_bounds"
    unsafe_setpoint = "unsafe_setpoint"
    machine_error = "machine_error"
    operator_abort = "operator_abort"
    internal_error = "internal_error"


class SafetyAbort(RuntimeError):
    """The run must stop and roll back.

    :param reason: The rule that fired.
    :param detail: Human-readable specifics (knob, values, limits).
    """

    def __init__(self, reason: AbortReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class KnobLimit:
    """Effective limits of one knob (SI).

    :param name: Knob name.
    :param low: Hard lower bound (config intersected with the bundle).
    :param high: Hard upper bound.
    :param max_step: Largest change per write.
    :param tolerance: Accepted ``|readback - setpoint|``.
    :param unit: SI unit.
    """

    name: str
    low: float
    high: float
    max_step: float
    tolerance: float
    unit: str = ""


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

    :param base: Setpoints the action applies to (the last written / initial ones).
    :param requested: Setpoints the policy asked for (``base + action`` or ``action``).
    :param setpoints: The safe setpoints to write.
    :param clips: The limits that changed ``requested``.
    """

    base: dict[str, float]
    requested: dict[str, float]
    setpoints: dict[str, float]
    clips: tuple[Clip, ...]


@dataclass(frozen=True)
class WriteResult:
    """A verified write.

    :param setpoints: Knob -> value written (only knobs that changed).
    :param setpoints_read: Setpoints read back after settling.
    :param readbacks: Readbacks that verified the write.
    :param settled_at: Wall-clock time at which the write was verified [s since the epoch].
    :param duration_s: Put to verification [s].
    """

    setpoints: dict[str, float]
    setpoints_read: dict[str, float]
    readbacks: dict[str, float]
    settled_at: float
    duration_s: float


@dataclass
class RollbackResult:
    """Outcome of a rollback.

    :param complete: The setpoints are back at the initial ones (within tolerance).
    :param verified: Every ramp write's readbacks reached their setpoints.
    :param writes: Every ramp write: ``{"setpoints", "ok", "error", "readbacks"}``.
    :param detail: What stopped an incomplete rollback.
    :param final_setpoints: Setpoints read at the end (``None`` if unreadable).
    """

    complete: bool
    writes: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = True
    detail: str = ""
    final_setpoints: dict[str, float] | None = None


def effective_limits(
    config: MachineConfig,
    bundle_knobs: Mapping[str, tuple[float, float]] | None = None,
    bundle_max_step: Mapping[str, float] | None = None,
) -> dict[str, KnobLimit]:
    """Per-knob limits: the machine config's, intersected with the bundle's (never wider).

    :param config: The machine config (owner of the hard limits).
    :param bundle_knobs: Knob -> ``(low, high)`` the policy was trained within.
    :param bundle_max_step: Knob -> largest change the policy can ask for per step.
    :raises ValueError: If a bundle names a knob the machine lacks, or the intersection of
        a knob's limits is empty.
    """
    bundle_knobs = dict(bundle_knobs or {})
    bundle_max_step = dict(bundle_max_step or {})
    unknown = sorted((set(bundle_knobs) | set(bundle_max_step)) - set(config.knob_names))
    if unknown:
        raise ValueError(f"bundle knobs {unknown} are not knobs of machine {config.name!r}")
    out = {}
    for k in config.knobs:
        low, high = k.low, k.high
        if k.name in bundle_knobs:
            b_low, b_high = bundle_knobs[k.name]
            low, high = max(low, float(b_low)), min(high, float(b_high))
        if not low < high:
            raise ValueError(
                f"knob {k.name!r}: machine limits [{k.low}, {k.high}] and bundle limits "
                f"{bundle_knobs.get(k.name)} do not overlap"
            )
        step = k.max_step
        if k.name in bundle_max_step and bundle_max_step[k.name] > 0:
            step = min(step, float(bundle_max_step[k.name]))
        out[k.name] = KnobLimit(k.name, low, high, step, k.tolerance, k.unit)
    return out


class SafetyLayer:
    """Guards a machine (see the module documentation for the rules).

    :param machine: The machine (connected or not; :meth:`start` connects it).
    :param config: Its machine config (hard limits, tolerances, timing, heartbeat, rollback).
    :param bundle_knobs: Knob -> ``(low, high)`` from the bundle (intersected, never widens).
    :param bundle_max_step: Knob -> the policy's largest change per step (narrows
        ``max_step``).
    :param clock: Wall-clock function [s since the epoch], the time base of readings.
    :param sleep: Sleep function [s] used while polling.
    """

    def __init__(
        self,
        machine: Machine,
        config: MachineConfig,
        bundle_knobs: Mapping[str, tuple[float, float]] | None = None,
        bundle_max_step: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
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
        self.steps = StepLimits(
            [self.limits[n].low for n in self.names],
            [self.limits[n].high for n in self.names],
            [self.limits[n].max_step for n in self.names],
        )
        self._low, self._high, self._step = self.steps.low, self.steps.high, self.steps.max_step
        self._tol = np.array([self.limits[n].tolerance for n in self.names])
        #: Setpoints when :meth:`start` ran (the rollback target).
        self.initial: dict[str, float] | None = None
        #: Setpoints last written and verified (or the initial ones).
        self.commanded: dict[str, float] | None = None
        #: Wall-clock time of the last verified write (or of :meth:`start`).
        self.last_settled: float = -math.inf
        self._last_reading_time: float = -math.inf
        #: Number of puts made.
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

        :param kwargs: Forwarded to :class:`SafetyLayer` (``clock``, ``sleep``).
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

    def _machine_call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a machine call, turning machine errors into :class:`SafetyAbort`."""
        try:
            return fn()
        except Disconnected as err:
            raise SafetyAbort(AbortReason.disconnected, f"{what}: {err}") from err
        except PutRejected as err:
            raise SafetyAbort(AbortReason.put_rejected, f"{what}: {err}") from err
        except SettleTimeout as err:
            raise SafetyAbort(AbortReason.settle_timeout, f"{what}: {err}") from err
        except MachineError as err:
            raise SafetyAbort(
                AbortReason.machine_error, f"{what}: {type(err).__name__}: {err}"
            ) from err

    def _vector(self, values: Mapping[str, float]) -> np.ndarray:
        return np.array([float(values[n]) for n in self.names], np.float64)

    def _dict(self, values: np.ndarray) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, values, strict=True)}

    @property
    def reach(self) -> np.ndarray:
        """Largest distance from the initial settings rollback can undo, per knob (SI)."""
        return self._step * self.config.rollback.ramp_steps_max

    # ------------------------------------------------------------------ health and reads
    def _read_state(self, what: str, knobs: bool, setpoints: bool, health: bool) -> State | None:
        """Readbacks, setpoints and health (those asked for) in one request, where the
        machine reads them together (:class:`~accelrl.deploy.machine.ReadsState`); ``None``
        for other machines (the caller makes the separate calls)."""
        read_state = getattr(self.machine, "read_state", None)
        if not callable(read_state):
            return None
        return self._machine_call(
            what, lambda: read_state(knobs=knobs, setpoints=setpoints, health=health)
        )

    def _recent_state(self) -> State | None:
        """The health and setpoints read with the last :meth:`read_knobs` ``(health=True)``,
        if read at most :attr:`state_reuse_s` ago and nothing was put since (then they are
        the pre-write check, as a read now would be); else ``None``. Used once."""
        recent, self._pre_write = self._pre_write, None
        if recent is None:
            return None
        at, writes, state = recent
        if writes != self.writes or time.monotonic() - at > self.state_reuse_s:
            return None
        if state.health is None or state.setpoints is None:
            return None
        return state

    def check_health(self) -> None:
        """Abort on disconnect, interlock, beam loss or a stale heartbeat."""
        self._judge_health(self._machine_call("health", self.machine.health))

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
        max_age = self.config.heartbeat.max_age_s
        if h.heartbeat_age_s is not None and not h.heartbeat_age_s <= max_age:
            raise SafetyAbort(
                AbortReason.stale_heartbeat,
                f"heartbeat unchanged for {h.heartbeat_age_s} s (max {max_age} s)",
            )

    def start(self) -> dict[str, float]:
        """Connect, check health, and record the initial setpoints (the rollback target).

        :return: The initial setpoints (SI).
        :raises SafetyAbort: If the machine is unhealthy, a value is not finite, or a knob's
            setpoint or readback is outside its hard bounds (nothing is written then).
        """
        timing = self.config.timing
        self._machine_call("connect", lambda: self.machine.connect(timing.connect_timeout_s))
        self.check_health()
        sp = self._machine_call("read setpoints", self.machine.read_setpoints)
        rb = self._machine_call("read knobs", self.machine.read_knobs)
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
        self.commanded = dict(self.initial)
        self.last_settled = self._clock()
        self._last_reading_time = -math.inf
        return dict(self.initial)

    def _require_started(self) -> dict[str, float]:
        if self.commanded is None:
            raise RuntimeError("call SafetyLayer.start() first")
        return self.commanded

    def read_observation(self, names: Sequence[str] | None = None) -> Reading:
        """A fresh observation: newer than the last verified write and the previous one.

        Polls every ``timing.poll_interval_s`` for up to ``timing.reading_timeout_s``.

        :param names: Values that must be present and finite (default: all read).
        :raises SafetyAbort: ``stale_reading`` on timeout, ``nonfinite_reading`` for NaN/inf.
        """
        timing = self.config.timing
        deadline = time.monotonic() + timing.reading_timeout_s
        not_before = max(self.last_settled, self._last_reading_time)
        first = time.perf_counter()
        while True:
            attempt = time.perf_counter()
            reading = self._machine_call("read observation", self.machine.read_observation)
            if reading.timestamp > not_before:
                self.wait_s += attempt - first  # polling for a fresh frame is waiting
                break
            if time.monotonic() >= deadline:
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
            reading = self._machine_call("read knobs", self.machine.read_knobs)
        try:
            v = self._vector(reading.values)
        except KeyError as err:
            raise SafetyAbort(AbortReason.machine_error, str(err)) from err
        if not np.all(np.isfinite(v)):
            raise SafetyAbort(
                AbortReason.nonfinite_reading, f"readbacks not finite: {reading.values}"
            )
        if state is not None:
            self._judge_health(state.health)
            self._pre_write = (time.monotonic(), self.writes, state)
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
        base_d = self._require_started()
        if mode not in ("delta", "direct"):
            raise ValueError(f"mode must be 'delta' or 'direct', got {mode!r}")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (len(self.names),):
            raise ValueError(f"action must have {len(self.names)} values, got {np.shape(action)}")
        bad = ~np.isfinite(a)
        if bad.any():
            raise SafetyAbort(
                AbortReason.nonfinite_action,
                "policy output is not finite: "
                + ", ".join(f"{self.names[i]}={a[i]!r}" for i in np.flatnonzero(bad)),
            )
        base = self._vector(base_d)
        with np.errstate(over="ignore", invalid="ignore"):
            requested = base + a if mode == "delta" else a.copy()
        initial = self._vector(self.initial or base_d)
        limited = self.steps.apply(
            requested, base, reach=(initial - self.reach, initial + self.reach)
        )
        clips = tuple(
            Clip(self.names[i], "rollback_reach" if rule == "reach" else rule, before, after)  # type: ignore[arg-type]
            for i, rule, before, after in limited.changes
        )
        return Proposal(base_d.copy(), self._dict(requested), self._dict(limited.value), clips)

    # ------------------------------------------------------------------ writes
    def _check_setpoints(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """Rule check of explicit setpoints (the last line of defence)."""
        base = self._require_started()
        unknown = sorted(set(setpoints) - set(self.names))
        if unknown:
            raise SafetyAbort(AbortReason.unsafe_setpoint, f"unknown knobs {unknown}")
        out = {n: float(v) for n, v in setpoints.items()}
        x = np.array([out.get(n, base[n]) for n in self.names])
        ok = self.steps.allows(x, self._vector(base))
        for i in np.flatnonzero(~ok):
            name, lim = self.names[i], self.limits[self.names[i]]
            raise SafetyAbort(
                AbortReason.unsafe_setpoint,
                f"{name} = {x[i]!r} violates [{lim.low}, {lim.high}] or max_step "
                f"{lim.max_step} from {base[name]!r}",
            )
        return out

    def write(self, setpoints: Mapping[str, float]) -> WriteResult | None:
        """Write setpoints with full verification (rule 5).

        Only knobs whose value changes are put; ``None`` when nothing changes.

        :param setpoints: Knob -> value (SI); must already satisfy rules 1-3 (use
            :meth:`propose`) -- otherwise ``unsafe_setpoint`` aborts before any I/O.
        :raises SafetyAbort: On any rule or machine failure.
        """
        values = self._check_setpoints(setpoints)
        base = self._require_started()
        changed = {n: v for n, v in values.items() if v != base[n]}
        if not changed:
            return None
        state = self._recent_state()
        if state is None:
            state = self._read_state("health and setpoints", False, True, True)
        if state is None:
            self.check_health()
            current = self._machine_call("read setpoints", self.machine.read_setpoints)
        else:
            self._judge_health(state.health)
            current = state.setpoints or Reading({}, -math.inf)
        for name in self.names:
            have = float(current.values.get(name, math.nan))
            if not abs(have - base[name]) <= self.limits[name].tolerance:
                raise SafetyAbort(
                    AbortReason.setpoint_changed,
                    f"setpoint of {name} reads {have!r}, last written {base[name]!r}: "
                    "changed by another client",
                )
        result, health = self._put_and_verify(changed, with_health=True)
        if health is None:
            self.check_health()
        else:
            self._judge_health(health)
        return result

    def _put_and_verify(
        self, changed: dict[str, float], with_health: bool = False
    ) -> tuple[WriteResult, Health | None]:
        """Put, settle, verify the setpoints and wait for the readbacks; with ``with_health``, also
        the health read together with the readbacks that verified the write (machines that
        read them together; else ``None``: not read). The rollback reads no health here (a
        fault of the protection channels must not stop its ramp)."""
        timing = self.config.timing
        start = time.monotonic()
        self._machine_call("put", lambda: self.machine.put(changed))
        self.writes += 1
        names = list(changed)
        settle_start = time.perf_counter()
        try:
            self._machine_call(
                "settle", lambda: self.machine.settle(names, timing.settle_timeout_s)
            )
        finally:
            self.wait_s += time.perf_counter() - settle_start
        # The setpoints, readbacks and health after settling: one request where the machine
        # reads them together (the readbacks are polled below if they lag).
        state = self._read_state("read setpoints and knobs", True, True, with_health)
        if state is None:
            sp = self._machine_call("read setpoints", self.machine.read_setpoints)
        else:
            sp = state.setpoints or Reading({}, -math.inf)
        for name, value in changed.items():
            have = float(sp.values.get(name, math.nan))
            if not abs(have - value) <= self.limits[name].tolerance:
                raise SafetyAbort(
                    AbortReason.put_rejected,
                    f"setpoint of {name} reads {have!r} after writing {value!r}: the put was "
                    "not applied",
                )
        # From here the machine holds the new setpoints: they are the base of the next step.
        assert self.commanded is not None
        self.commanded.update(changed)
        deadline = start + timing.settle_timeout_s
        first = time.perf_counter()
        health = None if state is None else state.health
        while True:
            attempt = time.perf_counter()
            if state is not None and state.knobs is not None:
                rb, state = state.knobs, None
            elif with_health and health is not None:
                polled = self._read_state("read knobs and health", True, False, True)
                assert polled is not None
                rb = polled.knobs or Reading({}, -math.inf)
                health = polled.health
            else:
                rb = self._machine_call("read knobs", self.machine.read_knobs)
            off = {
                n: float(rb.values.get(n, math.nan))
                for n, v in changed.items()
                if not abs(float(rb.values.get(n, math.nan)) - v) <= self.limits[n].tolerance
            }
            if not off:
                self.wait_s += attempt - first  # polling for the readbacks is waiting
                break
            if time.monotonic() >= deadline:
                raise SafetyAbort(
                    AbortReason.put_unverified,
                    "readbacks did not reach the setpoints within "
                    f"{timing.settle_timeout_s} s: "
                    + ", ".join(
                        f"{n} reads {v!r}, set {changed[n]!r} (tolerance "
                        f"{self.limits[n].tolerance})"
                        for n, v in off.items()
                    ),
                )
            self._poll_pause(timing.poll_interval_s)
        settled = self._clock()
        self.last_settled = settled
        result = WriteResult(
            setpoints=dict(changed),
            setpoints_read={n: float(sp.values[n]) for n in changed},
            readbacks={n: float(rb.values[n]) for n in self.names if n in rb.values},
            settled_at=settled,
            duration_s=time.monotonic() - start,
        )
        return result, health

    # ------------------------------------------------------------------ rollback
    def rollback(
        self,
        retries: int = 2,
        on_write: Callable[[int, Mapping[str, Any]], None] | None = None,
    ) -> RollbackResult:
        """Ramp from the last written setpoints back to the initial ones (rule 8); nothing
        happens if this layer has not written (a shadow run never writes, not even here).

        Each ramp write changes every knob by at most its ``max_step`` and is verified;
        health problems do not stop the ramp. A write that fails is retried ``retries``
        times (after ``timing.poll_interval_s``); if it still fails the ramp stops there
        (the machine is left where it is, never jumped).

        :param retries: Attempts of a failed ramp write after the first.
        :param on_write: Called with ``(index, record)`` right after every ramp write
            attempt (e.g. to log it before the next one goes out).
        :return: Whether the initial setpoints were restored, with every write.
        """
        if self.initial is None or self.commanded is None:
            return RollbackResult(True, detail="nothing was started")
        if self.writes == 0:  # only this layer's own writes are undone (shadow mode: none)
            return RollbackResult(True, detail="nothing was written", final_setpoints=None)
        target = self._vector(self.initial)
        current = self._vector(self.commanded)
        # Start from the machine's own setpoints where they are readable and sane (a put
        # may have been applied without being verified); else from the last written ones.
        try:
            sp = self.machine.read_setpoints()
            read = np.array([float(sp.values.get(n, math.nan)) for n in self.names])
            sane = np.isfinite(read) & (read >= self._low) & (read <= self._high)
            current = np.where(sane, read, current)
        except MachineError:
            pass
        self.commanded = self._dict(current)
        ramp = self.steps.ramp(target, current)
        n = len(ramp)
        result = RollbackResult(False)
        for j, planned in enumerate(ramp, start=1):
            # Never more than max_step from what was last written, never outside the bounds.
            base = self._vector(self.commanded)
            point = self.steps.move(planned, base)
            changed = {
                name: float(v) for name, v, b in zip(self.names, point, base, strict=True) if v != b
            }
            if not changed:
                continue
            for attempt in range(retries + 1):
                record: dict[str, Any] = {"setpoints": changed, "attempt": attempt}
                try:
                    w, _ = self._put_and_verify(changed)
                    record.update(ok=True, readbacks=w.readbacks)
                    result.writes.append(record)
                    if on_write is not None:
                        on_write(len(result.writes) - 1, record)
                    break
                except SafetyAbort as err:
                    record.update(ok=False, error=str(err))
                    result.writes.append(record)
                    if on_write is not None:
                        on_write(len(result.writes) - 1, record)
                    if err.reason is AbortReason.put_unverified:
                        # The setpoints were applied; only the readbacks lag: go on.
                        result.verified = False
                        break
                    self._wait(self.config.timing.poll_interval_s)
            else:
                result.detail = (
                    f"ramp write {j} of {n} failed {retries + 1} times: {record['error']}"
                )
                break
        try:
            sp = self.machine.read_setpoints()
            result.final_setpoints = {n: float(sp.values[n]) for n in self.names}
        except (MachineError, KeyError) as err:
            result.detail = result.detail or f"cannot read the setpoints back: {err}"
            return result
        result.complete = all(
            abs(result.final_setpoints[n] - self.initial[n]) <= self.limits[n].tolerance
            for n in self.names
        )
        if not result.complete and not result.detail:
            result.detail = f"setpoints {result.final_setpoints} differ from {self.initial}"
        return result
