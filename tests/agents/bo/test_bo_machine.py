"""Optimisers of the protocol on a machine through the deploy controller and ``accelrl tune
--machine deploy/*.yaml``: the simulated ARES-EA machine, trial 30."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accelrl.agents.bo import BOOptimiser
from accelrl.agents.registry import make_optimiser
from accelrl.cli import app
from accelrl.deploy.config import MachineConfig, load_machine_config
from accelrl.deploy.controller import Controller, StopReason
from accelrl.deploy.plant import Plant
from accelrl.deploy.runlog import read_run
from accelrl.deploy.safety import SafetyLayer
from accelrl.deploy.sim import SimMachine

ROOT = Path(__file__).resolve().parents[3]
SIM_CONFIG = ROOT / "deploy" / "sim_ares_ea.yaml"
EPICS_CONFIG = ROOT / "deploy" / "virtual_ares_ea_machine.yaml"
THRESHOLDS = (2e-5,) * 4  # the ARES-EA task's "target reached" [m]


def _run(optimiser, mode: str, steps: int, log_dir: Path) -> tuple[object, Plant, MachineConfig]:
    config = load_machine_config(SIM_CONFIG)
    plant = Plant.from_trial(30)
    machine = SimMachine(plant, config)
    controller = Controller(
        optimiser, machine, SafetyLayer(machine, config), mode, target=plant.target,
        thresholds=THRESHOLDS, max_steps=steps, log_dir=log_dir, plot=False,
    )  # fmt: skip
    return controller.run(), plant, config


def _assert_writes_within_limits(log_dir: Path, config: MachineConfig) -> int:
    """Every write within the config's hard bounds and max step of the previous setpoints."""
    records = read_run(log_dir)
    start = next(r for r in records if r["type"] == "start")
    current = dict(start["initial"])
    n = 0
    for r in records:
        writes = r.get("writes") if r["type"] == "step" else None
        for name, value in (writes or {}).items():
            knob = config.knob(name)
            assert knob.low <= value <= knob.high, (name, value)
            assert abs(value - current[name]) <= knob.max_step * (1 + 1e-9), (name, value)
            current[name] = value
            n += 1
    return n


def test_bo_tunes_the_simulated_machine(tmp_path: Path) -> None:
    """BO with the physics prior, 10 steps in auto mode (time budget generous: the result
    does not depend on the machine's load): from 358 um to below a quarter of it."""
    optimiser = BOOptimiser(prior="physics", budget_s=5.0)
    result, plant, config = _run(optimiser, "auto", 10, tmp_path / "run")
    assert result.abort_reason is None, result.abort_detail
    assert result.reason in (StopReason.step_budget, StopReason.target_reached)
    initial = 358.0e-6
    assert plant.mae() < 0.25 * initial
    assert result.writes > 0 and _assert_writes_within_limits(tmp_path / "run", config) > 0
    assert len(optimiser.session.rows) == result.steps  # one observation per step
    start = next(r for r in read_run(tmp_path / "run") if r["type"] == "start")
    assert start["source"] == "optimiser:" + optimiser.name and start["bundle"] is None


def test_shadow_mode_never_writes_and_other_optimisers_plug_in(tmp_path: Path) -> None:
    result, plant, _ = _run(BOOptimiser(prior="none", budget_s=5.0), "shadow", 4, tmp_path / "a")
    assert result.writes == 0 and plant.knobs() == pytest.approx(
        dict(zip(("Q1", "Q2", "CV", "Q3", "CH"), (10.0, -10.0, 0.0, 10.0, 0.0), strict=True))
    )
    result, _, config = _run(make_optimiser("nelder-mead"), "auto", 6, tmp_path / "b")
    assert result.abort_reason is None and result.writes > 0
    _assert_writes_within_limits(tmp_path / "b", config)


def test_controller_checks_the_optimiser_setup() -> None:
    config = load_machine_config(SIM_CONFIG)
    machine = SimMachine(Plant.from_trial(30), config)
    safety = SafetyLayer(machine, config)
    target = (0.0, 1e-4, 0.0, 1e-4)
    with pytest.raises(ValueError, match="thresholds .* are required"):
        Controller(BOOptimiser(prior="none"), machine, safety, "auto", target=target)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        Controller(
            BOOptimiser(), machine, safety, "auto", target=target, thresholds=THRESHOLDS,
            max_steps=0,
        )  # fmt: skip
    data = config.model_dump()
    data["observations"] = data["observations"][:2]
    short = MachineConfig.model_validate(data)
    machine = SimMachine(Plant.from_trial(30), short)
    with pytest.raises(ValueError, match=r"missing \['mu_y', 'sigma_y'\]"):
        Controller(
            BOOptimiser(), machine, SafetyLayer(machine, short), "auto", target=target,
            thresholds=THRESHOLDS,
        )  # fmt: skip


def test_tune_command_on_a_machine_config(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "tune"
    args = ["tune", "--machine", str(SIM_CONFIG), "--trial", "30", "--steps", "5"]
    result = runner.invoke(app, [*args, "--budget", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("summary.json", "session.json", "data.csv", "objective.png", "run/run.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "auto" and summary["run"]["reason"] == "step_budget"
    assert summary["run"]["final_mae"] < 358e-6
    # an EPICS machine needs a target (nothing is connected or written without one)
    result = runner.invoke(app, ["tune", "--machine", str(EPICS_CONFIG), "--out", str(out / "x")])
    assert result.exit_code == 2 and "needs a target" in result.output
    result = runner.invoke(app, ["tune", "--machine", "nowhere.yaml", "--out", str(out / "y")])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(app, ["tune", "--mode", "auto", "--out", str(out / "z")])
    assert result.exit_code == 2 and "apply to a machine config" in result.output
