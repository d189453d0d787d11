"""The virtual accelerator on EPICS base (``server: softioc``), seen by three client libraries:
caproto's Channel Access client, libca through pyepics, and p4p (PV Access).

Record fields and alarms, refusal modes, monitor deadbands, atomic frames and the frame rate,
PV Access, and reconnection after outages. pyepics runs in a subprocess per check (libca reads
its environment once per process); the other clients run in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from caproto import AlarmStatus

from accelrl.deploy.machine import PutRejected

pytest.importorskip("softioc")

#: The IOC of this module: test dynamics at the default 10 Hz camera; Q1 refuses writes
#: outside its limits, Q2 clamps them; Q3's readback has a 5 (1/m^2) monitor deadband.
SETTINGS: dict[str, Any] = {
    "server": "softioc",
    "screen": {"frame_rate_hz": 10.0, "reading_noise": 2.0e-6, "seed": 0, "image": True},
    "records": {
        "refusal": "reject",
        "refusal_by_knob": {"Q2": "clamp"},
        "readback_deadband": {"Q3": 5.0},
    },
}


@pytest.fixture(scope="module")
def sioc(start_ioc: Any) -> Iterator[Any]:
    with start_ioc(**SETTINGS) as handle:
        yield handle


@pytest.fixture
def va(sioc: Any) -> Any:
    sioc.reset()
    return sioc


def recording_channels(address: str) -> Any:
    """caproto's Channel Access client as the deployment client uses it, recording every
    monitor update in the order it arrives (on the client's receive thread):
    ``channels.received`` is a list of ``(name, value, IOC time stamp)``."""
    from accelrl.deploy.epics import CaChannels

    class Recording(CaChannels):
        def __init__(self, addresses: list[str]) -> None:
            super().__init__(addresses)
            self.received: list[tuple[str, Any, float]] = []

        def _on_update(self, circuit: Any, pv: Any, command: Any) -> None:
            if command.header.payload_size and command.status.name == "ECA_NORMAL":
                data = command.data
                value = [float(v) for v in data] if len(data) > 1 else float(data[0])
                self.received.append((pv.name, value, float(command.metadata.timestamp)))
            super()._on_update(circuit, pv, command)

    return Recording([address])


@pytest.fixture
def channels(va: Any) -> Iterator[Any]:
    """caproto's Channel Access client (the deployment client's transport) on the IOC."""
    ch = recording_channels(va.address)
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def vm(va: Any) -> Iterator[Any]:
    """A connected EpicsMachine on the module's IOC."""
    machine = va.machine()
    machine.connect(timeout=5.0)
    try:
        yield machine
    finally:
        machine.close()


def ca_read(channels: Any, names: list[str], data_type: str = "time") -> dict[str, Any]:
    """name -> caproto response (``data_type`` ``"time"`` or ``"control"``)."""
    assert channels.connect(names, 5.0) == []
    return {n: channels._pvs[n].read(data_type=data_type, timeout=5.0) for n in names}


def run_pyepics(ioc: Any, script: str, *args: str, timeout: float = 60.0) -> Any:
    """Run ``script`` (Python using pyepics on EPICS base's libca) against ``ioc`` in a
    subprocess; the JSON it prints last."""
    code = "import epicscorelibs.path.pyepics, epics, json, sys, time\n" + textwrap.dedent(script)
    env = {**os.environ, **ioc.env, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- fields, alarms
def test_setpoint_record_fields_over_caproto(va, channels):
    knob = va.machine_config.knob("CV")
    names = [f"{knob.setpoint}.{f}" for f in ("DESC", "EGU", "RTYP")]
    names += [f"{knob.setpoint}.{f}" for f in ("DRVH", "DRVL", "HOPR", "LOPR", "PREC")]
    names += [f"{knob.setpoint}.{f}" for f in ("SEVR", "STAT")]
    values = {n.rsplit(".", 1)[1]: r.data for n, r in ca_read(channels, names).items()}
    assert bytes(values["DESC"][0]).rstrip(b"\0") == b"CV setpoint"
    assert bytes(values["EGU"][0]).rstrip(b"\0") == b"rad"
    assert bytes(values["RTYP"][0]).rstrip(b"\0") == b"ao"
    for field, limit in (("DRVH", 6.1782e-3), ("DRVL", -6.1782e-3)):
        assert float(values[field][0]) == pytest.approx(limit, rel=1e-12)
    assert float(values["HOPR"][0]) == pytest.approx(6.1782e-3, rel=1e-12)
    assert float(values["LOPR"][0]) == pytest.approx(-6.1782e-3, rel=1e-12)
    assert int(values["PREC"][0]) == 7  # resolves a tenth of the 1e-6 rad tolerance
    assert int(values["SEVR"][0]) == 0 and int(values["STAT"][0]) == 0
    # the same in DBR_CTRL, as a client asks for limits and units
    control = ca_read(channels, [knob.setpoint], "control")[knob.setpoint].metadata
    assert control.upper_ctrl_limit == pytest.approx(6.1782e-3, rel=1e-12)
    assert control.lower_disp_limit == pytest.approx(-6.1782e-3, rel=1e-12)
    assert control.units == b"rad" and control.precision == 7


def test_record_types_and_descriptions(va, channels):
    m = va.machine_config
    expected = {
        m.knob("Q1").setpoint: "ao",
        m.knob("Q1").readback: "ai",
        m.knob("Q1").busy: "bi",
        m.observations[0].pv: "ai",
        m.frame_pv: "waveform",
        m.interlock.pv: "bi",
        m.beam_loss.pv: "ai",
        m.heartbeat.pv: "longin",
        va.pv("AREABSCR1:IMAGE"): "waveform",
        va.sim_pv("FAULT"): "stringout",
        va.sim_pv("RESET"): "bo",
        va.sim_pv("PUT_COUNT"): "longin",
        va.sim_pv("TRUE:MAE"): "ai",
    }
    rtyp = ca_read(channels, [f"{n}.RTYP" for n in expected])
    desc = ca_read(channels, [f"{n}.DESC" for n in expected])
    for name, record_type in expected.items():
        assert bytes(rtyp[f"{name}.RTYP"].data[0]).rstrip(b"\0").decode() == record_type
        assert bytes(desc[f"{name}.DESC"].data[0]).rstrip(b"\0"), f"{name} has no DESC"


def test_interlock_and_beam_loss_alarms_over_caproto(va, channels):
    m = va.machine_config
    names = [m.interlock.pv, m.beam_loss.pv, f"{m.interlock.pv}.ZNAM", f"{m.interlock.pv}.ONAM"]
    quiet = ca_read(channels, names)
    assert quiet[m.interlock.pv].metadata.severity == 0
    assert quiet[m.beam_loss.pv].metadata.severity == 0
    assert bytes(quiet[f"{m.interlock.pv}.ZNAM"].data[0]).rstrip(b"\0") == b"OK"
    assert bytes(quiet[f"{m.interlock.pv}.ONAM"].data[0]).rstrip(b"\0") == b"TRIPPED"
    va.set_faults("interlock", "beam_loss")
    tripped = ca_read(channels, names[:2])
    assert int(tripped[m.interlock.pv].data[0]) == 1
    assert tripped[m.interlock.pv].metadata.severity == 2  # MAJOR
    assert AlarmStatus(tripped[m.interlock.pv].metadata.status) is AlarmStatus.STATE
    assert float(tripped[m.beam_loss.pv].data[0]) == pytest.approx(1.0)
    assert tripped[m.beam_loss.pv].metadata.severity == 2  # MAJOR: above HIHI = 0.5
    assert AlarmStatus(tripped[m.beam_loss.pv].metadata.status) is AlarmStatus.HIHI
    hihi = ca_read(channels, [f"{m.beam_loss.pv}.HIHI"])[f"{m.beam_loss.pv}.HIHI"]
    assert float(hihi.data[0]) == pytest.approx(m.beam_loss.max)
    va.set_faults()
    cleared = ca_read(channels, names[:2])
    assert cleared[m.interlock.pv].metadata.severity == 0
    assert cleared[m.beam_loss.pv].metadata.severity == 0


def test_fields_and_alarms_over_pyepics(va):
    m = va.machine_config
    script = """
        sp, il, bl = sys.argv[1:4]
        out = {f: epics.caget(f"{sp}.{f}", as_string=f in ("DESC", "EGU", "RTYP"))
               for f in ("DESC", "EGU", "DRVH", "DRVL", "HOPR", "LOPR", "PREC", "SEVR", "STAT",
                         "RTYP")}
        out["ZNAM"] = epics.caget(f"{il}.ZNAM", as_string=True)
        out["ONAM"] = epics.caget(f"{il}.ONAM", as_string=True)
        pv = epics.PV(sp, form="ctrl")
        pv.wait_for_connection(5.0)
        pv.get(timeout=5.0)
        out["ctrl"] = [pv.units, pv.precision, pv.lower_ctrl_limit, pv.upper_ctrl_limit]
        assert epics.caput(sys.argv[4], "interlock,beam_loss", wait=True, timeout=5.0) == 1
        out["il_sevr"] = epics.caget(f"{il}.SEVR")
        out["il_stat"] = epics.caget(f"{il}.STAT", as_string=True)
        out["bl_sevr"] = epics.caget(f"{bl}.SEVR")
        out["bl_stat"] = epics.caget(f"{bl}.STAT", as_string=True)
        out["il_value"] = epics.caget(il, as_string=True)
        assert epics.caput(sys.argv[4], "none", wait=True, timeout=5.0) == 1
        print(json.dumps(out, default=float))
    """
    out = run_pyepics(
        va, script, m.knob("Q1").setpoint, m.interlock.pv, m.beam_loss.pv, va.sim_pv("FAULT")
    )
    assert out["DESC"] == "Q1 setpoint" and out["EGU"] == "1/m^2" and out["RTYP"] == "ao"
    assert (out["DRVL"], out["DRVH"], out["LOPR"], out["HOPR"]) == (-72.0, 72.0, -72.0, 72.0)
    assert out["PREC"] == 3 and out["SEVR"] == 0 and out["STAT"] == 0
    assert out["ZNAM"] == "OK" and out["ONAM"] == "TRIPPED"
    assert out["ctrl"] == ["1/m^2", 3, -72.0, 72.0]
    assert out["il_value"] == "TRIPPED"
    assert out["il_sevr"] == 2 and out["il_stat"] == "STATE"
    assert out["bl_sevr"] == 2 and out["bl_stat"] == "HIHI"


# ------------------------------------------------------------------------- refusal modes
def test_reject_knob_refuses_and_clamp_knob_clamps_over_caproto(va, vm):
    m = va.machine_config
    vm.put({"Q1": 80.0})  # Q1 rejects: the put's completion says so when it is settled
    with pytest.raises(PutRejected, match="ECA_PUTFAIL"):
        vm.settle(["Q1"])
    assert vm.read_setpoints().values["Q1"] == 10.0
    vm.put({"Q2": -90.0})  # Q2 clamps, as an EPICS ao does with DRVL, and succeeds
    vm.settle(["Q2"])
    assert vm.read_setpoints().values["Q2"] == m.knob("Q2").low
    assert vm.read_knobs().values["Q2"] == pytest.approx(m.knob("Q2").low)
    assert va.put_count() == 2
    assert "Q1: write of 80.0 1/m^2 refused: outside the limits" in va.log()


def test_refusal_over_pyepics_and_plain_puts(va):
    """libca: a put with completion reports the refusal; a plain put of a refused value is
    answered with an error the client's exception handler receives; either way the
    setpoint keeps its value."""
    m = va.machine_config
    script = """
        import ctypes
        from epics import dbr

        class ExceptionArgs(ctypes.Structure):  # cadef.h: struct exception_handler_args
            _fields_ = [("usr", ctypes.c_void_p), ("chid", ctypes.c_void_p),
                        ("type", ctypes.c_long), ("count", ctypes.c_long),
                        ("addr", ctypes.c_void_p), ("stat", ctypes.c_long),
                        ("op", ctypes.c_long), ("ctx", ctypes.c_char_p),
                        ("pFile", ctypes.c_char_p), ("lineNo", ctypes.c_uint)]

        q1, q2 = sys.argv[1:3]
        errors, statuses = [], []
        epics.ca.initialize_libca()
        on_exception = ctypes.CFUNCTYPE(None, ExceptionArgs)(lambda a: errors.append(a.stat))
        epics.ca.libca.ca_add_exception_event(on_exception, None)
        pv1, pv2 = epics.PV(q1), epics.PV(q2)
        for pv in (pv1, pv2):
            assert pv.wait_for_connection(5.0)
        # a put with completion (ca_array_put_callback): the callback carries the status
        on_put = ctypes.CFUNCTYPE(None, dbr.event_handler_args)(
            lambda args: statuses.append(args.status))
        value = (ctypes.c_double * 1)(99.0)
        epics.ca.libca.ca_array_put_callback(dbr.DOUBLE, 1, pv1.chid, value, on_put, None)
        epics.ca.flush_io()
        deadline = time.time() + 5.0
        while not statuses and time.time() < deadline:
            epics.ca.poll(0.01)
        out = {"put_callback_status": statuses,
               "q1_after_put_callback": pv1.get(use_monitor=False)}
        pv1.put(100.0)  # a plain put: no completion; a refusal comes as an error message
        deadline = time.time() + 5.0
        while not errors and time.time() < deadline:
            epics.ca.poll(0.01)
        out["plain_put_errors"] = errors
        out["q1_after_plain_put"] = pv1.get(use_monitor=False)
        pv2.put(500.0, wait=True, timeout=5.0)
        out["q2"] = pv2.get(use_monitor=False)
        print(json.dumps(out, default=float))
    """
    out = run_pyepics(va, script, m.knob("Q1").setpoint, m.knob("Q2").setpoint)
    eca_putfail = 160  # (20 << 3) | CA_K_WARNING
    assert out["put_callback_status"] == [eca_putfail]
    assert out["q1_after_put_callback"] == 10.0
    assert out["plain_put_errors"] == [eca_putfail]
    assert out["q1_after_plain_put"] == 10.0
    assert out["q2"] == m.knob("Q2").high  # clamped to DRVH


def test_documented_fault_syntax_with_caproto_put(va):
    """``caproto-put <P>SIM:FAULT "'reject_put:2'"`` (caproto-put reads a Python literal)."""
    exe = os.path.join(os.path.dirname(sys.executable), "caproto-put")
    if not os.path.exists(exe):
        pytest.skip("caproto-put not installed")
    env = {**os.environ, **va.env}
    # --no-repeater: caproto-put would start a CA repeater (a process that outlives it, and
    # its pipes) wherever EPICS_CA_REPEATER_PORT is free; the IOC's repeater holds it here
    result = subprocess.run(
        [exe, "--no-repeater", va.sim_pv("FAULT"), "'reject_put:2'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert va.faults() == {"reject_put"}
    setpoint = va.machine_config.knob("Q1").setpoint
    for _ in range(2):
        with pytest.raises(PutRejected):
            va.caput(setpoint, 11.0)
    va.caput(setpoint, 11.0)  # the third write passes
    assert va.faults() == set()


# ------------------------------------------------------------------------- deadband
def test_readback_deadband_monitor_gets_no_update_for_small_moves(va, channels):
    """Q3's readback (MDEL = ADEL = 5 1/m^2): a monitor sees no update while the value moves
    by less than that -- a read shows the new value, the monitor does not."""
    knob = va.machine_config.knob("Q3")
    rb = knob.readback
    assert channels.connect([rb], 5.0) == []
    channels.monitor([rb])
    deadline = time.monotonic() + 5.0
    while not channels.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [u[1] for u in channels.received] == [10.0]  # the subscription's first update
    va.caput(knob.setpoint, 13.0)  # 3 < 5: inside the deadband
    time.sleep(0.5)  # the 0.1 s ramp is over
    assert channels.read([rb], 5.0)[rb].value == 13.0
    assert len(channels.received) == 1  # no update: the value moved less than the deadband
    va.caput(knob.setpoint, 20.0)  # 10 from the last posted value
    time.sleep(0.5)
    assert len(channels.received) >= 2 and channels.received[-1][1] > 15.0


def test_observations_post_every_frame(va, channels):
    """The screen readings (MDEL -1): one update per frame, even with unchanged values."""
    names = [o.pv for o in va.machine_config.observations]
    assert channels.connect(names, 5.0) == []
    channels.monitor(names)
    time.sleep(1.55)
    stamps = {n: [t for name, _, t in channels.received if name == n] for n in names}
    for name in names:
        assert 12 <= len(stamps[name]) <= 18, (name, len(stamps[name]))  # 10 Hz + the first
        assert len(set(stamps[name])) == len(stamps[name])


# ------------------------------------------------------------------------- frames
def test_frames_are_atomic_for_a_monitoring_client(va, channels):
    """Every frame reaches a monitor as one block: the four readings and ``frame_pv`` carry
    the frame's time stamp, arrive one after the other without another frame's update in
    between, and agree with each other -- while the magnets move the beam."""
    m = va.machine_config
    scalars = [o.pv for o in m.observations]
    names = [m.frame_pv, *scalars]
    assert channels.connect(names, 5.0) == []
    channels.monitor(names)
    time.sleep(0.5)
    start = len(channels.received)  # from here on, every update is a posted frame
    for value in (14.0, 18.0, 22.0, 26.0):
        va.caput(m.knob("Q1").setpoint, value)
        time.sleep(0.6)
    updates = channels.received[start:]
    frames = {t: v for name, v, t in updates if name == m.frame_pv}
    assert len(frames) >= 20
    by_time: dict[float, dict[str, float]] = {}
    for name, value, stamp in updates:
        if name in scalars:
            assert name not in by_time.setdefault(stamp, {}), f"{name} twice at {stamp}"
            by_time[stamp][name] = value
    complete = [t for t, values in by_time.items() if len(values) == 4]
    assert len(complete) >= len(frames) - 2
    for stamp in complete:
        assert stamp in frames, f"readings at {stamp} without a frame"
        assert [by_time[stamp][n] for n in scalars] == frames[stamp], stamp
    # arrival order: the five updates of one frame come as one block
    order = [t for _, _, t in updates]
    blocks = [t for i, t in enumerate(order) if i == 0 or t != order[i - 1]]
    assert len(blocks) == len(set(blocks)), "a frame's updates interleaved with another's"
    assert len({round(v[0], 9) for v in frames.values()}) > 4  # the beam did move


def test_frame_rate_is_the_configured_one(va, channels):
    """The camera's rate from the IOC's own time stamps over 5 s: within 2 % of 10 Hz."""
    frame_pv = va.machine_config.frame_pv
    assert channels.connect([frame_pv], 5.0) == []
    channels.monitor([frame_pv])
    time.sleep(5.6)
    stamps = [t for _, _, t in channels.received[1:]]  # after the subscription's first
    assert len(stamps) >= 50
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert rate == pytest.approx(10.0, rel=0.02), f"{rate:.3f} Hz"


# ------------------------------------------------------------------------- PV Access
def test_pv_access_reads_and_writes_the_same_records(va):
    p4p = pytest.importorskip("p4p.client.thread")
    m = va.machine_config
    ctxt = p4p.Context(
        "pva",
        conf={
            "EPICS_PVA_ADDR_LIST": f"{va.host}:{va.pva_port}",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_BROADCAST_PORT": str(va.pva_port),
        },
        useenv=False,
    )
    try:
        knob = m.knob("Q1")
        sp = ctxt.get(knob.setpoint, timeout=5.0).raw.todict()
        assert sp["value"] == 10.0
        assert sp["display"]["units"] == "1/m^2" and sp["display"]["description"] == "Q1 setpoint"
        assert (sp["control"]["limitLow"], sp["control"]["limitHigh"]) == (-72.0, 72.0)
        frame = ctxt.get(m.frame_pv, timeout=5.0)
        reading = [float(ctxt.get(o.pv, timeout=5.0)) for o in m.observations]
        assert len(frame) == 4
        assert max(abs(a - b) for a, b in zip(frame, reading, strict=True)) < 5e-5
        ctxt.put(knob.setpoint, 12.0, timeout=5.0)
        deadline = time.monotonic() + 5.0
        while float(ctxt.get(knob.readback, timeout=5.0)) != 12.0:
            assert time.monotonic() < deadline, "the PVA write did not move the magnet"
            time.sleep(0.05)
        assert va.put_count() == 1  # counted like a CA write
        va.set_faults("interlock", "reject_put")
        interlock = ctxt.get(m.interlock.pv, timeout=5.0)
        assert interlock.severity == 2 and str(interlock) == "TRIPPED"
        # reject_put refuses PVA writes too: S_db_putDisabled, EPICS status (501, 41)
        with pytest.raises(Exception, match=r"501,\s*41|[Dd]isabled"):
            ctxt.put(knob.setpoint, 13.0, timeout=5.0)
        assert float(ctxt.get(knob.setpoint, timeout=5.0)) == 12.0
    finally:
        ctxt.close()
        va.set_faults()


# ------------------------------------------------------------------------- outages
_LIBCA_TIMELINE = """
    pvname, seconds, conn_tmo = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    events = []
    def on_connection(pvname=None, conn=None, **kw):
        events.append(("conn", time.time(), bool(conn)))
    def on_value(value=None, timestamp=None, **kw):
        events.append(("value", time.time(), timestamp))
    pv = epics.PV(pvname, connection_callback=on_connection, callback=on_value, form="time")
    assert pv.wait_for_connection(10.0)
    print("ready", flush=True)
    fault = None
    if len(sys.argv) > 4:  # trigger the outage fault from this client
        fault = time.time()
        events.append(("fault", fault, None))
        epics.caput(sys.argv[4], "disconnect", wait=True, timeout=5.0)
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.02)
        if fault is not None and any(k == "conn" and c and t > fault for k, t, c in events):
            time.sleep(0.2)  # reconnected after the fault: done
            break
    print(json.dumps(events))
"""


def _libca_timeline(ioc: Any, pvname: str, seconds: float, *extra: str, conn_tmo: float = 30.0):
    """Start a pyepics client in a subprocess recording the connection events and value
    updates of ``pvname`` (wall-clock times) for ``seconds`` after it connected; the process
    (its first line is ``ready``)."""
    code = "import epicscorelibs.path.pyepics, epics, json, sys, time\n" + textwrap.dedent(
        _LIBCA_TIMELINE
    )
    env = {**os.environ, **ioc.env, "EPICS_CA_CONN_TMO": str(conn_tmo), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, pvname, str(seconds), str(conn_tmo), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "ready", line + (process.stderr.read() if process.stderr else "")
    return process


def _events(process: subprocess.Popen) -> list[tuple[str, float, Any]]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    return [tuple(e) for e in json.loads(out.strip().splitlines()[-1])]


def test_frozen_ioc_libca_client_resumes_within_2_s(start_ioc):
    """The IOC's processes stop for 7.5 s (SIGSTOP: sockets open, nothing answers). libca
    with EPICS_CA_CONN_TMO = 1 s declares the circuit unresponsive after 1 s + its 5 s echo
    timeout (a disconnection for the application) and, once the IOC answers again,
    reconnects at once: within 2 s of the resume."""
    with start_ioc(**SETTINGS) as ioc:
        hb = ioc.machine_config.heartbeat.pv
        process = _libca_timeline(ioc, hb, 11.0, conn_tmo=1.0)
        time.sleep(1.0)
        ioc.pause()
        time.sleep(7.5)
        resumed = time.time()
        ioc.resume()
        events = _events(process)
    down = [t for kind, t, c in events if kind == "conn" and c is False]
    up = [t for kind, t, c in events if kind == "conn" and c is True and t > resumed - 7.5]
    fresh = [t for kind, t, stamp in events if kind == "value" and stamp > resumed]
    assert down, "libca did not notice the silent IOC (EPICS_CA_CONN_TMO = 1 s)"
    assert up and up[0] - resumed < 2.0, (up, resumed)
    assert fresh and fresh[0] - resumed < 2.0, (fresh[:1], resumed)
    print(
        f"libca after a 7.5 s freeze: connected {up[0] - resumed:.3f} s, first new value "
        f"{fresh[0] - resumed:.3f} s after the resume"
    )


def test_outage_fault_clients_reconnect(start_ioc, monkeypatch):
    """``disconnect`` for 1 s: the IOC process closes every circuit and a standby process
    serves again after 1 s plus iocInit (0.7 s; many seconds on a loaded machine). Both client
    libraries search again on their own schedules: caproto's client (the deployment client)
    at intervals doubling from 30 ms to 5 s, restarted at the IOC's first beacon (it comes
    through the IOC's CA repeater); libca's disconnect governor releases them to its search
    every 10 s, which beacons do not shorten for the channels of a closed circuit. Bounds
    after the IOC serves again: caproto 5 s, libca 10 s (+1 s)."""
    settings = {**SETTINGS, "faults": {"stuck_knob": "Q1", "disconnect_s": 1.0}}
    with start_ioc(**settings) as ioc:
        monkeypatch.setenv("EPICS_CA_REPEATER_PORT", str(ioc.repeater_port))
        from accelrl.deploy.epics import CaChannels
        from accelrl.deploy.machine import Disconnected

        hb = ioc.machine_config.heartbeat.pv
        deadline = time.monotonic() + 60.0
        while "standby IOC process ready" not in ioc.log():  # the successor is prepared
            assert time.monotonic() < deadline, "no standby IOC process"
            time.sleep(0.2)
        ch = CaChannels([ioc.address])
        try:
            assert ch.connect([hb], 10.0) == []
            process = _libca_timeline(ioc, hb, 35.0, ioc.sim_pv("FAULT"))
            fault = time.time()  # (the libca client writes the fault right away)
            down = up = None
            while time.time() - fault < 30.0:
                try:
                    ch.read([hb], 0.3)
                    if down is not None:
                        up = time.time()
                        break
                except Disconnected:
                    down = down or time.time()
                time.sleep(0.02)
            events = _events(process)
        finally:
            ch.close()
        served = _serving_times(ioc.log())
    fault = next(t for kind, t, _ in events if kind == "fault")
    served = [t for t in served if t > fault]  # the standby's start of serving
    assert served, "the IOC did not serve again"
    back_ioc = served[0]
    # the outage, then iocInit: 0.7 s here when idle, many seconds on a loaded machine
    assert 1.0 <= back_ioc - fault < 1.0 + 15.0
    assert down is not None and down - fault < 2.0, "the circuit did not close"
    assert up is not None, "caproto's client did not reconnect"
    assert up - back_ioc < 5.0 + 1.0, up - back_ioc  # its longest search interval: 5 s
    lost = [t for kind, t, c in events if kind == "conn" and c is False and t > fault]
    back = [t for kind, t, c in events if kind == "conn" and c is True and t > fault]
    assert lost and lost[0] - fault < 2.0
    assert back and back[0] - back_ioc < 10.0 + 1.0, (back, back_ioc)  # its governor: 10 s
    print(
        f"outage fault of 1 s: IOC serving again {back_ioc - fault:.2f} s, caproto client "
        f"back {up - fault:.2f} s, libca back {back[0] - fault:.2f} s after the fault"
    )


def _serving_times(log: str) -> list[float]:
    """When the IOC processes of ``log`` began serving [s since the epoch]."""
    from datetime import datetime

    times = []
    for line in log.splitlines():
        if "accelrl.virtual INFO serving on" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return times
