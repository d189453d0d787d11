"""Rollback: the knobs a run moved, back to their initial setpoints, under any fault.

:func:`rollback` (what :meth:`SafetyLayer.rollback <accelrl.deploy.safety.SafetyLayer.rollback>`
runs) repeats, until every knob it may restore is back or it gives up:

1. **Read the setpoints** (one request). While the machine does not answer it waits
   (``timing.poll_interval_s``, doubling up to 0.25 s) and reconnects, for up to
   ``rollback.outage_deadline_s`` [s] without progress; then it gives up.
2. **Judge them** (:class:`~accelrl.deploy.holdings.Holdings`): a knob that holds a value
   this run cannot have left there was written by another client since -- it is left
   where it is, logged and reported, and never written again. A knob this run never put is
   never written at all.
3. **Plan one move** of the knobs still away from their initial setpoints: the next point of
   the straight ramp from the setpoints just read to the initial ones (every knob arrives at
   the same write), then clipped so that it is within ``max_step`` of *every* value the knob
   may hold (a put that raised may have landed, an earlier one may still land) and within
   the hard bounds. When the values a knob may hold are far apart the first move may have to
   go back towards the one read (that pins the knob: no earlier put can land after it).
4. **Write it**: the values are recorded as possibly held before the put, the put is
   verified (settle, setpoints read back, readbacks). A failed write is logged and retried
   from step 1, within the deadline; a write whose readbacks lag (``put_unverified``) has
   applied its setpoints and the ramp goes on (``verified`` is then false).

Health is not checked: the rollback is the way back to known-good settings and goes on
through an interlock or beam loss. Every write attempt is passed to ``on_write`` as it
happens (the controller logs and fsyncs it before the next one goes out).

:class:`RollbackResult` says whether every knob the rollback may restore is back
(``complete``), which knobs it could not restore and every value each may hold
(``not_restored``), which knobs another client wrote (``foreign``, left alone), and why it
stopped (``detail``).

This module needs numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from accelrl.deploy.aborts import AbortReason, SafetyAbort
from accelrl.deploy.holdings import Holdings
from accelrl.deploy.machine import MachineError
from accelrl.deploy.verify import put_and_verify, values_text

if TYPE_CHECKING:
    from accelrl.deploy.safety import SafetyLayer

#: Longest pause [s] between two attempts while waiting out an outage.
MAX_PAUSE_S = 0.25

OnWrite = Callable[[int, Mapping[str, Any]], None]
OnNote = Callable[[Mapping[str, Any]], None]


@dataclass
class RollbackResult:
    """Outcome of a rollback.

    :param complete: Every knob this run moved and no other client wrote since is back at
        its initial setpoint (within tolerance), as read at the end.
    :param writes: Every ramp write attempt: ``setpoints`` (knob -> value), ``attempt``
        (0 for the first try of a move), ``may_hold`` (knob -> the values it may have held
        before), ``ok``, ``error``, ``readbacks``.
    :param verified: Every ramp write's readbacks reached their setpoints.
    :param detail: Why the rollback stopped short, knob by knob ("" when complete and
        nothing was left alone).
    :param final_setpoints: Setpoints read at the end (``None`` if unreadable).
    :param not_restored: Knob -> every value it may hold, for the knobs the rollback should
        have restored and did not.
    :param foreign: Knob -> the value another client wrote (left alone, never written).
    :param waited_s: Time spent waiting out failures [s].
    """

    complete: bool
    writes: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = True
    detail: str = ""
    final_setpoints: dict[str, float] | None = None
    not_restored: dict[str, list[float]] = field(default_factory=dict)
    foreign: dict[str, float] = field(default_factory=dict)
    waited_s: float = 0.0


class _Patience:
    """The outage deadline: how long to keep trying without progress, with a growing pause.

    :param layer: The safety layer (its clock and sleep).
    :param deadline_s: Longest time without progress [s].
    """

    def __init__(self, layer: SafetyLayer, deadline_s: float) -> None:
        self.layer = layer
        self.deadline_s = deadline_s
        self.first_pause = layer.config.timing.poll_interval_s
        self.waited_s = 0.0
        self.progress()

    def progress(self) -> None:
        """Something was restored: the deadline starts again."""
        self.give_up_at = self.layer._monotonic() + self.deadline_s
        self.idle_s = 0.0
        self.pause = self.first_pause

    def left(self) -> float:
        """Seconds [s] until giving up."""
        return max(
            0.0, min(self.give_up_at - self.layer._monotonic(), self.deadline_s - self.idle_s)
        )

    def wait(self) -> bool:
        """Pause before the next attempt; ``False`` (no pause) when the deadline has passed.

        The pauses are counted as well as the clock, so a sleep that returns at once does
        not make the rollback retry without end."""
        left = self.left()
        if left <= 0.0:
            return False
        pause = min(self.pause, left)
        self.layer._wait(pause)
        self.idle_s += pause
        self.waited_s += pause
        self.pause = min(2.0 * self.pause, MAX_PAUSE_S)
        return True


def _reconnect(layer: SafetyLayer, timeout: float) -> None:
    """Ask the machine to reconnect (within ``timeout`` [s]); failures are expected."""
    if timeout <= 0:
        return
    try:
        layer.machine.connect(min(timeout, layer.config.timing.connect_timeout_s))
    except MachineError:
        pass


def _plan(layer: SafetyLayer, names: list[str], target: Mapping[str, float]) -> dict[str, float]:
    """The next move of ``names`` (see the module documentation, step 3)."""
    h = layer.holdings
    assert h is not None
    idx = [layer.names.index(n) for n in names]
    base = np.array([h.may_hold(n)[0] for n in names])  # the value read just now
    goal = np.array([target[n] for n in names])
    steps = layer.steps
    step = steps.max_step[idx]
    n_moves = max(1, int(np.max(np.ceil(np.abs(goal - base) / step - 1e-12))))
    point = base + (goal - base) / n_moves
    least = np.array([h.span(n)[0] for n in names])
    most = np.array([h.span(n)[1] for n in names])
    lo = np.maximum(steps.low[idx], most - step)
    hi = np.minimum(steps.high[idx], least + step)
    point = np.minimum(np.maximum(point, lo), hi)
    return {n: float(v) for n, v in zip(names, point, strict=True)}


def rollback(
    layer: SafetyLayer,
    on_write: OnWrite | None = None,
    on_note: OnNote | None = None,
    outage_deadline_s: float | None = None,
) -> RollbackResult:
    """Roll ``layer``'s machine back to the initial setpoints (see the module documentation).

    :param layer: A started safety layer.
    :param on_write: Called with ``(index, record)`` after every write attempt.
    :param on_note: Called with ``{"event": ...}`` for a knob left alone
        (``"foreign_write"``) and for the start of a wait on the machine (``"waiting"``).
    :param outage_deadline_s: Overrides ``rollback.outage_deadline_s`` [s] (finite, >= 0).
    :raises ValueError: For a negative or non-finite ``outage_deadline_s``.
    """
    h, initial = layer.holdings, layer.initial
    if h is None or initial is None:
        return RollbackResult(True, detail="nothing was started")
    if layer.writes == 0:  # only this layer's own writes are undone (shadow mode: none)
        return RollbackResult(True, detail="nothing was written")
    deadline = layer.config.rollback.outage_deadline_s
    if outage_deadline_s is not None:
        deadline = float(outage_deadline_s)
    if not (math.isfinite(deadline) and deadline >= 0):
        raise ValueError(f"outage_deadline_s must be finite and >= 0 s, got {deadline}")
    result = RollbackResult(False)
    patience = _Patience(layer, deadline)
    notify = on_note or (lambda note: None)
    reported: set[str] = set()
    attempt, last_error, waiting = 0, "", False

    def note_foreign() -> None:
        for name, value in h.foreign.items():
            if name not in reported:
                reported.add(name)
                result.foreign[name] = value
                notify({"event": "foreign_write", "knob": name, "value": value,
                        "detail": f"{name} reads {value!r}, written by another client: left "
                        "alone"})  # fmt: skip

    def failed(err: SafetyAbort) -> bool:
        nonlocal last_error, waiting
        last_error = str(err)
        if not waiting:
            waiting = True
            notify({"event": "waiting", "error": last_error, "deadline_s": deadline})
        if err.reason is AbortReason.disconnected:
            _reconnect(layer, patience.left())
        return patience.wait()

    while True:
        try:
            sp = layer.read_setpoints("rollback: read setpoints")
        except SafetyAbort as err:
            if failed(err):
                continue
            break
        unreadable = set()
        for name in layer.names:
            if h.observe(name, float(sp.values.get(name, math.nan))) == "unreadable":
                unreadable.add(name)
        note_foreign()
        remaining = [n for n in h.own(layer.names) if not _restored(h, n, initial[n])]
        if not remaining:
            break
        ready = [n for n in remaining if n not in unreadable]
        if not ready:
            if failed(SafetyAbort(AbortReason.nonfinite_reading, f"setpoints {dict(sp.values)}")):
                continue
            break
        move = _plan(layer, ready, initial)
        record: dict[str, Any] = {
            "setpoints": move,
            "attempt": attempt,
            "may_hold": {n: list(h.may_hold(n)) for n in move},
        }
        error: SafetyAbort | None = None
        try:
            w, _ = put_and_verify(layer, move, rollback=True)
            record.update(ok=True, readbacks=w.readbacks)
        except SafetyAbort as err:
            error = err
            record.update(ok=False, error=str(err))
        result.writes.append(record)
        if on_write is not None:
            on_write(len(result.writes) - 1, record)
        note_foreign()
        if error is None or error.reason is AbortReason.put_unverified:
            # Applied (when only the readbacks lag, the ramp goes on unverified).
            result.verified = result.verified and error is None
            attempt, waiting = 0, False
            patience.progress()
        elif error.reason is AbortReason.setpoint_changed:
            continue  # another client wrote a knob of this move: it is left alone from now
        else:
            attempt += 1
            if not failed(error):
                break
    result.waited_s = patience.waited_s
    _finish(layer, result, last_error)
    return result


def _finish(layer: SafetyLayer, result: RollbackResult, last_error: str) -> None:
    """Fill in the final setpoints, what was not restored, ``complete`` and ``detail``."""
    h, initial = layer.holdings, layer.initial
    assert h is not None and initial is not None
    try:
        sp = layer.read_setpoints("rollback: read the final setpoints")
        for name in layer.names:
            h.observe(name, float(sp.values.get(name, math.nan)))
        result.final_setpoints = {n: float(sp.values[n]) for n in layer.names}
    except (SafetyAbort, KeyError) as err:
        last_error = last_error or str(err)
    for name, value in h.foreign.items():
        result.foreign[name] = value
    for name in h.own(layer.names):
        if not _restored(h, name, initial[name]):
            result.not_restored[name] = list(h.may_hold(name))
    result.complete = not result.not_restored
    parts = []
    if result.not_restored:
        knobs = "; ".join(
            f"{n} may hold {values_text(v)} (initial {initial[n]!r})"
            for n, v in result.not_restored.items()
        )
        parts.append(f"not restored: {knobs}; last error: {last_error or 'none'}")
    if result.foreign:
        knobs = ", ".join(f"{n} = {v!r}" for n, v in result.foreign.items())
        parts.append(f"left alone (written by another client): {knobs}")
    result.detail = "; ".join(parts)


def _restored(h: Holdings, name: str, initial: float) -> bool:
    """The knob holds one known value, within tolerance of its initial one."""
    return h.known(name) and h.matches(name, h.latest(name), initial)
