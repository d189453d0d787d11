"""``accelrl tune`` (registered here in a local typer app)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from accelrl.cli.tune import tune_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("tune")(tune_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the sub-command name
    return app


def test_tune_writes_session_table_and_plots(tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        _app(),
        [
            "tune",
            "--machine",
            "sim:ares-ea",
            "--trial",
            "30",
            "--prior",
            "physics",
            "--steps",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "--budget",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "problem.json",
        "session.json",
        "data.csv",
        "model.npz",
        "manifest.json",
        "summary.json",
        "objective.png",
        "slices.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_mae_m"] <= summary["initial_mae_m"]
    assert summary["final_mae_m"] <= summary["initial_mae_m"]
    assert len((out / "data.csv").read_text().strip().splitlines()) == 1 + 5


def test_tune_rejects_unknown_machine(tmp_path) -> None:
    result = CliRunner().invoke(
        _app(), ["tune", "--machine", "epics:ares", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1
    assert "not one of" in result.output


def test_tune_out_needs_resume_or_force_and_resume_checks_the_limits(tmp_path) -> None:
    import hashlib

    out = tmp_path / "run"
    base = ["tune", "--machine", "sim:ares-ea", "--trial", "30", "--prior", "none", "--steps",
            "2", "--out", str(out), "--no-progress", "--budget", "0.02"]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(_app(), base).exit_code == 0
    rows = len((out / "data.csv").read_text().strip().splitlines())
    result = runner.invoke(_app(), base)
    assert result.exit_code == 2 and "already holds files" in result.output
    result = runner.invoke(_app(), [*base, "--resume"])
    assert result.exit_code == 0, result.output
    assert len((out / "data.csv").read_text().strip().splitlines()) == rows + 3  # 2 steps + end
    result = runner.invoke(_app(), [*base[:6], "physics", *base[7:], "--resume"])
    assert result.exit_code == 2 and "prior: 'none' there, 'physics' now" in result.output
    # bounds widened by hand, manifest rewritten to match: the task's limits refuse them
    problem = json.loads((out / "problem.json").read_text())
    problem["variables"][0].update(low=-1000.0, high=1000.0)
    (out / "problem.json").write_text(json.dumps(problem))
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((out / "problem.json").read_bytes()).hexdigest()
    manifest["files"]["problem.json"] = digest
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(_app(), [*base, "--resume"])
    assert result.exit_code == 2
    assert "variables.Q1.low = -1000.0 is below the limit -72.0" in " ".join(result.output.split())
    (out / "objective.png").write_bytes(b"stale")
    result = runner.invoke(_app(), [*base, "--force"])
    assert result.exit_code == 0, result.output
    assert len((out / "data.csv").read_text().strip().splitlines()) == rows
    assert (out / "objective.png").read_bytes()[:4] == b"\x89PNG"
