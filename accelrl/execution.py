"""Where and with what a piece of work runs: its executor, and the software it ran with.

:func:`executor_scope` opens the :class:`concurrent.futures.Executor` that parallel work
(dataset generation, evaluation sweeps) submits to: a local process pool (default),
in-process (``"serial"``), ``dask.distributed`` (a local cluster, or the scheduler at an
address; ``[cluster]`` extra) or any executor passed in. :func:`package_versions` and
:func:`git_state` record which software produced a result (provenance).

>>> from accelrl.execution import executor_scope
>>> with executor_scope("serial", None, None, initializer=lambda: None) as (pool, kind, n):
...     (pool, kind, n)
(None, 'serial', 1)
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

#: What :func:`executor_scope` accepts: ``"process"``, ``"serial"``, ``"dask"``, ``None``
#: or an executor.
ExecutorArg = str | cf.Executor | None

_Missing = TypeVar("_Missing", str, None)


#: Thread-count variables set to 1 in every worker, before numba/BLAS load.
THREAD_VARS: tuple[str, ...] = (
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "WAKET_NUM_THREADS",
)


def limit_threads(n: int = 1) -> None:
    """Use ``n`` numba, OpenMP, BLAS and torch threads in this process (numba: in this thread).

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
    if "torch" in sys.modules:  # a torch imported later reads OMP_NUM_THREADS
        sys.modules["torch"].set_num_threads(n)


def _numba_pool_started() -> bool:
    """Whether numba's thread pool runs in this process (``True`` when unknown: then its
    size is never changed)."""
    try:
        from numba.np.ufunc import parallel
    except ImportError:
        return True
    return bool(getattr(parallel, "_is_initialized", True))


def one_thread() -> None:
    """Executor initializer: :func:`limit_threads` ``(1)`` in every worker (picklable)."""
    limit_threads(1)


@contextmanager
def executor_scope(
    executor: ExecutorArg,
    workers: int | None,
    dask_address: str | None,
    initializer: Callable[[], None],
    *,
    init_here: bool = False,
) -> Iterator[tuple[cf.Executor | None, str, int]]:
    """``(executor or None for in-process, kind, workers)``; closes what it started.

    :param executor: ``"process"`` (a local process pool), ``"serial"`` (in-process),
        ``"dask"`` (a ``LocalCluster`` of ``workers`` single-threaded workers, or the
        scheduler at ``dask_address``), ``None`` (``"dask"`` when ``dask_address`` is given,
        else ``"process"``) or an executor, used as it is and not shut down.
    :param workers: Workers of the process pool or local Dask cluster (>= 1; default: the
        CPU count).
    :param dask_address: Dask scheduler address, e.g. ``"tcp://10.0.0.1:8786"``; only with
        ``executor="dask"`` or ``None``.
    :param initializer: Picklable function run once in every worker that this scope starts
        (e.g. to allow one thread per worker).
    :param init_here: Also run ``initializer`` in this process, before in-process work or
        before the process pool forks its workers (which inherit what it set).
    :raises ValueError: For an unknown executor, ``workers < 1``, or ``dask_address`` with
        an executor other than ``"dask"``.
    :raises ImportError: For ``"dask"`` when ``dask.distributed`` is not installed.
    """
    if isinstance(executor, cf.Executor):
        if dask_address is not None:
            raise ValueError("dask_address only applies to executor='dask'")
        yield executor, type(executor).__name__, int(getattr(executor, "_max_workers", 0) or 0)
        return
    if executor is None:
        executor = "dask" if dask_address is not None else "process"
    if executor not in ("process", "serial", "dask"):
        raise ValueError(
            f"executor must be 'process', 'serial', 'dask', None or a "
            f"concurrent.futures.Executor, got {executor!r}"
        )
    if dask_address is not None and executor != "dask":
        raise ValueError(f"dask_address only applies to executor='dask', not {executor!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = workers or os.cpu_count() or 1
    if executor == "serial":
        if init_here:
            initializer()
        yield None, "serial", 1
    elif executor == "process":
        if init_here:
            initializer()
        with cf.ProcessPoolExecutor(max_workers=n, initializer=initializer) as pool:
            yield pool, "process", n
    else:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as err:
            raise ImportError(
                "executor='dask' needs dask.distributed, which is not installed: "
                "pip install 'accelrl[cluster]'"
            ) from err
        cluster = None
        if dask_address is not None:
            client = Client(dask_address)
        else:
            cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
        try:
            client.run(initializer)
            yield client.get_executor(), "dask", sum(client.nthreads().values()) or n
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def package_versions(dists: Iterable[str], missing: _Missing) -> dict[str, str | _Missing]:
    """Versions of Python (key ``"python"``) and of the distributions ``dists``.

    :param dists: Distribution names, e.g. ``("accelrl", "torch")``.
    :param missing: The value recorded for a distribution that is not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | _Missing] = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = missing
    return out


def git_state(path: str | Path | None = None) -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: accelrl's source):
    the ``HEAD`` commit and whether tracked files differ from it; ``None`` outside a
    checkout or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, bool(dirty)
