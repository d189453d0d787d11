"""The sim-to-"machine" gap: the shipped policy bundle tunes the virtual ARES-EA over EPICS
Channel Access, next to the same bundle and controller on the in-process simulation.

For each of 10 published trials (indices 30, 57, 84, ..., 273 of the 300 ARES-EA trials)
the runtime controller (``auto`` mode, safety layer on) runs the ONNX bundle twice with the
trial's target:

* **in-process**: on :class:`~accelrl.deploy.sim.SimMachine` (the plant, no transport, no
  settle time, no reading noise: the conditions the policy was evaluated in);
* **over CA**: on :class:`~accelrl.deploy.epics.EpicsMachine` against the virtual
  accelerator serving the same trial on 127.0.0.1 (power-supply ramps with busy flags, a
  camera at a fixed frame rate with reading noise, IOC time stamps, Channel Access).

It reports the true final MAE of the beam to the target (from the simulation's hidden
state, not from the noisy screen) [um], the steps taken, whether the target was reached
and the wall time per step; then the medians, and ends with one line of JSON.

With ``--world W`` (``ares-realistic``, ...: :mod:`accelrl.envs.world`) both run in that
world: the in-process plant and the simulation behind the IOC read the beam through the
world's camera, with its magnet errors, hysteresis and beam jitter (seeded by the trial
index; add ``--noise 0`` to leave the reading noise to the world's camera).

    python benchmarks/deploy_e2e.py [--trials 30 57 ...] [--max-steps 50]
        [--settle-time 0.1] [--frame-rate 10] [--noise 2e-6] [--world ares-realistic]
        [--bundle agents/apg-ares-ea-averaged/bundle]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

from accelrl.deploy.controller import Controller  # noqa: E402
from accelrl.deploy.epics import EpicsMachine  # noqa: E402
from accelrl.deploy.plant import Plant  # noqa: E402
from accelrl.deploy.runtime import OnnxPolicy  # noqa: E402
from accelrl.deploy.safety import SafetyLayer  # noqa: E402
from accelrl.deploy.sim import SimMachine  # noqa: E402
from accelrl.deploy.virtual import load_virtual_config, serve_in_subprocess  # noqa: E402
from accelrl.envs.trials import load_trials  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "agents" / "apg-ares-ea" / "bundle"
CONFIG = ROOT / "deploy" / "virtual_ares_ea.yaml"
TRIALS = [30 + 27 * k for k in range(10)]


def run_controller(
    policy: OnnxPolicy,
    machine: Any,
    config: Any,
    target: list[float],
    max_steps: int,
    log_dir: Path,
) -> tuple[Any, float]:
    """One auto-mode run; returns the result and its wall time [s]."""
    safety = SafetyLayer.for_bundle(machine, config, policy.manifest)
    controller = Controller(
        policy,
        machine,
        safety,
        "auto",
        target=target,
        max_steps=max_steps,
        log_dir=log_dir,
        plot=False,
        fsync=False,
    )
    t0 = time.perf_counter()
    result = controller.run()
    return result, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=TRIALS)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--settle-time", type=float, default=0.1, help="magnet ramp [s]")
    parser.add_argument("--frame-rate", type=float, default=10.0, help="screen frames [1/s]")
    parser.add_argument("--noise", type=float, default=2.0e-6, help="reading noise [m]")
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--world", default=None, help="world of both machines (default ideal)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    policy = OnnxPolicy(args.bundle)
    trials = load_trials()
    base = load_virtual_config(CONFIG)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="deploy_e2e-"))
    for index in args.trials:
        trial = trials[index]
        target = trial.target.tolist()
        # in-process: the same controller and safety layer on the simulation
        plant = Plant(trial, world=args.world, seed=index)
        sim = SimMachine(plant, base.machine)
        sim.connect(timeout=1.0)
        sim_result, sim_wall = run_controller(
            policy, sim, base.machine, target, args.max_steps, work / f"sim-{index}"
        )
        sim_mae = plant.mae()
        # over Channel Access: the virtual accelerator serving the same trial
        with serve_in_subprocess(
            base,
            trial=index,
            magnets={"settle_time_s": args.settle_time, "update_rate_hz": 50.0},
            screen={"frame_rate_hz": args.frame_rate, "reading_noise": args.noise, "seed": index},
            **({"world": args.world} if args.world else {}),
        ) as ioc:
            machine = EpicsMachine(ioc.machine_config, addresses=[ioc.address])
            machine.connect(timeout=5.0)
            try:
                ca_result, ca_wall = run_controller(
                    policy,
                    machine,
                    ioc.machine_config,
                    target,
                    args.max_steps,
                    work / f"ca-{index}",
                )
            finally:
                machine.close()
            time.sleep(0.2)  # let the last frame of the final settings through
            ca_mae = ioc.true_mae()
            puts = ioc.put_count()
        rows.append(
            {
                "trial": index,
                "sim_mae_um": 1e6 * sim_mae,
                "sim_steps": sim_result.steps,
                "sim_reason": sim_result.reason.value,
                "sim_ms_per_step": 1e3 * sim_wall / max(1, sim_result.steps),
                "ca_mae_um": 1e6 * ca_mae,
                "ca_steps": ca_result.steps,
                "ca_reason": ca_result.reason.value,
                "ca_abort": None
                if ca_result.abort_reason is None
                else ca_result.abort_reason.value,
                "ca_ms_per_step": 1e3 * ca_wall / max(1, ca_result.steps),
                "ca_puts": puts,
            }
        )
        r = rows[-1]
        print(
            f"trial {index:3d}: in-process {r['sim_mae_um']:8.2f} um in {r['sim_steps']:2d} steps "
            f"({r['sim_reason']}); over CA {r['ca_mae_um']:8.2f} um in {r['ca_steps']:2d} steps "
            f"({r['ca_reason']}, {r['ca_ms_per_step']:.0f} ms/step)",
            flush=True,
        )

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    def reached(prefix: str) -> float:
        return sum(r[f"{prefix}_reason"] == "target_reached" for r in rows) / len(rows)

    print()
    print(
        f"{'machine':<40} {'median final MAE [um]':>21} {'median steps':>13} "
        f"{'target reached':>15} {'ms/step':>8}"
    )
    print(
        f"{'in-process simulation (SimMachine)':<40} {med('sim_mae_um'):>21.2f} "
        f"{med('sim_steps'):>13.1f} {reached('sim'):>15.0%} {med('sim_ms_per_step'):>8.1f}"
    )
    print(
        f"{'virtual ARES-EA over Channel Access':<40} {med('ca_mae_um'):>21.2f} "
        f"{med('ca_steps'):>13.1f} {reached('ca'):>15.0%} {med('ca_ms_per_step'):>8.1f}"
    )
    summary = {
        "benchmark": "deploy_e2e",
        "bundle": str(args.bundle),
        "trials": args.trials,
        "max_steps": args.max_steps,
        "settle_time_s": args.settle_time,
        "frame_rate_hz": args.frame_rate,
        "reading_noise_m": args.noise,
        "world": args.world or "ideal",
        "sim_median_final_mae_um": med("sim_mae_um"),
        "sim_median_steps": med("sim_steps"),
        "sim_fraction_reached": reached("sim"),
        "ca_median_final_mae_um": med("ca_mae_um"),
        "ca_median_steps": med("ca_steps"),
        "ca_fraction_reached": reached("ca"),
        "ca_median_ms_per_step": med("ca_ms_per_step"),
        "ca_aborts": sum(r["ca_abort"] is not None for r in rows),
        "rows": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
