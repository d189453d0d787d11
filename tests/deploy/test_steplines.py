"""One line per step while a controller runs (``accelrl deploy run``): the controller hands
every log record to ``on_record`` after writing it, and the command prints it in operator
units, with the abort and the rollback in bold; ``--quiet`` keeps only the safety events."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from deploy_testlib import BUNDLE, SIM_CONFIG
from rich.console import Console
from typer.testing import CliRunner

from accelrl.cli.deploy import deploy_app
from accelrl.cli.steplines import StepLines
from accelrl.deploy.config import load_machine_config
from accelrl.deploy.controller import Controller, StopReason
from accelrl.deploy.plant import Plant
from accelrl.deploy.runlog import read_run
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import SafetyLayer
from accelrl.deploy.sim import Fault, SimMachine

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _controller(log_dir: Path | None, faults=(), max_steps: int = 6, **kwargs) -> Controller:
    """The shipped bundle on the simulated ARES-EA (trial 30), auto mode, thresholds too
    tight to reach."""
    policy = OnnxPolicy(BUNDLE)
    config = load_machine_config(SIM_CONFIG)
    plant = Plant.from_trial(30)
    machine = SimMachine(plant, config, faults=list(faults))
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    return Controller(policy, machine, safety, "auto", target=plant.target,
                      thresholds=[1e-9] * 4, max_steps=max_steps, log_dir=log_dir, plot=False,
                      announce=lambda line: None, **kwargs)  # fmt: skip


def _lines(quiet: bool = False) -> tuple[StepLines, io.StringIO]:
    text = io.StringIO()
    return StepLines(Console(file=text, width=400, color_system=None), quiet=quiet), text


def test_each_record_is_shown_after_it_is_logged(tmp_path: Path) -> None:
    lines, text = _lines()
    logged: list[int] = []

    def on_record(record) -> None:
        # the record is in run.jsonl (fsync'ed) before it is shown
        logged.append(len(read_run(tmp_path / "run")))
        lines(record)

    result = _controller(tmp_path / "run", on_record=on_record).run()
    assert result.reason is StopReason.step_budget
    records = read_run(tmp_path / "run")
    assert logged == list(range(1, len(records) + 1))
    out = text.getvalue().splitlines()
    steps = [line for line in out if line.startswith("step ")]
    assert len(steps) == 6
    first = steps[0]
    assert re.match(r"step +0  auto +write +MAE +358\.0 um", first), first
    # each knob's change in operator units: quadrupoles in 1/m^2, steerers in mrad
    rec = next(r for r in records if r["type"] == "step")
    change = (rec["safe_setpoints"]["CV"] - rec["knobs"]["CV"]) * 1e3
    assert f"CV {change:+.4g} mrad" in first and "Q1 " in first and "1/m^2" in first
    mu_x = (rec["observation"]["mu_x"] - rec["target"]["mu_x"]) * 1e6
    assert f"mu_x {mu_x:+.1f}" in first
    assert out[-1] == "end: step_budget after 6 steps, 6 writes"


def test_an_interlock_abort_and_the_rollback_stand_out(tmp_path: Path) -> None:
    lines, text = _lines()
    result = _controller(
        tmp_path / "run", faults=[Fault("interlock", after_puts=3)], max_steps=50, on_record=lines
    ).run()
    assert result.reason is StopReason.abort and result.rollback["complete"]
    out = text.getvalue().splitlines()
    abort = [line for line in out if line.startswith("ABORT")]
    assert len(abort) == 1 and abort[0].startswith(f"ABORT at step {result.steps}: interlock")
    writes = [line for line in out if line.startswith("ROLLBACK write")]
    assert len(writes) == result.rollback["writes"] > 0
    assert all(line.endswith(" ok") for line in writes)
    assert any(line.startswith("ROLLBACK COMPLETE in") for line in out)
    assert out.index(abort[0]) < out.index(writes[0])
    # --quiet: no step lines, the abort and the rollback all the same
    quiet, quiet_text = _lines(quiet=True)
    _controller(None, faults=[Fault("interlock", after_puts=3)], max_steps=50,
                on_record=quiet).run()  # fmt: skip
    shown = quiet_text.getvalue().splitlines()
    assert not any(line.startswith("step ") for line in shown)
    assert any(line.startswith("ABORT at step") for line in shown)
    assert any(line.startswith("ROLLBACK COMPLETE") for line in shown)


def test_a_failing_callback_never_stops_the_run(tmp_path: Path) -> None:
    said: list[str] = []

    def broken(record) -> None:
        if record["type"] == "step":
            raise BrokenPipeError("terminal closed")

    controller = _controller(tmp_path / "run", on_record=broken)
    controller.announce = said.append
    result = controller.run()
    assert result.reason is StopReason.step_budget and result.writes == 6
    failed = [line for line in said if line.startswith("record callback")]
    assert failed == ["record callback failed (BrokenPipeError: terminal closed); dropped"]


def test_deploy_run_prints_a_line_per_step_and_quiet_drops_them(tmp_path: Path) -> None:
    args = ["run", "--bundle", str(BUNDLE), "--machine", str(SIM_CONFIG), "--mode", "shadow",
            "--steps", "3", "--no-plot"]  # fmt: skip
    result = runner.invoke(deploy_app, [*args, "--log", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if line.startswith("step ")]
    assert [line.split()[:4] for line in steps] == [
        ["step", str(i), "shadow", "shadow"] for i in range(3)
    ]
    result = runner.invoke(deploy_app, [*args, "--log", str(tmp_path / "b"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not any(line.startswith("step ") for line in result.output.splitlines())
    assert "end: step_budget" not in result.output
