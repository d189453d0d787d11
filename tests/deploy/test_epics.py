"""EpicsMachine over real Channel Access traffic to the virtual accelerator on 127.0.0.1, with
both Channel Access clients: caproto's and EPICS base's libca through pyepics
(``ca_client``). Tests that count TCP sends reach into caproto's circuits and run with it
only; the others run with both.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accelrl.deploy.config import load_machine_config
from accelrl.deploy.epics import EpicsMachine
from accelrl.deploy.machine import (
    Disconnected,
    Machine,
    MachineError,
    PutRejected,
    SettleTimeout,
)

MACHINE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "virtual_ares_ea_machine.yaml"
START = {"Q1": 10.0, "Q2": -10.0, "CV": 0.0, "Q3": 10.0, "CH": 0.0}
CA_CLIENTS = ["caproto", "pyepics"]


@pytest.fixture(params=CA_CLIENTS)
def ca_client(request: pytest.FixtureRequest) -> str:
    """The Channel Access client of the machines of a test."""
    if request.param == "pyepics":
        pytest.importorskip("epics")
    return request.param


def make_machine(ioc, ca_client: str = "caproto", config=None, **kwargs) -> EpicsMachine:
    """An unconnected EpicsMachine on ``ioc`` with ``ca_client``."""
    config = (config or ioc.machine_config).model_copy(update={"ca_client": ca_client})
    kwargs.setdefault("addresses", [ioc.address])
    return EpicsMachine(config, **kwargs)


@pytest.fixture
def machine(ioc, ca_client):
    """A connected EpicsMachine on the shared IOC, with each Channel Access client."""
    m = make_machine(ioc, ca_client)
    m.connect(timeout=5.0)
    try:
        yield m
    finally:
        m.close()


def wait_fresh_observation(machine, after: float, timeout: float = 3.0):
    """The first observation time-stamped after ``after`` (the fresh-reading rule)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reading = machine.read_observation()
        if reading.timestamp > after:
            return reading
        time.sleep(0.01)
    raise AssertionError(f"no observation newer than {after} within {timeout} s")


def test_is_a_machine_and_torch_free():
    machine = EpicsMachine(load_machine_config(MACHINE_CONFIG))
    assert isinstance(machine, Machine)
    assert machine.knob_names == ("Q1", "Q2", "CV", "Q3", "CH")
    assert machine.observation_names == ("mu_x", "sigma_x", "mu_y", "sigma_y")
    code = (
        "import sys, accelrl.deploy.epics, accelrl.deploy.virtual; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rejects_sim_transport_and_missing_p4p():
    config = load_machine_config(MACHINE_CONFIG)
    with pytest.raises(ValueError, match="transport 'ca' or 'pva'"):
        EpicsMachine(config.model_copy(update={"transport": "sim"}))
    try:
        import p4p  # noqa: F401
    except ImportError:
        machine = EpicsMachine(config.model_copy(update={"transport": "pva"}))
        with pytest.raises(MachineError, match="needs p4p"):
            machine.connect(timeout=0.5)


def test_connect_read(machine):
    knobs = machine.read_knobs()
    assert knobs.values == pytest.approx(START)
    assert machine.read_setpoints().values == pytest.approx(START)
    obs = machine.read_observation()
    assert set(obs.values) == {"mu_x", "sigma_x", "mu_y", "sigma_y"}
    assert all(math.isfinite(v) for v in obs.values.values())
    assert obs.values["sigma_x"] > 0 and obs.values["sigma_y"] > 0
    # IOC time stamps: frames arrive at 20 Hz, so the reading is recent
    assert 0.0 <= time.time() - obs.timestamp < 2.0
    health = machine.health()
    assert health.connected and not health.interlock and not health.beam_loss
    assert health.heartbeat_age_s is not None and health.heartbeat_age_s < 1.0
    assert health.detail == ()


def test_connect_names_the_pvs_that_do_not_connect(ioc, ca_client):
    config = ioc.machine_config
    observations = (*config.observations, {"name": "extra", "unit": "m", "pv": "NOPE:EXTRA"})
    bad = config.model_validate({**config.model_dump(), "observations": observations})
    machine = make_machine(ioc, ca_client, bad)
    try:
        with pytest.raises(Disconnected, match="NOPE:EXTRA") as err:
            machine.connect(timeout=0.5)
        assert "1 of" in str(err.value) and ioc.address in str(err.value)
    finally:
        machine.close()


def test_nothing_answers_on_a_wrong_port(ioc, ca_client):
    from accelrl.deploy.virtual import free_port

    machine = make_machine(ioc, ca_client, addresses=[f"127.0.0.1:{free_port()}"])
    try:
        with pytest.raises(Disconnected, match="did not connect"):
            machine.connect(timeout=0.3)
    finally:
        machine.close()


def test_caproto_client_search_backs_off_and_restarts_on_a_beacon():
    """An unanswered search goes out again after 30 ms, 60 ms, 120 ms, ... (caproto 1.3's own
    loop sends it once, then not for 7.65 s), and a beacon of a new or restarted server sends
    it again at once (no IOC: a UDP socket stands in for it)."""
    import socket

    import caproto as ca

    from accelrl.deploy.epics import CaChannels

    def searches_until(deadline: float) -> list[float]:
        times = []
        while (left := deadline - time.monotonic()) > 0:
            server.settimeout(left)
            try:
                data = server.recvfrom(4096)[0]
            except TimeoutError:
                break
            assert b"NOPE:PV" in data
            times.append(time.monotonic())
        return times

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        channels = CaChannels([f"127.0.0.1:{port}"])
        try:
            start = time.monotonic()
            assert channels.connect(["NOPE:PV"], 0.0) == ["NOPE:PV"]
            # searches at 0, 0.03, 0.09, 0.21, 0.45, 0.93 and 1.89 s; the next at 3.81 s
            times = searches_until(start + 2.3)
            assert len(times) >= 6, [round(t - start, 3) for t in times]
            assert times[-1] - start > 1.5, [round(t - start, 3) for t in times]
            client_port = channels._context.broadcaster.udp_sock.getsockname()[1]
            beacon = ca.Beacon(13, server_port=port, beacon_id=0, address="127.0.0.1")
            sent = time.monotonic()
            server.sendto(bytes(beacon), ("127.0.0.1", client_port))
            after = searches_until(sent + 0.5)  # well before the 3.81 s search
            assert after and after[0] - sent < 0.5
        finally:
            channels.close()


def test_caproto_client_takes_search_answers_only_from_its_servers():
    """Another client's search request with the id of one of ours (it reads as a search
    response for a server at port 5) must not bind the channel: only datagrams from the
    searched server's port answer a search (no IOC: UDP sockets stand in)."""
    import socket

    import caproto as ca

    from accelrl.deploy.epics import CaChannels

    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other,
    ):
        server.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        server.settimeout(2.0)
        channels = CaChannels([f"127.0.0.1:{server.getsockname()[1]}"])
        try:
            assert channels.connect(["NOPE:PV"], 0.0) == ["NOPE:PV"]
            server.recvfrom(4096)  # the first search
            broadcaster = channels._context.broadcaster
            (cid,) = [k for k, v in broadcaster.unanswered_searches.items() if v[0] == "NOPE:PV"]
            client = ("127.0.0.1", broadcaster.udp_sock.getsockname()[1])
            stray = ca.SearchRequest("OTHER:PV", cid, 13)  # another client's, our id
            other.sendto(bytes(ca.VersionRequest(0, 13)) + bytes(stray), client)
            time.sleep(0.3)
            assert "NOPE:PV" in [v[0] for v in broadcaster.unanswered_searches.values()]
            assert "NOPE:PV" not in broadcaster.search_results
            while True:  # and it is still searched for
                if b"NOPE:PV" in server.recvfrom(4096)[0]:
                    break
        finally:
            channels.close()


def test_environment_addresses_are_used_by_default(ioc, ca_client, monkeypatch):
    for key, value in ioc.env.items():
        monkeypatch.setenv(key, value)
    machine = make_machine(ioc, ca_client, addresses=None)
    try:
        machine.connect(timeout=3.0)
        assert machine.read_knobs().values == pytest.approx(START)
    finally:
        machine.close()


def test_put_settle_and_fresh_observation(ioc, machine):
    before = machine.read_observation()
    machine.put({"Q1": 14.0, "CH": 2.0e-4})  # sent; settle collects the completions
    assert machine.read_setpoints().values["Q1"] == 14.0  # a read after a put shows it
    # busy is set by the time the put is confirmed, the readback still moving
    with pytest.raises(SettleTimeout, match="Q1"):
        machine.settle(["Q1", "CH"], timeout=0.0)
    busy_pv = ioc.machine_config.knob("Q1").busy
    machine.settle(["Q1", "CH"])
    settled = time.time()
    assert ioc.caget(busy_pv) == 0
    knobs = machine.read_knobs().values
    assert knobs["Q1"] == pytest.approx(14.0) and knobs["CH"] == pytest.approx(2.0e-4)
    fresh = wait_fresh_observation(machine, settled)
    assert fresh.timestamp > before.timestamp
    assert fresh.values["mu_x"] != pytest.approx(before.values["mu_x"], abs=1e-5)
    assert ioc.put_count() == 2


def test_readback_ramps_while_busy(ioc, ca_client):
    machine = make_machine(ioc, ca_client)
    machine.connect(timeout=3.0)
    try:
        machine.put({"Q2": 10.0})  # from -10: a 0.1 s ramp
        seen = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            seen.append(machine.read_knobs().values["Q2"])
            if seen[-1] == 10.0:
                break
            time.sleep(0.005)
        assert seen[-1] == 10.0
        assert any(-10.0 < v < 10.0 for v in seen), seen
    finally:
        machine.close()


def test_settle_timeout_names_the_moving_knob(machine):
    machine.put({"Q3": 12.0})
    with pytest.raises(SettleTimeout, match="Q3"):
        machine.settle(["Q3"], timeout=0.0)
    machine.settle(["Q3"])


def test_put_outside_limits_is_rejected_by_the_ioc(ioc, machine):
    # put sends; the IOC's refusal (ECA_PUTFAIL) comes with the completion, raised by settle
    machine.put({"Q1": 80.0})
    with pytest.raises(PutRejected, match="AREAMQZM1:K1:SP: write of 80.0 refused by the server"):
        machine.settle(["Q1"])
    machine.put({"CV": -7.0e-3})
    with pytest.raises(PutRejected, match="AREAMCVM1:KICK:SP"):
        machine.settle(["CV"])
    # a refused put not settled is raised by the next put, which is not sent
    machine.put({"Q1": 80.0})
    with pytest.raises(PutRejected, match="AREAMQZM1:K1:SP: write of 80.0"):
        machine.put({"Q2": -9.0})
    assert machine.read_setpoints().values == pytest.approx(START)
    assert ioc.put_count() == 3
    assert "outside the limits" in ioc.log()


def test_put_checks_its_arguments_before_sending(ioc, machine):
    with pytest.raises(ValueError, match="finite"):
        machine.put({"Q1": math.nan})
    with pytest.raises(KeyError, match="no knob"):
        machine.put({"Q9": 1.0})
    assert ioc.put_count() == 0


def test_fault_reject_put(ioc, machine):
    ioc.set_faults("reject_put")
    assert ioc.faults() == {"reject_put"}
    machine.put({"Q1": 11.0})
    with pytest.raises(PutRejected, match="refused"):
        machine.settle(["Q1"])
    ioc.set_faults()
    machine.put({"Q1": 11.0})
    machine.settle(["Q1"])
    assert machine.read_setpoints().values["Q1"] == 11.0


def test_fault_ignore_put_is_confirmed_but_not_applied(ioc, machine):
    ioc.set_faults("ignore_put")
    machine.put({"Q1": 11.0})  # no error: only the read-back shows it
    machine.settle(["Q1"])
    assert machine.read_setpoints().values["Q1"] == 10.0
    assert machine.read_knobs().values["Q1"] == 10.0
    assert ioc.put_count() == 1


def test_fault_stuck_freezes_the_readback(ioc, machine):
    ioc.set_faults("stuck")
    machine.put({"Q1": 12.0, "Q2": -8.0})
    machine.settle(["Q1", "Q2"])  # the power supply reports done ...
    knobs = machine.read_knobs().values
    assert knobs["Q1"] == 10.0  # ... but the stuck knob did not move
    assert knobs["Q2"] == pytest.approx(-8.0)
    assert machine.read_setpoints().values["Q1"] == 12.0


def test_fault_stale_readings_stop_updating(ioc, machine):
    ioc.set_faults("stale")
    time.sleep(0.1)
    first = machine.read_observation()
    machine.put({"Q1": 13.0})
    machine.settle(["Q1"])
    time.sleep(0.3)  # six frame periods
    later = machine.read_observation()
    assert later.timestamp == first.timestamp
    assert later.values == first.values
    ioc.set_faults()
    assert wait_fresh_observation(machine, first.timestamp).timestamp > first.timestamp


def test_fault_interlock_and_beam_loss(ioc, machine):
    ioc.set_faults("interlock")
    health = machine.health()
    assert health.interlock and not health.beam_loss
    assert any("interlock" in d for d in health.detail)
    ioc.set_faults("beam_loss")
    health = machine.health()
    assert health.beam_loss and not health.interlock
    ioc.set_faults("interlock", "beam_loss")
    health = machine.health()
    assert health.interlock and health.beam_loss
    ioc.set_faults()
    health = machine.health()
    assert not health.interlock and not health.beam_loss


def test_fault_heartbeat_ages(ioc, ca_client):
    config = ioc.machine_config
    config = config.model_copy(
        update={"heartbeat": config.heartbeat.model_copy(update={"max_age_s": 0.3})}
    )
    machine = make_machine(ioc, ca_client, config)
    machine.connect(timeout=3.0)
    try:
        # beating (every 0.1 s; a loaded host may hold the IOC up for a moment)
        deadline = time.monotonic() + 3.0
        while machine.health().heartbeat_age_s >= 0.3:
            assert time.monotonic() < deadline, "the heartbeat does not beat"
            time.sleep(0.05)
        ioc.set_faults("heartbeat")
        time.sleep(0.6)
        health = machine.health()
        assert health.heartbeat_age_s > 0.3
        assert any("heartbeat" in d for d in health.detail)
    finally:
        machine.close()


def test_fault_disconnect_raises_disconnected_not_a_hang(ioc, machine):
    ioc.set_faults("disconnect")
    time.sleep(0.2)  # the IOC drops the circuits 50 ms after the fault
    timeout = machine.config.timing.reading_timeout_s
    for call in (
        machine.read_observation,
        machine.read_knobs,
        machine.health,
        lambda: machine.put({"Q1": 11.0}),
        lambda: machine.settle(["Q1"], timeout=0.5),
    ):
        t0 = time.monotonic()
        with pytest.raises(Disconnected):
            call()
        assert time.monotonic() - t0 < timeout + 2.0
    # the IOC answers again after faults.disconnect_s; a fresh connection works
    deadline = time.monotonic() + 10.0
    while True:
        fresh = make_machine(ioc, machine.config.ca_client)
        try:
            fresh.connect(timeout=1.0)
            assert fresh.read_knobs().values == pytest.approx(START)
            break
        except Disconnected:
            if time.monotonic() > deadline:
                raise
        finally:
            fresh.close()


def test_frozen_ioc_process_raises_disconnected(ioc, machine):
    ioc.pause()
    try:
        time.sleep(0.2)  # the frames posted before the freeze have arrived
        t0 = time.monotonic()
        with pytest.raises(Disconnected, match="no answer"):
            # a frame that arrived before the freeze and was not served yet may be served
            # once; then no new frame comes and the machine asks the silent IOC
            for _ in range(2):
                machine.read_observation()
        assert time.monotonic() - t0 < machine.config.timing.reading_timeout_s + 2.0
        machine.put({"Q1": 11.0})  # sent (the circuit is still open) ...
        t0 = time.monotonic()
        with pytest.raises(Disconnected, match="did not confirm"):
            machine.settle(["Q1"])  # ... but never confirmed
        assert time.monotonic() - t0 < machine.config.timing.reading_timeout_s + 2.0
    finally:
        ioc.resume()
    # the client may have dropped the silent circuit meanwhile: it reconnects by itself
    deadline = time.monotonic() + 10.0
    while True:
        try:
            # the put may reach the resumed IOC late: its readback ramps from 10 to 11
            assert 10.0 <= machine.read_knobs().values["Q1"] <= 11.0
            break
        except Disconnected:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_close_is_idempotent_and_final(machine):
    machine.close()
    machine.close()
    with pytest.raises(Disconnected, match="not connected"):
        machine.read_knobs()


# --------------------------------------------------------------------------- concurrency
def count_sends(machine, monkeypatch) -> list[int]:
    """Commands per TCP send of ``machine``'s circuit (recorded from now on)."""
    channels = machine._channels
    circuit = channels._pvs[machine.pv_names[0]].circuit_manager
    sends: list[int] = []
    cls = type(circuit)  # a class of this machine's own (caproto's circuits have __slots__)
    original = cls.send

    def send(self, *commands, **kwargs):
        sends.append(len(commands))
        return original(self, *commands, **kwargs)

    monkeypatch.setattr(cls, "send", send)
    return sends


def test_a_call_is_one_round_trip(ioc, monkeypatch):
    machine = ioc.machine(monitors="none")
    machine.connect(timeout=5.0)
    try:
        sends = count_sends(machine, monkeypatch)
        machine.read_knobs()
        machine.read_observation()
        machine.health()
        machine.put({"Q1": 11.0, "Q2": -9.0, "Q3": 9.0})
        # every PV of a call in one send, awaited together; an observation is one frame PV
        assert sends == [5, 1, 3, 3]
        assert machine.stats == {"cached": 0, "round_trips": 3, "barriers": 0}
        machine.settle(["Q1", "Q2", "Q3"])
        assert machine.read_setpoints().values == pytest.approx(
            {**START, "Q1": 11.0, "Q2": -9.0, "Q3": 9.0}
        )
    finally:
        machine.close()


def test_read_state_is_one_round_trip(ioc, monkeypatch):
    machine = ioc.machine()
    machine.connect(timeout=5.0)
    try:
        deadline = time.monotonic() + 3.0
        while machine.stats["cached"] == 0:  # the monitors' subscriptions are all made
            assert time.monotonic() < deadline
            machine.read_observation()
            time.sleep(0.01)
        sends = count_sends(machine, monkeypatch)
        state = machine.read_state()
        assert sends == [13]  # 5 readbacks, 5 setpoints, interlock, beam loss, heartbeat
        assert state.knobs.values == pytest.approx(START)
        assert state.setpoints.values == pytest.approx(START)
        assert state.health.connected and not state.health.interlock
        assert state.health.heartbeat_age_s < 1.0
        only = machine.read_state(knobs=False, health=False)
        assert sends == [13, 5] and only.knobs is None and only.health is None
        assert only.setpoints.values == pytest.approx(START)
    finally:
        machine.close()


def test_monitor_modes_and_their_pvs(ioc):
    config = ioc.machine_config
    with pytest.raises(ValueError, match="monitors must be one of"):
        EpicsMachine(config, monitors="some")
    with pytest.raises(ValueError, match="max_monitor_lag_s"):
        EpicsMachine(config, max_monitor_lag_s=-1.0)
    default = EpicsMachine(config)
    assert default.monitors == "observations"
    assert default.max_monitor_lag_s == config.timing.poll_interval_s
    assert default.pv_names == [*config.pv_names, config.frame_pv]
    busy = {k.busy for k in config.knobs}
    assert set(default.monitored_pvs) == {config.frame_pv} | busy  # one frame: one PV
    scalars = {o.pv for o in config.observations}
    every = [n for n in default.pv_names if n not in scalars]
    assert EpicsMachine(config, monitors="all").monitored_pvs == every
    assert EpicsMachine(config, monitors="synced").monitored_pvs == every
    without_frame = EpicsMachine(config.model_copy(update={"frame_pv": None}))
    assert set(without_frame.monitored_pvs) == scalars | busy
    assert EpicsMachine(config, monitors="none").monitored_pvs == []
    pva = config.model_copy(update={"transport": "pva"})
    assert EpicsMachine(pva, monitors="all").monitors == "none"


# --------------------------------------------------------------------------- monitors
def test_observations_come_from_the_monitors(ioc, monkeypatch):
    # heartbeats (0.1 s) keep it recent
    machine = ioc.machine(monitors="observations", max_monitor_lag_s=1.0)
    machine.connect(timeout=5.0)
    try:
        deadline = time.monotonic() + 3.0
        while machine.stats["cached"] == 0:  # until the monitors' first updates arrived
            assert time.monotonic() < deadline
            machine.read_observation()
            time.sleep(0.01)
        first = machine.read_observation()
        sends = count_sends(machine, monkeypatch)
        later = first
        for _ in range(3):  # wake on the next frame's update: it is served, nothing is read
            machine.wait_for_update(2.0)
            later = machine.read_observation()
            assert later.timestamp > first.timestamp
        assert sends == [] and machine.stats["cached"] >= 4
        # the values are the IOC's: a read of the same PVs gives this frame or a newer one
        pvs = [o.pv for o in machine.config.observations]
        read = machine._channels.read(pvs, 2.0)
        assert min(v.timestamp for v in read.values()) >= later.timestamp
        # readbacks, setpoints and health are read from the IOC in this mode
        machine.read_knobs()
        machine.read_setpoints()
        machine.health()
        assert sends == [4, 5, 5, 3]
    finally:
        machine.close()


def test_stale_frames_are_never_fresh_from_the_monitors(ioc, machine):
    ioc.set_faults("stale")
    time.sleep(0.1)
    frozen = machine.read_observation()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        machine.wait_for_update(0.02)
        reading = machine.read_observation()
        assert reading.timestamp == frozen.timestamp and reading.values == frozen.values
    ioc.set_faults()
    assert wait_fresh_observation(machine, frozen.timestamp).timestamp > frozen.timestamp


def test_settle_ends_on_the_busy_monitor_after_a_read(ioc, machine):
    machine.put({"Q1": 14.0})
    t0 = time.monotonic()
    machine.settle(["Q1"])
    assert time.monotonic() - t0 >= 0.05  # the 0.1 s ramp was under way
    assert ioc.caget(ioc.machine_config.knob("Q1").busy) == 0
    assert ioc.caget(ioc.machine_config.knob("Q1").readback) == 14.0


def all_monitors(ioc, ca_client="caproto", **kwargs):
    machine = make_machine(ioc, ca_client, monitors="all", **kwargs)
    machine.connect(timeout=5.0)
    return machine


def needs_record_fields(ioc) -> None:
    """Readbacks, setpoints and health are served from monitors only where the IOC's record
    fields (.RTYP, .MDEL) show that they post every change: the EPICS-base IOC."""
    if ioc.server != "softioc":
        pytest.skip(f"the {ioc.server} server has no record fields: those reads go to the IOC")


def test_all_mode_serves_every_read_while_synced(ioc, ca_client):
    needs_record_fields(ioc)
    machine = all_monitors(ioc, ca_client)
    try:
        deadline = time.monotonic() + 3.0
        while machine.stats["cached"] < 3 and time.monotonic() < deadline:
            machine.wait_for_update(0.02)
            machine.read_knobs()
            machine.read_setpoints()
            machine.health()
        assert machine.stats["cached"] >= 3
        assert machine.read_knobs().values == pytest.approx(START)
        assert machine.read_setpoints().values == pytest.approx(START)
        health = machine.health()
        assert health.connected and not health.interlock and health.heartbeat_age_s < 1.0
    finally:
        machine.close()


def test_all_mode_reads_the_ioc_when_the_monitors_go_quiet(ioc, ca_client):
    machine = all_monitors(ioc, ca_client, max_monitor_lag_s=0.05)
    try:
        ioc.set_faults("stale", "heartbeat")  # nothing is posted any more
        time.sleep(0.3)
        trips = machine.stats["round_trips"]
        assert machine.read_knobs().values == pytest.approx(START)
        assert not machine.health().interlock
        assert machine.stats["round_trips"] == trips + 2
    finally:
        machine.close()


def test_all_mode_reads_back_its_own_writes(ioc, ca_client):
    machine = all_monitors(ioc, ca_client, max_monitor_lag_s=10.0)
    try:
        for i in range(10):
            value = 10.0 + 0.5 * (i + 1)
            machine.put({"Q1": value})
            # the setpoint's monitor update may still be on its way: never the old value
            assert machine.read_setpoints().values["Q1"] == value
            machine.settle(["Q1"])
        ioc.set_faults("ignore_put")
        machine.put({"Q1": 20.0})
        machine.settle(["Q1"])
        assert machine.read_setpoints().values["Q1"] == 15.0  # not applied: the IOC says so
    finally:
        machine.close()


@pytest.mark.parametrize(
    ("monitors", "options"), [("all", {"max_monitor_lag_s": 10.0}), ("synced", {})]
)
def test_monitor_modes_raise_disconnected(ioc, ca_client, monitors, options):
    """Reads served from monitors still notice a dropped circuit."""
    machine = make_machine(ioc, ca_client, monitors=monitors, **options)
    machine.connect(timeout=5.0)
    try:
        machine.read_knobs()
        ioc.set_faults("disconnect")
        time.sleep(0.2)  # the IOC drops the circuits 50 ms after the fault
        for call in (machine.read_observation, machine.read_knobs, machine.health):
            with pytest.raises(Disconnected):
                call()
    finally:
        machine.close()


def test_synced_mode_serves_reads_after_one_barrier(ioc, monkeypatch):
    needs_record_fields(ioc)
    machine = ioc.machine(monitors="synced")
    machine.connect(timeout=5.0)
    try:
        deadline = time.monotonic() + 3.0
        while machine.stats["cached"] == 0:  # the monitors' subscriptions are all made
            assert time.monotonic() < deadline
            machine.read_observation()
            time.sleep(0.01)
        assert machine.read_knobs().values == pytest.approx(START)  # may read (no update yet)
        stats = machine.stats
        sends = count_sends(machine, monkeypatch)
        assert machine.read_knobs().values == pytest.approx(START)
        assert machine.read_setpoints().values == pytest.approx(START)
        state = machine.read_state()
        assert state.knobs.values == pytest.approx(START)
        assert state.setpoints.values == pytest.approx(START)
        assert state.health.connected and not state.health.interlock
        # each call: one subscription request (one PV), then its cancel -- no reads
        assert sends == [1, 1] * 3
        assert machine.stats["round_trips"] == stats["round_trips"]
        assert machine.stats["barriers"] == stats["barriers"] + 3
        assert machine.stats["cached"] == stats["cached"] + 3
    finally:
        machine.close()


def test_synced_mode_sees_other_clients_changes_at_once(ioc, ca_client):
    needs_record_fields(ioc)
    machine = make_machine(ioc, ca_client, monitors="synced")
    machine.connect(timeout=5.0)
    try:
        setpoint = machine.config.knob("Q2").setpoint
        for i in range(20):
            value = -10.0 + 0.25 * (i + 1)
            ioc.caput(setpoint, value)  # another client; its put is complete here
            assert machine.read_setpoints().values["Q2"] == value
            ioc.set_faults("interlock")
            assert machine.health().interlock
            ioc.set_faults()
            assert not machine.health().interlock
        assert machine.stats["barriers"] >= 60
    finally:
        machine.close()


def test_safety_layer_reads_health_and_setpoints_before_every_write(ioc, machine):
    from accelrl.deploy.safety import AbortReason, SafetyAbort, SafetyLayer

    safety = SafetyLayer(machine, machine.config)
    safety.start()
    step = {"Q1": 10.5}
    safety.read_knobs(health=True)  # the step's combined read
    assert safety.write(step) is not None  # within state_reuse_s: its health was the check
    assert ioc.put_count() == 1
    safety.read_knobs(health=True)
    ioc.set_faults("interlock")  # after the step's read: too old to stand for a new check
    time.sleep(2 * safety.state_reuse_s)
    with pytest.raises(SafetyAbort) as err:
        safety.write({"Q1": 11.0})
    assert err.value.reason is AbortReason.interlock
    assert ioc.put_count() == 1  # nothing put
    ioc.set_faults()
    ioc.caput(machine.config.knob("Q2").setpoint, -9.5)  # another client moves a knob
    with pytest.raises(SafetyAbort) as err:
        safety.write({"Q1": 11.0})
    assert err.value.reason is AbortReason.setpoint_changed
    assert ioc.put_count() == 2  # the other client's put only
