"""``export`` and ``deploy run`` commands, the shipped machine config and bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from deploy_testlib import BUNDLE, ROOT, SIM_CONFIG
from typer.testing import CliRunner

from accelrl.cli import app
from accelrl.cli.deploy import deploy_app
from accelrl.deploy.config import load_machine_config
from accelrl.deploy.runlog import read_run
from accelrl.deploy.runtime import OnnxPolicy

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_export_command_writes_a_verified_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", str(ROOT / "agents" / "apg-ares-ea"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity with the source on 10000 observations" in result.output
    assert OnnxPolicy(out).manifest.source == "mlp-policy"


def test_export_command_reports_bad_models(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "not a policy directory" in result.output


def test_deploy_run_auto_on_the_simulation(tmp_path: Path) -> None:
    log = tmp_path / "run"
    args = ["run", "--bundle", str(BUNDLE), "--machine", str(SIM_CONFIG), "--mode", "auto"]
    result = runner.invoke(deploy_app, [*args, "--trial", "30", "--log", str(log), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "target_reached" in result.output
    summary = json.loads((log / "summary.json").read_text())
    assert summary["reason"] == "target_reached" and summary["writes"] >= 1
    assert summary["final_mae"] < 2e-5


def test_deploy_run_shadow_with_explicit_target_and_budget(tmp_path: Path) -> None:
    log = tmp_path / "shadow"
    result = runner.invoke(
        deploy_app,
        [
            "run", "--bundle", str(BUNDLE), "--machine", str(SIM_CONFIG), "--mode", "shadow",
            "--target", "1e-4,2e-4,-1e-4,1e-4", "--steps", "3", "--log", str(log), "--no-plot",
            "--reading-noise", "2e-6", "--settle-delay", "0.01",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_run(log)
    assert records[0]["target"] == {"mu_x": 1e-4, "sigma_x": 2e-4, "mu_y": -1e-4, "sigma_y": 1e-4}
    assert [r["decision"] for r in records if r["type"] == "step"] == ["shadow"] * 3
    assert records[-1]["writes"] == 0


def test_deploy_run_validates_its_input(tmp_path: Path) -> None:
    base = ["run", "--bundle", str(BUNDLE), "--machine", str(SIM_CONFIG)]
    bad_target = runner.invoke(deploy_app, [*base, "--target", "1,2,3"])
    assert bad_target.exit_code == 2 and "need 4 values" in bad_target.output
    bad_trial = runner.invoke(deploy_app, [*base, "--trial", "999", "--log", str(tmp_path)])
    assert bad_trial.exit_code == 2 and "out of range" in bad_trial.output
    config = yaml.safe_load(SIM_CONFIG.read_text())
    config["knobs"][0]["low"] = 100.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    bad_config = runner.invoke(
        deploy_app, ["run", "--bundle", str(BUNDLE), "--machine", str(tmp_path / "bad.yaml")]
    )
    assert bad_config.exit_code == 2 and "knobs.0" in bad_config.output
    ca = ROOT / "deploy" / "virtual_ares_ea_machine.yaml"
    if ca.is_file():  # a Channel Access machine has no trial to take a target from
        no_target = runner.invoke(
            deploy_app, ["run", "--bundle", str(BUNDLE), "--machine", str(ca)]
        )
        assert no_target.exit_code == 2 and "needs a target" in no_target.output


def test_sim_machine_config_matches_the_task_and_the_policy() -> None:
    config = load_machine_config(SIM_CONFIG)
    spec = yaml.safe_load((ROOT / "envs" / "ares_ea.yaml").read_text())
    manifest = OnnxPolicy(BUNDLE).manifest
    assert config.transport == "sim" and config.env_id == manifest.env_id
    assert config.knob_names == manifest.knob_names
    for knob, act, q in zip(config.knobs, spec["actuators"], manifest.action, strict=True):
        assert (knob.name, knob.low, knob.high) == (act["name"], act["low"], act["high"])
        assert knob.max_step == pytest.approx(q.high, rel=1e-7)  # the policy's delta limit


def test_deploy_run_prints_and_logs_a_protection_opt_out(tmp_path: Path) -> None:
    config = yaml.safe_load(SIM_CONFIG.read_text())
    config["beam_loss"] = {"none": "no loss monitor in this simulation"}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "run"
    result = runner.invoke(
        deploy_app,
        [
            "run", "--bundle", str(BUNDLE), "--machine", str(tmp_path / "m.yaml"),
            "--steps", "1", "--log", str(log), "--no-plot",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "beam_loss: OFF (none: no loss monitor in this simulation)" in result.output
    start = read_run(log)[0]
    assert start["protections"]["beam_loss"] == {"none": "no loss monitor in this simulation"}
