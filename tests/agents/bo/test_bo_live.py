"""The live progress file of tuning sessions: written step by step by both ``accelrl tune``
paths, continued on ``--resume``, readable after a kill, never stopping a session."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from typer.testing import CliRunner

from accelrl.agents.bo.live import SessionProgress
from accelrl.agents.bo.optimiser import BOOptimiser
from accelrl.cli.tune import tune_command
from accelrl.dashboard.data.tuning import TuningFollower
from accelrl.runfiles import PROGRESS_FILE, ProgressLog, read_jsonl

ROOT = Path(__file__).resolve().parents[3]
SIM_CONFIG = ROOT / "deploy" / "sim_ares_ea.yaml"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("tune")(tune_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    return app


def _tune(out: Path, *extra: str, steps: int = 4, prior: str = "physics") -> str:
    args = ["tune", "--trial", "30", "--prior", prior, "--steps", str(steps), "--out", str(out),
            "--no-progress", "--budget", "0.03", *extra]  # fmt: skip
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    return result.output


def _records(out: Path) -> list[dict]:
    records, errors = read_jsonl(out / PROGRESS_FILE)
    assert errors == []
    return records


def test_simulated_session_writes_a_step_record_per_observation(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    _tune(out)
    records = _records(out)
    start, steps, end = records[0], records[1:-1], records[-1]
    assert start["type"] == "start" and start["kind"] == "tuning"
    assert start["machine"] == "sim:ares-ea" and start["steps"] == 4
    assert start["prior"] == "physics" and start["acquisition"] == "logei"
    assert [v["name"] for v in start["variables"]] == ["Q1", "Q2", "CV", "Q3", "CH"]
    assert start["objective"]["name"] == "mae"
    assert set(start["initial"]) == {"Q1", "Q2", "CV", "Q3", "CH"}
    # 4 answered observations + the reading after the last step, as data.csv has them
    data = (out / "data.csv").read_text().strip().splitlines()
    assert [r["step"] for r in steps] == list(range(len(data) - 1)) == list(range(5))
    best = math.inf
    for r in steps:
        assert r["type"] == "step" and set(r["setting"]) == set(start["initial"])
        assert r["safe"] is True and r["feasible"] is True
        best = min(best, r["result"]["mae"])
        assert r["best"]["objective"] == best  # the best so far, at that step
        d = r["diagnostics"]
        for key in ("has_prior", "uses_prior", "prior_fallback", "prior_correlation",
                    "correlation_threshold", "trust_length", "mode", "calibration"):  # fmt: skip
            assert key in d, key
        assert d["has_prior"] is True and len(d["calibration"]["incoming"]) > 0
    assert end["type"] == "end" and end["status"] == "completed"
    summary = json.loads((out / "summary.json").read_text())
    assert end["best_mae_m"] == summary["best_mae_m"]


def test_each_step_is_in_the_file_when_the_session_goes_on(tmp_path: Path) -> None:
    """The observer writes the step before the next observation is asked for: what the file
    holds during the run is every row ingested so far."""
    from accelrl.agents.evaluation import evaluate
    from accelrl.envs import load_trials

    progress = SessionProgress(tmp_path, machine="sim:ares-ea", steps=3)
    seen: list[tuple[int, int]] = []

    def observe(session) -> None:
        progress.update(session)
        records, errors = read_jsonl(tmp_path / PROGRESS_FILE)
        assert errors == []
        seen.append((len(session.rows), sum(r["type"] == "step" for r in records)))

    optimiser = BOOptimiser(prior="none", budget_s=0.02, observer=observe)
    evaluate(lambda: optimiser, [load_trials()[30]], max_steps=3, executor="serial",
             progress=False, label="bo")  # fmt: skip
    assert seen == [(1, 1), (2, 2), (3, 3)]
    progress.end("completed")
    assert _records(tmp_path)[-1]["status"] == "completed"


def test_resume_continues_the_progress_file(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    _tune(out, steps=2, prior="none")
    _tune(out, "--resume", steps=2, prior="none")
    records = _records(out)
    starts = [i for i, r in enumerate(records) if r["type"] == "start"]
    assert len(starts) == 2 and records[starts[1]].get("resumed") is True
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(6))
    assert [r["status"] for r in records if r["type"] == "end"] == ["completed", "completed"]
    # the dashboard shows the continued session as one, finished
    follower = TuningFollower(out)
    follower.poll(force=True)
    assert len(follower.rows) == 6 and follower.status == "finished"
    # --force starts over: a new file
    _tune(out, "--force", steps=2, prior="none")
    assert sum(r["type"] == "start" for r in _records(out)) == 1


def test_machine_session_writes_progress_and_prints_each_step(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    output = _tune(out, "--machine", str(SIM_CONFIG), steps=3)
    records = _records(out)
    assert records[0]["machine"] == "sim-ares-ea" and records[0]["mode"] == "auto"
    assert records[0]["run"] == "run"
    assert [r["step"] for r in records if r["type"] == "step"] == [0, 1, 2]
    assert records[-1]["status"] == "completed" and records[-1]["reason"] == "step_budget"
    run_steps = [r for r in read_jsonl(out / "run" / "run.jsonl")[0] if r["type"] == "step"]
    assert len(run_steps) == 3
    # --no-progress keeps the table off, and the step lines too
    assert "step    0  auto" not in output
    result = CliRunner().invoke(_app(), ["tune", "--machine", str(SIM_CONFIG), "--trial", "30",
                                         "--steps", "2", "--budget", "0.03", "--out",
                                         str(tmp_path / "shown")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step    0  auto     write" in result.output
    assert "step    1  auto     write" in result.output


def test_a_failing_disk_never_stops_the_session(tmp_path: Path, caplog, toy_problem) -> None:
    from accelrl.agents.bo.session import TuningSession

    session = TuningSession(toy_problem)
    session.ingest({"a": 0.9, "b": 6.0}, {"f": 1.0, "ok": 1.0})
    (tmp_path / "file").write_text("")
    progress = SessionProgress(tmp_path / "file" / "sub", steps=2)  # cannot create a folder
    progress.update(session)
    assert progress.failed is not None and "live progress file stopped" in caplog.text
    session.ingest({"a": 0.8, "b": 6.0}, {"f": 0.5, "ok": 1.0})
    progress.update(session)
    progress.end("completed")
    # in a folder that works: the start names the variables with their units
    progress = SessionProgress(tmp_path / "ok", steps=2)
    progress.update(session)
    progress.end("completed")
    records = _records(tmp_path / "ok")
    assert [v["unit"] for v in records[0]["variables"]] == ["rad", "1/m^2"]
    assert [r["step"] for r in records if r["type"] == "step"] == [0, 1]


def test_a_new_session_refuses_an_existing_progress_file(tmp_path: Path) -> None:
    ProgressLog(tmp_path, "tuning").close()
    try:
        SessionProgress(tmp_path)
    except FileExistsError as err:
        assert PROGRESS_FILE in str(err)
    else:
        raise AssertionError("an existing progress file was accepted")


def test_appending_after_a_torn_line_keeps_the_new_records(tmp_path: Path) -> None:
    log = ProgressLog(tmp_path, "tuning", steps=3)
    log.step({"step": 0})
    log.close()
    with (tmp_path / PROGRESS_FILE).open("a") as f:
        f.write('{"type":"step","st')  # the writer was killed mid-line
    again = ProgressLog(tmp_path, "tuning", append=True, steps=3)
    again.step({"step": 1})
    again.end("completed")
    records, errors = read_jsonl(tmp_path / PROGRESS_FILE)
    assert [r["type"] for r in records] == ["start", "step", "start", "step", "end"]
    assert records[2]["resumed"] is True and len(errors) == 1 and "line 3" in errors[0]


def test_a_killed_session_leaves_a_readable_file(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from accelrl.cli import app\n"
        f"app(['tune', '--trial', '30', '--prior', 'none', '--steps', '200', '--budget', '0.02',"
        f" '--no-progress', '--out', {str(out)!r}])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240  # an upper bound for a loaded machine
        steps = 0
        while steps < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if (out / PROGRESS_FILE).exists():
                steps = sum(r["type"] == "step" for r in read_jsonl(out / PROGRESS_FILE)[0])
        assert steps >= 3, proc.stderr.read().decode() if proc.poll() is not None else "slow"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()
    records, errors = read_jsonl(out / PROGRESS_FILE)
    assert errors == [] and records[0]["type"] == "start"
    assert records[-1]["type"] == "step"  # no end record: it was killed
    follower = TuningFollower(out)
    follower.poll(force=True)
    assert len(follower.rows) >= 3 and follower.status in ("running", "stalled")
