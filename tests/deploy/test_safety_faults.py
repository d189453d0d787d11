"""The safety layer under any sequence of faults: a hypothesis property test.

Each example is one fault sequence on :class:`~fault_machine.FaultMachine` (any call may fail
before or after its effect, outages last from one call to beyond every deadline, puts are
rejected, dropped or land late, another client writes knobs at random points, health trips,
readings go stale or NaN): one or two runs of a fuzzed optimiser through the safety layer,
each ended by a rollback. On every sequence:

* no value is put outside the hard bounds, and no put that lands moves a knob by more than
  ``max_step`` from the value it held (measured on the machine as the put lands);
* no knob another client wrote during a run is written again by that run (its write is
  never undone);
* an abort for ``put_rejected`` means the put had not landed; ``setpoint_changed`` means
  another client did write;
* every rollback write is passed to ``on_write``; the rollback's report is exact: a knob it
  calls restored is at its initial setpoint, a knob it did not restore holds one of the
  values it lists, and a knob it left alone was written by another client.

The figures (sequences, faults per sequence, largest step / max_step, foreign writes undone,
rollback outcomes) are printed at the end of the module (``pytest -s``).
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter

import pytest
from deploy_testlib import KNOBS, LIMITS, machine_config
from fault_machine import FakeClock, FaultMachine, FaultStateMachine, Rates
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelrl.deploy.safety import AbortReason, SafetyAbort, SafetyLayer

#: Sequences per machine kind (two kinds: 10 000 in all); ACCELRL_FUZZ_EXAMPLES overrides it
#: for a quick local run.
DEFAULT_EXAMPLES = 5_000
EXAMPLES = int(os.environ.get("ACCELRL_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
TOLERANCE = {n: 1e-3 if n.startswith("Q") else 1e-7 for n in KNOBS}
#: Operator limits narrower than the task's on two knobs (the bundle-free effective limits).
NARROW = {**LIMITS, "Q1": (-20.0, 35.0, 7.2), "CV": (-1.0e-3, 2.0e-3, 6.1782e-4)}
CONFIGS = {
    (deadline, narrow): machine_config(
        settle_timeout_s=0.01,
        reading_timeout_s=0.01,
        poll_interval_s=0.002,
        ramp_steps_max=8,
        outage_deadline_s=deadline,
        limits=NARROW if narrow else LIMITS,
    )
    for deadline in (0.0, 0.5, 3.0)
    for narrow in (False, True)
}
#: Fault rates per call during a run, and during its rollback (runs get some writes done
#: before a fault; rollbacks are then made to work through more).
CALM = Rates(outage=0.002, after_effect=0.004, foreign=0.002, foreign_after_put=0.01,
             put_fault=0.01, health=0.002, reading=0.002)  # fmt: skip
LEVELS = {
    "calm": (CALM, Rates()),
    "rough": (Rates(outage=0.006, after_effect=0.012, foreign=0.005, foreign_after_put=0.03,
                    put_fault=0.03, health=0.005, reading=0.005),
              Rates(outage=0.06, after_effect=0.1, foreign=0.02, foreign_after_put=0.1,
                    put_fault=0.15, reading=0.03)),
    "hostile": (Rates(outage=0.02, after_effect=0.04, foreign=0.01, foreign_after_put=0.1,
                      put_fault=0.1, health=0.01, reading=0.02),
                Rates(outage=0.15, after_effect=0.25, long_outage=0.1, foreign=0.05,
                      foreign_after_put=0.2, put_fault=0.3, reading=0.05)),
}  # fmt: skip
WILD = (math.nan, math.inf, -math.inf, 1e300, -1e300)

STATS: dict[str, Counter] = {}
FAULTS: dict[str, list[int]] = {}
MAX_RATIO: dict[str, float] = {}


def action(rng: random.Random, direct: bool) -> list[float]:
    """A fuzzed optimiser answer: changes of up to twice the max step, settings a quarter of
    the task's range beyond its bounds, and now and then NaN, inf or 1e300."""
    out = []
    for name in KNOBS:
        low, high, step = LIMITS[name]
        if rng.random() < 0.005:
            out.append(rng.choice(WILD))
        elif direct:
            out.append(rng.uniform(low - (high - low) / 4, high + (high - low) / 4))
        else:
            out.append(rng.uniform(-2 * step, 2 * step))
    return out


def run_sequence(kind: str, seed: int, level: str, steps: int, runs: int, direct: bool,
                 deadline: float, narrow: bool) -> None:  # fmt: skip
    rng = random.Random(seed)
    clock = FakeClock()
    limits = NARROW if narrow else LIMITS
    # The start: within the limits; one knob in 100 drawn from the task's wider range (with
    # narrow limits it may lie outside them: then nothing may be written).
    start = {n: rng.uniform(*(limits if rng.random() < 0.99 else LIMITS)[n][:2]) for n in KNOBS}
    cls = FaultStateMachine if kind == "state" else FaultMachine
    run_rates, rollback_rates = LEVELS[level]
    m = cls(start, limits, TOLERANCE, rng, run_rates, clock)
    config = CONFIGS[deadline, narrow]
    stats = STATS.setdefault(kind, Counter())
    for run in range(runs):
        if run:
            clock.sleep(60.0)  # the next run starts a minute later
            m.begin_run()
        m.rates = run_rates
        layer = SafetyLayer(
            m, config, clock=clock.time, sleep=clock.sleep, monotonic=clock.monotonic
        )
        abort: SafetyAbort | None = None
        started = False
        try:
            m.run_started(layer.start())
            started = True
            for _ in range(steps):
                layer.read_observation()
                layer.read_knobs(health=True)
                proposal = layer.propose(action(rng, direct), "direct" if direct else "delta")
                layer.write(proposal.setpoints)
        except SafetyAbort as err:
            abort = err
        stats[f"abort:{abort.reason.value}" if abort else "run ended"] += 1
        stats["runs that wrote"] += bool([p for p in m.puts if p.run == m.run])
        ours = [p for p in m.puts if p.run == m.run]
        if abort is not None and abort.reason is AbortReason.put_rejected:
            assert ours[-1].fate in ("rejected", "dropped") or ours[-1].late, ours[-1]
        if abort is not None and abort.reason is AbortReason.setpoint_changed:
            assert m.foreign_in_run, abort
        if started:
            m.rates = rollback_rates
            check_rollback(layer, m, stats)
        stats["writes by another client"] += sum(map(len, m.foreign_in_run.values()))
    m.settle_all()
    stats["puts"] += len(m.puts)
    stats["foreign writes undone"] += m.foreign_overwritten
    assert m.out_of_bounds == 0
    assert m.max_step_ratio <= 1 + 1e-9, m.max_step_ratio
    assert m.foreign_overwritten == 0
    FAULTS.setdefault(kind, []).append(m.faults)
    MAX_RATIO[kind] = max(MAX_RATIO.get(kind, 0.0), m.max_step_ratio)


def check_rollback(layer: SafetyLayer, m: FaultMachine, stats: Counter) -> None:
    records: list[dict] = []
    first = len(m.puts)
    result = layer.rollback(on_write=lambda i, r: records.append(dict(r)))
    # Every rollback put was reported as it went out, with its knobs, values and attempt.
    assert [r["setpoints"] for r in records] == [p.values for p in m.puts[first:]]
    assert all({"attempt", "ok", "may_hold"} <= set(r) for r in records)
    m.settle_all()
    moved = {n for p in m.puts if p.run == m.run for n in p.values}
    assert set(result.foreign) <= set(m.foreign_in_run), (result.foreign, m.foreign_in_run)
    assert set(result.not_restored) <= moved
    assert result.complete == (not result.not_restored)
    for name, values in result.not_restored.items():
        if name in m.foreign_in_run:
            continue  # written by another client after the rollback's last read
        assert any(abs(m.setpoints[name] - v) <= TOLERANCE[name] for v in values), (
            name, m.setpoints[name], values)  # fmt: skip
    for name in moved - set(m.foreign_in_run) - set(result.not_restored):
        assert abs(m.setpoints[name] - layer.initial[name]) <= TOLERANCE[name], name
    deadline = layer.config.rollback.outage_deadline_s
    if not moved:
        stats["rollback: nothing moved"] += 1
    elif result.complete:
        stats[f"rollback complete (deadline {deadline} s)"] += 1
    else:
        assert result.detail and all(n in result.detail for n in result.not_restored)
        stats[f"rollback incomplete (deadline {deadline} s)"] += 1
        stats["knobs reported not restored"] += len(result.not_restored)
    stats["rollback writes"] += len(records)
    stats["knobs left to another client"] += len(set(result.foreign) & moved)


def _property(kind: str):
    """The property test on machines of ``kind``: hypothesis draws one seed per sequence
    (one draw keeps its overhead per example low); the seed draws the sequence's shape
    (fault level, steps, runs, action mode, outage deadline, operator limits) and every
    fault. A failure names the seed: ``run_sequence(kind, *shape(seed))`` replays it."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.integers(0, 2**32 - 1))
    def test(seed: int) -> None:
        STATS.setdefault(kind, Counter())["sequences"] += 1
        run_sequence(kind, *shape(seed))

    test.__doc__ = f"Every fault sequence on a machine with {kind} reads keeps the rules."
    return test


def shape(seed: int) -> tuple:
    """``(seed, level, steps, runs, direct, deadline, narrow)`` of a sequence."""
    rng = random.Random(seed ^ 0x5EED)
    level = rng.choice(sorted(LEVELS))
    return (seed, level, rng.randint(1, 8), rng.randint(1, 2), rng.random() < 0.5,
            rng.choice([0.0, 0.5, 3.0]), rng.random() < 0.5)  # fmt: skip


test_any_fault_sequence_separate_reads = _property("separate")
test_any_fault_sequence_combined_reads = _property("state")


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    for kind, stats in STATS.items():
        faults = FAULTS.get(kind, [0])
        print(
            f"\n[{kind} reads] sequences {stats['sequences']}, faults per sequence mean "
            f"{sum(faults) / len(faults):.2f} max {max(faults)}, max step / max_step "
            f"{MAX_RATIO.get(kind, 0.0):.6f}; "
            + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if k != "sequences")
        )


def test_property_test_size() -> None:
    assert 2 * DEFAULT_EXAMPLES >= 10_000
