"""Deploy the shipped ARES-EA policy on the virtual accelerator over EPICS Channel Access.

Top to bottom, this script:

1. starts the virtual ARES-EA (a caproto soft IOC on 127.0.0.1 backed by the accelrl
   simulation of published trial 30) in a subprocess, on a free port;
2. connects to it as any EPICS client would (:class:`accelrl.deploy.epics.EpicsMachine`);
3. runs the policy bundle in ``shadow`` mode (reads, proposes, never writes: the IOC counts
   zero setpoint writes), then in ``auto`` mode (tunes the beam);
4. resets the machine, switches on a fault through the IOC's ``FAULT`` PV during a run and
   shows the abort and the rollback to the initial settings.

Run it from the repository root (about a minute)::

    python examples/virtual_accelerator_demo.py

The same IOC as a standalone server, for the ``accelrl deploy run`` command or any CA
client (caget, pyepics, Phoebus)::

    accelrl serve-virtual --config deploy/virtual_ares_ea.yaml --port 5064
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from accelrl.deploy.controller import Controller
from accelrl.deploy.epics import EpicsMachine
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import SafetyLayer
from accelrl.deploy.virtual import serve_in_subprocess
from accelrl.envs.trials import load_trials
from accelrl.units import fmt

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "agents" / "apg-ares-ea" / "bundle"
CONFIG = ROOT / "deploy" / "virtual_ares_ea.yaml"
TRIAL = 30

policy = OnnxPolicy(BUNDLE)  # verifies the files' sha256 and runs the bundle's self-test
target = load_trials()[TRIAL].target.tolist()  # (mu_x, sigma_x, mu_y, sigma_y) [m]
logs = Path(tempfile.mkdtemp(prefix="virtual-demo-"))


def run(ioc, mode: str, name: str, **kwargs):
    """One controller run on the virtual machine; prints and returns its result."""
    machine = EpicsMachine(ioc.machine_config, addresses=[ioc.address])
    machine.connect(timeout=5.0)
    try:
        safety = SafetyLayer.for_bundle(machine, ioc.machine_config, policy.manifest)
        controller = Controller(
            policy, machine, safety, mode, target=target, log_dir=logs / name, **kwargs
        )
        result = controller.run()
    finally:
        machine.close()
    mae = result.summary.get("final_mae")
    print(
        f"{name:>8}: {result.reason.value:<15} steps {result.steps:2d}, writes {result.writes:2d}, "
        f"observed MAE {1e6 * mae:7.1f} um, true MAE {1e6 * ioc.true_mae():7.1f} um, "
        f"setpoint writes counted by the IOC {ioc.put_count()}"
    )
    if result.abort_reason is not None:
        print(f"          abort: {result.abort_reason.value}: {result.abort_detail}")
        print(f"          rollback: {result.rollback}")
    return result


with serve_in_subprocess(CONFIG, trial=TRIAL) as ioc:
    print(f"virtual ARES-EA serving on {ioc.address}, PV prefix {ioc.prefix!r}")
    print(f"clients in other shells: {' '.join(f'{k}={v}' for k, v in ioc.env.items())}")
    print(f"true MAE at the start: {1e6 * ioc.true_mae():.1f} um")

    run(ioc, "shadow", "shadow", max_steps=5)
    run(ioc, "auto", "auto", max_steps=50)

    # A fault during a run: the interlock trips once the controller has written twice.
    ioc.reset()
    writes_seen = []

    def trip_interlock() -> bool:
        writes_seen.append(ioc.put_count())
        if writes_seen[-1] >= 10:  # two 5-knob writes
            ioc.set_faults("interlock")
        return False

    run(ioc, "auto", "fault", max_steps=50, thresholds=[1e-9] * 4, stop_callback=trip_interlock)
    ioc.set_faults()
    machine = EpicsMachine(ioc.machine_config, addresses=[ioc.address])
    machine.connect(timeout=5.0)
    setpoints = machine.read_setpoints().values
    units = {k.name: k.unit for k in ioc.machine_config.knobs}
    shown = ", ".join(f"{n} {fmt(v, units.get(n, ''))}" for n, v in setpoints.items())
    print(f"setpoints after the rollback: {shown}")  # operator units: steerers in mrad
    machine.close()

print(f"run logs (run.jsonl, summary.json, run.png) under {logs}")
