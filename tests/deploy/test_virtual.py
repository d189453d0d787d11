"""The virtual accelerator: its configs, its PVs and fault injection, over Channel Access."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from accelrl.deploy.config import load_machine_config
from accelrl.deploy.machine import PutRejected, SettleTimeout
from accelrl.deploy.virtual import (
    FAULTS,
    VirtualConfigError,
    free_port,
    load_virtual_config,
    unique_prefix,
    with_prefix,
)

ROOT = Path(__file__).resolve().parents[2]
VIRTUAL_CONFIG = ROOT / "deploy" / "virtual_ares_ea.yaml"
MACHINE_CONFIG = ROOT / "deploy" / "virtual_ares_ea_machine.yaml"


# ------------------------------------------------------------------------- configs
def test_shipped_configs_are_valid_and_match_the_task():
    loaded = load_virtual_config(VIRTUAL_CONFIG)
    assert loaded.config.trial == 30
    assert loaded.config.machine == MACHINE_CONFIG
    machine = loaded.machine
    assert machine.transport == "ca"
    assert machine.knob_names == ("Q1", "Q2", "CV", "Q3", "CH")
    assert machine.observation_names == ("mu_x", "sigma_x", "mu_y", "sigma_y")
    task = yaml.safe_load((ROOT / "envs" / "ares_ea.yaml").read_text())
    for actuator in task["actuators"]:
        knob = machine.knob(actuator["name"])
        assert (knob.low, knob.high) == (actuator["low"], actuator["high"])
        assert knob.max_step == pytest.approx(0.1 * max(abs(knob.low), abs(knob.high)))
        assert knob.unit == actuator["unit"]
    # every role has a PV of its own: 3 per knob, one per observation, interlock, beam
    # loss and heartbeat
    roles = 3 * len(machine.knobs) + len(machine.observations) + 3
    assert len(machine.pv_names) == roles


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"port": 80}, "port"),
        ({"trial": -1}, "trial"),
        ({"magnets": {"settle_time_s": -1.0}}, "magnets.settle_time_s"),
        ({"faults": {"active": ["meltdown"]}}, "faults.active"),
        ({"faults": {"active": ["disconnect"]}}, "cannot be on from the start"),
        ({"faults": {"stuck_knob": "Q9"}}, "stuck_knob 'Q9'"),
        ({"faults": {"schedule": [{"fault": "stale"}]}}, "exactly one of after_puts"),
        ({"faults": {"schedule": [{"fault": "stale", "after_s": 1, "writes": 1}]}}, "writes"),
        ({"initial_knobs": {"Q7": 1.0}}, "unknown knobs"),
        ({"prefix": "has space"}, "prefix"),
        ({"colour": "red"}, "colour"),
        ({"server": "pcaspy"}, "server"),
        ({"pva_port": 5064}, "must differ"),
        ({"beam_loss_level": float("nan")}, "beam_loss_level"),
        ({"faults": {"beam_loss_level": float("inf")}}, "faults.beam_loss_level"),
        ({"records": {"refusal": "maybe"}}, "records.refusal"),
        ({"records": {"refusal_by_knob": {"Q9": "reject"}}}, "unknown knobs"),
        ({"records": {"readback_deadband": {"Q1": -1.0}}}, "readback_deadband"),
        ({"records": {"readback_deadband": {"Q1": float("nan")}}}, "readback_deadband"),
        ({"records": {"observation_deadband": -2.0}}, "observation_deadband"),
        ({"sim_prefix": "SIM :"}, "sim_prefix"),
        ({"server": "caproto", "screen": {"image_dtype": "uint16"}}, "uint8 images only"),
    ],
)
def test_invalid_ioc_config_names_the_field(tmp_path, change, message):
    data = yaml.safe_load(VIRTUAL_CONFIG.read_text())
    data["machine"] = str(MACHINE_CONFIG)
    data.update(change)
    path = tmp_path / "ioc.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VirtualConfigError, match=message) as err:
        load_virtual_config(path)
    assert str(path) in str(err.value)


def test_missing_machine_config_is_reported(tmp_path):
    path = tmp_path / "ioc.yaml"
    path.write_text("machine: nowhere.yaml\n")
    with pytest.raises(VirtualConfigError, match="nowhere.yaml"):
        load_virtual_config(path)


def test_with_prefix_renames_every_pv():
    machine = load_machine_config(MACHINE_CONFIG)
    renamed = with_prefix(machine, "VB3:")
    old, new = machine.pv_names, renamed.pv_names
    assert all(n.startswith("VB3:") for n in new)
    assert [n[len("VB3:") :] for n in new] == [n[len("VA:") :] for n in old]
    assert renamed.frame_pv == "VB3:AREABSCR1:FRAME"  # not in pv_names, renamed as well
    assert with_prefix(machine, None) is machine
    assert unique_prefix() != unique_prefix()


# ------------------------------------------------------------------------- the IOC
def test_ioc_own_pvs(ioc):
    assert ioc.caget(ioc.sim_pv("TRIAL")) == 30
    assert ioc.faults() == set()
    assert ioc.put_count() == 0
    assert 0.0 < ioc.true_mae() < 5e-3
    hb = ioc.machine_config.heartbeat.pv
    first = ioc.caget(hb)
    time.sleep(0.35)
    assert ioc.caget(hb) > first


def test_setpoint_pvs_publish_their_limits(ioc):
    from caproto.threading.client import Context

    from accelrl.deploy.epics import CaChannels

    channels = CaChannels([ioc.address])
    try:
        name = ioc.machine_config.knob("CV").setpoint
        assert channels.connect([name], 3.0) == []
        pv = channels._pvs[name]
        control = pv.read(data_type="control", timeout=2.0).metadata
        assert control.lower_ctrl_limit == pytest.approx(-6.1782e-3)
        assert control.upper_ctrl_limit == pytest.approx(6.1782e-3)
        assert isinstance(channels._context, Context)
    finally:
        channels.close()


def test_readbacks_and_screen_are_read_only(ioc):
    with pytest.raises(PutRejected):
        ioc.caput(ioc.machine_config.knob("Q1").readback, 3.0)
    with pytest.raises(PutRejected):
        ioc.caput(ioc.machine_config.observations[0].pv, 0.0)


def test_screen_has_seeded_reading_noise(ioc, machine):
    values = []
    last = 0.0
    while len(values) < 3:
        reading = machine.read_observation()
        if reading.timestamp > last:
            values.append(reading.values["mu_x"])
            last = reading.timestamp
        time.sleep(0.02)
    assert len(set(values)) == 3  # the knobs did not move, the noise did
    assert max(values) - min(values) < 5e-5


def test_reset_restores_the_initial_settings(ioc, machine):
    machine.put({"Q1": 15.0})
    machine.settle(["Q1"])
    ioc.set_faults("stale", "interlock")
    ioc.reset()
    assert ioc.faults() == set()
    assert ioc.put_count() == 0
    assert machine.read_knobs().values["Q1"] == 10.0
    assert machine.read_setpoints().values["Q1"] == 10.0
    assert not machine.health().interlock


def test_unknown_fault_is_refused(ioc):
    with pytest.raises(PutRejected):
        ioc.caput(ioc.sim_pv("FAULT"), "meltdown")
    assert ioc.faults() == set()
    assert "unknown faults" in ioc.log()
    assert set(FAULTS) >= {"disconnect", "stale", "reject_put", "interlock", "beam_loss"}


def test_scheduled_faults(start_ioc):
    schedule = [
        {"fault": "interlock", "after_puts": 2},
        {"fault": "reject_put", "after_puts": 2, "writes": 1},
        {"fault": "beam_loss", "after_s": 0.0, "duration_s": 0.3},
    ]
    with start_ioc(faults={"schedule": schedule, "stuck_knob": "Q1"}) as ioc:
        machine = ioc.machine()
        machine.connect(timeout=5.0)
        try:
            assert machine.health().beam_loss or ioc.faults() <= {"beam_loss"}
            time.sleep(0.4)
            assert not machine.health().beam_loss  # its 0.3 s are over

            def put(value: float) -> None:
                """Write Q1 and collect the IOC's completion (Q1 is stuck: it never settles)."""
                machine.put({"Q1": value})
                with contextlib.suppress(SettleTimeout):
                    machine.settle(["Q1"], timeout=0.2)

            put(11.0)
            put(12.0)
            time.sleep(0.1)
            assert machine.health().interlock  # after the 2nd write
            with pytest.raises(PutRejected):
                put(13.0)  # the 3rd write is lost ...
            put(13.0)  # ... once
            assert machine.read_setpoints().values["Q1"] == 13.0
            assert ioc.put_count() == 4
        finally:
            machine.close()


def test_serve_virtual_command_serves_the_config(tmp_path):
    port = free_port()
    prefix = unique_prefix()
    written = tmp_path / "machine.yaml"
    code = (
        "import typer; from accelrl.cli.serve_virtual import serve_virtual_command; "
        "typer.run(serve_virtual_command)"
    )
    args = [sys.executable, "-c", code, "--config", str(VIRTUAL_CONFIG), "--port", str(port)]
    args += ["--prefix", prefix, "--trial", "57", "--fault", "stale"]
    args += ["--write-machine-config", str(written)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith(f"READY {port} {prefix}"), line
        from accelrl.deploy.epics import EpicsMachine

        machine = EpicsMachine(load_machine_config(written), addresses=[f"127.0.0.1:{port}"])
        machine.connect(timeout=5.0)
        try:
            assert machine.read_knobs().values["Q1"] == 10.0
        finally:
            machine.close()
        from accelrl.deploy.epics import CaChannels

        channels = CaChannels([f"127.0.0.1:{port}"])
        try:
            names = [f"{prefix}SIM:TRIAL", f"{prefix}SIM:FAULT"]
            assert channels.connect(names, 3.0) == []
            values = channels.read(names, 2.0)
            assert values[names[0]].value == 57 and values[names[1]].value == "stale"
        finally:
            channels.close()
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()


def test_serve_virtual_command_reports_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"machine: {MACHINE_CONFIG}\nport: 12\n")
    code = (
        "import typer; from accelrl.cli.serve_virtual import serve_virtual_command; "
        "typer.run(serve_virtual_command)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "port" in result.stderr and str(bad) in result.stderr


def test_fault_pv_counts_lost_writes(ioc, machine):
    ioc.set_faults("ignore_put:2")
    assert ioc.faults() == {"ignore_put"}
    machine.put({"Q1": 11.0, "Q2": -9.0})  # both ignored
    machine.settle(["Q1", "Q2"])
    assert ioc.faults() == set()
    machine.put({"Q1": 11.0})
    assert machine.read_setpoints().values["Q1"] == 11.0
    assert machine.read_setpoints().values["Q2"] == -10.0
    with pytest.raises(PutRejected):
        ioc.caput(ioc.sim_pv("FAULT"), "stale:3")


def test_screen_image_waveform(ioc, machine):
    width, height = ioc.caget(ioc.pv("AREABSCR1:WIDTH")), ioc.caget(ioc.pv("AREABSCR1:HEIGHT"))
    image = ioc.caget(ioc.pv("AREABSCR1:IMAGE"))
    assert len(image) == width * height == 128 * 96
    pixels = [int(v) for v in image]
    assert max(pixels) > 200  # the beam spot
    assert min(pixels) == 0  # dark around it
