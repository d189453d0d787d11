"""The controller on the simulated machine: modes, stops, every abort cause with rollback,
and the run log."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_testlib import BUNDLE, KNOBS, LIMITS, machine_config

from accelrl.bundle import BundleError
from accelrl.deploy.controller import ConfirmRequest, Controller, StopReason
from accelrl.deploy.plant import Plant
from accelrl.deploy.runlog import read_run
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import AbortReason, SafetyLayer
from accelrl.deploy.sim import Fault, SimMachine

START = {"Q1": 10.0, "Q2": -10.0, "CV": 0.0, "Q3": 10.0, "CH": 0.0}
#: Trial whose target the shipped policy reaches in a few steps (sized target).
TRIAL = 30


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy() -> OnnxPolicy:
    return OnnxPolicy(BUNDLE)


def make(policy, mode="auto", faults=(), trial=TRIAL, log=None, config=None, **kwargs):
    plant = Plant.from_trial(trial)
    config = config or machine_config(settle_timeout_s=0.05, reading_timeout_s=0.05)
    machine = SimMachine(plant, config, faults=faults)
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    kwargs.setdefault("plot", False)
    controller = Controller(
        policy, machine, safety, mode, target=plant.target, log_dir=log, **kwargs
    )
    return controller, machine, plant


def test_auto_reaches_the_target_and_logs_every_step(policy, tmp_path: Path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    controller, machine, plant = make(policy, log=tmp_path / "run", plot=True, max_steps=30)
    result = controller.run()
    assert result.reason is StopReason.target_reached
    assert 1 <= result.writes == result.steps < 30
    assert max(abs(v) for v in result.final_error.values()) < 2e-5
    records = read_run(tmp_path / "run")
    assert [r["type"] for r in records] == ["start"] + ["step"] * (result.steps + 1) + ["end"]
    assert len(synced) >= len(records)  # every record fsync'ed (summary.json too)
    assert records[0]["initial"] == START and records[0]["mode"] == "auto"
    steps = records[1:-1]
    assert [r["decision"] for r in steps] == ["write"] * result.steps + ["target_reached"]
    for r in steps[:-1]:
        assert set(r["requested"]) == set(KNOBS) and set(r["observation"]) >= {"mu_x"}
        assert r["writes"] and r["readbacks"] and "total_s" in r["timing"]
    # Each step's readbacks are the previous step's safe setpoints (verified writes).
    for a, b in zip(steps, steps[1:], strict=False):
        for n in KNOBS:
            assert b["knobs"][n] == pytest.approx(a["safe_setpoints"][n], abs=1e-12)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reason"] == "target_reached" and summary["writes"] == result.writes
    assert {k: v for k, v in records[-1].items() if k != "type"} == summary
    assert (tmp_path / "run" / "run.png").stat().st_size > 10_000
    assert plant.knobs() == result.final_setpoints


def test_shadow_mode_never_writes(policy, tmp_path: Path):
    controller, machine, plant = make(policy, "shadow", log=tmp_path / "s", max_steps=6)
    result = controller.run()
    assert result.reason is StopReason.step_budget and result.steps == 6
    assert result.writes == 0 and machine.put_log == [] and plant.knobs() == START
    steps = [r for r in read_run(tmp_path / "s") if r["type"] == "step"]
    assert [r["decision"] for r in steps] == ["shadow"] * 6
    assert all("writes" not in r for r in steps)
    # It logs what it would have done: the same proposal every step (nothing moves).
    assert steps[0]["safe_setpoints"] == steps[-1]["safe_setpoints"] != START


def test_shadow_mode_does_not_write_even_on_abort(policy):
    holder = {}

    def meddle() -> bool:  # another client moves a knob, then the interlock trips
        m = holder["machine"]
        holder["calls"] = holder.get("calls", 0) + 1
        if holder["calls"] == 2:
            m.plant.set_knobs({"Q3": 20.0})
            m.inject(Fault("interlock"))
        return False

    controller, machine, plant = make(policy, "shadow", stop_callback=meddle)
    holder["machine"] = machine
    result = controller.run()
    assert result.abort_reason is AbortReason.interlock
    assert machine.put_log == [] and plant.knobs()["Q3"] == 20.0  # not "rolled back"
    assert result.rollback["complete"] and result.rollback["writes"] == 0


def test_confirm_mode_asks_for_every_write(policy, tmp_path: Path):
    answers = iter(["yes", "no", False, True, "quit"])
    seen: list[ConfirmRequest] = []

    def prompt(request: ConfirmRequest) -> str | bool:
        seen.append(request)
        return next(answers)

    controller, machine, _ = make(policy, "confirm", log=tmp_path / "c", prompt=prompt)
    result = controller.run()
    assert result.reason is StopReason.operator_stop
    assert result.writes == 2 and len(machine.put_log) == 2
    steps = [r for r in read_run(tmp_path / "c") if r["type"] == "step"]
    assert [r["decision"] for r in steps] == ["write", "refused", "refused", "write", "stopped"]
    assert [r.step for r in seen] == [0, 1, 2, 3, 4]
    text = seen[0].describe()
    assert "Q1" in text and "proposed" in text and "beam - target" in text
    assert seen[1].current == {n: machine.put_log[0][1][n] for n in KNOBS}


def test_stop_file_and_callback_stop_the_run(policy, tmp_path: Path):
    stop = tmp_path / "STOP"
    calls = []

    def callback() -> bool:
        calls.append(1)
        if len(calls) == 3:
            stop.touch()
        return False

    controller, _, plant = make(policy, stop_file=stop, stop_callback=callback, trial=0)
    result = controller.run()
    # The third check creates the file; the fourth, before step 3, sees it.
    assert result.reason is StopReason.operator_stop and result.steps == 3
    assert plant.knobs() != START  # an operator stop keeps the settings
    controller, _, _ = make(policy, stop_callback=lambda: True)
    assert controller.run().steps == 0


def test_ctrl_c_once_stops_twice_aborts_and_rolls_back(policy):
    def press(times: int):
        count = []

        def callback() -> bool:
            count.append(1)
            if len(count) == 3:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
            return False

        return callback

    controller, _, plant = make(policy, stop_callback=press(1), trial=0)
    result = controller.run()
    assert result.reason is StopReason.operator_stop and result.steps == 3
    controller, _, plant = make(policy, stop_callback=press(2), trial=0)
    result = controller.run()
    assert result.abort_reason is AbortReason.operator_abort
    assert result.rollback["complete"] and plant.knobs() == START


ABORTS = [
    (Fault("interlock", after_puts=3), AbortReason.interlock),
    (Fault("beam_loss", after_puts=3), AbortReason.beam_loss),
    (Fault("disconnect", after_puts=3, times=3), AbortReason.disconnected),
    (Fault("reject_put", after_puts=3, times=1), AbortReason.put_rejected),
    (Fault("lost_reply", after_puts=3, times=1), AbortReason.disconnected),
    (Fault("ignore_put", after_puts=3, times=1), AbortReason.put_rejected),
    (Fault("readback_offset", after_puts=2, knob="Q3", value=0.5), None),
    (Fault("settle_timeout", after_puts=2, times=1), AbortReason.settle_timeout),
    (Fault("stale_heartbeat", after_puts=3, value=30.0), AbortReason.stale_heartbeat),
    (Fault("stale_reading", after_puts=3), AbortReason.stale_reading),
    (Fault("nan_reading", after_puts=3), AbortReason.nonfinite_reading),
]


@pytest.mark.parametrize(("fault", "reason"), ABORTS, ids=[f.kind for f, _ in ABORTS])
def test_every_abort_rolls_back_to_the_initial_settings(policy, tmp_path, fault, reason):
    reason = reason or AbortReason.put_unverified
    # Trial 0's target cannot be reached (zero size): the run goes on until the fault.
    controller, machine, plant = make(policy, faults=[fault], trial=0, log=tmp_path / "r")
    result = controller.run()
    assert result.reason is StopReason.abort and result.abort_reason is reason
    assert result.rollback["complete"], result.rollback
    # Readbacks that never arrive cannot verify the ramp; the setpoints are back.
    assert result.rollback["verified"] is (fault.kind != "readback_offset")
    assert plant.knobs() == pytest.approx(START, abs=1e-12)
    assert result.final_setpoints == pytest.approx(START, abs=1e-12)
    records = read_run(tmp_path / "r")
    kinds = [r["type"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and "rollback" in kinds
    # Every rollback write attempt was logged as it went out: knobs, values, attempt, outcome.
    ramp = [r for r in records if r["type"] == "rollback" and r["event"] == "write"]
    assert [r["index"] for r in ramp] == list(range(result.rollback["writes"]))
    for r in ramp:
        assert {"setpoints", "attempt", "may_hold", "ok"} <= set(r)
    abort = [r for r in records if r.get("decision") == "abort"]
    assert len(abort) == 1 and abort[0]["abort"]["reason"] == reason.value
    assert records[-1]["abort"]["reason"] == reason.value
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["rollback"]["complete"]
    # The ramp back never exceeded the rate limit.
    last = {}
    for _, put in machine.put_log:
        for n, v in put.items():
            if n in last:
                assert abs(v - last[n]) <= controller.safety.limits[n].max_step * (1 + 1e-12)
            last[n] = v


def test_nan_from_the_policy_aborts_and_rolls_back(policy, tmp_path):
    controller, machine, plant = make(policy, trial=0, log=tmp_path / "n")
    real = controller.optimiser.ask
    calls = []

    def ask(observation):
        calls.append(1)
        out = real(observation)
        if len(calls) == 4:
            out[1] = np.nan
        return out

    controller.optimiser.ask = ask  # type: ignore[method-assign]
    try:
        result = controller.run()
    finally:
        del controller.optimiser.ask
    assert result.abort_reason is AbortReason.nonfinite_action and "Q2" in result.abort_detail
    assert result.writes == 3 and result.rollback["complete"] and plant.knobs() == START
    step = [r for r in read_run(tmp_path / "n") if r.get("decision") == "abort"][0]
    assert step["requested"]["Q2"] == "nan"  # strict JSON


def test_a_disk_error_on_the_abort_record_does_not_stop_the_rollback(policy, tmp_path, monkeypatch):
    """The disk fails from the abort on: the abort record, the rollback records and the end
    record cannot be written; the rollback runs all the same, each record still reaches
    ``on_record``, and the failures are announced and listed in the summary."""
    from accelrl.deploy.runlog import RunLog

    real_write = RunLog.write

    def failing_write(self, record, sync=True, **kwargs):
        if record.get("decision") == "abort" or record.get("type") in ("rollback", "end"):
            raise OSError(28, "No space left on device")
        real_write(self, record, sync=sync, **kwargs)

    monkeypatch.setattr(RunLog, "write", failing_write)
    seen, lines = [], []
    controller, machine, plant = make(
        policy, faults=[Fault("interlock", after_puts=3)], trial=0, log=tmp_path / "r",
        on_record=seen.append, announce=lines.append,
    )  # fmt: skip
    result = controller.run()
    assert result.reason is StopReason.abort and result.abort_reason is AbortReason.interlock
    assert result.rollback is not None and result.rollback["complete"], result.rollback
    assert plant.knobs() == pytest.approx(START, abs=1e-12)
    errors = result.summary["log_errors"]
    assert errors[0].startswith("step record: OSError") and "No space left" in errors[0]
    assert any(e.startswith("rollback record") for e in errors)
    assert errors[-1].startswith("end record: OSError")
    assert sum("run log: could not write" in line for line in lines) == 2  # first, and end
    assert [r.get("decision") for r in seen if r["type"] == "step"][-1] == "abort"
    assert any(r["type"] == "rollback" for r in seen) and seen[-1]["type"] == "end"
    # the log holds what was written before the disk failed
    kinds = [r["type"] for r in read_run(tmp_path / "r")]
    assert kinds[0] == "start" and "rollback" not in kinds and "end" not in kinds


def test_a_step_record_that_cannot_be_written_ends_the_run_in_a_rollback(
    policy, tmp_path, monkeypatch
):
    from accelrl.deploy.runlog import RunLog

    real_write = RunLog.write

    def failing_write(self, record, sync=True, **kwargs):
        if record.get("type") == "step" and record.get("step") == 2:
            raise OSError(5, "Input/output error")
        real_write(self, record, sync=sync, **kwargs)

    monkeypatch.setattr(RunLog, "write", failing_write)
    controller, machine, plant = make(policy, trial=0, log=tmp_path / "r", announce=print)
    result = controller.run()
    assert result.abort_reason is AbortReason.internal_error
    assert "Input/output error" in result.abort_detail
    assert result.rollback is not None and result.rollback["complete"], result.rollback
    assert plant.knobs() == pytest.approx(START, abs=1e-12)
    assert result.summary["log_errors"] == ["step record: OSError: [Errno 5] Input/output error"]


def test_persistent_disconnect_reports_an_incomplete_rollback(policy, tmp_path):
    config = machine_config(settle_timeout_s=0.05, reading_timeout_s=0.05, outage_deadline_s=0.1)
    faults = [Fault("disconnect", after_puts=2)]
    controller, machine, plant = make(policy, faults=faults, trial=0, config=config)
    result = controller.run()
    assert result.abort_reason is AbortReason.disconnected
    rollback = result.rollback
    assert not rollback["complete"] and rollback["writes"] == 0  # nothing written blind
    assert 0 < rollback["waited_s"] <= 0.1  # it waited, within the outage deadline
    # Exactly which knobs were not restored, and every value each may hold: the value the
    # first put verified, and the second put's (it landed; the outage began before it was
    # read back).
    first, second = (put for _, put in machine.put_log)
    assert set(rollback["not_restored"]) == set(first) | set(second)
    for name, values in rollback["not_restored"].items():
        assert values == [first.get(name, START[name]), second[name]][-len(values) :]
        assert values[-1] == plant.knobs()[name]
        assert f"{name} may hold" in rollback["detail"]
    assert "disconnected" in rollback["detail"]
    assert plant.knobs() != START  # left where it was, never jumped


def test_another_clients_write_aborts_and_is_not_undone(policy, tmp_path):
    holder = {}

    def meddle() -> bool:
        m = holder["machine"]
        if m.puts_applied == 2 and not holder.get("done"):
            holder["done"] = True
            m.external_put({"Q3": 20.0})  # an operator sets Q3
        return False

    controller, machine, plant = make(policy, trial=0, stop_callback=meddle, log=tmp_path / "o")
    holder["machine"] = machine
    result = controller.run()
    assert result.abort_reason is AbortReason.setpoint_changed and "Q3" in result.abort_detail
    assert result.rollback["complete"] and result.rollback["foreign"] == {"Q3": 20.0}
    assert plant.knobs() == {**START, "Q3": 20.0}  # the rest rolled back, Q3 left alone
    assert all("Q3" not in put for _, put in machine.put_log[2:])
    notes = [r for r in read_run(tmp_path / "o") if r.get("event") == "foreign_write"]
    assert len(notes) == 1 and notes[0]["knob"] == "Q3" and notes[0]["value"] == 20.0


def test_protections_are_announced_and_logged(policy, tmp_path):
    config = machine_config(
        settle_timeout_s=0.05,
        reading_timeout_s=0.05,
        protections={"heartbeat": {"none": "the test stand has no heartbeat"}},
    )
    lines = []
    controller, _, _ = make(
        policy, "shadow", config=config, log=tmp_path / "p", max_steps=1, announce=lines.append
    )
    controller.run()
    assert lines[0] == "protections of test-ares-ea (sim):"
    assert "  heartbeat: OFF (none: the test stand has no heartbeat)" in lines
    start = read_run(tmp_path / "p")[0]
    assert start["protections"]["heartbeat"] == {"none": "the test stand has no heartbeat"}
    assert start["protections"]["interlock"] == {"simulated": True, "tripped_when": 1.0}
    assert start["rollback_config"]["outage_deadline_s"] == 5.0


def test_initial_settings_outside_the_hard_bounds_abort_without_writing(policy):
    config = machine_config(limits={**LIMITS, "Q1": (-72.0, 5.0, 7.2)})  # start Q1 = 10
    controller, machine, _ = make(policy, config=config)
    result = controller.run()
    assert result.abort_reason is AbortReason.initial_out_of_bounds
    assert machine.put_log == [] and result.steps == 0


def test_bundle_must_fit_the_machine(policy):
    plant = Plant.from_trial(0)
    config = machine_config()
    machine = SimMachine(plant, config)
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    with pytest.raises(ValueError, match="target must be 4"):
        Controller(policy, machine, safety, "auto", target=[0.0, 1e-4])
    with pytest.raises(ValueError, match="confirm"):
        Controller(policy, machine, safety, "manual", target=[0, 0, 0, 0])
    wide = SafetyLayer(machine, machine_config(limits={**LIMITS, "Q1": (-100.0, 100.0, 7.2)}))
    with pytest.raises(ValueError, match="wider than the bundle"):
        Controller(policy, machine, wide, "auto", target=[0, 0, 0, 0])
    other = machine_config().model_copy(update={"env_id": "accelrl/Other-v0"})
    with pytest.raises(BundleError, match="trained on"):
        Controller(policy, machine, SafetyLayer(machine, other), "auto", target=[0, 0, 0, 0])
