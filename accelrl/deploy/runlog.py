"""The run log of a controller run: JSON Lines, a summary and a plot.

A run directory holds::

    run.jsonl      one JSON object per line, each written and flushed at once (a crash of
                   the process loses nothing written) and fsync'ed before the controller's
                   next write to the machine: the start, abort, rollback and end records
                   before the controller goes on, a step record in the background while the
                   next step waits for its frame (:meth:`RunLog.sync` is the barrier before
                   each put; a crash of the host loses at most the step record of the last
                   write):
                     {"type": "start", ...}     optimiser or bundle, machine, mode,
                                                limits, protections, target, initial
                                                settings (a new folder per run; an
                                                existing run.jsonl is never appended to)
                     {"type": "step", ...}      one per step (see below)
                     {"type": "rollback", ...}  as the rollback goes: ``event`` ``write``
                                                (one per ramp write attempt),
                                                ``foreign_write`` (a knob another client
                                                wrote, left alone) or ``waiting`` (an
                                                outage being waited out)
                     {"type": "end", ...}       the summary
    summary.json   the end-of-run summary (also the last line of run.jsonl)
    run.png        beam errors and knob values vs step, the abort marked (matplotlib,
                   imported only when the plot is made)

A ``step`` record: ``step`` (0-based), ``time`` (wall clock, s since the epoch),
``observation`` (name -> SI, with its ``observation_time``), ``knobs`` (readbacks, SI),
``target``, ``error`` (beam - target, m), ``requested`` (the optimiser's answer: the
settings it asked for, SI), ``safe_setpoints`` (what the safety layer made of them, SI),
``clips`` (``knob, rule, requested, applied``), ``decision`` (``write``, ``shadow``,
``refused``, ``target_reached``, ``stopped``, ``abort``), ``writes`` (knob -> value put),
``setpoints_read`` and ``readbacks`` after the write, ``timing`` (seconds spent reading, in
the optimiser, writing/settling), and on abort ``abort`` (``reason``, ``detail``).

JSON has no NaN or infinity: such values are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"``.

This module needs numpy only (matplotlib for :func:`plot_run`).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from accelrl.units import display_unit

RUN_FILE = "run.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "run.png"


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON: numpy -> Python, non-finite floats -> strings."""
    # Python's own floats, strings, ints, dicts and lists first (a step record is made of
    # them): the same result as the general rules below, by type alone.
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): jsonable(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isfinite(v):
            return v
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


class RunLog:
    """Writes a run directory (see the module documentation).

    :param directory: Run directory (created; must not hold a run already).
    :param fsync: ``os.fsync`` every record (default; turn off only for benchmarks).

    A record written with ``sync=False`` is flushed at once and fsync'ed by a background
    thread; :meth:`sync` waits until every record written so far is on disk.
    """

    def __init__(self, directory: str | Path, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / RUN_FILE
        try:  # a run's record is never appended to or overwritten
            self._file = self.path.open("x", encoding="utf-8")
        except FileExistsError:
            raise FileExistsError(
                f"{self.path} exists: {self.directory} already holds a run; choose a new folder"
            ) from None
        self._fsync = fsync
        self._lines: list[str] = []  # every record as written (read back by records)
        # background fsync: records written (requested) and on disk (done), by count
        self._cv = threading.Condition()
        self._requested = self._done = 0
        self._error: OSError | None = None
        self._worker: threading.Thread | None = None

    def write(self, record: Mapping[str, Any], sync: bool = True, plain: bool = False) -> None:
        """Append one record, flushed at once.

        :param sync: fsync it (and every record before it) before returning; ``False``:
            fsync it in the background (:meth:`sync` waits for that).
        :param plain: The caller's promise that the record's keys are all ``str``: then it is
            written as ``json`` writes it whenever that is what :func:`jsonable` would make of
            it (Python's own numbers, strings, lists, tuples and dicts, finite floats), without
            the copy; anything else still goes through :func:`jsonable`.
        :raises OSError: If writing fails, or an earlier background fsync failed (with
            ``sync``, this record is then written and synced all the same, and the message
            says so).
        """
        line = None
        if plain:
            try:
                line = json.dumps(record, allow_nan=False)
            except (TypeError, ValueError):  # numpy scalars, paths, NaN/inf, ...
                pass
        if line is None:
            data = jsonable(record)  # a new tree of dicts and lists: it cannot hold a cycle
            line = json.dumps(data, allow_nan=False, check_circular=False)
        line += "\n"
        self._file.write(line)
        self._file.flush()
        self._lines.append(line)
        if not self._fsync:
            return
        if sync:
            try:
                self.sync()
            except OSError as err:  # an earlier record's: this one is written, sync it too
                os.fsync(self._file.fileno())
                raise OSError(
                    err.errno,
                    f"an earlier record's background fsync failed ({err}); this "
                    f"{record.get('type', 'record')} record is written and synced",
                ) from err
            os.fsync(self._file.fileno())
            return
        with self._cv:
            self._requested += 1
            self._cv.notify_all()
        if self._worker is None:
            self._worker = threading.Thread(target=self._fsync_loop, daemon=True,
                                            name="runlog-fsync")  # fmt: skip
            self._worker.start()

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, as it reads back."""
        return [json.loads(line) for line in self._lines]

    def sync(self) -> None:
        """Return once every record written so far is on disk (the background fsyncs done).

        :raises OSError: If a background fsync failed (once: the records it covered may not
            be on disk).
        """
        with self._cv:
            self._cv.wait_for(lambda: self._done >= self._requested or self._error is not None)
            if self._error is not None:  # raised once; the next background write starts anew
                err, self._error, self._worker = self._error, None, None
                self._done = self._requested
                raise err

    def _fsync_loop(self) -> None:
        """The background fsyncs (one thread per log, until :meth:`close`)."""
        fd = self._file.fileno()
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._requested > self._done or self._file.closed)
                if self._done >= self._requested:
                    return  # closed
                target = self._requested
            try:
                os.fsync(fd)
            except OSError as err:
                with self._cv:
                    self._error = err
                    self._cv.notify_all()
                return
            with self._cv:
                self._done = target
                self._cv.notify_all()

    def finish(self, summary: Mapping[str, Any], plot: bool = True) -> dict[str, Any]:
        """Write the ``end`` record, ``summary.json`` and (``plot``) ``run.png``; close.

        :return: The summary as written (with ``plot`` set to the PNG's path or ``None``).
        """
        data = jsonable(summary)
        data["plot"] = None
        if plot:
            try:
                records = [*self.records, {"type": "end", **data}]
                data["plot"] = str(plot_run(records, self.directory / PLOT_FILE))
            except ImportError as err:  # matplotlib is optional at run time
                data["plot_error"] = f"no plot: {err}"
            except Exception as err:  # a figure must not cost the end record
                data["plot_error"] = f"no plot: {type(err).__name__}: {err}"
        self.write({"type": "end", **data})
        tmp = self.directory / (SUMMARY_FILE + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.directory / SUMMARY_FILE)
        self.close()
        return data

    def close(self) -> None:
        """Wait for the background fsyncs, then close the file (idempotent).

        :raises OSError: If a background fsync failed (the file is closed all the same).
        """
        if self._file.closed:
            return
        try:
            self.sync()
        finally:
            with self._cv:
                self._file.close()
                self._cv.notify_all()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_run(directory: str | Path) -> list[dict[str, Any]]:
    """All records of ``directory/run.jsonl`` (a torn last line is ignored)."""
    out = []
    for line in (Path(directory) / RUN_FILE).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _num(v: Any) -> float:
    if isinstance(v, str):
        return float(v)  # "nan", "inf", "-inf"
    return math.nan if v is None else float(v)


def _symlog_ticks(linthresh: float, largest: float, most: int = 4) -> list[float]:
    """Ticks of a symlog axis that never crowd: 0 and at most ``most`` decades each side,
    spread from ``linthresh`` to ``largest`` (both [um])."""
    lo = math.ceil(math.log10(max(linthresh, 1e-3)))  # none inside the linear band
    hi = max(lo, math.ceil(math.log10(max(largest, linthresh, 1e-3))))
    step = max(1, math.ceil((hi - lo + 1) / most))
    decades = [10.0**k for k in range(hi, lo - 1, -step)][::-1]
    return [-d for d in reversed(decades)] + [0.0] + decades


def plot_run(records: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Beam errors [um] and knob values (operator units: steerers in mrad) vs step, abort
    marked; saved as PNG.

    :param records: The run's records (``start``, ``step``, ``rollback`` ...).
    :param path: PNG file to write.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, NullLocator

    steps = [r for r in records if r.get("type") == "step"]
    start = next((r for r in records if r.get("type") == "start"), {})
    knobs = list(start.get("knob_names") or (steps[0]["knobs"] if steps else []))
    beam_names = list(start.get("observation_names") or ("mu_x", "sigma_x", "mu_y", "sigma_y"))
    limits = start.get("limits", {})
    units = {k: limits.get(k, {}).get("unit", "") for k in knobs}

    fig = Figure(figsize=(9, 3.0 + 1.4 * (1 + len(knobs))), layout="constrained")
    axes = fig.subplots(
        1 + len(knobs), 1, sharex=True, squeeze=False, height_ratios=[2.2] + [1.0] * len(knobs)
    )[:, 0]
    x = [r["step"] for r in steps]
    ax = axes[0]
    for name in beam_names:
        y = [_num(r.get("error", {}).get(name)) * 1e6 for r in steps]
        ax.plot(x, y, marker=".", label=name)
    thresholds = start.get("thresholds")
    linthresh = 1.0
    if thresholds:
        t = max(_num(v) for v in thresholds) * 1e6
        ax.axhspan(-t, t, color="0.9", zorder=0, label="target band")
        linthresh = max(t / 4, 1e-3)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_yscale("symlog", linthresh=linthresh)
    errors = [abs(v) for r in steps for v in map(_num, (r.get("error") or {}).values())]
    ticks = _symlog_ticks(linthresh, 1e6 * max([v for v in errors if math.isfinite(v)] or [0]))
    ax.set_yticks(ticks, [f"{v:g}" for v in ticks])
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("beam - target [um]")
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    abort = next((r for r in records if r.get("decision") == "abort"), None)
    rollback = [r for r in records if r.get("type") == "rollback" and r.get("ok")]
    # Rollback writes are drawn between the abort step and the next integer.
    x0 = abort["step"] if abort is not None else (x[-1] if x else 0)
    xr = [x0 + (i + 1) / (len(rollback) + 1) for i in range(len(rollback))]
    for ax, name in zip(axes[1:], knobs, strict=True):
        scale, unit = display_unit(units.get(name) or "")  # operator units: mrad, not rad
        y = [scale * _num(r.get("knobs", {}).get(name)) for r in steps]
        ax.plot(x, y, marker=".", color="C0", label="readback")
        safe = [scale * _num(r.get("safe_setpoints", {}).get(name)) for r in steps]
        ax.plot(x, safe, ls="--", color="C1", lw=0.8, label="safe setpoint")
        if rollback:
            yr = [scale * _num(r["setpoints"].get(name, math.nan)) for r in rollback]
            ax.plot(xr, yr, "x", color="red", label="rollback write")
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.set_ylabel(f"{name} [{unit}]", fontsize=8)
    if len(axes) > 1:
        axes[1].legend(loc="upper right", fontsize=7)
    end = next((r for r in records if r.get("type") == "end"), {})
    if abort is not None:
        for ax in axes:
            ax.axvline(abort["step"], color="red", lw=1.5)
        reason = abort.get("abort", {}).get("reason", "abort")
        axes[0].annotate(
            f"abort: {reason}",
            xy=(abort["step"], 1.0),
            xycoords=("data", "axes fraction"),
            color="red",
            fontsize=8,
            ha="right",
            va="bottom",
        )
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    title = f"{start.get('machine', '')}  mode {start.get('mode', '')}"
    if end:
        title += f"  -> {end.get('reason', '')}"
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path
