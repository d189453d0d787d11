"""One progress-bar layout for long work (evaluation, training, data generation).

:func:`progress_bar` builds a ``rich`` progress display on stderr (stdout stays free for
results) with the columns every long command shows: a label, the bar, ``done/total``, any
command-specific columns, elapsed and remaining time::

    >>> with progress_bar("{task.description}", middle=["trials"]) as bar:  # doctest: +SKIP
    ...     task = bar.add_task("evaluate", total=300)
    ...     bar.update(task, advance=1)

``rich`` is imported when a bar is built, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def progress_bar(
    label: str = "[progress.description]{task.description}",
    *,
    middle: Sequence[str] = (),
    after: Sequence[str] = (),
    remaining: bool = True,
    transient: bool = False,
    enabled: bool = True,
    console: Console | None = None,
) -> Progress:
    """A ``rich`` progress display: ``label``, bar, ``done/total``, ``middle`` columns,
    elapsed (and remaining) time, ``after`` columns.

    :param label: Format of the first column (``rich`` task format string).
    :param middle: Text columns between ``done/total`` and the times (e.g. a unit).
    :param after: Text columns after the times (e.g. ``"{task.fields[note]}"``).
    :param remaining: Show the estimated remaining time.
    :param transient: Remove the display when it stops.
    :param enabled: ``False`` builds a disabled (silent) display.
    :param console: Where to draw (default: a new stderr console).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(text) for text in middle]
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    columns += [TextColumn(text) for text in after]
    return Progress(
        *columns,
        console=console if console is not None else Console(stderr=True),
        transient=transient,
        disable=not enabled,
    )
