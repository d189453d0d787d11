"""The safety layer: limits, proposals, verified writes, fresh readings and rollback (the
property test over fault sequences is in test_safety_faults.py, rollback under single
faults in test_rollback.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from deploy_testlib import BUNDLE, LIMITS, LinearMachine, machine_config

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


def test_safety_layer_needs_matching_knobs() -> None:
    m = LinearMachine()
    m.knob_names = ("Q1", "Q2")
    with pytest.raises(ValueError, match="differ"):
        SafetyLayer(m, machine_config())
