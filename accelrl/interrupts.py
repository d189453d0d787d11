"""Stopping long jobs cleanly: SIGTERM handled like Ctrl-C, and no worker left behind.

A long job (an evaluation, a dataset generation) runs inside :func:`interrupt_on_sigterm`,
so that SIGTERM raises :class:`Terminated` (a :class:`KeyboardInterrupt`) like Ctrl-C does
and the job's ``except``/``finally`` blocks keep what finished. Its local process pool is
started with :func:`pool_initializer`: the workers ignore SIGINT (Ctrl-C in a terminal
reaches the whole process group; only the parent decides) and, on Linux, die with their
parent even when it is killed with SIGKILL. On an interrupt the job calls
:func:`stop_process_pool`, which cancels the queued work and ends the running workers, so
nothing waits for a run that nobody will read.

>>> with interrupt_on_sigterm():
...     pass
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Terminated",
    "deferred_interrupts",
    "interrupt_on_sigterm",
    "pool_initializer",
    "stop_process_pool",
]

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Exit status of a command stopped by SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143
#: ``prctl`` option: the signal a process receives when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM was received (raised where the main thread was, like Ctrl-C)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous
    handler is restored on exit. The block runs unchanged outside the main thread (where
    Python allows no handler) and where a program installed its own SIGTERM handler (it
    stays in charge)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM while the block runs, then deliver the first one
    received to the handler in force after it: a step that must finish as a whole (write a
    finished part and record it) is never cut in half. Outside the main thread the block
    runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; else nothing)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _worker_init(parent: int, then: Callable[[], None]) -> None:
    if os.getpid() != parent:  # in a worker (not the parent running it beforehand)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
    then()


def pool_initializer(then: Callable[[], None]) -> Callable[[], None]:
    """The initializer of a local process pool started by this process: in each worker,
    ignore SIGINT and die with the parent, then call ``then`` (picklable; e.g.
    :func:`accelrl.execution.one_thread`). Run in the parent itself it only calls
    ``then``."""
    return functools.partial(_worker_init, os.getpid(), then)


def stop_process_pool(pool: cf.Executor | None, timeout_s: float = 5.0) -> None:
    """Cancel the queued work of ``pool`` and, for a process pool, end its workers
    (SIGTERM, then SIGKILL after ``timeout_s`` [s]) and wait for them. Other executors are
    only shut down without waiting (their running tasks end on their own)."""
    if pool is None:
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    if not isinstance(pool, cf.ProcessPoolExecutor):
        return
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout_s)
            if process.is_alive():
                process.kill()
                process.join(timeout_s)
