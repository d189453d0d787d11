"""The shared progress-bar layout (:mod:`accelrl.progress`)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from accelrl.progress import progress_bar


def test_columns_in_order() -> None:
    bar = progress_bar("{task.description}", middle=["trials"], after=["{task.fields[n]}"])
    kinds = [type(c) for c in bar.columns]
    assert kinds[2] is MofNCompleteColumn
    texts = [c.text_format for c in bar.columns if isinstance(c, TextColumn)]
    assert texts == ["{task.description}", "trials", "{task.fields[n]}"]
    assert kinds.index(TimeElapsedColumn) < kinds.index(TimeRemainingColumn)
    assert bar.console.stderr  # stdout stays free for results
    assert TimeRemainingColumn not in [type(c) for c in progress_bar(remaining=False).columns]


def test_draws_counts_and_can_be_disabled() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    with progress_bar(middle=["steps"], console=console) as bar:
        task = bar.add_task("tune", total=75)
        bar.update(task, advance=30)
    assert "tune" in out.getvalue() and "30/75 steps" in out.getvalue()
    silent = io.StringIO()
    with progress_bar(enabled=False, console=Console(file=silent)) as bar:
        bar.update(bar.add_task("x", total=2), advance=2)
    assert silent.getvalue() == ""
