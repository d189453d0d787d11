"""Machine configs: explicit protections, finite thresholds, sane tolerances, one role per PV,
and errors that name the file, the field and the value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_testlib import ROOT

from accelrl.deploy.config import MachineConfigError, load_machine_config

CA_CONFIG = ROOT / "deploy" / "virtual_ares_ea_machine.yaml"
SHIPPED = sorted((ROOT / "deploy").glob("*.yaml"))


def ca_data() -> dict[str, Any]:
    return yaml.safe_load(CA_CONFIG.read_text())


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "machine.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_machine_config(path)


def refused(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(MachineConfigError) as info:
        load(tmp_path, data)
    message = str(info.value)
    assert str(tmp_path / "machine.yaml") in message  # the file is named
    return message


def test_shipped_machine_configs_load_with_their_protections() -> None:
    for path in SHIPPED:
        if path.name == "virtual_ares_ea.yaml":  # the IOC's config, not a machine config
            continue
        config = load_machine_config(path)
        protections = config.protections()
        assert set(protections) == {"interlock", "beam_loss", "heartbeat"}
        if config.transport != "sim":
            assert all("pv" in p or "none" in p for p in protections.values()), path


@pytest.mark.parametrize("key", ["interlock", "beam_loss", "heartbeat"])
@pytest.mark.parametrize("transport", ["ca", "pva"])
def test_a_real_transport_needs_every_protection_or_an_explicit_opt_out(tmp_path, key, transport):
    data = {**ca_data(), "transport": transport}
    del data[key]
    message = refused(tmp_path, data)
    assert f"{key}: transport {transport!r} needs" in message and "none" in message
    data[key] = {"pv": None}
    assert f"{key}: transport" in refused(tmp_path, data)
    data[key] = {"none": "test stand without it"}
    config = load(tmp_path, data)
    assert config.protections()[key] == {"none": "test stand without it"}
    assert f"{key}: OFF (none: test stand without it)" in config.protection_lines()


def test_an_opt_out_needs_a_reason_and_excludes_a_pv(tmp_path):
    data = ca_data()
    data["interlock"] = {"none": "  "}
    assert "give the reason" in refused(tmp_path, data)
    data["interlock"] = {"none": "no interlock", "pv": "VA:INTERLOCK"}
    assert "not both" in refused(tmp_path, data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("beam_loss", "max"), float("nan")),
        (("interlock", "tripped_when"), float("nan")),
        (("heartbeat", "max_age_s"), float("inf")),
        (("timing", "settle_timeout_s"), float("inf")),
        (("timing", "reading_timeout_s"), float("nan")),
        (("rollback", "outage_deadline_s"), float("inf")),
        (("rollback", "outage_deadline_s"), -1.0),
    ],
)
def test_every_threshold_is_finite(tmp_path, field, value):
    data = ca_data()
    data.setdefault(field[0], {})[field[1]] = value
    message = refused(tmp_path, data)
    assert f"{field[0]}.{field[1]} = {value!r}" in message  # the field and the value


def test_nonfinite_values_are_refused_in_yaml_spelling(tmp_path):
    text = CA_CONFIG.read_text().replace("max: 0.5", "max: .nan")
    path = tmp_path / "machine.yaml"
    path.write_text(text)
    with pytest.raises(MachineConfigError, match=r"beam_loss.max = nan: Input should be a fin"):
        load_machine_config(path)


def test_tolerances_must_resolve_a_step(tmp_path):
    data = ca_data()
    data["knobs"][0]["tolerance"] = 1e9
    message = refused(tmp_path, data)
    assert "knobs.0" in message and "tolerance = 1000000000.0" in message and "range" in message
    data["knobs"][0]["tolerance"] = 7.2  # = max_step: a rejected put would look applied
    assert "below max_step" in refused(tmp_path, data)


@pytest.mark.parametrize(
    ("edit", "roles"),
    [
        (lambda d: d["knobs"][1].update(setpoint=d["knobs"][0]["setpoint"]),
         "knobs.0.setpoint and knobs.1.setpoint"),
        (lambda d: d["knobs"][0].update(setpoint=d["interlock"]["pv"]),
         "knobs.0.setpoint and interlock.pv"),
        (lambda d: d["heartbeat"].update(pv=d["beam_loss"]["pv"]), "beam_loss.pv and heartbeat.pv"),
        (lambda d: d["observations"][0].update(pv=d["knobs"][2]["readback"]),
         "knobs.2.readback and observations.0.pv"),
        (lambda d: d["knobs"][3].update(busy=d["knobs"][4]["busy"]),
         "knobs.3.busy and knobs.4.busy"),
    ],
)  # fmt: skip
def test_every_pv_has_one_role(tmp_path, edit, roles):
    data = ca_data()
    edit(data)
    message = refused(tmp_path, data)
    assert "every PV must have one role" in message and roles in message


def test_a_readback_may_be_its_own_setpoint(tmp_path):
    data = ca_data()
    data["knobs"][0]["readback"] = data["knobs"][0]["setpoint"]
    assert load(tmp_path, data).knobs[0].readback_pv == data["knobs"][0]["setpoint"]


def test_sim_protections_are_simulated_unless_opted_out(tmp_path):
    data = yaml.safe_load((ROOT / "deploy" / "sim_ares_ea.yaml").read_text())
    config = load(tmp_path, data)
    assert config.protections()["interlock"] == {"simulated": True, "tripped_when": 1.0}
    data = copy.deepcopy(data)
    data["interlock"] = {"none": "the simulation has no interlock"}
    assert load(tmp_path, data).protection_lines()[0] == (
        "interlock: OFF (none: the simulation has no interlock)"
    )


def test_prefix_renaming_keeps_the_opt_outs(tmp_path):
    from accelrl.deploy.virtual.config import with_prefix

    data = ca_data()
    data["heartbeat"] = {"none": "no heartbeat record"}
    renamed = with_prefix(load(tmp_path, data), "VB:")
    assert renamed.interlock.pv == "VB:INTERLOCK" and renamed.heartbeat.opted_out
