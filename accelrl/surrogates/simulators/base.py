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

#: Thread-count variables set to 1 in every worker, before numba/BLAS load.
THREAD_VARS: tuple[str, ...] = (
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "WAKET_NUM_THREADS",
)


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


def limit_threads(n: int = 1) -> None:
    """Use ``n`` numba, OpenMP and BLAS threads in this process (numba: in this thread).

    Call before Wake-T, FBPIC or numpy's BLAS do their work, in the thread that runs them.
    Before numba's thread pool has started, ``NUMBA_NUM_THREADS`` sizes it (if numba is
    already imported, its configuration and the pool size it will start with are updated;
    the pool is not started here, so a process pool may still fork safely). Once the pool
    runs, that variable is left as it is -- numba refuses a changed pool size and checks it
    at every compilation -- and ``numba.set_num_threads`` limits the threads the calling
    thread uses.

    :param n: Number of threads (>= 1).
    :raises ValueError: For ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    import sys

    numba_loaded = "numba" in sys.modules
    launched = numba_loaded and _numba_pool_started()
    for var in THREAD_VARS:
        if not (launched and var == "NUMBA_NUM_THREADS"):
            os.environ[var] = str(n)
    if numba_loaded:
        import numba

        with contextlib.suppress(Exception):  # e.g. no threading layer: numba's own error later
            if launched:
                numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            else:
                from numba.np.ufunc import parallel

                numba.config.reload_config()
                # the pool size numba read when it was imported, used when the pool starts
                parallel.NUM_THREADS = numba.config.NUMBA_NUM_THREADS
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)


def _numba_pool_started() -> bool:
    """Whether numba's thread pool runs in this process (``True`` when unknown: then its
    size is never changed)."""
    try:
        from numba.np.ufunc import parallel
    except ImportError:
        return True
    return bool(getattr(parallel, "_is_initialized", True))


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
