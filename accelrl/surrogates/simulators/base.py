"""The simulator interface: :class:`Simulator`, :class:`RunResult`, thread limits, run folders."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: Run statuses (the ``status`` column of a dataset table).
OK, NO_BEAM, FAILED = "ok", "no_beam", "failed"


@dataclass
class RunResult:
    """The result of one simulation.

    :param status: ``"ok"`` (outputs computed), ``"no_beam"`` (the witness bunch was lost:
        outputs NaN except the charge) or ``"failed"`` (the code raised or timed out).
    :param outputs: Output name -> value (SI; NaN where not available).
    :param message: Why a run is not ``ok`` (or notes, e.g. a partially lost beam).
    :param wall_time_s: Wall time of the run [s].
    """

    status: str
    outputs: dict[str, float] = field(default_factory=dict)
    message: str = ""
    wall_time_s: float = float("nan")


@runtime_checkable
class Simulator(Protocol):
    """A plasma-accelerator code behind one call.

    ``run`` takes a complete setting of the spec's inputs (SI) and returns a
    :class:`RunResult`; it never raises for a failed simulation (``status="failed"``).
    """

    #: Simulator name (``"wake-t"``, ``"fbpic"``).
    name: str
    #: Version string of the code.
    version: str

    def run(self, inputs: Mapping[str, float]) -> RunResult: ...


def check_fidelity(
    fidelity: Mapping[str, Any],
    defaults: Mapping[str, Any],
    code: str,
    positive: Iterable[str] = (),
    counts: Iterable[str] = (),
) -> dict[str, Any]:
    """Fidelity settings completed with their defaults and checked.

    :param fidelity: Settings given by the spec.
    :param defaults: Every known setting and its default.
    :param code: Name of the simulation code, in error messages.
    :param positive: Settings that must be > 0.
    :param counts: Settings that must be integers >= 1.
    :raises ValueError: For an unknown setting or a value out of range, naming it.
    """
    unknown = sorted(set(fidelity) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {code} fidelity settings {unknown}; known: {sorted(defaults)}")
    f = {**defaults, **fidelity}
    for key in positive:
        if not float(f[key]) > 0:
            raise ValueError(f"fidelity.{key} must be > 0, got {f[key]!r}")
    for key in counts:
        if int(f[key]) < 1:
            raise ValueError(f"fidelity.{key} must be >= 1, got {f[key]!r}")
    return f


@contextlib.contextmanager
def run_directory(prefix: str = "accelrl-sim-") -> Iterator[Path]:
    """A temporary working folder for one run; the process works inside it and it is
    removed afterwards (whatever the code wrote there goes with it)."""
    old = Path.cwd()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        os.chdir(tmp)
        yield tmp
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def describe_error(err: BaseException) -> str:
    """``Type: message (at file:line in function)`` of the innermost frame of ``err``."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        where = f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return f"{type(err).__name__}: {err}{where}"


class RunTimeout(Exception):
    """A run exceeded its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RunTimeout` in this thread after ``seconds`` of wall time.

    Uses ``SIGALRM``, so it only acts in the main thread of a process (process-pool
    workers); elsewhere (threads, e.g. a multi-threaded Dask worker) it does nothing and
    the caller checks the elapsed time afterwards.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise RunTimeout(f"run exceeded its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


class Stopwatch:
    """Wall-clock timer: ``elapsed`` seconds since creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
