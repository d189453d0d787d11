"""``accelrl export`` and ``accelrl deploy run``: export a policy bundle, run it on a machine.

Registered in :mod:`accelrl.cli`; heavy imports (torch, Stable-Baselines3, onnxruntime,
caproto) happen inside the commands, and ``deploy run`` on a ``ca``/``pva`` machine never
imports torch. The same commands run without the ``accelrl`` entry point as
``python -m accelrl.deploy.cli export ...`` / ``python -m accelrl.deploy.cli run ...``.

Examples::

    accelrl export agents/apg-ares-ea --out agents/apg-ares-ea/bundle
    accelrl export runs/td3_icml-0/model.zip --out bundles/td3     # + runs/.../vecnormalize.pkl
    accelrl deploy run --bundle agents/apg-ares-ea/bundle --machine deploy/sim_ares_ea.yaml \\
        --mode auto --trial 30 --log runs/deploy-sim
    accelrl deploy run --bundle agents/apg-ares-ea/bundle \\
        --machine deploy/virtual_ares_ea_machine.yaml --mode shadow \\
        --target 0,1e-4,0,1e-4 --ca-address 127.0.0.1:5064

Exit status: 0 when the run ended at the target, the step budget or an operator stop;
2 for invalid input; 3 when the run was aborted (the knobs were rolled back).
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

#: Exit status of an aborted run.
EXIT_ABORTED = 3


class RunMode(StrEnum):
    """Controller modes."""

    shadow = "shadow"
    confirm = "confirm"
    auto = "auto"


def _fail(message: str, code: int = 2) -> typer.Exit:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def parse_floats(text: str, n: int, option: str) -> list[float]:
    """``n`` comma-separated numbers of a command-line option (``BadParameter`` otherwise)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not {n} comma-separated numbers", param_hint=option
        ) from None
    if len(values) != n:
        raise typer.BadParameter(f"need {n} values, got {len(values)}", param_hint=option)
    return values


# ---------------------------------------------------------------------- export
def export_command(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="MLPPolicy directory (policy.pt + policy.json) or SB3 model .zip.",
            exists=True,
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", file_okay=False, help="Bundle directory to write."),
    ],
    vecnormalize: Annotated[
        Path | None,
        typer.Option(
            "--vecnormalize",
            exists=True,
            dir_okay=False,
            help="SB3 only: VecNormalize pickle (default: vecnormalize.pkl next to the zip).",
        ),
    ] = None,
    env_id: Annotated[
        str | None,
        typer.Option(
            "--env-id", help="SB3 only: training environment (default: the run's recipe)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the self-test observations.")
    ] = 0,
) -> None:
    """Export a trained policy as an ONNX policy bundle (policy.onnx, manifest.json,
    selftest.npz), verified against the source policy on 10k observations."""
    import torch
    from rich.console import Console

    from accelrl.deploy.bundle import BundleError, read_manifest
    from accelrl.deploy.export import PARITY_COUNT, ExportError, export

    torch.set_num_threads(1)
    try:
        # export() verifies the written bundle (hashes, self-test) before it returns.
        path = export(model, out, vecnormalize=vecnormalize, env_id=env_id, seed=seed)
        m = read_manifest(path)
    except (ExportError, BundleError) as err:
        raise _fail(str(err)) from None
    parity = m.provenance.get("export", {}).get("parity_max_error_over_range")
    console = Console()
    console.print(f"bundle: {path}", highlight=False)
    console.print(
        f"  {m.source} for {m.env_id}, {m.action_mode} actions {list(m.knob_names)}\n"
        f"  parity with the source on {PARITY_COUNT} observations: {parity:.2g} of the "
        f"action range\n  files: " + ", ".join(f"{n} ({h[:12]})" for n, h in m.files.items()),
        highlight=False,
    )


# ---------------------------------------------------------------------- deploy run
def build_machine(
    config: Any,
    trial: int,
    trials: Path | None,
    settle_delay: float,
    reading_noise: float,
    seed: int,
    addresses: list[str] | None,
) -> tuple[Any, dict[str, float] | None]:
    """The machine of ``config`` and, for the simulation, the trial's target."""
    if config.transport == "sim":
        import torch

        from accelrl.deploy.plant import Plant
        from accelrl.deploy.sim import SimMachine

        torch.set_num_threads(1)
        try:
            plant = Plant.from_trial(
                trial, trials, env_id=config.env_id, reading_noise=reading_noise, seed=seed
            )
        except (IndexError, ValueError) as err:
            raise typer.BadParameter(str(err), param_hint="'--trial'") from None
        return SimMachine(plant, config, settle_delay_s=settle_delay), plant.target
    from accelrl.deploy.epics import EpicsMachine  # numpy + caproto only

    return EpicsMachine(config, addresses=addresses), None


def print_run_result(console: Any, result: Any, log_dir: Path, title: str = "deploy run") -> None:
    """The table of a controller run (steps, writes, final errors, abort and rollback)."""
    from rich.table import Table

    table = Table(title=f"{title}: {result.reason.value}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("steps", str(result.steps))
    table.add_row("writes", str(result.writes))
    if result.final_error is not None:
        for name, value in result.final_error.items():
            table.add_row(f"final {name} - target", f"{value * 1e6:+.1f} um")
    if result.abort_reason is not None:
        table.add_row("abort", f"{result.abort_reason.value}: {result.abort_detail}")
        rb = result.rollback or {}
        table.add_row(
            "rollback",
            f"{'complete' if rb.get('complete') else 'INCOMPLETE'} in {rb.get('writes', 0)} "
            f"writes {rb.get('detail', '')}",
        )
    console.print(table)
    console.print(f"log: {log_dir}", highlight=False)


def deploy_run_command(
    bundle: Annotated[
        Path,
        typer.Option(
            "--bundle", "-b", exists=True, file_okay=False, help="Policy bundle directory."
        ),
    ],
    machine: Annotated[
        Path,
        typer.Option(
            "--machine", "-m", exists=True, dir_okay=False, help="Machine config (deploy/*.yaml)."
        ),
    ],
    mode: Annotated[
        RunMode,
        typer.Option("--mode", help="shadow: never write; confirm: ask per step; auto: write."),
    ] = RunMode.shadow,
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
            "--trials", exists=True, dir_okay=False, help="sim: trial set (default: published)."
        ),
    ] = None,
    settle_delay: Annotated[
        float, typer.Option("--settle-delay", min=0.0, help="sim: magnet settle time [s].")
    ] = 0.0,
    reading_noise: Annotated[
        float, typer.Option("--reading-noise", min=0.0, help="sim: screen noise rms [m].")
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
) -> None:
    """Run a policy bundle on a machine through the safety layer (shadow, confirm or auto),
    logging every step; aborts roll the knobs back to their initial settings."""
    from rich.console import Console

    from accelrl.deploy.bundle import BundleError
    from accelrl.deploy.config import MachineConfigError, load_machine_config
    from accelrl.deploy.controller import Controller, StopReason
    from accelrl.deploy.runtime import OnnxPolicy
    from accelrl.deploy.safety import SafetyLayer

    console = Console()
    try:
        config = load_machine_config(machine)
        policy = OnnxPolicy(bundle)
    except (MachineConfigError, BundleError) as err:
        raise _fail(str(err)) from None
    target_values = parse_floats(target, 4, "'--target'") if target is not None else None
    thr = parse_floats(thresholds, 4, "'--thresholds'") if thresholds is not None else None
    try:
        mach, sim_target = build_machine(
            config, trial, trials, settle_delay, reading_noise, seed, ca_address
        )
    except ValueError as err:
        raise _fail(str(err)) from None
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
        )
    except (ValueError, BundleError) as err:
        raise _fail(str(err)) from None
    console.print(
        f"{mode.value} run of {policy.manifest.source} on {config.name} ({config.transport}), "
        f"up to {steps} steps; log: {log_dir}",
        highlight=False,
    )
    try:
        result = controller.run()
    finally:
        mach.close()
    print_run_result(console, result, log_dir)
    if result.reason is StopReason.abort:
        raise typer.Exit(EXIT_ABORTED)


#: ``accelrl deploy ...`` commands.
deploy_app = typer.Typer(
    help="Run exported policy bundles on machines (simulation or EPICS).",
    no_args_is_help=True,
)
deploy_app.command("run", help="Run a policy bundle on a machine (shadow | confirm | auto).")(
    deploy_run_command
)


@deploy_app.callback()
def _deploy() -> None:
    """Run exported policy bundles on machines (simulation or EPICS)."""


#: Stand-alone entry point: ``python -m accelrl.deploy.cli export|run ...`` (no torch needed
#: for ``run`` on an EPICS machine).
app = typer.Typer(
    help="Export policy bundles and run them on machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command("export", help="Export a trained policy as an ONNX policy bundle.")(export_command)
app.command("run", help="Run a policy bundle on a machine (shadow | confirm | auto).")(
    deploy_run_command
)

if __name__ == "__main__":
    app()
