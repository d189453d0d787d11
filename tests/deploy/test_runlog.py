"""The run log's durability: every record flushed at once; a step record fsync'ed in the
background and on disk before the controller's next write to the machine (and before a
rollback); a failed background fsync reported, not lost."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from deploy_testlib import BUNDLE, LinearMachine, machine_config

from accelrl.deploy.controller import Controller, StopReason
from accelrl.deploy.runlog import RunLog, read_run
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import SafetyLayer


def test_a_background_record_is_on_disk_after_sync(tmp_path: Path, monkeypatch) -> None:
    started, release = threading.Event(), threading.Event()
    synced: list[int] = []
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        started.set()
        release.wait(5.0)  # a slow disk
        real_fsync(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    log = RunLog(tmp_path / "run")
    log.write({"type": "step", "step": 0}, sync=False)
    # flushed at once: another reader sees it while the fsync is still running
    assert started.wait(5.0)
    assert read_run(tmp_path / "run") == [{"type": "step", "step": 0}]
    assert synced == []
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (log.sync(), done.set()))
    waiter.start()
    assert not done.wait(0.2)  # sync waits for the fsync in flight
    release.set()
    assert done.wait(5.0) and len(synced) == 1
    waiter.join()
    log.close()


def test_a_failed_background_fsync_is_raised_once(tmp_path: Path, monkeypatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    log = RunLog(tmp_path / "run")
    monkeypatch.setattr(os, "fsync", failing_fsync)
    log.write({"type": "step", "step": 0}, sync=False)
    with pytest.raises(OSError, match="Input/output error"):
        log.sync()
    log.sync()  # reported once
    monkeypatch.undo()
    log.write({"type": "step", "step": 1}, sync=False)  # a new background fsync works
    log.sync()
    log.close()
    assert [r["step"] for r in read_run(tmp_path / "run")] == [0, 1]


def test_a_synced_record_after_a_failed_background_fsync_is_written(
    tmp_path: Path, monkeypatch
) -> None:
    """The earlier failure is reported on the next synced write, which says that its own
    record is written and synced (it is on disk and reads back)."""
    real_fsync, calls = os.fsync, []

    def fail_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    log = RunLog(tmp_path / "run")
    monkeypatch.setattr(os, "fsync", fail_once)
    log.write({"type": "step", "step": 0}, sync=False)
    with pytest.raises(OSError, match="earlier record.*abort record is written and synced"):
        log.write({"type": "abort", "reason": "stale_reading"})
    assert len(calls) == 2  # the abort record was synced
    log.close()
    assert [r["type"] for r in read_run(tmp_path / "run")] == ["step", "abort"]


def test_a_failing_plot_does_not_cost_the_end_record(tmp_path: Path, monkeypatch) -> None:
    import accelrl.deploy.runlog as runlog

    def broken_plot(records, path):
        raise RuntimeError("no display")

    monkeypatch.setattr(runlog, "plot_run", broken_plot)
    log = RunLog(tmp_path / "run")
    summary = log.finish({"steps": 0})
    assert summary["plot"] is None and "RuntimeError: no display" in summary["plot_error"]
    assert read_run(tmp_path / "run")[-1]["type"] == "end"
    assert (tmp_path / "run" / "summary.json").is_file()


def test_every_record_is_on_disk_before_the_next_write(tmp_path: Path, monkeypatch) -> None:
    """The controller's step records are fsync'ed in the background, and each is on disk
    before the next put (and before the rollback's first write)."""
    lock = threading.Lock()
    on_disk = [0]  # bytes of run.jsonl known to be fsync'ed
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.02)  # a slow disk: longer than a step of this machine
        real_fsync(fd)
        with lock:
            on_disk[0] = max(on_disk[0], size)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    run = tmp_path / "run" / "run.jsonl"
    unsynced_at_put: list[int] = []

    def before_put(setpoints) -> None:
        with lock:
            unsynced_at_put.append(run.stat().st_size - on_disk[0])

    machine = LinearMachine(put_hook=before_put)
    config = machine_config()
    policy = OnnxPolicy(BUNDLE)
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    controller = Controller(
        policy, machine, safety, "auto", target=[0.0, 1e-4, 0.0, 1e-4], thresholds=[1e-12] * 4,
        max_steps=6, log_dir=tmp_path / "run", plot=False, rollback_on_stop=True,
        announce=lambda line: None,
    )  # fmt: skip
    result = controller.run()
    assert result.reason is StopReason.step_budget and result.writes == 6
    assert result.rollback is not None and result.rollback["writes"] >= 1
    # every put (the six steps' and the rollback's) found every earlier record on disk
    assert len(unsynced_at_put) == 6 + result.rollback["writes"]
    assert unsynced_at_put == [0] * len(unsynced_at_put)
    kinds = [r["type"] for r in read_run(tmp_path / "run")]
    assert kinds[0] == "start" and kinds.count("step") == 6 and kinds[-1] == "end"


def test_a_plain_record_is_written_as_jsonable_makes_it(tmp_path: Path) -> None:
    """``plain=True`` (the controller's step records) skips the copy, never the rules: the
    line is the one ``jsonable`` gives, and what JSON cannot write as is still goes through
    it (numpy scalars, non-finite floats)."""
    import json

    import numpy as np

    from accelrl.deploy.runlog import jsonable

    records = [
        {"type": "step", "step": 1, "knobs": {"Q1": 1.5, "CV": -2e-4}, "clips": [],
         "pair": (1, 2.5), "time": np.float64(3.25), "flag": True, "none": None},
        {"type": "step", "observation": {"mu_x": float("nan")}, "n": np.int64(3)},
        {"type": "step", "k": np.float32(0.5), "inf": -float("inf")},
    ]  # fmt: skip
    log = RunLog(tmp_path / "run", fsync=False)
    for record in records:
        log.write(record, plain=True)
    log.close()
    lines = (tmp_path / "run" / "run.jsonl").read_text().splitlines()
    assert lines == [json.dumps(jsonable(r), allow_nan=False) for r in records]
    assert log.records == [json.loads(line) for line in lines]
    assert log.records[1]["observation"]["mu_x"] == "nan"
