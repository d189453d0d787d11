"""End to end: the shipped policy bundle, the runtime controller and the safety layer drive
the virtual ARES-EA over Channel Access on 127.0.0.1.

The runs go to the EPICS 7 IOC (``softioc``) with monitor deadbands on every readback and
screen reading (``ai`` records with ``MDEL = ADEL > 0``: no update for a change within the
deadband, none for an unchanged value), through each Channel Access client of
:class:`~accelrl.deploy.epics.EpicsMachine` (``ca_client: caproto`` and ``pyepics``, EPICS
base's libca); and to the caproto server (no record fields, no deadbands) through caproto's
client. Every fault of the virtual accelerator is switched on through its FAULT PV after the
controller's first write; the run must abort for the right reason, roll the knobs back to
their initial settings (verified on the IOC), and leave a complete log; a shadow run writes
nothing.

Matrix (kept small: each IOC start costs ~10 s, a BO session 25-45 s): every test runs on
``softioc`` with both clients -- caproto's with the default monitors, libca's with
``monitors="all"`` (health and the channels without deadband served from monitors, the
deadband readbacks read) -- and on the caproto server with caproto's client, except the BO
session (an action source that does not depend on the transport), which runs on ``softioc``
only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accelrl.deploy.controller import Controller, StopReason
from accelrl.deploy.runlog import SUMMARY_FILE, read_run
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import AbortReason, SafetyLayer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_BUNDLE = ROOT / "agents" / "apg-ares-ea" / "bundle"
#: A functional requirement, not a benchmark: the rollback must finish within 1 s.
ROLLBACK_LIMIT_S = 1.0

E2E: dict[str, Any] = {
    "magnets": {"settle_time_s": 0.02, "update_rate_hz": 200.0},
    "screen": {"frame_rate_hz": 50.0, "reading_noise": 1.0e-6, "seed": 0},
    "heartbeat_period_s": 0.1,
    "faults": {"stuck_knob": "Q1", "beam_loss_level": 1.0, "disconnect_s": 1.5},
}
#: Monitor deadbands of the EPICS-base IOC: readbacks post a move only beyond 0.5 1/m^2
#: (quadrupoles) or 50 urad (correctors) -- 50 times the knobs' tolerances, so the last part
#: of a move is never posted -- and the screen readings only changes beyond the reading noise
#: (1 um).
DEADBANDS: dict[str, Any] = {
    "readback_deadband": {"Q1": 0.5, "Q2": 0.5, "Q3": 0.5, "CV": 5.0e-5, "CH": 5.0e-5},
    "observation_deadband": 1.0e-6,
}


@dataclass(frozen=True)
class Setup:
    """One IOC and client of the matrix: the virtual accelerator's ``server`` (with
    :data:`DEADBANDS` on ``softioc``), the machine config's ``ca_client`` and what
    :class:`~accelrl.deploy.epics.EpicsMachine` serves from monitors."""

    server: str
    client: str
    monitors: str = "observations"

    @property
    def id(self) -> str:
        return f"{self.server}-{self.client}-{self.monitors}"


#: libca runs with ``monitors="all"``: on the deadband IOC, health and the channels without
#: deadband come from monitors, the deadband readbacks are read.
SETUPS = [
    Setup("softioc", "caproto"),
    Setup("softioc", "pyepics", "all"),
    Setup("caproto", "caproto"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped bundle, or the same policy exported now if it is not there."""
    if (SHIPPED_BUNDLE / "manifest.json").exists():
        return SHIPPED_BUNDLE
    from accelrl.agents.export.writer import export

    return export(ROOT / "agents" / "apg-ares-ea", tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def policy(bundle: Path) -> OnnxPolicy:
    return OnnxPolicy(bundle)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that takes ``setup`` on the :data:`SETUPS` (the BO session on the
    ``softioc`` ones): one IOC per server, shared by its clients' tests."""
    if "setup" not in metafunc.fixturenames:
        return
    setups = SETUPS
    if metafunc.function.__name__.startswith("test_bo_"):
        setups = [s for s in SETUPS if s.server == "softioc"]
    metafunc.parametrize(
        ("e2e_ioc", "setup"),
        [(s.server, s) for s in setups],
        ids=[s.id for s in setups],
        indirect=["e2e_ioc"],
        scope="module",
    )


@pytest.fixture(scope="module")
def e2e_ioc(request: pytest.FixtureRequest, start_ioc: Callable[..., Any]) -> Iterator[Any]:
    """The IOC of a server (one per module and server): ``softioc`` with deadbands."""
    settings = dict(E2E)
    if request.param == "softioc":
        pytest.importorskip("softioc")
        settings["records"] = {"refusal": "reject", **DEADBANDS}
    with start_ioc(server=request.param, **settings) as handle:
        yield handle


@pytest.fixture
def va(e2e_ioc: Any, setup: Setup) -> Any:
    """The IOC, reset, for a test of ``setup``."""
    pytest.importorskip({"caproto": "caproto", "pyepics": "epics"}[setup.client])
    e2e_ioc.reset(timeout=30.0)  # (it may be coming back from the disconnect test)
    return e2e_ioc


def fast_config(ioc: Any, client: str) -> Any:
    """The IOC's machine config with CA client ``client`` and short timeouts (the IOC's
    dynamics are fast too)."""
    config = ioc.machine_config
    return config.model_copy(
        update={
            "ca_client": client,
            "timing": config.timing.model_copy(
                update={"reading_timeout_s": 0.5, "settle_timeout_s": 0.3}
            ),
            "heartbeat": config.heartbeat.model_copy(update={"max_age_s": 0.5}),
        }
    )


def target_of(trial_index: int) -> list[float]:
    from accelrl.envs.trials import load_trials

    return load_trials()[trial_index].target.tolist()


def make_controller(
    ioc: Any, setup: Setup, policy: OnnxPolicy, log_dir: Path, mode: str = "auto", **kw: Any
):
    from accelrl.deploy.epics import EpicsMachine

    config = fast_config(ioc, setup.client)
    machine = EpicsMachine(config, addresses=[ioc.address], monitors=setup.monitors)
    machine.connect(timeout=5.0)
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    controller = Controller(
        policy, machine, safety, mode, target=target_of(30), log_dir=log_dir, plot=False, **kw
    )
    return controller, machine, safety


def timed_rollback(safety: SafetyLayer) -> list[float]:
    """Record how long each rollback takes [s]."""
    durations: list[float] = []
    original = safety.rollback

    def rollback(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.monotonic() - t0)

    safety.rollback = rollback  # type: ignore[method-assign]
    return durations


def fault_after_first_write(ioc: Any, safety: SafetyLayer, fault: str) -> Callable[[], bool]:
    """A per-step callback that switches ``fault`` on once the controller has written."""
    done: list[bool] = []

    def hook() -> bool:
        if safety.writes >= 1 and not done:
            done.append(True)
            ioc.set_faults(fault)
            time.sleep(0.05)
        return False

    return hook


def test_auto_mode_tunes_the_virtual_machine(va, setup, policy, tmp_path):
    if va.server == "softioc":  # the deadbands are on: what a monitor of them would miss
        for knob in va.machine_config.knobs:
            mdel = va.caget(f"{knob.readback}.MDEL")
            assert mdel == pytest.approx(DEADBANDS["readback_deadband"][knob.name], rel=1e-9)
        observed = va.machine_config.observations[1].pv
        assert va.caget(f"{observed}.MDEL") == pytest.approx(1.0e-6, rel=1e-9)
    initial_mae = va.true_mae()
    controller, machine, _ = make_controller(va, setup, policy, tmp_path / "run", max_steps=30)
    try:
        result = controller.run()
        served, stats = set(machine.exact_monitors), machine.stats
    finally:
        machine.close()
    assert result.reason in (StopReason.target_reached, StopReason.step_budget), result
    assert result.writes >= 1 and result.abort_reason is None
    if setup.monitors == "all":  # health from monitors; the deadband readbacks were read
        assert va.machine_config.interlock.pv in served
        assert not served & {k.readback for k in va.machine_config.knobs}
        assert stats["cached"] > 0 and stats["round_trips"] > 0
    assert va.put_count() >= result.writes
    assert va.true_mae() < 0.2 * initial_mae
    records = read_run(tmp_path / "run")
    assert records[0]["type"] == "start" and records[0]["transport"] == "ca"
    assert records[-1]["type"] == "end"
    assert (tmp_path / "run" / SUMMARY_FILE).exists()


def test_shadow_mode_never_writes(va, setup, policy, tmp_path):
    controller, machine, _ = make_controller(
        va, setup, policy, tmp_path / "run", "shadow", max_steps=5
    )
    try:
        result = controller.run()
    finally:
        machine.close()
    assert result.reason is StopReason.step_budget
    assert result.writes == 0
    assert va.put_count() == 0  # counted by the IOC: not one setpoint write arrived
    steps = [r for r in read_run(tmp_path / "run") if r["type"] == "step"]
    assert len(steps) == 5 and all(r["decision"] == "shadow" for r in steps)


ROLLBACK_FAULTS = [
    ("interlock", AbortReason.interlock),
    ("beam_loss", AbortReason.beam_loss),
    ("stale", AbortReason.stale_reading),
    ("reject_put:1", AbortReason.put_rejected),
    ("ignore_put:1", AbortReason.put_rejected),
    ("stuck", AbortReason.put_unverified),
    ("heartbeat", AbortReason.stale_heartbeat),
]


@pytest.mark.parametrize(("fault", "reason"), ROLLBACK_FAULTS, ids=[f for f, _ in ROLLBACK_FAULTS])
def test_fault_aborts_and_rolls_back(va, setup, policy, tmp_path, fault, reason):
    log_dir = tmp_path / "run"
    controller, machine, safety = make_controller(
        va, setup, policy, log_dir, max_steps=20, thresholds=[1e-9] * 4
    )
    controller.stop_callback = fault_after_first_write(va, safety, fault)
    durations = timed_rollback(safety)
    try:
        result = controller.run()
    finally:
        machine.close()
    assert result.reason is StopReason.abort
    assert result.abort_reason is reason, result.abort_detail
    assert result.writes >= 1
    # rolled back to the initial settings, within the limit
    assert result.rollback is not None and result.rollback["complete"], result.rollback
    assert len(durations) == 1 and durations[0] < ROLLBACK_LIMIT_S
    va.set_faults()
    fresh = va.machine()  # an independent reader (caproto client)
    fresh.connect(timeout=5.0)
    try:
        setpoints = fresh.read_setpoints().values
    finally:
        fresh.close()
    assert setpoints == pytest.approx(result.initial, abs=1e-9)
    # a complete log: start, the steps, the abort, every rollback write, the summary
    records = read_run(log_dir)
    kinds = [r["type"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end"
    aborts = [r for r in records if r.get("decision") == "abort"]
    assert len(aborts) == 1 and aborts[0]["abort"]["reason"] == reason.value
    assert kinds.count("rollback") == len(safety_writes(records)) >= 1
    assert records[-1]["rollback"]["complete"] is True
    assert (log_dir / SUMMARY_FILE).exists()


def safety_writes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "rollback"]


def test_disconnect_aborts_without_hanging(va, setup, policy, tmp_path):
    log_dir = tmp_path / "run"
    controller, machine, safety = make_controller(
        va, setup, policy, log_dir, max_steps=20, thresholds=[1e-9] * 4
    )
    controller.stop_callback = fault_after_first_write(va, safety, "disconnect")
    t0 = time.monotonic()
    try:
        result = controller.run()
    finally:
        machine.close()
    elapsed = time.monotonic() - t0
    assert result.reason is StopReason.abort
    assert result.abort_reason is AbortReason.disconnected, result.abort_detail
    # every machine call has a timeout: the run ends, with its log, instead of hanging
    assert elapsed < 20.0
    records = read_run(log_dir)
    assert records[0]["type"] == "start" and records[-1]["type"] == "end"
    assert records[-1]["abort"]["reason"] == "disconnected"
    # the rollback cannot reach a silent IOC: it is reported, not faked
    assert result.rollback is not None
    if not result.rollback["complete"]:
        assert result.rollback["detail"]


def _bo_run(ioc: Any, setup: Setup, log_dir: Path, steps: int, fault: str | None = None) -> Any:
    """A BO session (physics prior) as the controller's action source over CA."""
    from accelrl.agents.bo import BOOptimiser
    from accelrl.deploy.epics import EpicsMachine

    config = fast_config(ioc, setup.client)
    machine = EpicsMachine(config, addresses=[ioc.address], monitors=setup.monitors)
    machine.connect(timeout=5.0)
    safety = SafetyLayer(machine, config)
    # a generous time budget: the suggestions do not depend on the machine's load
    controller = Controller(
        BOOptimiser(prior="physics", budget_s=5.0), machine, safety, "auto",
        target=target_of(30), thresholds=(2e-5,) * 4, max_steps=steps, log_dir=log_dir,
        plot=False,
    )  # fmt: skip
    if fault is not None:
        controller.stop_callback = fault_after_first_write(ioc, safety, fault)
    try:
        return controller.run()
    finally:
        machine.close()


def test_bo_session_tunes_the_virtual_machine_and_rolls_back(va, setup, tmp_path):
    """``accelrl tune --machine deploy/*.yaml`` over Channel Access: the BO session tunes the
    virtual ARES-EA through the safety layer, and an interlock after its first write aborts
    the run and rolls the knobs back."""
    pytest.importorskip("botorch")
    initial_mae = va.true_mae()
    result = _bo_run(va, setup, tmp_path / "tune", steps=8)
    assert result.abort_reason is None, result.abort_detail
    assert result.writes >= 3 and va.put_count() >= result.writes
    assert va.true_mae() < 0.5 * initial_mae
    logged = [r for r in read_run(tmp_path / "tune") if r["type"] == "step" and r.get("writes")]
    assert len(logged) == result.writes  # every write is in the log
    va.reset()
    result = _bo_run(va, setup, tmp_path / "fault", steps=8, fault="interlock")
    assert result.abort_reason is AbortReason.interlock, result.abort_detail
    assert result.rollback is not None and result.rollback["complete"], result.rollback
    va.set_faults()
