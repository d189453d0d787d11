"""The safety layer: limits, proposals, verified writes, fresh readings, rollback, and a
property test over fuzzed policy outputs, readbacks, put failures and initial settings."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
from deploy_testlib import BUNDLE, KNOBS, LIMITS, LinearMachine, machine_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelrl.bundle import read_manifest
from accelrl.deploy.machine import PutRejected, Reading
from accelrl.deploy.safety import AbortReason, SafetyAbort, SafetyLayer, effective_limits

START = {"Q1": 10.0, "Q2": -10.0, "CV": 0.0, "Q3": 10.0, "CH": 0.0}


def layer(machine=None, **config) -> SafetyLayer:
    machine = machine or LinearMachine()
    return SafetyLayer(machine, machine_config(**config), sleep=lambda s: None)


# ---------------------------------------------------------------------- limits
def test_limits_are_the_intersection_never_wider() -> None:
    config = machine_config(limits={**LIMITS, "Q1": (-30.0, 80.0, 9.0)})
    lim = effective_limits(config, {"Q1": (-72.0, 72.0), "CV": (-1e-3, 1e-3)}, {"Q1": 7.2})
    assert (lim["Q1"].low, lim["Q1"].high, lim["Q1"].max_step) == (-30.0, 72.0, 7.2)
    assert (lim["CV"].low, lim["CV"].high) == (-1e-3, 1e-3)  # the bundle is narrower
    # A bundle asking for more than the machine allows changes nothing.
    wide = effective_limits(config, {"Q2": (-1e6, 1e6)}, {"Q2": 1e6})
    assert (wide["Q2"].low, wide["Q2"].high, wide["Q2"].max_step) == (-72.0, 72.0, 7.2)
    with pytest.raises(ValueError, match="do not overlap"):
        effective_limits(config, {"Q1": (85.0, 90.0)})
    with pytest.raises(ValueError, match="not knobs of machine"):
        effective_limits(config, {"Q9": (0.0, 1.0)})


def test_for_bundle_uses_the_bundle_limits_and_policy_step() -> None:
    manifest = read_manifest(BUNDLE)
    config = machine_config(limits={**LIMITS, "Q3": (-100.0, 100.0, 20.0)})
    safety = SafetyLayer.for_bundle(LinearMachine(), config, manifest)
    assert (safety.limits["Q3"].low, safety.limits["Q3"].high) == (-72.0, 72.0)
    assert safety.limits["Q3"].max_step == pytest.approx(7.2)


# ---------------------------------------------------------------------- proposals
def test_propose_clips_to_max_step_and_bounds() -> None:
    s = layer(limits={**LIMITS, "Q1": (-72.0, 12.0, 7.2)})
    s.start()
    p = s.propose([100.0, -3.0, 1.0, 0.0, -1e-4])
    assert p.setpoints["Q1"] == 12.0  # max step gives 17.2, the bound 12
    assert p.setpoints["Q2"] == -13.0
    assert p.setpoints["CV"] == pytest.approx(6.1782e-4)
    assert p.setpoints["Q3"] == 10.0 and p.setpoints["CH"] == -1e-4
    rules = {(c.knob, c.rule) for c in p.clips}
    assert rules == {("Q1", "max_step"), ("Q1", "high"), ("CV", "max_step")}
    direct = s.propose([0.0, 0.0, 0.0, 0.0, 0.0], mode="direct")
    assert direct.setpoints["Q1"] == pytest.approx(10.0 - 7.2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_policy_output_aborts(bad: float) -> None:
    s = layer()
    s.start()
    with pytest.raises(SafetyAbort) as info:
        s.propose([0.0, bad, 0.0, 0.0, 0.0])
    assert info.value.reason is AbortReason.nonfinite_action and "Q2" in info.value.detail


def test_rollback_reach_keeps_rollback_within_its_ramp() -> None:
    s = layer(ramp_steps_max=2)
    s.start()
    for _ in range(4):
        s.write(s.propose([7.2, 0, 0, 0, 0]).setpoints)
    assert s.commanded["Q1"] == pytest.approx(10.0 + 2 * 7.2)
    assert s.propose([7.2, 0, 0, 0, 0]).clips[-1].rule == "rollback_reach"


def test_unsafe_explicit_setpoints_abort_before_any_put() -> None:
    m = LinearMachine()
    s = layer(m)
    s.start()
    for bad in ({"Q1": 80.0}, {"Q1": 10.0 + 7.3}, {"Q1": math.nan}, {"QX": 1.0}):
        with pytest.raises(SafetyAbort) as info:
            s.write(bad)
        assert info.value.reason is AbortReason.unsafe_setpoint
    assert m.puts == []


# ---------------------------------------------------------------------- start and writes
def test_initial_setting_out_of_bounds_writes_nothing() -> None:
    m = LinearMachine(initial={**START, "CH": 0.01})
    with pytest.raises(SafetyAbort) as info:
        layer(m).start()
    assert info.value.reason is AbortReason.initial_out_of_bounds and "CH" in info.value.detail
    assert m.puts == []


def test_verified_write_and_fresh_reading() -> None:
    m = LinearMachine()
    s = layer(m)
    s.start()
    result = s.write(s.propose([1.0, 0, 0, 0, 0]).setpoints)
    assert result.setpoints == {"Q1": 11.0} and result.readbacks["Q1"] == 11.0
    assert s.commanded["Q1"] == 11.0 and m.puts[-1][1] == {"Q1": 11.0}
    assert s.read_observation().timestamp > result.settled_at
    assert s.write(dict(s.commanded)) is None  # nothing changes: no put


def test_stale_reading_aborts() -> None:
    m = LinearMachine()
    frozen = Reading({"mu_x": 0.0, "sigma_x": 1e-4, "mu_y": 0.0, "sigma_y": 1e-4}, 1.0)
    s = layer(m, reading_timeout_s=0.02)
    s.start()
    m.read_observation = lambda: frozen  # a frame from before the run
    with pytest.raises(SafetyAbort) as info:
        s.read_observation()
    assert info.value.reason is AbortReason.stale_reading


def test_silently_dropped_put_is_caught_by_readback() -> None:
    m = LinearMachine(put_hook=lambda sp: False)  # the client reports success; nothing moves
    s = layer(m)
    s.start()
    with pytest.raises(SafetyAbort) as info:
        s.write({"Q1": 12.0})
    assert info.value.reason is AbortReason.put_rejected and "Q1" in info.value.detail


def test_readback_that_never_arrives_is_unverified() -> None:
    m = LinearMachine(readback=lambda n, v: v + (0.5 if n == "Q2" and v != -10.0 else 0.0))
    s = layer(m, settle_timeout_s=0.02)
    s.start()
    with pytest.raises(SafetyAbort) as info:
        s.write({"Q2": -11.0})
    assert info.value.reason is AbortReason.put_unverified and "Q2 reads" in info.value.detail


def test_setpoint_moved_by_another_client_aborts() -> None:
    m = LinearMachine()
    s = layer(m)
    s.start()
    m.setpoints["Q3"] = 20.0
    with pytest.raises(SafetyAbort) as info:
        s.write({"Q1": 11.0})
    assert info.value.reason is AbortReason.setpoint_changed
    assert m.puts == []


def test_health_aborts() -> None:
    m = LinearMachine()
    s = layer(m)
    s.start()
    m.interlock = True
    with pytest.raises(SafetyAbort, match="interlock"):
        s.write({"Q1": 11.0})
    m.interlock, m.connected = False, False
    with pytest.raises(SafetyAbort) as info:
        s.check_health()
    assert info.value.reason is AbortReason.disconnected


def test_rollback_ramps_at_the_rate_limit_and_retries() -> None:
    failures = iter([True, False, False])  # the second ramp write is rejected once

    def hook(sp: Mapping[str, float]) -> None:
        if len(m.puts) > 6 and next(failures, False):
            raise PutRejected("busy")

    m = LinearMachine(put_hook=hook)
    s = layer(m)
    s.start()
    for _ in range(5):
        s.write(s.propose([-7.2, 7.2, 6e-4, 0, 0]).setpoints)
    result = s.rollback()
    assert result.complete and result.verified
    assert m.setpoints == START
    ramp = m.puts[5:]
    assert len([w for w in result.writes if w["ok"]]) == 5
    assert any(not w["ok"] for w in result.writes)
    for before, put in ramp:
        for n, v in put.items():
            assert abs(v - before[n]) <= LIMITS[n][2] * (1 + 1e-12)


# ---------------------------------------------------------------------- property test
STEPS_PER_EXAMPLE = 60
EXAMPLES = 180  # 180 x 60 = 10 800 fuzzed steps

finite = st.one_of(
    st.floats(-20.0, 20.0),
    st.floats(-1e-3, 1e-3),
    st.sampled_from([0.0, 1e300, -1e300, 1e-300, 7.2, -7.2, 6.1782e-4, -6.1782e-4]),
)
wild = st.one_of(
    finite,
    finite,
    finite,
    finite,
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
action = st.one_of(
    st.lists(finite, min_size=5, max_size=5),
    st.lists(finite, min_size=5, max_size=5),
    st.lists(finite, min_size=5, max_size=5),
    st.lists(wild, min_size=5, max_size=5),
)


#: Initial setting of a knob: a position in its limits (0..1), and whether it is put outside
#: them instead (1 in 25 per knob).
initial_knob = st.tuples(st.floats(0.0, 1.0), st.sampled_from([False] * 24 + [True]))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    initial=st.fixed_dictionaries({n: initial_knob for n in KNOBS}),
    actions=st.lists(action, min_size=STEPS_PER_EXAMPLE, max_size=STEPS_PER_EXAMPLE),
    faults=st.lists(st.sampled_from(["ok"] * 12 + ["drop", "reject", "offset", "nan_rb"]),
                    min_size=STEPS_PER_EXAMPLE, max_size=STEPS_PER_EXAMPLE),
    direct=st.booleans(),
    bounds_seed=st.integers(0, 3),
)  # fmt: skip
def test_no_write_outside_bounds_or_max_step(initial, actions, faults, direct, bounds_seed):
    """Whatever the policy outputs, the readbacks and the put failures, every value put is
    within the hard bounds and within max_step (+ tolerance) of the machine's setpoint."""
    limits = dict(LIMITS)
    if bounds_seed:  # narrower operator limits on some knobs
        rng = np.random.default_rng(bounds_seed)
        for n in ("Q1", "CV"):
            low, high, step = limits[n]
            a, b = sorted(rng.uniform(low, high, 2))
            limits[n] = (a, b + 1e-6 * (high - low), step)
    config = machine_config(limits=limits, settle_timeout_s=1e-4, reading_timeout_s=1e-4)
    start = {}
    for name, (u, outside) in initial.items():
        low, high, _ = limits[name]
        start[name] = low + u * (high - low)
        if outside:
            start[name] = (
                high + (u + 0.01) * (high - low) if u > 0.5 else low - u * (high - low) - 1
            )
    state = {"k": 0}

    def readback(name: str, value: float) -> float:
        f = faults[min(state["k"], len(faults) - 1)]
        if f == "offset" and name == "Q2":
            return value + 1.0
        if f == "nan_rb" and name == "CH":
            return math.nan
        return value

    def hook(sp: Mapping[str, float]) -> bool | None:
        f = faults[min(state["k"], len(faults) - 1)]
        if f == "reject":
            raise PutRejected("refused")
        return f != "drop"

    m = LinearMachine(initial=start, readback=readback, put_hook=hook)
    s = SafetyLayer(m, config, sleep=lambda _: None)
    started = False
    for k, action in enumerate(actions):
        state["k"] = k
        try:
            if not started:
                s.start()
                started = True
            s.read_observation()
            s.read_knobs()
            proposal = s.propose(action, "direct" if direct else "delta")
            s.write(proposal.setpoints)
        except SafetyAbort:
            if started:
                s.rollback(retries=1)  # under the same faults
            started = False
            s = SafetyLayer(m, config, sleep=lambda _: None)  # a new run from where it is
    lim = s.limits
    for before, put in m.puts:
        for name, value in put.items():
            assert math.isfinite(value), (name, value)
            assert lim[name].low <= value <= lim[name].high, (name, value)
            allowed = lim[name].max_step * (1 + 1e-12) + lim[name].tolerance
            assert abs(value - before[name]) <= allowed, (name, before[name], value)


def test_property_test_size() -> None:
    assert EXAMPLES * STEPS_PER_EXAMPLE >= 10_000


def test_safety_layer_needs_matching_knobs() -> None:
    m = LinearMachine()
    m.knob_names = ("Q1", "Q2")
    with pytest.raises(ValueError, match="differ"):
        SafetyLayer(m, machine_config())
