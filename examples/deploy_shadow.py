"""Shadow-mode deployment of the shipped ARES-EA policy bundle, then the same run for real.

Read top to bottom:

1. load and verify the policy bundle (sha256 of every file, embedded manifest, self-test);
2. build the machine: the accelrl simulation with the hidden state of published trial 30,
   behind the machine interface (SimMachine; 20 ms magnet settling, 2 um screen noise) --
   or, with ``--virtual``, the virtual accelerator (a Channel Access IOC on 127.0.0.1)
   reached through EpicsMachine;
3. wrap it in the safety layer: the machine config's hard limits intersected with the
   bundle's, the policy's step size, verified writes, rollback;
4. run the controller in shadow mode: it reads, asks the policy, applies the safety rules
   and logs what it would write -- nothing is written;
5. run it again in auto mode and compare; both runs leave a JSON Lines log, a summary and a
   plot under ``runs/``.

    .venv/bin/python examples/deploy_shadow.py [--trial 30] [--virtual]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from accelrl.deploy.config import load_machine_config
from accelrl.deploy.controller import Controller
from accelrl.deploy.runtime import OnnxPolicy
from accelrl.deploy.safety import SafetyLayer

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser()
parser.add_argument("--trial", type=int, default=30, help="published trial (hidden state)")
parser.add_argument("--virtual", action="store_true", help="use the virtual accelerator (CA)")
parser.add_argument("--out", type=Path, default=None, help="log folder (default: runs/...)")
args = parser.parse_args()
torch.set_num_threads(1)
out = args.out or Path("runs") / time.strftime("example-deploy-%Y%m%d-%H%M%S")

# 1. the bundle: loading verifies it (a modified or mismatching file raises BundleError)
policy = OnnxPolicy(ROOT / "agents" / "apg-ares-ea" / "bundle")
m = policy.manifest
print(f"bundle: {m.source} for {m.env_id}, {m.action_mode} actions on {list(m.knob_names)}")
print(f"        self-test max error per knob: {policy.selftest_max_error}")

# 2. the machine, and the target (the trial's: a published evaluation problem)
from accelrl.deploy.plant import Plant  # noqa: E402  (the simulation needs torch)

target = Plant.from_trial(args.trial).target
ioc = None
if args.virtual:
    from accelrl.deploy.virtual import serve_in_subprocess, unique_prefix

    ioc = serve_in_subprocess(
        ROOT / "deploy" / "virtual_ares_ea.yaml", prefix=unique_prefix(), trial=args.trial
    )
    config = ioc.machine_config

    def make_machine():
        return ioc.machine()
else:
    from accelrl.deploy.sim import SimMachine

    config = load_machine_config(ROOT / "deploy" / "sim_ares_ea.yaml")

    def make_machine():
        plant = Plant.from_trial(args.trial, reading_noise=2e-6, seed=0)
        return SimMachine(plant, config, settle_delay_s=0.02)


print(f"machine: {config.name} ({config.transport}); target [um]:",
      {k: round(v * 1e6, 1) for k, v in target.items()})  # fmt: skip

try:
    for mode in ("shadow", "auto"):
        # 3. the safety layer of this machine for this bundle
        machine = make_machine()
        safety = SafetyLayer.for_bundle(machine, config, m)
        if mode == "shadow":
            for name, lim in safety.limits.items():
                print(f"  {name}: [{lim.low:+.4g}, {lim.high:+.4g}] {lim.unit}, "
                      f"max step {lim.max_step:.4g}")  # fmt: skip
        # 4./5. the controller: shadow never writes; auto writes every safe proposal
        controller = Controller(
            policy, machine, safety, mode, target=target, max_steps=15, log_dir=out / mode
        )
        result = controller.run()
        machine.close()
        mae = result.summary["final_mae"]
        print(
            f"{mode:>6}: {result.reason.value} after {result.steps} steps, "
            f"{result.writes} writes, last MAE {mae * 1e6:.1f} um"
        )
        if mode == "shadow":
            first = json.loads((out / mode / "run.jsonl").read_text().splitlines()[1])
            print("        first proposal (not written):",
                  {k: round(v, 6) for k, v in first["safe_setpoints"].items()})  # fmt: skip
        print(f"        log: {out / mode}/run.jsonl, plot: {result.summary['plot']}")
finally:
    if ioc is not None:
        ioc.stop()
