"""What every ``accelrl`` command shares: consoles, errors, options and input parsing.

Importing this module loads typer and rich only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from accelrl.names import Backend

if TYPE_CHECKING:
    from accelrl.envs import Trial

#: Results on stdout.
console = Console()
#: Errors, warnings and progress on stderr (never hard-wrapped: paths stay copyable).
err_console = Console(stderr=True, soft_wrap=True)

#: Exit status of invalid input.
EXIT_INVALID = 2
#: Exit status of a machine run that was aborted (the knobs were rolled back).
EXIT_ABORTED = 3
#: Evaluation episode length of the published protocol [steps].
EVAL_STEPS = 150


def command_group(help: str, **kwargs: Any) -> typer.Typer:
    """A typer app (the ``accelrl`` command or one of its groups) with the settings every
    group shares: help on a bare call, no shell completion, no locals in tracebacks, and
    help text read as Markdown (so units in brackets such as ``[m]`` are shown, not taken
    for rich markup).

    :param help: The group's help text.
    :param kwargs: Further ``typer.Typer`` settings (e.g. ``name``).
    """
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        rich_markup_mode="markdown",
        **kwargs,
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; return the ``Exit`` to raise (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}")


def parse_floats(text: str, n: int, option: str) -> list[float]:
    """``n`` comma-separated finite numbers of a command-line option.

    :raises typer.BadParameter: Naming the option, for other input.
    """
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not {n} comma-separated numbers", param_hint=option
        ) from None
    if len(values) != n:
        raise typer.BadParameter(f"need {n} values, got {len(values)}", param_hint=option)
    bad = [v for v in values if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise typer.BadParameter(f"{text!r} contains non-finite values {bad}", param_hint=option)
    return values


def check_env_id(env_id: str) -> str:
    """Argument callback: ``env_id`` must be a registered transverse-tuning task."""
    from accelrl.envs import TASKS
    from accelrl.registration import CODE_ENVIRONMENTS

    if env_id in CODE_ENVIRONMENTS:
        module = CODE_ENVIRONMENTS[env_id][0].partition(":")[0]
        raise typer.BadParameter(
            f"{env_id} is a surrogate-based environment; this command handles the "
            f"transverse-tuning tasks ({', '.join(sorted(TASKS))}). Its documentation: "
            f"python -m pydoc {module}"
        )
    if env_id not in TASKS:
        raise typer.BadParameter(
            f"unknown environment {env_id!r}; registered: {', '.join(sorted(TASKS))} "
            "(see `accelrl envs list`)"
        )
    return env_id


def input_path(value: Path | None) -> Path | None:
    """Option callback: the file or folder the user named, else the one accelrl ships under
    that name (``agents/...``, ``deploy/...``, ``envs/...``, ``surrogates/...``; see
    :func:`accelrl.resources.resolve`), so the documented commands work from any folder.

    :raises typer.BadParameter: When neither exists.
    """
    if value is None:
        return None
    from accelrl.resources import resolve

    path = resolve(value)
    if not path.exists():
        raise typer.BadParameter(
            f"{value} does not exist (neither here nor among the files accelrl ships)"
        )
    return path


def load_trial_set(path: Path | None) -> list[Trial]:
    """The trial set at ``path`` (default: the published set), errors as ``BadParameter``."""
    from accelrl.envs import load_trials

    try:
        trials = load_trials(path)
    except (OSError, ValueError) as err:
        raise typer.BadParameter(str(err), param_hint="'--trials'") from None
    if not trials:
        raise typer.BadParameter(f"{path}: the trial set is empty", param_hint="'--trials'")
    return trials


EnvIdArg = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help="Registered environment id, e.g. accelrl/AresEATransverseTuning-v0.",
        callback=check_env_id,
    ),
]
TrialsOpt = Annotated[
    Path | None,
    typer.Option(
        "--trials",
        callback=input_path,
        dir_okay=False,
        help="Trial-set YAML (rl-vs-bo format); default: the 300 published ARES-EA trials.",
        show_default=False,
    ),
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Steps per trial.")]
BackendOpt = Annotated[Backend, typer.Option("--backend", help="Simulation backend.")]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, help="Base seed; trial t uses seed + t.index.")
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", min=1, help="Run only the first K trials.", show_default=False),
]


def print_run_result(result: Any, log_dir: Path, title: str = "deploy run") -> None:
    """The table of a controller run (steps, writes, final errors, abort and rollback).

    :param result: A :class:`~accelrl.deploy.controller.RunResult`.
    :param log_dir: Its run directory.
    :param title: Table title.
    """
    from rich.table import Table

    from accelrl.units import UM

    table = Table(title=f"{title}: {result.reason.value}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("steps", str(result.steps))
    table.add_row("writes", str(result.writes))
    if result.final_error is not None:
        for name, value in result.final_error.items():
            table.add_row(f"final {name} - target", f"{value * UM:+.1f} um")
    if result.abort_reason is not None:
        table.add_row("abort", escape(f"{result.abort_reason.value}: {result.abort_detail}"))
        rb = result.rollback or {}
        table.add_row(
            "rollback",
            escape(
                f"{'complete' if rb.get('complete') else 'INCOMPLETE'} in {rb.get('writes', 0)} "
                f"writes {rb.get('detail', '')}"
            ),
        )
    console.print(table)
    console.print(f"log: {log_dir}", highlight=False)
