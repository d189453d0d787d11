"""``accelrl tune``: a Bayesian-optimisation tuning session with a live display and plots.

Register it in the ``accelrl`` app with ``app.command("tune")(tune_command)``. Importing
this module loads only typer and rich; torch, BoTorch and the simulation are imported when
the command runs.

Examples::

    accelrl tune --machine sim:ares-ea --trial 30 --prior physics --steps 75 --out runs/tune30
    accelrl tune --machine sim:ares-ea --trial 30 --prior none --acquisition ucb --out runs/ucb
    accelrl tune --machine deploy/sim_ares_ea.yaml --trial 30 --out runs/tune-machine
    accelrl tune --machine deploy/virtual_ares_ea_machine.yaml --target 0,1e-4,0,1e-4 \
        --ca-address 127.0.0.1:5064 --mode confirm --out runs/tune-ca

With a machine config (``deploy/*.yaml``: the simulation or an EPICS machine) the session runs
in the deploy controller: every write through the safety layer, modes shadow / confirm / auto,
the run log in ``--out``/run, rollback on an abort (exit status 3).

Writes into ``--out``: the session (``problem.json``, ``session.json``, ``data.csv``,
``model.pt``; resumable with :meth:`accelrl.agents.bo.TuningSession.load`), ``summary.json``,
``objective.png`` (objective per step) and ``slices.png`` (GP and prior around the best
setting). At the end the machine is returned to the best observed setting.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Built-in machines ``--machine`` accepts (besides a machine config file).
MACHINES: tuple[str, ...] = ("sim:ares-ea",)


class ModeChoice(StrEnum):
    """How a session on a machine config acts (see ``accelrl deploy run``)."""

    shadow = "shadow"
    confirm = "confirm"
    auto = "auto"


class PriorChoice(StrEnum):
    """Prior mean of the objective GP."""

    physics = "physics"
    nominal = "nominal"
    wrong = "wrong"
    none = "none"


class AcquisitionChoice(StrEnum):
    """Acquisition function."""

    logei = "logei"
    ucb = "ucb"


class _Quiet:
    """Stands in for ``rich.live.Live`` with ``--no-progress``."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def update(self, renderable: object) -> None:
        """Ignore the update."""


def _um(value: float) -> str:
    return f"{value * 1e6:.1f}" if math.isfinite(value) else "-"


def tune_command(
    out: Annotated[
        Path,
        typer.Option("--out", file_okay=False, help="Output directory.", show_default=False),
    ],
    machine: Annotated[
        str,
        typer.Option(
            "--machine",
            help=f"Machine to tune: {', '.join(MACHINES)}, or a machine config (deploy/*.yaml: "
            "simulation or EPICS, through the deploy safety layer).",
        ),
    ] = "sim:ares-ea",
    trial: Annotated[
        int,
        typer.Option("--trial", min=0, help="Trial of the published set (hidden state, target)."),
    ] = 0,
    prior: Annotated[
        PriorChoice, typer.Option("--prior", help="Prior mean of the objective GP.")
    ] = PriorChoice.physics,
    acquisition: Annotated[
        AcquisitionChoice, typer.Option("--acquisition", help="Acquisition function.")
    ] = AcquisitionChoice.logei,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Tuning steps.")] = 75,
    budget: Annotated[
        float,
        typer.Option("--budget", min=0.001, help="Acquisition budget per step, in seconds."),
    ] = 0.08,
    max_step: Annotated[
        float,
        typer.Option(
            "--max-step",
            min=0.0,
            help="Largest change per step as a fraction of max(|low|, |high|) (0: none).",
        ),
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Session seed.")] = 0,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the live display.")
    ] = True,
    mode: Annotated[
        ModeChoice | None,
        typer.Option(
            "--mode",
            help="Machine config only: shadow (never write), confirm (ask per step) or auto; "
            "default auto for a simulated machine, confirm otherwise.",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Machine config only: target mu_x,sigma_x,mu_y,sigma_y [m] (default for a "
            "simulated machine: the trial's).",
        ),
    ] = None,
    ca_address: Annotated[
        list[str] | None,
        typer.Option("--ca-address", help="Machine config, ca/pva: search only HOST[:PORT]."),
    ] = None,
) -> None:
    """Tune a machine with Bayesian optimisation (BoTorch) and a physics-informed prior."""
    if machine not in MACHINES and Path(machine).suffix in (".yaml", ".yml"):
        _tune_machine_config(
            out, Path(machine), trial, prior, acquisition, steps, budget, seed, mode, target,
            ca_address,
        )  # fmt: skip
        return
    if mode is not None or target is not None or ca_address:
        err_console.print(
            "[bold red]error:[/] --mode, --target and --ca-address apply to a machine config "
            f"(deploy/*.yaml), not to {escape(machine)!s}"
        )
        raise typer.Exit(2)
    if machine not in MACHINES:
        err_console.print(
            f"[bold red]error:[/] --machine {escape(machine)!s} is not one of {list(MACHINES)} "
            "nor a machine config (.yaml)"
        )
        raise typer.Exit(1)
    import numpy as np
    from rich.live import Live
    from rich.table import Table

    from accelrl.agents.bo import BeamlinePrior, TuningSession, ares_ea_problem, screen_result
    from accelrl.agents.bo.plots import plot_objective, plot_slices
    from accelrl.envs import TASKS, TransverseTuningEnv, load_trials

    trials = load_trials()
    if trial >= len(trials):
        err_console.print(f"[bold red]error:[/] --trial {trial} is not in 0..{len(trials) - 1}")
        raise typer.Exit(1)
    env = TransverseTuningEnv(
        TASKS["accelrl/AresEATransverseTuning-v0"](),
        action_mode="direct",
        terminate_on_target=False,
    )
    _, info = env.reset(seed=seed + trial, options={"trial": trials[trial]})
    target = np.asarray(info["target"], np.float64)
    problem = ares_ea_problem(initial=info["magnets"], max_step_fraction=max_step or None)
    module = None
    if prior is not PriorChoice.none:
        module = BeamlinePrior(
            target,
            calibrate=prior is not PriorChoice.nominal,
            wrong="flipped" if prior is PriorChoice.wrong else None,
        )
    session = TuningSession(
        problem, module, {"acquisition": acquisition.value, "budget_s": budget, "seed": seed}
    )

    def measure() -> dict[str, float]:
        return screen_result(info["reading"], target, bool(info["on_screen"]))

    def view(step: int, mae: float) -> Table:
        d = session.diagnostics()
        best = d["best"]["objective"] if d["best"] else math.nan
        table = Table(title=f"accelrl tune {machine} trial {trial}, prior {prior.value}")
        for col in (
            "step",
            "MAE [um]",
            "best [um]",
            "mode",
            "prior r",
            "prior used",
            "suggest [s]",
        ):
            table.add_column(col, justify="right")
        r = d["prior_correlation"]
        table.add_row(
            f"{step}/{steps}",
            _um(mae),
            _um(best),
            str(d["mode"] or "-"),
            "-" if r is None else f"{r:.2f}",
            "yes" if d["uses_prior"] and d["has_prior"] else "no",
            "-" if d["suggest_s"] is None else f"{d['suggest_s']:.3f}",
        )
        return table

    initial_mae = float(info["mae"])
    live_view = (
        Live(view(0, initial_mae), console=err_console, refresh_per_second=8)
        if progress
        else _Quiet()
    )
    with live_view as live:
        for step in range(1, steps + 1):
            session.ingest(problem.named(info["magnets"]), measure())
            x = session.suggest()
            _, _, _, _, info = env.step(np.array([x[n] for n in problem.names]))
            live.update(view(step, float(info["mae"])))
        session.ingest(problem.named(info["magnets"]), measure())
        for _ in session.finish():  # back to the best observed setting
            x = session.suggest()
            _, _, _, _, info = env.step(np.array([x[n] for n in problem.names]))
    out.mkdir(parents=True, exist_ok=True)
    session.save(out)
    plot_objective(session, out / "objective.png")
    plot_slices(session, out / "slices.png")
    diag = session.diagnostics()
    summary = {
        "machine": machine,
        "trial": trial,
        "prior": prior.value,
        "acquisition": acquisition.value,
        "steps": steps,
        "initial_mae_m": initial_mae,
        "best_mae_m": diag["best"]["objective"] if diag["best"] else None,
        "final_mae_m": float(info["mae"]),
        "final_setting": problem.named(info["magnets"]),
        "diagnostics": diag,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(
        f"trial {trial}: MAE {_um(initial_mae)} um -> best {_um(summary['best_mae_m'] or math.nan)}"
        f" um; final (back at the best setting) {_um(float(info['mae']))} um"
    )
    console.print(
        f"wrote {escape(str(out))}/: problem.json, session.json, data.csv, model.pt, "
        "summary.json, objective.png, slices.png"
    )


def _tune_machine_config(
    out: Path,
    path: Path,
    trial: int,
    prior: PriorChoice,
    acquisition: AcquisitionChoice,
    steps: int,
    budget: float,
    seed: int,
    mode: ModeChoice | None,
    target: str | None,
    ca_address: list[str] | None,
) -> None:
    """A BO session on the machine of a machine config, run by the deploy controller: every
    write through the safety layer, logged; an abort rolls the knobs back."""
    from accelrl.agents.bo import BOOptimiser
    from accelrl.agents.bo.plots import plot_objective, plot_slices
    from accelrl.agents.machine_source import OptimiserSource
    from accelrl.deploy.cli import EXIT_ABORTED, build_machine, parse_floats, print_run_result
    from accelrl.deploy.config import MachineConfigError, load_machine_config
    from accelrl.deploy.controller import Controller, StopReason
    from accelrl.deploy.safety import SafetyLayer
    from accelrl.physics.beam import TRANSVERSE

    if not path.is_file():
        err_console.print(f"[bold red]error:[/] machine config {escape(str(path))} not found")
        raise typer.Exit(2)
    try:
        config = load_machine_config(path)
    except MachineConfigError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    target_values = parse_floats(target, 4, "'--target'") if target is not None else None
    mach, sim_target = build_machine(config, trial, None, 0.0, 0.0, seed, ca_address)
    if target_values is None:
        if sim_target is None:
            mach.close()
            raise typer.BadParameter(
                f"machine {config.name!r} ({config.transport}) needs a target",
                param_hint="'--target'",
            )
        target_values = [sim_target[n] for n in TRANSVERSE]
    run_mode = (
        mode.value if mode is not None else ("auto" if config.transport == "sim" else "confirm")
    )
    optimiser = BOOptimiser(prior=prior.value, acquisition=acquisition.value, budget_s=budget)
    log_dir = out / "run"
    if (log_dir / "run.jsonl").exists():
        mach.close()
        raise typer.BadParameter(f"{out} already holds a run", param_hint="'--out'")
    try:
        source = OptimiserSource(config, optimiser, max_steps=steps, seed=seed)
        controller = Controller(
            source, mach, SafetyLayer(mach, config), run_mode, target=target_values,
            max_steps=steps, log_dir=log_dir,
        )  # fmt: skip
    except ValueError as err:
        mach.close()
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(
        f"BO ({prior.value} prior) on {config.name} ({config.transport}), {run_mode} mode, up to "
        f"{steps} steps; log: {log_dir}",
        highlight=False,
    )
    try:
        result = controller.run()
    finally:
        mach.close()
    session = optimiser.session
    written = ["run/"]
    if session is not None and session.rows:
        session.save(out)
        plot_objective(session, out / "objective.png")
        plot_slices(session, out / "slices.png")
        written += ["problem.json", "session.json", "data.csv", "model.pt", "objective.png",
                    "slices.png"]  # fmt: skip
    summary = {
        "machine": config.name,
        "machine_config": str(path),
        "transport": config.transport,
        "mode": run_mode,
        "prior": prior.value,
        "acquisition": acquisition.value,
        "steps": steps,
        "run": result.summary,
        "diagnostics": None if session is None else session.diagnostics(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_run_result(console, result, log_dir, title="accelrl tune")
    console.print(f"wrote {escape(str(out))}/: {', '.join([*written, 'summary.json'])}")
    if result.reason is StopReason.abort:
        raise typer.Exit(EXIT_ABORTED)
