"""EpicsMachine over PV Access (``transport: pva``) against a p4p server on 127.0.0.1.

Skipped when p4p (optional) is not installed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

p4p = pytest.importorskip("p4p")

from p4p.nt import NTScalar  # noqa: E402
from p4p.server import Server  # noqa: E402
from p4p.server.thread import SharedPV  # noqa: E402

from accelrl.deploy.config import load_machine_config  # noqa: E402
from accelrl.deploy.epics import EpicsMachine  # noqa: E402
from accelrl.deploy.machine import Disconnected, PutRejected  # noqa: E402

MACHINE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "virtual_ares_ea_machine.yaml"


class _Setpoint:
    """A power supply without dynamics: the readback follows a write at once."""

    def __init__(self, readback: SharedPV, low: float, high: float) -> None:
        self.readback, self.low, self.high = readback, low, high

    def put(self, pv: SharedPV, op: Any) -> None:
        value = float(op.value())
        if not self.low <= value <= self.high:
            op.done(error=f"{value} outside [{self.low}, {self.high}]")
            return
        now = time.time()
        pv.post(value, timestamp=now)
        self.readback.post(value, timestamp=now)
        op.done()


def _served(value: Any, timestamp: float, unit: str, low: float = 0.0, high: float = 0.0):
    """A double (or double array) with the display unit and drive limits an IOC's QSRV serves."""
    nt = NTScalar("ad" if isinstance(value, list) else "d", display=True, control=True)
    initial = {
        "value": value,
        "display": {"units": unit},
        "control": {"limitLow": low, "limitHigh": high},
    }
    return nt, nt.wrap(initial, timestamp=timestamp)


@pytest.fixture
def pva_server():
    base = load_machine_config(MACHINE_CONFIG)
    config = base.model_validate({**base.model_dump(exclude={"ca_client"}), "transport": "pva"})
    now = time.time()
    pvs: dict[str, SharedPV] = {}
    for knob in config.knobs:
        nt, value = _served(0.0, now, knob.unit, knob.low, knob.high)
        rb = SharedPV(nt=nt, initial=value)
        pvs[knob.readback] = rb
        nt, value = _served(0.0, now, knob.unit, knob.low, knob.high)
        pvs[knob.setpoint] = SharedPV(
            nt=nt, initial=value, handler=_Setpoint(rb, knob.low, knob.high)
        )
        pvs[knob.busy] = SharedPV(nt=NTScalar("i"), initial=0)
    for obs in config.observations:
        nt, value = _served(1e-4, now, obs.unit)
        pvs[obs.pv] = SharedPV(nt=nt, initial=value)
    if config.frame_pv:  # one frame: every observation in one array, one time stamp
        nt, value = _served([1e-4] * len(config.observations), now, config.observations[0].unit)
        pvs[config.frame_pv] = SharedPV(nt=nt, initial=value)
    pvs[config.interlock.pv] = SharedPV(nt=NTScalar("i"), initial=0)
    pvs[config.beam_loss.pv] = SharedPV(nt=NTScalar("d"), initial=0.05)
    pvs[config.heartbeat.pv] = SharedPV(nt=NTScalar("i"), initial=1, timestamp=now)
    conf = {
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_SERVER_PORT": "0",
        "EPICS_PVAS_BROADCAST_PORT": "0",
    }
    server = Server(providers=[pvs], conf=conf, useenv=False)
    address = f"127.0.0.1:{server.conf()['EPICS_PVAS_BROADCAST_PORT']}"
    try:
        yield config, address, pvs, server
    finally:
        server.stop()


def test_pva_read_put_settle_health(pva_server):
    config, address, pvs, _ = pva_server
    machine = EpicsMachine(config, addresses=[address])
    machine.connect(timeout=3.0)
    try:
        assert machine.read_knobs().values == pytest.approx(dict.fromkeys(config.knob_names, 0.0))
        obs = machine.read_observation()
        assert obs.values["sigma_x"] == pytest.approx(1e-4)
        assert obs.timestamp > 0
        machine.put({"Q1": 5.0})
        machine.settle(["Q1"], timeout=1.0)
        assert machine.read_knobs().values["Q1"] == 5.0
        with pytest.raises(PutRejected, match="outside"):
            machine.put({"Q1": 100.0})
        health = machine.health()
        assert health.connected and not health.interlock and not health.beam_loss
        pvs[config.interlock.pv].post(1)
        assert machine.health().interlock
    finally:
        machine.close()


def test_pva_connect_names_missing_pvs_and_server_loss(pva_server):
    config, address, _, server = pva_server
    observations = (*config.observations, {"name": "extra", "pv": "NOPE:PVA"})
    bad = config.model_validate({**config.model_dump(), "observations": observations})
    machine = EpicsMachine(bad, addresses=[address])
    with pytest.raises(Disconnected, match="NOPE:PVA"):
        machine.connect(timeout=0.5)
    machine.close()
    machine = EpicsMachine(config, addresses=[address])
    machine.connect(timeout=3.0)
    try:
        server.stop()
        with pytest.raises(Disconnected):
            machine.read_observation()
    finally:
        machine.close()
