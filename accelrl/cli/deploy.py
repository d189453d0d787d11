"""``accelrl deploy run``: an optimiser on a machine through the safety layer.

Examples::

    accelrl deploy run --bundle agents/apg-ares-ea/bundle --machine deploy/sim_ares_ea.yaml \\
        --mode auto --trial 30 --log runs/deploy-sim
    accelrl deploy run --bundle agents/apg-ares-ea/bundle \\
        --machine deploy/virtual_ares_ea_machine.yaml --mode shadow \\
        --target 0,1e-4,0,1e-4 --ca-address 127.0.0.1:5064

It prints one line per step as the run goes (step, mode, what was done, the beam error in
um, each knob's change in operator units), every safety event, and the abort and the
rollback in bold (``--quiet``: only those). On a ``ca``/``pva`` machine this never imports
torch. Exit status: 0 when the run ended at
the target, the step budget or an operator stop; 2 for invalid input; 3 when the run was
aborted (the knobs were rolled back).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from accelrl.cli.common import (
    EXIT_ABORTED,
    EXIT_INVALID,
    command_group,
    console,
    fail,
    input_path,
    parse_floats,
    print_run_result,
)
from accelrl.cli.options import finite
from accelrl.names import Mode

#: ``accelrl deploy ...`` commands.
deploy_app = command_group("Run exported policy bundles on machines (simulation or EPICS).")


@deploy_app.callback()
def _deploy() -> None:
    """Run exported policy bundles on machines (simulation or EPICS)."""


@deploy_app.command("run")
def deploy_run_command(
    bundle: Annotated[
        Path,
        typer.Option(
            "--bundle", "-b", callback=input_path, file_okay=False, help="Policy bundle directory."
        ),
    ],
    machine: Annotated[
        Path,
        typer.Option(
            "--machine",
            "-m",
            callback=input_path,
            dir_okay=False,
            help="Machine config (deploy/*.yaml).",
        ),
    ],
    mode: Annotated[
        Mode,
        typer.Option("--mode", help="shadow: never write; confirm: ask per step; auto: write."),
    ] = Mode.shadow,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Target mu_x,sigma_x,mu_y,sigma_y [m] (default for sim: the trial's).",
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Step budget.")] = 50,
    log: Annotated[
        Path | None,
        typer.Option("--log", file_okay=False, help="Run directory (default runs/deploy-<time>)."),
    ] = None,
    trial: Annotated[
        int, typer.Option("--trial", min=0, help="sim: trial (hidden state) to simulate.")
    ] = 30,
    trials: Annotated[
        Path | None,
        typer.Option(
            "--trials",
            callback=input_path,
            dir_okay=False,
            help="sim: trial set (default: published).",
        ),
    ] = None,
    settle_delay: Annotated[
        float,
        typer.Option(
            "--settle-delay",
            min=0.0,
            callback=finite("--settle-delay", low=0.0, unit="s"),
            help="sim: magnet settle time [s].",
        ),
    ] = 0.0,
    reading_noise: Annotated[
        float,
        typer.Option(
            "--reading-noise",
            min=0.0,
            callback=finite("--reading-noise", low=0.0, unit="m"),
            help="sim: screen noise rms [m].",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="sim: noise seed.")] = 0,
    thresholds: Annotated[
        str | None,
        typer.Option("--thresholds", help="Target-reached thresholds, 4 values [m]."),
    ] = None,
    ca_address: Annotated[
        list[str] | None,
        typer.Option("--ca-address", help="ca/pva: search only HOST[:PORT] (repeatable)."),
    ] = None,
    stop_file: Annotated[
        Path | None,
        typer.Option("--stop-file", dir_okay=False, help="Stop when this file appears."),
    ] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write run.png.")] = True,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No line per step (aborts, rollbacks and safety events are still shown).",
        ),
    ] = False,
) -> None:
    """Run a policy bundle on a machine through the safety layer (shadow, confirm or auto),
    logging every step; aborts roll the knobs back to their initial settings."""
    from accelrl.bundle import BundleError
    from accelrl.cli.steplines import StepLines
    from accelrl.deploy.config import MachineConfigError, load_machine_config
    from accelrl.deploy.controller import Controller, StopReason
    from accelrl.deploy.machines import build_machine
    from accelrl.deploy.runtime import OnnxPolicy
    from accelrl.deploy.safety import SafetyLayer

    try:
        config = load_machine_config(machine)
        policy = OnnxPolicy(bundle)
    except (MachineConfigError, BundleError) as err:
        raise fail(str(err), EXIT_INVALID) from None
    target_values = parse_floats(target, 4, "'--target'") if target is not None else None
    thr = parse_floats(thresholds, 4, "'--thresholds'") if thresholds is not None else None
    try:
        mach, sim_target = build_machine(
            config, trial, trials, settle_delay, reading_noise, seed, ca_address
        )
    except ValueError as err:
        raise fail(str(err), EXIT_INVALID) from None
    if target_values is None:
        if sim_target is None:
            raise typer.BadParameter(
                f"machine {config.name!r} ({config.transport}) needs a target",
                param_hint="'--target'",
            )
        target_values = [sim_target[n] for n in policy.manifest.beam_names]
    log_dir = log if log is not None else Path("runs") / time.strftime("deploy-%Y%m%d-%H%M%S")
    if (log_dir / "run.jsonl").exists():
        raise typer.BadParameter(f"{log_dir} already holds a run", param_hint="'--log'")
    try:
        safety = SafetyLayer.for_bundle(mach, config, policy.manifest)
        controller = Controller(
            policy,
            mach,
            safety,
            mode.value,
            target=target_values,
            thresholds=thr,
            max_steps=steps,
            log_dir=log_dir,
            stop_file=stop_file,
            plot=plot,
            on_record=StepLines(console, quiet=quiet),
        )
    except (ValueError, BundleError) as err:
        raise fail(str(err), EXIT_INVALID) from None
    console.print(
        f"{mode.value} run of {policy.manifest.source} on {config.name} ({config.transport}), "
        f"up to {steps} steps; log: {log_dir} (follow it live: accelrl dashboard {log_dir})",
        highlight=False,
    )
    try:
        result = controller.run()
    finally:
        mach.close()
    print_run_result(result, log_dir)
    if result.reason is StopReason.abort:
        raise typer.Exit(EXIT_ABORTED)
