"""The virtual accelerator's behaviour without a server (:mod:`accelrl.deploy.virtual.core`):
the camera's schedule, refusals, faults and the outage hand-over, on a clock the test drives."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from accelrl.deploy.virtual.config import load_virtual_config
from accelrl.deploy.virtual.core import (
    MAX_LATE_FRAMES,
    AcceleratorCore,
    FaultSyntaxError,
    build_plant,
    parse_faults,
)

VIRTUAL_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "virtual_ares_ea.yaml"


class Clock:
    """A wall clock the test sets [s]."""

    def __init__(self, now: float = 1.0e9) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def loaded() -> Any:
    return load_virtual_config(VIRTUAL_CONFIG).replace(
        records={"refusal": "reject", "refusal_by_knob": {"Q2": "clamp"}},
        faults={"stuck_knob": "Q1", "disconnect_s": 2.0},
    )


@pytest.fixture(scope="module")
def plant(loaded: Any) -> Any:
    return build_plant(loaded)


@pytest.fixture
def core(loaded: Any, plant: Any) -> tuple[AcceleratorCore, Clock]:
    clock = Clock()
    plant.set_knobs(dict(zip(plant.knob_names, plant.spec.start, strict=True)))
    return AcceleratorCore(loaded, plant, clock=clock), clock


def test_frames_are_due_at_fixed_times_whatever_the_ticks(core):
    core, clock = core
    start = clock.now
    period = 0.1  # 10 Hz
    # ticks at irregular times, some late by almost a period, some early
    for dt in (0.03, 0.07, 0.151, 0.02, 0.19, 0.05, 0.099, 0.3, 0.004):
        clock.now += dt
        core.tick()
    frames = core.take_frames()
    elapsed = clock.now - start
    assert len(frames) == math.floor(elapsed / period + 1e-9)
    for k, frame in enumerate(frames, start=1):
        assert frame.time == pytest.approx(start + k * period, abs=1e-6)  # due time
    # the next deadline is the next frame's
    assert core.tick() == pytest.approx(start + (len(frames) + 1) * period, abs=1e-6)


def test_a_long_stall_restarts_the_schedule_instead_of_a_burst(core):
    core, clock = core
    start = clock.now
    clock.now += (MAX_LATE_FRAMES + 5) * 0.1
    core.tick()
    frames = core.take_frames()
    assert len(frames) == 1 and frames[0].time == clock.now  # one frame now, no burst
    clock.now += 0.1
    core.tick()
    assert [f.time for f in core.take_frames()] == [pytest.approx(clock.now, abs=1e-6)]
    assert clock.now - start > MAX_LATE_FRAMES * 0.1


def test_refusals_and_clamping(core):
    core, clock = core
    assert core.check_setpoint_write("Q1", 80.0) is not None  # Q1 rejects
    assert "outside the limits" in core.check_setpoint_write("Q1", -80.0)
    assert core.check_setpoint_write("Q2", 80.0) is None  # Q2 clamps ...
    assert core.write_setpoint("Q2", 80.0) == 72.0  # ... at its DRVH
    assert "finite" in core.check_setpoint_write("Q2", math.nan)
    assert core.check_setpoint_write("Q1", None) is None  # value unknown (PV Access)
    assert core.put_count == 5
    assert core.take_changes() >= {"put_count", ("busy", "Q2")}


def test_counted_faults_switch_off(core):
    core, clock = core
    assert core.write_faults("reject_put:2, stale") == "reject_put,stale"
    assert core.check_setpoint_write("Q1", 11.0) is not None
    assert core.check_setpoint_write("Q1", 11.0) is not None
    assert core.fault_text() == "stale"
    assert core.check_setpoint_write("Q1", 11.0) is None
    core.write_faults("ignore_put:1")
    assert core.write_setpoint("Q1", 12.0) == core.knobs["Q1"].setpoint != 12.0  # ignored
    assert core.fault_text() == "none"
    with pytest.raises(FaultSyntaxError, match="only reject_put:N"):
        parse_faults("stale:3")
    with pytest.raises(FaultSyntaxError, match="unknown faults"):
        parse_faults("meltdown")
    assert parse_faults("'reject_put:2'") == ({"reject_put"}, {"reject_put": 2})


def test_interlock_and_beam_loss_follow_the_faults(core):
    core, clock = core
    core.write_faults("interlock,beam_loss")
    assert core.interlock and core.beam_loss == 1.0
    assert {"interlock", "beam_loss", "faults"} <= core.take_changes()
    core.reset()
    assert not core.interlock and core.beam_loss == pytest.approx(0.05)
    assert core.put_count == 0 and core.fault_text() == "none"


def test_outage_snapshot_restores_the_state(core, loaded, plant):
    core, clock = core
    core.check_setpoint_write("Q3", 20.0)
    core.write_setpoint("Q3", 20.0)  # a ramp in progress
    core.write_faults("stale,disconnect")
    assert "disconnect" in core.take_changes()
    snapshot = core.snapshot()
    assert snapshot["offline_until"] == pytest.approx(clock.now + 2.0)
    successor = AcceleratorCore(loaded, plant, clock=clock)
    clock.now += 2.0
    successor.restore(snapshot)
    assert successor.fault_text() == "stale"  # the outage is over, the rest stays
    assert successor.put_count == 1
    assert successor.knobs["Q3"].setpoint == 20.0 and successor.knobs["Q3"].busy
    assert successor.frame.time == core.frame.time  # frozen under stale
    successor.tick()  # the ramp ended during the outage
    assert successor.knobs["Q3"].readback == 20.0 and not successor.knobs["Q3"].busy
