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

Writes into ``--out`` as it runs: ``progress.jsonl``, one record per step (setting, MAE,
best so far, the prior's calibration and fallback state; :mod:`accelrl.agents.bo.live`),
which ``accelrl dashboard`` follows; on a machine config also the controller's ``run/`` log
and one printed line per step. At the end: the session (``problem.json``, ``session.json``,
``data.csv``, ``model.npz``, ``manifest.json``; see :mod:`accelrl.agents.bo.persistence`),
``summary.json``, ``objective.png`` (objective per step) and ``slices.png`` (GP and prior
around the best setting). At the end the machine is returned to the best observed setting.

An ``--out`` that holds files is refused unless ``--force`` (replace: the earlier session,
plots, summary and run logs are removed first) or ``--resume``: continue the session saved
there for ``--steps`` more steps. A resumed session is loaded only after its files verify
against their sha256 and its bounds and max step lie within the machine's limits (the
machine config's knobs, or the task's actuators and ``--max-step``); it must have been run
with the same machine, trial, prior and acquisition.

Its size (~560 lines) is one command: its options and its two runs (on the simulation, and on a
machine config through the controller), which share the optimiser, the resume, the progress file
and the saved session.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from accelrl.cli.common import (
    EXIT_ABORTED,
    EXIT_INVALID,
    console,
    err_console,
    fail,
    parse_floats,
    print_run_result,
)
from accelrl.cli.options import finite
from accelrl.names import ARES_EA_ID, TRANSVERSE, Mode
from accelrl.units import um

if TYPE_CHECKING:
    from accelrl.agents.bo import BOOptimiser, TuningSession
    from accelrl.agents.bo.live import SessionProgress

#: Built-in machines ``--machine`` accepts (besides a machine config file).
MACHINES: tuple[str, ...] = ("sim:ares-ea",)
#: What a tuning run writes into ``--out`` (glob patterns; ``--force`` removes these).
OUT_FILES: tuple[str, ...] = (
    "progress.jsonl",
    "problem.json",
    "session.json",
    "data.csv",
    "model.npz",
    "model.pt",
    "manifest.json",
    "summary.json",
    "objective.png",
    "slices.png",
    "run",
    "run-*",
)


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
        typer.Option(
            "--budget",
            min=0.001,
            callback=finite("--budget", low=0.001, unit="s"),
            help="Acquisition budget per step, in seconds.",
        ),
    ] = 0.08,
    max_step: Annotated[
        float,
        typer.Option(
            "--max-step",
            min=0.0,
            callback=finite("--max-step", low=0.0),
            help="Largest change per step as a fraction of max(|low|, |high|) (0: none).",
        ),
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Session seed.")] = 0,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the live display.")
    ] = True,
    mode: Annotated[
        Mode | None,
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
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the session saved in --out (checked against the machine's limits).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the session, plots and logs in --out.")
    ] = False,
) -> None:
    """Tune a machine with Bayesian optimisation (BoTorch) and a physics-informed prior."""
    from accelrl.runs import OutputFolderError, prepare_output

    try:
        prepare_output(out, resume=resume, force=force, owned=OUT_FILES)
    except OutputFolderError as err:
        raise fail(str(err), EXIT_INVALID) from None
    if machine not in MACHINES and Path(machine).suffix in (".yaml", ".yml"):
        from accelrl.resources import resolve

        _tune_machine_config(
            out, resolve(machine), trial, prior, acquisition, steps, budget, seed, mode, target,
            ca_address, resume, progress,
        )  # fmt: skip
        return
    if mode is not None or target is not None or ca_address:
        raise fail(
            "--mode, --target and --ca-address apply to a machine config (deploy/*.yaml), "
            f"not to {machine}",
            EXIT_INVALID,
        )
    if machine not in MACHINES:
        raise fail(
            f"--machine {machine} is not one of {list(MACHINES)} nor a machine config (.yaml)"
        )
    _tune_simulation(
        out, trial, prior, acquisition, steps, budget, max_step, seed, progress, resume
    )


def _optimiser(
    prior: PriorChoice,
    acquisition: AcquisitionChoice,
    budget: float,
    max_step: float = 1.0,
    resumed: TuningSession | None = None,
    observer: Any = None,
) -> BOOptimiser:
    """The BO optimiser of a run; with ``resumed``, its first reset continues that session
    (after checking it lies within the limits of the problem the machine gives)."""
    from accelrl.agents.bo import BOOptimiser
    from accelrl.agents.bo.persistence import check_within_limits

    class Resumed(BOOptimiser):
        def reset(self, problem: Any) -> None:
            super().reset(problem)  # a fresh session on the machine's problem
            if resumed is not None:
                check_within_limits(resumed.problem, self.session.problem, "resumed session")
                self.session = resumed

    return Resumed(
        prior=prior.value, acquisition=acquisition.value, budget_s=budget, max_step=max_step,
        observer=observer,
    )  # fmt: skip


def _resumed_session(out: Path, limits: Any, expected: dict[str, Any]) -> TuningSession:
    """The session saved in ``out``, loaded against ``limits``; refused when its summary
    names another machine, trial, prior or acquisition than ``expected``."""
    from accelrl.agents.bo import TuningSession
    from accelrl.agents.bo.persistence import SessionFileError

    summary_path = out / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        raise fail(f"--resume: {summary_path} cannot be read ({err})", EXIT_INVALID) from None
    differ = [f"{k}: {summary.get(k)!r} there, {v!r} now" for k, v in expected.items()
              if summary.get(k) != v]  # fmt: skip
    if differ:
        raise fail(f"--resume: {out} holds another tuning run ({'; '.join(differ)})", EXIT_INVALID)
    try:
        return TuningSession.load(out, limits=limits)
    except (SessionFileError, ValueError) as err:
        raise fail(f"--resume: {err}", EXIT_INVALID) from None


def _write_session(optimiser: BOOptimiser, out: Path) -> list[str]:
    """Save the session and its plots into ``out``; the names written."""
    from accelrl.agents.bo.plots import plot_objective, plot_slices

    session = optimiser.session
    if session is None or not session.rows:
        return []
    session.save(out)
    plot_objective(session, out / "objective.png")
    plot_slices(session, out / "slices.png")
    files = ["problem.json", "session.json", "data.csv", "model.npz", "manifest.json"]
    return [*files, "objective.png", "slices.png"]


def _progress(out: Path, resume: bool, **meta: Any) -> SessionProgress:
    """The session's live progress file in ``out`` (continued when resuming)."""
    from accelrl.agents.bo.live import SessionProgress

    try:
        return SessionProgress(out, resume=resume, **meta)
    except FileExistsError as err:
        raise fail(f"--out: {err}", EXIT_INVALID) from None


def _ended(err: BaseException) -> tuple[str, dict[str, Any]]:
    """The end status of a progress file for an exception that stopped the session."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted", {}
    return "failed", {"error": f"{type(err).__name__}: {err}"}


class _LiveTable:
    """The terminal table of a simulated session: the last :attr:`ROWS` steps, each with its
    MAE, the best so far, and how the session stood after it (mode of the next suggestion,
    the prior's correlation, whether the prior is used or has fallen back, trust region,
    suggestion time)."""

    ROWS = 12

    def __init__(self, title: str, steps: int) -> None:
        self.title, self.steps = title, steps
        self.rows: list[tuple[str, ...]] = []
        self._seen = 0
        self._best = math.inf

    def update(self, session: TuningSession) -> None:
        """Add the session's new rows (with its diagnostics now)."""
        rows = session.rows
        if self._seen >= len(rows):
            return
        d = session.diagnostics()
        r = d.get("prior_correlation")
        if not d.get("has_prior"):
            used = "none"
        elif d.get("prior_fallback"):
            used = "FALLBACK"
        else:
            used = "yes" if d.get("uses_prior") else "no"
        for row in rows[self._seen :]:
            mae = float(row.get("result.mae", math.nan))
            if row.get("safe") and row.get("feasible") and math.isfinite(mae):
                self._best = min(self._best, mae)
            self.rows.append((
                f"{row['step']}/{self.steps}", um(mae), um(self._best) if self._best < math.inf
                else "-", str(d.get("mode") or "-"), "-" if r is None else f"{r:.2f}", used,
                f"{d.get('trust_length', math.nan):.2f}",
                "-" if d.get("suggest_s") is None else f"{d['suggest_s']:.3f}",
            ))  # fmt: skip
        self._seen = len(rows)
        del self.rows[: -self.ROWS]

    def render(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title)
        for col in ("step", "MAE [um]", "best [um]", "next mode", "prior r", "prior used",
                    "trust", "suggest [s]"):  # fmt: skip
            table.add_column(col, justify="right")
        for row in self.rows:
            table.add_row(*row)
        return table


def _tune_simulation(
    out: Path,
    trial: int,
    prior: PriorChoice,
    acquisition: AcquisitionChoice,
    steps: int,
    budget: float,
    max_step: float,
    seed: int,
    progress: bool,
    resume: bool = False,
) -> None:
    """A BO session on one published trial of the simulated ARES-EA, run by the evaluation
    protocol (the same loop as ``accelrl evaluate``), with a live table."""
    from rich.live import Live

    from accelrl.agents.evaluation import evaluate
    from accelrl.envs import TASKS, load_trials

    trials = load_trials()
    if trial >= len(trials):
        raise fail(f"--trial {trial} is not in 0..{len(trials) - 1}")
    spec = TASKS[ARES_EA_ID]()
    resumed = None
    if resume:
        limits = {
            a.name: (a.low, a.high, max_step * max(abs(a.low), abs(a.high)) or float("inf"))
            for a in spec.actuators
        }
        expected = {"machine": "sim:ares-ea", "trial": trial, "prior": prior.value,
                    "acquisition": acquisition.value}  # fmt: skip
        resumed = _resumed_session(out, limits, expected)
    err_console.print(f"follow it live: accelrl dashboard {escape(str(out))}", highlight=False)
    progress_file = _progress(
        out, resume, machine="sim:ares-ea", trial=trial, prior=prior.value,
        acquisition=acquisition.value, steps=steps, seed=seed, budget_s=budget,
    )  # fmt: skip
    table = _LiveTable(f"accelrl tune {ARES_EA_ID} trial {trial}, prior {prior.value}", steps)

    def observe(session: TuningSession) -> None:
        progress_file.update(session)
        table.update(session)
        if progress:
            live.update(table.render())

    # --max-step is a fraction of max(|low|, |high|); the optimiser counts in max_delta.
    optimiser = _optimiser(
        prior, acquisition, budget, max_step / spec.delta_fraction, resumed, observe
    )
    live = Live(table.render(), console=err_console, refresh_per_second=8)
    if progress:
        live.start()
    try:
        result = evaluate(
            lambda: optimiser,
            [trials[trial]],
            max_steps=steps,
            seed=seed,
            executor="serial",
            progress=False,
            label="bo",
        )
    except BaseException as err:
        progress_file.end(*_ended(err))
        raise
    finally:
        if progress:
            live.stop()
    t = result.trial_table("bo")
    ep = result.episode("bo", trials[trial].index)
    if optimiser.session is not None:  # the reading after the last step, for the record
        from accelrl.agents.bo import screen_result

        session = optimiser.session
        last = {n: float(ep[f"setting_{n}"][-1]) for n in result.actuator_names}
        reading = [ep[f"reading_{p}"][-1] for p in TRANSVERSE]
        target = [ep[f"target_{p}"][-1] for p in TRANSVERSE]
        session.ingest(last, screen_result(reading, target, bool(ep["on_screen"][-1])))
        progress_file.update(session)
    out.mkdir(parents=True, exist_ok=True)
    written = _write_session(optimiser, out)
    diag = optimiser.session.diagnostics()
    summary = {
        "machine": "sim:ares-ea",
        "trial": trial,
        "prior": prior.value,
        "acquisition": acquisition.value,
        "steps": steps,
        "seed": seed,
        "initial_mae_m": float(t["initial_mae"][0]),
        "best_mae_m": float(t["best_mae"][0]),
        "final_mae_m": float(t["final_mae"][0]),
        "final_setting": {n: float(ep[f"setting_{n}"][-1]) for n in result.actuator_names},
        "error": t["error"][0] or None,
        "diagnostics": diag,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    progress_file.end(
        "completed" if summary["error"] is None else "failed",
        **{k: summary[k] for k in ("initial_mae_m", "best_mae_m", "final_mae_m", "error")},
    )
    console.print(
        f"trial {trial}: MAE {um(summary['initial_mae_m'])} um -> best "
        f"{um(summary['best_mae_m'])} um; final (back at the best setting) "
        f"{um(summary['final_mae_m'])} um"
    )
    console.print(f"wrote {escape(str(out))}/: {', '.join([*written, 'summary.json'])}")


def _tune_machine_config(
    out: Path,
    path: Path,
    trial: int,
    prior: PriorChoice,
    acquisition: AcquisitionChoice,
    steps: int,
    budget: float,
    seed: int,
    mode: Mode | None,
    target: str | None,
    ca_address: list[str] | None,
    resume: bool = False,
    progress: bool = True,
) -> None:
    """A BO session on the machine of a machine config, run by the deploy controller: every
    write through the safety layer, logged (``run/``; ``run-2/``, ... when resumed), one line
    printed per step (``--no-progress``: only safety events); an abort rolls the knobs back."""
    from accelrl.cli.steplines import StepLines
    from accelrl.deploy.config import MachineConfigError, load_machine_config
    from accelrl.deploy.controller import Controller, StopReason
    from accelrl.deploy.machines import build_machine
    from accelrl.deploy.safety import SafetyLayer
    from accelrl.envs import TASKS

    if not path.is_file():
        raise fail(f"machine config {path} not found", EXIT_INVALID)
    try:
        config = load_machine_config(path)
    except MachineConfigError as err:
        raise fail(str(err), EXIT_INVALID) from None
    if config.env_id not in TASKS:
        raise fail(f"machine {config.name!r}: unknown task {config.env_id!r}", EXIT_INVALID)
    target_values = parse_floats(target, 4, "'--target'") if target is not None else None
    resumed = None
    if resume:
        expected = {"machine": config.name, "prior": prior.value, "acquisition": acquisition.value}
        resumed = _resumed_session(out, config, expected)
    log_dir, k = out / "run", 1
    while log_dir.exists():
        k += 1
        log_dir = out / f"run-{k}"
    try:
        mach, sim_target = build_machine(config, trial, None, 0.0, 0.0, seed, ca_address)
    except ValueError as err:
        raise fail(str(err), EXIT_INVALID) from None
    try:
        if target_values is None:
            if sim_target is None:
                raise typer.BadParameter(
                    f"machine {config.name!r} ({config.transport}) needs a target",
                    param_hint="'--target'",
                )
            target_values = [sim_target[n] for n in TRANSVERSE]
        run_mode = (
            mode if mode is not None else (Mode.auto if config.transport == "sim" else Mode.confirm)
        )
        progress_file = _progress(
            out, resume, machine=config.name, machine_config=str(path),
            transport=config.transport, mode=run_mode.value, prior=prior.value,
            acquisition=acquisition.value, steps=steps, seed=seed, budget_s=budget,
            run=log_dir.name,
        )  # fmt: skip
        optimiser = _optimiser(
            prior, acquisition, budget, resumed=resumed, observer=progress_file.update
        )
        try:
            controller = Controller(
                optimiser, mach, SafetyLayer(mach, config), run_mode, target=target_values,
                thresholds=TASKS[config.env_id]().termination.thresholds, max_steps=steps,
                seed=seed, log_dir=log_dir, on_record=StepLines(console, quiet=not progress),
            )  # fmt: skip
        except ValueError as err:
            raise fail(str(err), EXIT_INVALID) from None
        console.print(
            f"BO ({prior.value} prior) on {config.name} ({config.transport}), {run_mode.value} "
            f"mode, up to {steps} steps; log: {log_dir} (follow it live: accelrl dashboard {out})",
            highlight=False,
        )
        try:
            result = controller.run()
        except BaseException as err:
            progress_file.end(*_ended(err))
            raise
    finally:
        mach.close()
    written = [f"{log_dir.name}/", *_write_session(optimiser, out)]
    session = optimiser.session
    summary = {
        "machine": config.name,
        "machine_config": str(path),
        "transport": config.transport,
        "mode": run_mode.value,
        "prior": prior.value,
        "acquisition": acquisition.value,
        "steps": steps,
        "run": result.summary,
        "diagnostics": None if session is None else session.diagnostics(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    aborted = result.reason is StopReason.abort
    progress_file.end(
        "failed" if aborted else "completed", reason=result.reason.value,
        steps_run=result.steps, writes=result.writes,
        best_mae_m=None if session is None or session.best() is None else session.best()[1],
        **({"error": f"abort: {getattr(result.abort_reason, 'value', result.abort_reason)}: "
                     f"{result.abort_detail}"} if aborted else {}),
    )  # fmt: skip
    print_run_result(result, log_dir, title="accelrl tune")
    console.print(f"wrote {escape(str(out))}/: {', '.join([*written, 'summary.json'])}")
    if result.reason is StopReason.abort:
        raise typer.Exit(EXIT_ABORTED)
