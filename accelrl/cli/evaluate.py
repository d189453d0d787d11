"""``accelrl evaluate``: run optimisers on a trial set, write records, summary, report, plots.

Register it in the ``accelrl`` app with ``app.command("evaluate")(evaluate_command)``.
Importing this module loads only typer and rich; accelrl's simulation (torch, cheetah) is
imported when the command runs.

Writes into ``--out``: ``records.parquet`` (every step, SI units, run config in the file
metadata), ``config.json``, ``trial_metrics.csv``, ``summary.json`` (per optimiser, for all
trials and the ``sigma_pos`` subset: ``median_best_mae_um``, ``median_final_mae_um``,
``median_steps_to_target``, ``median_steps_to_convergence``, their IQRs, ...),
``breakdown.json`` (results per target class, the classes where an optimiser ends worse
than it started, the RL4AA'25 challenge score of every optimiser), ``report.md`` and the
PNG figures it shows. ``--world`` sets the world (default ``ideal``, recorded in
``config.json``); ``--protocol rl4aa25`` evaluates the RL4AA'25 challenge's trials.

Each finished chunk of trials is written to ``--out``/parts as soon as it finishes. Ctrl-C
(or SIGTERM) writes the finished trials as a partial result (``config.json``: ``"status":
"partial"``, ``trials_done``) and exits with status 130 (143); the same command with
``--resume`` runs only the missing trials and writes the result an uninterrupted run writes.
An ``--out`` that holds files is refused unless ``--resume`` or ``--force`` (replace: the
earlier run's result, parts and figures are removed first).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from accelrl.cli.common import (
    BackendOpt,
    LimitOpt,
    SeedOpt,
    StepsOpt,
    TrialsOpt,
    console,
    fail,
    warn,
)
from accelrl.names import Backend


class ExecutorKind(StrEnum):
    """Where the trials run."""

    process = "process"
    serial = "serial"
    dask = "dask"


#: Columns every part of a folded summary repeats: optimiser and trial subset.
_KEYS = (0, 1)
_CAPTION = (
    "MAE in um, medians; IQR: 25th-75th percentile; sigma > 0: both target sizes > 0; "
    "never: the median trial did not reach 20 um"
)


def summary_table(result, columns: list[int] | None = None, title: bool = True) -> Table:  # noqa: ANN001
    """The summary of an :class:`~accelrl.agents.evaluation.EvaluationResult` as a rich
    table: every column of :func:`~accelrl.agents.evaluation.report.summary_rows`, or the
    ``columns`` given (indices)."""
    from accelrl.agents.evaluation.report import summary_rows

    header, rows = summary_rows(result)
    keep = list(range(len(header))) if columns is None else columns
    c = result.config
    table = Table(
        title=f"{c['env_id']}: {c['trials']['n']} trials x {c['max_steps']} steps, backend "
        f"{c['backend']}, seed {c['seed']}"
        if title
        else None,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for i in keep:
        cells = [header[i].split()] + [[r[i]] for r in rows]  # never cut a word or a value
        fit = max(len(w) for words in cells for w in words)
        table.add_column(
            escape(header[i]), justify="right" if i >= 2 else "left", no_wrap=i < 2, min_width=fit
        )
    for row in rows:
        table.add_row(*(escape(row[i]) for i in keep), end_section=row[1] != "all")
    return table


def print_summary(result) -> None:  # noqa: ANN001 - lazy import
    """Print :func:`summary_table`; on a terminal too narrow for it, folded into parts that
    each repeat the optimiser and subset columns (no column is ever cropped)."""
    from accelrl.agents.evaluation.report import summary_rows

    width = console.width

    unlimited = console.options.update(max_width=100_000)

    def fits(columns: list[int] | None) -> bool:
        return console.measure(summary_table(result, columns), options=unlimited).maximum <= width

    if fits(None):
        console.print(summary_table(result))
        console.print(_CAPTION, style="dim")
        return
    header, _ = summary_rows(result)
    parts: list[list[int]] = [[]]
    for i in range(len(_KEYS), len(header)):
        if parts[-1] and not fits([*_KEYS, *parts[-1], i]):
            parts.append([])
        parts[-1].append(i)
    for k, part in enumerate(parts):
        console.print(summary_table(result, [*_KEYS, *part], title=k == 0))
    console.print(_CAPTION, style="dim")


def print_breakdown(result) -> None:  # noqa: ANN001 - lazy import
    """Print the results per target class, the flagged classes and the RL4AA'25 scores."""
    from accelrl.agents.evaluation.report import class_rows, score_rows

    breakdown = result.breakdown()
    for title, (header, rows) in (
        ("by target class (medians, MAE in um)", class_rows(breakdown)),
        ("RL4AA'25 challenge score (lower is better)", score_rows(breakdown)),
    ):
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for i, h in enumerate(header):
            fit = max([len(w) for w in h.split()] + [len(r[i]) for r in rows])
            table.add_column(
                escape(h), justify="left" if i < 2 else "right", no_wrap=i < 2, min_width=fit
            )
        for row in rows:
            table.add_row(*(escape(x) for x in row))
        console.print(table)
    for line in breakdown["flagged"]:
        warn(f"ends worse than it started: {line}")


def evaluate_command(
    optimiser: Annotated[
        list[str],
        typer.Option(
            "--optimiser",
            "-o",
            help="Optimiser spec, e.g. do-nothing, random, nelder-mead, extremum-seeking, "
            "gradient, model-based, policy:PATH. Repeat for a comparative report.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            file_okay=False,
            help="Output directory (records, summary.json, report.md, plots).",
            show_default=False,
        ),
    ],
    trials: TrialsOpt = None,
    steps: StepsOpt = 150,
    backend: BackendOpt = Backend.fast,
    seed: SeedOpt = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="Parallel workers (default: CPU count).", show_default=False
        ),
    ] = None,
    executor: Annotated[
        ExecutorKind | None,
        typer.Option(
            "--executor",
            help="process (local pool, default), serial, or dask (local cluster, or the "
            "scheduler at --dask-address; needs accelrl\\[cluster]).",
            show_default=False,
        ),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(
            "--dask-address", help="Dask scheduler, e.g. tcp://host:8786.", show_default=False
        ),
    ] = None,
    limit: LimitOpt = None,
    example: Annotated[
        list[int] | None,
        typer.Option(
            "--example",
            help="Trial index to plot as an example episode (repeatable; default: three "
            "trials at the 10/50/90th percentile of the first optimiser's final MAE).",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted evaluation in --out (same options required); run "
            "only its missing trials.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace the evaluation in --out (its files and figures are removed)."
        ),
    ] = False,
    world: Annotated[
        str,
        typer.Option(
            "--world",
            help="World between the optimisers and the beam: a preset (ideal, ares-realistic, "
            "harsh), a preset with scenario overlays (ares-realistic+q3-failure) or a world "
            "YAML file.",
        ),
    ] = "ideal",
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol",
            help="Named protocol instead of --trials: published (the 300 trials) or rl4aa25 "
            "(20 trials with the RL4AA'25 challenge's ranges, target 0).",
            show_default=False,
        ),
    ] = None,
    reachability: Annotated[
        bool,
        typer.Option(
            "--reachability/--no-reachability",
            help="Solve each trial's model optimum for the 'reachable' target class "
            "(~0.3 s per trial).",
        ),
    ] = True,
    env: Annotated[
        str,
        typer.Option(
            "--env",
            help="Task: a registered id or a task YAML (its lattice: may name a lattice "
            "file). Without --trials, a task other than ARES-EA is evaluated on 100 trials "
            "drawn from its randomisation.",
        ),
    ] = "accelrl/AresEATransverseTuning-v0",
) -> None:
    """Evaluate optimisers on a trial set; write records, summary.json, report.md and plots."""
    from accelrl.agents.evaluation import evaluate_many
    from accelrl.agents.evaluation.report import write_report
    from accelrl.agents.evaluation.runner import EvaluationInterrupted
    from accelrl.interrupts import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated

    try:
        result = evaluate_many(
            list(optimiser),
            trials,
            max_steps=steps,
            backend=backend.value,
            seed=seed,
            executor=executor.value if executor is not None else None,
            workers=workers,
            dask_address=dask_address,
            progress=progress,
            limit=limit,
            out=out,
            resume=resume,
            force=force,
            world=world,
            reachability=reachability,
            protocol=protocol,
            env_id=env,
        )
    except (ValueError, TypeError, ImportError, FileNotFoundError) as err:
        raise fail(str(err)) from None
    except EvaluationInterrupted as err:
        if err.result is None:
            kept = "no trial had finished"
        else:
            done = err.result.config["trials_done"]
            kept = "finished trials kept in " + str(out) + " (status partial): "
            kept += ", ".join(f"{label} {n}/{err.result.config['trials']['n']}"
                              for label, n in done.items())  # fmt: skip
        warn(f"interrupted; {kept}; run the same command with --resume to finish")
        code = EXIT_TERMINATED if isinstance(err.__cause__, Terminated) else EXIT_INTERRUPTED
        raise typer.Exit(code) from None
    known = set(result.trial_table(result.optimisers[0])["trial"].tolist())
    if example and (unknown := [k for k in example if k not in known]):
        warn(f"--example {unknown} not evaluated; ignored")
        example = [k for k in example if k in known] or None
    report = write_report(result, out, examples=example)

    print_summary(result)
    print_breakdown(result)
    c = result.config
    failed = sum(int(v) for v in result.trials["failed"].to_pylist())
    if failed:
        warn(f"{failed} trial(s) failed; see {report}")
    console.print(
        f"evaluated in {c['wall_s']:.1f} s ({c['executor']}, {c['workers']} workers); "
        f"wrote {escape(str(out))}/: records.parquet, trial_metrics.csv, summary.json, "
        f"report.md and plots"
    )
