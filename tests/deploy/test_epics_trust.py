"""EpicsMachine trusts nothing: what it checks on the IOC before the first write (units,
drive limits, types), frames and readbacks on an IOC whose records have monitor deadbands,
and the abort reason when another client's write races the post-write check -- against the
EPICS-base virtual IOC, with each transport (Channel Access through caproto and through
libca, PV Access).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accelrl.deploy.controller import Controller, StopReason
from accelrl.deploy.epics import EpicsMachine, IocMismatch
from accelrl.deploy.epics.ioc_check import check_control, exact_monitors
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import AbortReason, SafetyAbort, SafetyLayer

pytest.importorskip("softioc")

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "agents" / "apg-ares-ea" / "bundle"
TRANSPORTS = ["caproto", "pyepics", "pva"]
#: Deadbands on every readback (about a third of a full step: the end of a small move is
#: not posted) and on the screen readings (no update for an unchanged value); no reading
#: noise, so a frame of an unmoved beam repeats the last.
DEADBANDS: dict[str, Any] = {
    "server": "softioc",
    "magnets": {"settle_time_s": 0.02, "update_rate_hz": 200.0},
    "screen": {"frame_rate_hz": 50.0, "reading_noise": 0.0, "seed": 0},
    "heartbeat_period_s": 0.1,
    "records": {
        "refusal": "reject",
        "readback_deadband": {"Q1": 2.0, "Q2": 2.0, "Q3": 2.0, "CV": 2e-4, "CH": 2e-4},
        "observation_deadband": 0.0,
    },
}


def make_machine(ioc: Any, transport: str, config: Any = None, **kwargs: Any) -> EpicsMachine:
    """An unconnected machine on ``ioc`` over ``transport`` (``caproto``/``pyepics``: Channel
    Access with that client; ``pva``: PV Access)."""
    config = config or ioc.machine_config
    if transport == "pva":
        config = config.model_copy(update={"transport": "pva"})
        return EpicsMachine(config, addresses=[f"{ioc.host}:{ioc.pva_port}"], **kwargs)
    config = config.model_copy(update={"ca_client": transport})
    return EpicsMachine(config, addresses=[ioc.address], **kwargs)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    pytest.importorskip({"caproto": "caproto", "pyepics": "epics", "pva": "p4p"}[request.param])
    return request.param


@pytest.fixture(scope="module")
def sioc(start_ioc: Any) -> Iterator[Any]:
    """The EPICS-base IOC of this module (deadbands on; writes outside limits refused)."""
    with start_ioc(**DEADBANDS) as handle:
        yield handle


@pytest.fixture
def va(sioc: Any) -> Any:
    sioc.reset(timeout=30.0)
    return sioc


def knob_changed(config: Any, name: str, **fields: Any) -> Any:
    """``config`` with knob ``name``'s ``fields`` replaced."""
    knobs = tuple(k.model_copy(update=fields) if k.name == name else k for k in config.knobs)
    return config.model_copy(update={"knobs": knobs})


# ------------------------------------------------------------------ units and limits
def test_the_ioc_agrees_with_its_machine_config(va, transport):
    machine = make_machine(va, transport)
    machine.connect(timeout=5.0)
    try:
        check = machine.ioc_check
        assert check is not None and check.problems == [] and check.unchecked == []
        sp = machine.config.knob("CV").setpoint
        assert machine.control[sp].units == "rad"
        assert machine.control[sp].upper_ctrl_limit == pytest.approx(6.1782e-3, rel=1e-12)
        assert machine.control[machine.config.frame_pv].count == 4
    finally:
        machine.close()


def test_a_unit_mismatch_refuses_to_start(va, transport):
    """The config says mrad where the IOC serves rad: refused at connect, naming the PV, the
    IOC's unit and the config's; nothing is written."""
    config = knob_changed(va.machine_config, "CV", unit="mrad")
    machine = make_machine(va, transport, config)
    try:
        with pytest.raises(IocMismatch) as err:
            machine.connect(timeout=5.0)
        message = str(err.value)
        for pv in (config.knob("CV").setpoint, config.knob("CV").readback):
            assert f"{pv} (knob CV " in message
        assert "unit 'rad' on the IOC (EGU), 'mrad' in the machine config (unit)" in message
        assert "nothing was written" in message
    finally:
        machine.close()
    assert va.put_count() == 0


def test_an_ioc_limit_narrower_than_the_config_is_caught_before_the_first_write(
    va, transport, tmp_path
):
    """Q1's config allows +-80 1/m^2, the IOC's DRVL/DRVH +-72: a controller run aborts at
    its start, before any write, and names the PV, the IOC's limits and the config's."""
    config = knob_changed(va.machine_config, "Q1", low=-80.0, high=80.0)
    machine = make_machine(va, transport, config)
    policy = OnnxPolicy(BUNDLE)
    safety = SafetyLayer.for_bundle(machine, machine.config, policy.manifest)
    controller = Controller(
        policy, machine, safety, "auto", target=[0.0, 1e-4, 0.0, 1e-4], thresholds=[1e-9] * 4,
        max_steps=3, log_dir=tmp_path / "run", plot=False, announce=lambda line: None,
    )  # fmt: skip
    try:
        result = controller.run()
    finally:
        machine.close()
    assert result.reason is StopReason.abort and result.writes == 0
    assert result.abort_reason is AbortReason.machine_error
    detail = result.abort_detail
    assert "IocMismatch" in detail and config.knob("Q1").setpoint in detail
    assert "DRVL/DRVH = [-72.0, 72.0] 1/m^2 on the IOC" in detail
    assert "low/high = [-80.0, 80.0]" in detail
    assert va.put_count() == 0  # counted by the IOC: no write arrived


def test_egu_spells_the_iocs_unit_and_an_empty_egu_must_be_explicit(va):
    config = va.machine_config
    # the same unit spelled differently on the IOC: egu says how
    spelled = knob_changed(config, "Q1", unit="m^-2", egu="1/m^2")
    machine = make_machine(va, "caproto", spelled)
    machine.connect(timeout=5.0)
    machine.close()
    # an IOC without units passes only with egu: ""
    control = dict(machine.control)
    sp, rb = config.knob("Q1").setpoint, config.knob("Q1").readback
    for pv in (sp, rb):
        control[pv] = dataclasses.replace(control[pv], units="")
    check = check_control(config, control)
    assert any(f"{sp} (knob Q1 setpoint): the IOC gives no unit" in p for p in check.problems)
    assert check_control(knob_changed(config, "Q1", egu=""), control).problems == []
    # a unit the config does not state is listed, not checked
    unstated = check_control(knob_changed(config, "Q1", unit=""), machine.control)
    assert unstated.problems == [] and len(unstated.unchecked) == 2


def test_a_frame_pv_that_is_no_frame_is_refused(va):
    config = va.machine_config.model_copy(update={"frame_pv": va.sim_pv("TRUE:MAE")})
    machine = make_machine(va, "pyepics", config)
    try:
        with pytest.raises(IocMismatch, match=r"TRUE:MAE \(frame_pv\): 1 element\(s\) on the IOC, "
                           r"at least 4 expected"):  # fmt: skip
            machine.connect(timeout=5.0)
    finally:
        machine.close()


# ------------------------------------------------------------------ deadbands
def test_record_fields_tell_which_monitors_post_every_change(va):
    machine = make_machine(va, "pyepics", monitors="all")
    machine.connect(timeout=5.0)
    try:
        config = machine.config
        readbacks = {k.readback for k in config.knobs}
        setpoints = {k.setpoint for k in config.knobs}
        health = {config.interlock.pv, config.beam_loss.pv, config.heartbeat.pv}
        # readbacks have deadbands: read; setpoints (ao), bi, ai and longin without: served
        assert machine.exact_monitors == setpoints | health
        assert not readbacks & machine.exact_monitors
    finally:
        machine.close()
    fields = {"A.RTYP": "ai", "A.MDEL": "0.5", "B.RTYP": "bi", "B.MDEL": None, "C.RTYP": None}
    assert exact_monitors(["A", "B", "C"], {**fields, "C.MDEL": None}) == {"B"}


@pytest.mark.parametrize("frame", [True, False], ids=["frame_pv", "observation_pvs"])
@pytest.mark.parametrize("monitors", ["all", "observations"])
@pytest.mark.parametrize("client", ["caproto", "pyepics"])
def test_a_deadband_ioc_runs_without_a_spurious_abort(va, client, monitors, frame, tmp_path):
    """Readbacks post only moves beyond their deadband, the screen readings no unchanged
    value (no noise): the monitors go quiet while the values stand. The controller must
    still see every fresh frame (from a read where no update came) and every arrived
    readback, and tune without an abort."""
    config = va.machine_config
    if not frame:
        config = config.model_copy(update={"frame_pv": None})
    config = config.model_copy(
        update={"timing": config.timing.model_copy(update={"reading_timeout_s": 1.0})}
    )
    # under "all", monitors synced within a second serve (the rule is what keeps them honest)
    lag = {"max_monitor_lag_s": 1.0} if monitors == "all" else {}
    machine = make_machine(va, client, config, monitors=monitors, **lag)
    policy = OnnxPolicy(BUNDLE)
    machine.connect(timeout=5.0)
    safety = SafetyLayer.for_bundle(machine, machine.config, policy.manifest)
    controller = Controller(
        policy, machine, safety, "auto", target=[0.0, 1e-4, 0.0, 1e-4], thresholds=[1e-9] * 4,
        max_steps=8, log_dir=tmp_path / "run", plot=False, announce=lambda line: None,
    )  # fmt: skip
    try:
        result = controller.run()
        stats = machine.stats
    finally:
        machine.close()
    assert result.abort_reason is None, result.abort_detail
    assert result.reason is StopReason.step_budget and result.writes == 8
    assert stats["round_trips"] > 0  # the quiet channels were read
    if monitors == "all":
        assert stats["cached"] > 0  # ... and the others served


# ------------------------------------------------------------------ races
@pytest.mark.parametrize("monitors", ["observations", "synced"])
def test_another_clients_write_racing_the_post_write_check_is_setpoint_changed(
    va, transport, monitors
):
    """Another client writes Q1 after this client's put has landed and before the setpoints
    are read back: the abort says another client changed it (not that the put was
    rejected), and the rollback leaves that knob alone."""
    if transport == "pva" and monitors == "synced":
        pytest.skip("PV Access has no monitors")
    machine = make_machine(va, transport, monitors=monitors)
    machine.connect(timeout=5.0)
    setpoint = machine.config.knob("Q1").setpoint
    settle = machine.settle

    def settle_then_race(names: Any, timeout: float | None = None) -> None:
        settle(names, timeout)  # the put is complete: applied
        va.caput(setpoint, 12.5)  # another client's put, complete before the check reads

    safety = SafetyLayer(machine, machine.config)
    try:
        safety.start()
        machine.settle = settle_then_race  # type: ignore[method-assign]
        with pytest.raises(SafetyAbort) as err:
            safety.write({"Q1": 11.0})
        machine.settle = settle  # type: ignore[method-assign]
        result = safety.rollback()
    finally:
        machine.close()
    assert err.value.reason is AbortReason.setpoint_changed, err.value
    assert "reads 12.5" in err.value.detail and "after the put" in err.value.detail
    assert result.foreign == {"Q1": 12.5}
    assert va.caget(setpoint) == 12.5  # the other client's value stays
