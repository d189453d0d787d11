"""The ``accelrl surrogates`` commands (a typer app, registered in :mod:`accelrl.cli`).

``accelrl surrogates generate SPEC [--workers N] [--out PATH] [--limit n] [--dask ADDR]``
    Runs the Sobol design of a dataset spec through its simulator (Wake-T or FBPIC) and
    writes ``<name>.parquet`` + ``<name>.meta.json``; a second call resumes, running only
    the samples not yet in the table.

The standalone entry point for a machine without the full ``accelrl`` command line:
``python -m accelrl.surrogates.cli generate SPEC ...``.

``accelrl surrogates train SPEC --out DIR`` and ``accelrl surrogates resimulate ...`` come
from :mod:`accelrl.surrogates.train_cli`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from accelrl.surrogates.train_cli import resimulate as resimulate_command
from accelrl.surrogates.train_cli import train as train_command

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


surrogates_app = typer.Typer(
    help="Plasma-accelerator simulation datasets (Wake-T, FBPIC) and surrogate models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@surrogates_app.callback()
def _surrogates() -> None:
    """Plasma-accelerator simulation datasets (Wake-T, FBPIC) and surrogate models."""


@surrogates_app.command("generate")
def generate_command(
    spec: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Dataset spec YAML (surrogates/*.yaml).",
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Worker processes (default: CPU count)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Table path (.parquet) or folder; default: <spec folder>/<name>.parquet.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=0, help="Run at most this many of the remaining samples."),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Dask scheduler address (e.g. tcp://10.0.0.1:8786), or 'local' for a local "
            "Dask cluster with --workers workers; default: a local process pool.",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0, help="Wall-time limit of one run [s] (0: none)."),
    ] = 600.0,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=1, help="Write the table every N runs.")
    ] = 16,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Rerun samples whose row is 'failed'.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Generate (or resume) a simulation dataset from a spec."""
    from accelrl.surrogates.dataset import DatasetError
    from accelrl.surrogates.generate import generate
    from accelrl.surrogates.spec import DatasetSpecError

    executor = None
    address = None
    if dask is not None:
        executor = "dask"
        address = None if dask == "local" else dask
    command = "accelrl surrogates generate " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    if not sys.argv[0].endswith("accelrl"):
        command = " ".join(shlex.quote(a) for a in sys.argv)
    try:
        report = generate(
            spec,
            out,
            workers=workers,
            executor=executor,
            dask_address=address,
            limit=limit,
            checkpoint_every=checkpoint_every,
            timeout_s=timeout or None,
            retry_failed=retry_failed,
            progress=progress,
            command=command,
        )
    except (DatasetSpecError, DatasetError, ValueError) as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(1) from None
    counts = ", ".join(f"{k}={v}" for k, v in report.status_counts.items())
    console.print(
        f"{escape(str(report.table_path))}: {report.n_run} runs in {report.wall_time_s:.1f} s "
        f"({report.n_existing} rows kept); design {report.n_design}; {counts}"
    )


surrogates_app.command("train", help="Train a deep-ensemble surrogate (weights, ONNX, report).")(
    train_command
)
surrogates_app.command(
    "resimulate", help="Re-simulate settings in the real code and compare with the surrogate."
)(resimulate_command)


if __name__ == "__main__":
    surrogates_app()
