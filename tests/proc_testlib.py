"""Processes of a test's subprocess (Linux ``/proc``): its children, and whether they live."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Ids of the processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def left_alive(pids: Iterable[int], timeout_s: float = 30.0) -> list[int]:
    """The processes of ``pids`` still alive after waiting up to ``timeout_s`` [s] for
    them to end (an upper bound for slow machines, not a timing requirement)."""
    pids = list(pids)
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def kill(pids: Iterable[int]) -> None:
    """SIGKILL whatever of ``pids`` still runs (cleanup after a failed test)."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def default_signals() -> None:
    """``preexec_fn`` of a subprocess a test interrupts: SIGINT and SIGTERM unblocked and at
    their default disposition in the child, whatever the test process inherited or set (a
    process started with SIGINT ignored, as a background job is, never sees Ctrl-C)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
