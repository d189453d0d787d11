"""Dataset generation: run a spec's design through a simulator, in parallel, resumably.

:func:`generate` draws the scrambled Sobol design of the spec
(:func:`~accelrl.surrogates.design.sobol_design`), skips the samples already in the table
at ``out`` (so an interrupted generation resumes where it stopped), runs the rest through a
:class:`concurrent.futures.Executor` (a local process pool by default, one numba/BLAS thread
per worker; a ``dask.distributed`` cluster when a scheduler address is given; or any
executor passed in) and writes the table and its sidecar atomically every
``checkpoint_every`` finished runs and at the end. Failed and beam-less runs are rows with
their status and message, never dropped.

What is already at ``out`` is resumed only when it is the same dataset: its sidecar
(``<name>.meta.json``) must hold a spec with the same simulator, inputs (names, bounds,
units, scales), outputs, fixed parameters, fidelity and design, the table must have that
spec's columns, and its rows must lie on the spec's design. Anything else -- including a
table without its sidecar -- is refused with a :class:`~accelrl.surrogates.dataset.
DatasetError`; ``force=True`` starts over instead. The default ``out`` is
``runs/surrogates/<name>.parquet`` in the working folder, never the shipped datasets.

Ctrl-C or SIGTERM writes what finished (a final checkpoint) and ends the pool's workers:
no process is left behind, even one busy in a simulation.

>>> from accelrl.surrogates.generate import generate
>>> report = generate("surrogates/lpa_beamloading.yaml", workers=16)  # doctest: +SKIP
>>> report.status_counts  # doctest: +SKIP
{'ok': 1016, 'no_beam': 0, 'failed': 8}
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from accelrl.execution import executor_scope, limit_threads, one_thread
from accelrl.interrupts import interrupt_on_sigterm, pool_initializer, stop_process_pool
from accelrl.progress import progress_bar
from accelrl.surrogates.dataset import (
    STATUSES,
    DatasetError,
    check_table,
    dataset_paths,
    read_table,
    rows_to_table,
    table_schema,
    write_meta,
    write_table,
)
from accelrl.surrogates.design import sobol_design
from accelrl.surrogates.simulators import make_simulator, simulator_version
from accelrl.surrogates.simulators.base import FAILED
from accelrl.surrogates.spec import DatasetSpec

#: Spec fields that must agree between an existing table and the spec resuming it.
_DESIGN_KEYS = ("simulator", "inputs", "outputs", "fixed", "fidelity", "design")
#: Default folder of new datasets, relative to the working folder.
DEFAULT_OUT = Path("runs") / "surrogates"


@dataclass
class GenerateReport:
    """What a :func:`generate` call did.

    :param table_path: The parquet table written.
    :param n_design: Samples in the design.
    :param n_existing: Rows found in the table before this call (kept, not rerun).
    :param n_run: Runs done by this call.
    :param status_counts: Rows per status in the final table.
    :param wall_time_s: Wall time of this call [s].
    """

    table_path: Path
    n_design: int
    n_existing: int
    n_run: int
    status_counts: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0


# ---------------------------------------------------------------------------- worker side
_SIMULATORS: dict[str, Any] = {}


def run_sample(
    spec_dict: Mapping[str, Any], sample: int, inputs: Mapping[str, float], timeout_s: float | None
) -> dict[str, Any]:
    """Run one design sample in this worker; returns the table row (never raises).

    The simulator is built once per worker process and spec; the run uses one numba,
    OpenMP and BLAS thread (numba's limit applies per calling thread: set here, in the
    thread that runs the simulation, e.g. a Dask worker's task thread).
    """
    key = json.dumps(spec_dict, sort_keys=True) + f"|{timeout_s}"
    t0 = time.perf_counter()
    row: dict[str, Any] = {"sample": int(sample), **{k: float(v) for k, v in inputs.items()}}
    spec = DatasetSpec.from_dict(dict(spec_dict))
    row.update(fidelity=spec.fidelity_label, simulator=spec.simulator)
    try:
        limit_threads(1)
        sim = _SIMULATORS.get(key)
        if sim is None:
            sim = _SIMULATORS[key] = make_simulator(spec, timeout_s=timeout_s)
        result = sim.run(inputs)
    except Exception as err:  # a setup error of this sample is a labelled row too
        row.update(
            status=FAILED,
            message=f"{type(err).__name__}: {err}",
            wall_time_s=time.perf_counter() - t0,
        )
        return row
    for name in spec.output_names:
        row[name] = float(result.outputs.get(name, math.nan))
    row.update(status=result.status, message=result.message, wall_time_s=result.wall_time_s)
    return row


# ---------------------------------------------------------------------------- provenance
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _wall_stats(frame: pd.DataFrame) -> dict[str, float]:
    w = frame["wall_time_s"].to_numpy(np.float64)
    w = w[np.isfinite(w)]
    if w.size == 0:
        return {}
    return {
        "n": int(w.size),
        "total": float(w.sum()),
        "mean": float(w.mean()),
        "median": float(np.median(w)),
        "min": float(w.min()),
        "p90": float(np.quantile(w, 0.9)),
        "max": float(w.max()),
    }


def build_meta(
    spec: DatasetSpec,
    frame: pd.DataFrame,
    sessions: list[dict[str, Any]],
) -> dict[str, Any]:
    """The sidecar of a table (see :mod:`accelrl.surrogates.dataset`)."""
    counts = frame["status"].value_counts() if len(frame) else pd.Series(dtype=int)
    return {
        "name": spec.name,
        "description": spec.description,
        "format": "accelrl-surrogate-dataset/1",
        "n_rows": int(len(frame)),
        "n_design": spec.design.n_samples,
        "status_counts": {s: int(counts.get(s, 0)) for s in STATUSES},
        "inputs": [i.model_dump(mode="json") for i in spec.inputs],
        "outputs": [o.model_dump(mode="json") for o in spec.outputs],
        "simulator": {"name": spec.simulator, "version": simulator_version(spec.simulator)},
        "fixed": dict(spec.fixed),
        "fidelity": dict(spec.fidelity),
        "fidelity_label": spec.fidelity_label,
        "design": spec.design.model_dump(mode="json"),
        "seed": spec.design.seed,
        "wall_time_s": _wall_stats(frame),
        "generation": {
            "started": sessions[0]["started"] if sessions else None,
            "finished": sessions[-1].get("finished") if sessions else None,
            "sessions": sessions,
        },
        "spec": spec.to_dict(),
    }


# ---------------------------------------------------------------------------- generation
def _same_design(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k in _DESIGN_KEYS
        if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)
    ]


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise DatasetError(f"{path}: not a dataset sidecar (no spec in it)")
    return meta


def _off_design(spec: DatasetSpec, frame: pd.DataFrame, design: pd.DataFrame) -> str | None:
    """The first row of ``frame`` whose inputs are not the design's at its sample, or
    ``None`` when every row lies on the design."""
    points = design.set_index("sample")
    for row in frame[["sample", *spec.input_names]].itertuples(index=False):
        sample = int(row[0])
        if sample not in points.index:
            return f"sample {sample} is not in the design of {len(points)} samples"
        expected = points.loc[sample, spec.input_names].to_numpy(np.float64)
        if not np.array_equal(np.asarray(row[1:], np.float64), expected):
            return f"sample {sample} has inputs {list(row[1:])}, the design {expected.tolist()}"
    return None


def load_existing(
    spec: DatasetSpec, table_path: Path, retry_failed: bool = False
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Rows and generation sessions already at ``table_path`` (empty if none).

    :raises DatasetError: If the existing table has no sidecar, was made from a different
        spec (simulator, inputs, outputs, fixed parameters, fidelity or design), has other
        columns, or holds rows that are not on the spec's design.
    """
    paths = dataset_paths(table_path)
    if not table_path.exists():
        return pd.DataFrame(), []
    if not paths["meta"].exists():
        raise DatasetError(
            f"{table_path} has no sidecar {paths['meta'].name}, so the spec that made it is "
            "unknown and it is not resumed; choose another --out, or --force to replace it"
        )
    meta = _read_meta(paths["meta"])
    differ = _same_design(meta["spec"], spec.to_dict())
    if differ:
        raise DatasetError(
            f"{table_path} was generated from a different spec ({', '.join(differ)} differ, "
            f"see {paths['meta'].name}); choose another --out, or --force to replace it"
        )
    frame = read_table(table_path)
    check_table(spec, frame, source=str(table_path))
    extra = [c for c in frame.columns if c not in table_schema(spec).names]
    if extra:
        raise DatasetError(f"{table_path}: columns {extra} are not in the spec")
    wrong = _off_design(spec, frame, sobol_design(spec))
    if wrong is not None:
        raise DatasetError(f"{table_path}: not this spec's design ({wrong})")
    if retry_failed:
        frame = frame[frame["status"] != FAILED]
    return frame.reset_index(drop=True), list(meta.get("generation", {}).get("sessions", []))


def _start_over(table_path: Path, resume: bool, force: bool) -> None:
    """Apply the rules for what is already at ``table_path`` (see :func:`generate`)."""
    paths = dataset_paths(table_path)
    found = [p for p in (paths["table"], paths["meta"]) if p.exists()]
    if not found:
        return
    if force:
        for p in paths.values():
            p.unlink(missing_ok=True)
    elif not resume:
        raise DatasetError(
            f"{table_path}: a dataset is already there ({', '.join(p.name for p in found)}); "
            "pass --resume to run its missing samples or --force to replace it"
        )


def generate(
    spec: DatasetSpec | str | Path,
    out: str | Path | None = None,
    *,
    workers: int | None = None,
    executor: cf.Executor | str | None = None,
    dask_address: str | None = None,
    limit: int | None = None,
    checkpoint_every: int = 16,
    timeout_s: float | None = 600.0,
    retry_failed: bool = False,
    progress: bool = True,
    command: str | None = None,
    resume: bool = True,
    force: bool = False,
) -> GenerateReport:
    """Run the design of ``spec`` and write the dataset table and sidecar.

    :param spec: Dataset spec or the path of its YAML file.
    :param out: Table path (``.parquet``) or folder (default:
        ``runs/surrogates/<name>.parquet`` in the working folder). The sidecar
        ``<stem>.meta.json`` and a copy of the spec ``<stem>.yaml`` go beside it.
    :param workers: Worker processes (default: CPU count).
    :param executor: ``"process"`` (default), ``"serial"``, ``"dask"`` or an executor.
    :param dask_address: Dask scheduler address, e.g. ``"tcp://10.0.0.1:8786"`` (implies
        ``"dask"``; see :func:`accelrl.execution.executor_scope`).
    :param limit: Run at most this many of the remaining samples (in design order).
    :param checkpoint_every: Write the table after this many finished runs (> 0).
    :param timeout_s: Wall-time limit of one run [s]; ``None`` for none.
    :param retry_failed: Rerun samples whose existing row is ``"failed"``.
    :param progress: Show a progress bar.
    :param command: Command line recorded in the sidecar (default: ``sys.argv``).
    :param resume: Continue a dataset already at ``out`` (it must be this spec's: see the
        module documentation); ``False``: refuse one.
    :param force: Remove a dataset already at ``out`` and start over.
    :raises DatasetError: For a dataset at ``out`` that is not resumed (see above).
    :raises KeyboardInterrupt: On Ctrl-C (:class:`~accelrl.interrupts.Terminated` on
        SIGTERM), after the finished runs were written.
    """
    spec_path: Path | None = None
    if not isinstance(spec, DatasetSpec):
        spec_path = Path(spec)
        spec = DatasetSpec.from_yaml(spec_path)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    make_simulator(spec)  # validates simulator, fixed parameters and fidelity early
    table_path = _table_path(spec, out)
    paths = dataset_paths(table_path)
    _start_over(table_path, resume, force)
    existing, sessions = load_existing(spec, table_path, retry_failed)
    design = sobol_design(spec)
    done = set(existing["sample"].astype(int)) if len(existing) else set()
    todo = design[~design["sample"].isin(done)]
    if limit is not None:
        todo = todo.iloc[:limit]
    rows: list[dict[str, Any]] = existing.to_dict(orient="records") if len(existing) else []
    session: dict[str, Any] = {
        "started": _now(),
        "command": command if command is not None else " ".join(sys.argv),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "n_existing": len(rows),
        "n_run": 0,
    }
    sessions = [*sessions, session]
    if not paths["spec"].exists():
        paths["spec"].parent.mkdir(parents=True, exist_ok=True)
        if spec_path is not None and spec_path.exists():
            shutil.copyfile(spec_path, paths["spec"])
        else:
            import yaml

            paths["spec"].write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))

    def checkpoint(final: bool = False) -> None:
        frame = pd.DataFrame(rows)
        table = rows_to_table(spec, rows)
        write_table(table, table_path)
        session["n_run"] = n_run
        session["elapsed_s"] = round(time.perf_counter() - t0, 3)
        if final:
            session["finished"] = _now()
        write_meta(
            build_meta(spec, frame if len(frame) else table.to_pandas(), sessions), paths["meta"]
        )

    t0 = time.perf_counter()
    n_run = 0
    spec_dict = spec.to_dict()
    jobs = [
        (int(r["sample"]), {k: float(r[k]) for k in spec.input_names})
        for r in todo.to_dict(orient="records")
    ]
    futures: dict[cf.Future, tuple[int, dict[str, float]]] = {}
    local = executor in (None, "process") and dask_address is None
    initializer = pool_initializer(one_thread) if local else one_thread
    scope = executor_scope(executor, workers, dask_address, initializer, init_here=True)
    with interrupt_on_sigterm(), scope as (pool, kind, n_workers):
        session.update(executor=kind, workers=n_workers)
        checkpoint()
        with _progress(progress, len(jobs), spec.name) as advance:
            try:
                if pool is None:
                    for sample, inputs in jobs:
                        rows.append(run_sample(spec_dict, sample, inputs, timeout_s))
                        n_run += 1
                        advance(rows[-1])
                        if n_run % checkpoint_every == 0:
                            checkpoint()
                else:
                    for s, x in jobs:
                        futures[pool.submit(run_sample, spec_dict, s, x, timeout_s)] = (s, x)
                    for fut in cf.as_completed(futures):
                        sample, inputs = futures[fut]
                        try:
                            row = fut.result()
                        except BrokenProcessPool:
                            raise
                        except Exception as err:  # the worker itself failed on this sample
                            row = {
                                "sample": sample,
                                **inputs,
                                "status": FAILED,
                                "message": f"worker error: {type(err).__name__}: {err}",
                                "fidelity": spec.fidelity_label,
                                "simulator": spec.simulator,
                            }
                        rows.append(row)
                        n_run += 1
                        advance(row)
                        if n_run % checkpoint_every == 0:
                            checkpoint()
            except BaseException:
                # keep what finished; queued runs are dropped, running ones ended (our pool)
                if local:
                    stop_process_pool(pool)
                else:
                    for f in futures:
                        f.cancel()
                checkpoint(final=True)
                raise
        checkpoint(final=True)
    frame = read_table(table_path)
    counts = frame["status"].value_counts()
    return GenerateReport(
        table_path=table_path,
        n_design=len(design),
        n_existing=len(existing),
        n_run=n_run,
        status_counts={s: int(counts.get(s, 0)) for s in STATUSES},
        wall_time_s=time.perf_counter() - t0,
    )


def _table_path(spec: DatasetSpec, out: str | Path | None) -> Path:
    if out is None:
        return Path.cwd() / DEFAULT_OUT / f"{spec.name}.parquet"
    out = Path(out)
    if out.suffix == ".parquet":
        return out
    return out / f"{spec.name}.parquet"


@contextlib.contextmanager
def _progress(enabled: bool, total: int, name: str) -> Iterator[Any]:
    """A ``rich`` progress bar; yields ``advance(row)``."""
    if not enabled:
        yield lambda row: None
        return
    counts = dict.fromkeys(STATUSES, 0)
    with progress_bar("{task.description}", after=["{task.fields[counts]}"]) as bar:
        task = bar.add_task(name, total=total, counts="")

        def advance(row: Mapping[str, Any]) -> None:
            counts[str(row.get("status", FAILED))] = counts.get(str(row.get("status")), 0) + 1
            text = " ".join(f"{k}={v}" for k, v in counts.items())
            bar.update(task, advance=1, counts=text)

        yield advance
