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
