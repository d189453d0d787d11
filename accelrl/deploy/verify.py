"""Verified writes: the put, the settle, the setpoints read back and judged against what each
knob may hold, the readbacks awaited (rule 5 of :mod:`accelrl.deploy.safety`).

:func:`put_and_verify` records the values as possibly held *before* the put is sent (a put
that raises may have landed), then verifies. :func:`reconcile` takes a setpoint read into
the layer's :class:`~accelrl.deploy.holdings.Holdings` and judges it: another client's write
(``setpoint_changed``), a put not applied (``put_rejected``), a setpoint that cannot be read
(``nonfinite_reading``).

This module needs numpy only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accelrl.deploy.aborts import AbortReason, SafetyAbort, machine_call
from accelrl.deploy.machine import Health, Reading

if TYPE_CHECKING:
    from accelrl.deploy.safety import SafetyLayer


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


def reconcile(
    layer: SafetyLayer, setpoints: Reading, written: Mapping[str, float], rollback: bool = False
) -> None:
    """Take a setpoint read into the layer's holdings (every knob) and judge it.

    :param setpoints: The setpoints read.
    :param written: The values just put (empty before a put).
    :param rollback: Judge only the knobs written (another client's write elsewhere is
        recorded in the holdings; the rollback leaves that knob alone).
    :raises SafetyAbort: ``setpoint_changed`` if a knob holds a value this run cannot
        have left there (another client wrote it; before a put, or racing it);
        ``put_rejected`` if a written knob holds an earlier value (the put was not
        applied); ``nonfinite_reading`` if a setpoint is missing or not finite.
    """
    holdings = layer._require_started()
    foreign, rejected, unreadable = [], [], []
    for name in layer.names:
        before = holdings.may_hold(name)
        value = float(setpoints.values.get(name, math.nan))
        seen = holdings.observe(name, value)
        if rollback and name not in written:
            continue
        if seen == "foreign":
            foreign.append(
                f"setpoint of {name} reads {value!r}; this run may have left "
                f"{values_text(before)} there: changed by another client"
            )
        elif seen == "unreadable" and (not written or name in written):
            unreadable.append(f"setpoint of {name} reads {value!r}")
        elif name in written and not holdings.matches(name, value, written[name]):
            rejected.append(
                f"setpoint of {name} reads {value!r} after writing {written[name]!r}: the "
                "put was not applied"
            )
    if foreign:
        after = " after the put" if written else ""
        raise SafetyAbort(AbortReason.setpoint_changed, "; ".join(foreign) + after)
    if unreadable:
        reason = AbortReason.put_rejected if written else AbortReason.nonfinite_reading
        raise SafetyAbort(reason, "; ".join(unreadable))
    if rejected:
        raise SafetyAbort(AbortReason.put_rejected, "; ".join(rejected))


def put_and_verify(
    layer: SafetyLayer, changed: dict[str, float], with_health: bool = False, rollback: bool = False
) -> tuple[WriteResult, Health | None]:
    """Record the values as possibly held, put, settle, verify the setpoints and wait
    for the readbacks; with ``with_health``, also the health read together with the
    readbacks that verified the write (machines that read them together; else ``None``:
    not read). The rollback reads no health here (a fault of the protection channels
    must not stop its ramp) and judges only the knobs it wrote (``rollback``)."""
    holdings = layer._require_started()
    timing = layer.config.timing
    start = layer._monotonic()
    # The commanded setting is the last value that may have reached the machine: a put
    # that raises may still have landed.
    holdings.before_put(changed)
    layer.writes += 1
    layer._pre_write = None
    machine_call("put", lambda: layer.machine.put(changed))
    names = list(changed)
    settle_start = time.perf_counter()
    try:
        machine_call("settle", lambda: layer.machine.settle(names, timing.settle_timeout_s))
    finally:
        layer.wait_s += time.perf_counter() - settle_start
    # The setpoints, readbacks and health after settling: one request where the machine
    # reads them together (the readbacks are polled below if they lag).
    state = layer._read_state("read setpoints and knobs", True, True, with_health)
    if state is None:
        sp = machine_call("read setpoints", layer.machine.read_setpoints)
    else:
        sp = state.setpoints or Reading({}, -math.inf)
    reconcile(layer, sp, changed, rollback)
    deadline = start + timing.settle_timeout_s
    first = time.perf_counter()
    health = None if state is None else state.health
    while True:
        attempt = time.perf_counter()
        if state is not None and state.knobs is not None:
            rb, state = state.knobs, None
        elif with_health and health is not None:
            polled = layer._read_state("read knobs and health", True, False, True)
            assert polled is not None
            rb = polled.knobs or Reading({}, -math.inf)
            health = polled.health
        else:
            rb = machine_call("read knobs", layer.machine.read_knobs)
        off = {
            n: float(rb.values.get(n, math.nan))
            for n, v in changed.items()
            if not abs(float(rb.values.get(n, math.nan)) - v) <= layer.limits[n].tolerance
        }
        if not off:
            layer.wait_s += attempt - first  # polling for the readbacks is waiting
            break
        if layer._monotonic() >= deadline:
            raise SafetyAbort(
                AbortReason.put_unverified,
                "readbacks did not reach the setpoints within "
                f"{timing.settle_timeout_s} s: "
                + ", ".join(
                    f"{n} reads {v!r}, set {changed[n]!r} (tolerance {layer.limits[n].tolerance})"
                    for n, v in off.items()
                ),
            )
        layer._poll_pause(timing.poll_interval_s)
    settled = layer._clock()
    layer.last_settled = settled
    result = WriteResult(
        setpoints=dict(changed),
        setpoints_read={n: float(sp.values[n]) for n in changed},
        readbacks={n: float(rb.values[n]) for n in layer.names if n in rb.values},
        settled_at=settled,
        duration_s=layer._monotonic() - start,
    )
    return result, health


def values_text(values: Sequence[float]) -> str:
    """The values a knob may hold, for messages: ``11.0`` or ``one of (10.0, 11.0)``."""
    return repr(values[0]) if len(values) == 1 else f"one of {tuple(values)!r}"
