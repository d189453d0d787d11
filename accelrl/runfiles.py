"""Live run files: append-only writers that flush as they go, and incremental readers.

Every long job (training, tuning, deployment) writes what it has done while it runs, so that
``accelrl dashboard`` can follow it and a crash loses nothing already written. This module
defines the shared live file, its writers and the readers that follow growing files.

**The progress file** ``progress.jsonl`` (:data:`PROGRESS_FILE`), one JSON object per line:

``{"type": "start", "kind": KIND, "format_version": 1, "time": T, ...}``
    first line; ``kind`` is ``"apg"``, ``"sb3"`` or ``"tuning"`` (:data:`PROGRESS_KINDS`);
    the rest describes the run (see below).
``{"type": "iteration", "time": T, ...}``
    a training iteration (APG: ``iteration``, ``loss``, ``learning_rate``, ``grad_norm``,
    ``wall_s``).
``{"type": "evaluation", "time": T, ...}``
    a held-out evaluation: ``iteration`` (APG) or ``timesteps`` (SB3) and the evaluation
    protocol's summary (e.g. :func:`accelrl.agents.training.monitor.evaluate_policy`:
    ``median_best_mae_um``, ``median_final_mae_um``, ``iqr_best_mae_um``,
    ``median_steps_to_target``, ``fraction_reached_target`` (or ``fraction_on_target``),
    ``n_trials``, ``steps``, ...).
``{"type": "step", "time": T, ...}``
    a tuning step (:func:`tuning_step_record`).
``{"type": "end", "time": T, "status": "completed" | "interrupted" | "failed", ...}``
    the last line, with the run's summary (``error`` when it failed).

Start records: APG ``iterations``, ``batch_size``, ``horizon``, ``config``; SB3
``algorithm``, ``total_timesteps``, ``num_envs``, ``evaluation_every``; tuning
``machine``, ``variables`` (``name, low, high, max_step, unit``), ``objective``, ``prior``,
``acquisition``, ``steps``, ``initial`` (name -> SI).

JSON has no NaN or infinity: non-finite numbers are written as the strings ``"nan"``,
``"inf"``, ``"-inf"`` (as in the deploy run log ``run.jsonl``).

**Flushing.** :class:`JsonlWriter` and :class:`CsvWriter` flush every record to the operating
system (a crash of the writing process loses nothing already written) and ``os.fsync``
according to their ``fsync`` policy (``"always"``, ``"never"`` or a number of seconds between
syncs, which also protects against a power loss up to that interval); :meth:`JsonlWriter.sync`
forces one (trainers call it after an evaluation and at the end).

**Screen frames.** A run may show the camera: a step record of ``run.jsonl`` (or of a
progress file) may carry ``"screen": {"file": "screens/step_000012.png", "extent_m":
[x_min, x_max, y_min, y_max]}``, the frame as a PNG inside the run folder and the screen
area it covers [m]; :func:`save_screen_frame` writes such a frame atomically.

**Readers.** :class:`JsonlTail` and :class:`CsvTail` return only what was appended since the
last call (they remember the byte offset; a torn last line waits for its newline), notice a
file that was truncated, replaced or rewritten (and start over), and report corrupt lines
instead of raising. :class:`FileSnapshot` re-reads a small whole-file document (JSON, CSV)
only when its size or modification time changes.

This module needs the standard library only. Its size (~800 lines): the writers and the
incremental readers of the live files stay together so that both sides agree on the format, the
flushing and the torn last line; a quarter of it is docstrings, the format's specification above
all.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar

#: The live progress file of training runs and tuning sessions.
PROGRESS_FILE = "progress.jsonl"
#: Version of the progress-file records.
FORMAT_VERSION = 1
#: Run kinds a progress file's start record may name.
PROGRESS_KINDS: tuple[str, ...] = ("apg", "sb3", "tuning")
#: Record types of a progress file.
RECORD_TYPES: tuple[str, ...] = ("start", "iteration", "evaluation", "step", "end")
#: Folder of screen frames inside a run folder.
SCREEN_DIR = "screens"

FsyncPolicy = Literal["always", "never"] | float


# --------------------------------------------------------------------------- values
def jsonable(value: Any) -> Any:
    """``value`` as strict JSON: mappings, sequences, numpy scalars and arrays (through their
    ``tolist``/``item``), non-finite floats as ``"nan"``/``"inf"``/``"-inf"``, paths as text.

    >>> jsonable({"a": float("nan"), "b": (1, 2.5)})
    {'a': 'nan', 'b': [1, 2.5]}
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)


def number(value: Any) -> float:
    """A record value as a float: numbers, numeric strings (``"nan"``, ``"inf"``, ``"1e-3"``)
    and booleans; anything else (``None``, text, lists) is NaN.

    >>> number("inf"), number(None), number(True)
    (inf, nan, 1.0)
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


# --------------------------------------------------------------------------- writers
class _SyncPolicy:
    """When to ``os.fsync``: every record, never, or at most every ``interval`` seconds."""

    def __init__(self, fsync: FsyncPolicy) -> None:
        if fsync not in ("always", "never"):
            if isinstance(fsync, bool) or not isinstance(fsync, (int, float)):
                raise ValueError(f"fsync must be 'always', 'never' or seconds >= 0, got {fsync!r}")
            if not math.isfinite(fsync) or fsync < 0:
                raise ValueError(f"fsync interval must be finite and >= 0 s, got {fsync}")
        self.policy = fsync
        self._last = time.monotonic()

    def due(self) -> bool:
        if self.policy == "always":
            return True
        if self.policy == "never":
            return False
        return time.monotonic() - self._last >= float(self.policy)

    def done(self) -> None:
        self._last = time.monotonic()


def _ends_with_newline(path: Path) -> bool:
    """Whether the (non-empty) file ``path`` ends with a newline."""
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class JsonlWriter:
    """Appends JSON objects to a JSON Lines file, one per line, flushed after every record.

    :param path: The file (its folder is created).
    :param fsync: ``"always"`` (``os.fsync`` after every record), ``"never"``, or the least
        number of seconds between syncs (default 2 s).
    :param exclusive: Refuse to write into an existing file (default): a new run gets a new
        file, an old run's record is never appended to.
    :raises FileExistsError: With ``exclusive`` when ``path`` exists.

    >>> with JsonlWriter("runs/x/progress.jsonl") as log:  # doctest: +SKIP
    ...     log.write({"type": "iteration", "iteration": 0, "loss": 1.5})
    """

    def __init__(self, path: str | Path, fsync: FsyncPolicy = 2.0, exclusive: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sync = _SyncPolicy(fsync)
        try:
            self._file: IO[str] = self.path.open("x" if exclusive else "a", encoding="utf-8")
        except FileExistsError:
            raise FileExistsError(
                f"{self.path} exists: a run's live file is never appended to; choose a new "
                "folder (or resume explicitly with exclusive=False)"
            ) from None
        if not exclusive and self._file.tell() > 0 and not _ends_with_newline(self.path):
            # a run killed mid-line left a torn last line: end it, so that it stays one
            # (unreadable, skipped) line instead of swallowing the first new record
            self._file.write("\n")
            self._file.flush()
        self.records = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (a mapping; made strict JSON by :func:`jsonable`), flush it, and
        fsync when the policy says so."""
        if not isinstance(record, Mapping):
            raise TypeError(f"a record is a mapping, got {type(record).__name__}")
        line = json.dumps(jsonable(record), allow_nan=False, separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()
        self.records += 1
        if self._sync.due():
            self.sync()

    def sync(self) -> None:
        """Flush and ``os.fsync`` now."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._sync.done()

    def close(self) -> None:
        """Sync and close (idempotent)."""
        if not self._file.closed:
            if self._sync.policy != "never":
                self.sync()
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CsvWriter:
    """Appends rows to a CSV file with a fixed header, flushed after every row.

    :param path: The file (its folder is created).
    :param columns: Column names (the header, written first).
    :param fsync: As for :class:`JsonlWriter`.
    :param exclusive: Refuse to write into an existing file (default).
    :raises ValueError: For an empty or repeated column name.
    """

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        fsync: FsyncPolicy = 2.0,
        exclusive: bool = True,
    ) -> None:
        self.columns = [str(c) for c in columns]
        if not self.columns or any(not c for c in self.columns):
            raise ValueError(f"need non-empty column names, got {list(columns)}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"repeated column names in {self.columns}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sync = _SyncPolicy(fsync)
        try:
            self._file: IO[str] = self.path.open(
                "x" if exclusive else "a", encoding="utf-8", newline=""
            )
        except FileExistsError:
            raise FileExistsError(f"{self.path} exists; choose a new folder") from None
        self._writer = csv.writer(self._file, lineterminator="\n")
        if self._file.tell() == 0:
            self._writer.writerow(self.columns)
            self._file.flush()

    def write(self, row: Mapping[str, Any] | Sequence[Any]) -> None:
        """Append one row (a mapping by column name, missing ones empty; or a sequence in
        column order); floats are written with full precision."""
        if isinstance(row, Mapping):
            unknown = sorted(set(row) - set(self.columns))
            if unknown:
                raise ValueError(f"unknown columns {unknown}; columns: {self.columns}")
            values = [row.get(c, "") for c in self.columns]
        else:
            values = list(row)
            if len(values) != len(self.columns):
                raise ValueError(f"row has {len(values)} values, header {len(self.columns)}")
        self._writer.writerow([repr(v) if isinstance(v, float) else v for v in values])
        self._file.flush()
        if self._sync.due():
            self.sync()

    def sync(self) -> None:
        """Flush and ``os.fsync`` now."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._sync.done()

    def close(self) -> None:
        """Sync and close (idempotent)."""
        if not self._file.closed:
            if self._sync.policy != "never":
                self.sync()
            self._file.close()

    def __enter__(self) -> CsvWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressLog:
    """The live ``progress.jsonl`` of a training run or tuning session.

    Writes the ``start`` record when created; :meth:`iteration`, :meth:`evaluation` and
    :meth:`step` append records (each stamped with ``time``); :meth:`end` writes the last
    record and closes. Evaluations and the end are fsync'ed at once; other records at
    least every ``fsync_s`` seconds (all are flushed at once).

    :param directory: The run folder (created).
    :param kind: ``"apg"``, ``"sb3"`` or ``"tuning"``.
    :param fsync_s: Longest time between syncs of ordinary records [s].
    :param append: Continue the progress file already in the folder (a resumed run, e.g.
        ``accelrl tune --resume``): a new ``start`` record (with ``"resumed": true``) is
        appended after the earlier run's records. Default: refuse an existing file.
    :param meta: The start record's fields (see the module documentation).
    :raises ValueError: For an unknown ``kind``.
    :raises FileExistsError: When the folder already holds a progress file (and not
        ``append``).

    >>> log = ProgressLog("runs/apg", "apg", iterations=3000, batch_size=256)  # doctest: +SKIP
    >>> log.iteration(iteration=0, loss=-7.1, learning_rate=1e-3)  # doctest: +SKIP
    >>> log.end("completed", final_loss=-11.2)  # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str | Path,
        kind: str,
        fsync_s: float = 2.0,
        append: bool = False,
        **meta: Any,
    ) -> None:
        if kind not in PROGRESS_KINDS:
            raise ValueError(f"kind must be one of {list(PROGRESS_KINDS)}, got {kind!r}")
        self.kind = kind
        path = Path(directory) / PROGRESS_FILE
        resumed = append and path.exists()
        self.writer = JsonlWriter(path, fsync=fsync_s, exclusive=not append)
        self.writer.write(
            {"type": "start", "kind": kind, "format_version": FORMAT_VERSION, "time": time.time()}
            | ({"resumed": True} if resumed else {})
            | dict(meta)
        )
        self.writer.sync()
        self.closed = False

    def _write(self, kind: str, fields: Mapping[str, Any], sync: bool = False) -> None:
        if self.closed:
            raise RuntimeError(f"{self.writer.path} is closed (end() was called)")
        self.writer.write({"type": kind, "time": time.time(), **fields})
        if sync:
            self.writer.sync()

    def iteration(self, **fields: Any) -> None:
        """Append a training iteration (e.g. ``iteration``, ``loss``, ``learning_rate``)."""
        self._write("iteration", fields)

    def evaluation(self, summary: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Append a held-out evaluation (its summary plus ``iteration``/``timesteps``);
        fsync'ed at once."""
        self._write("evaluation", {**(summary or {}), **fields}, sync=True)

    def step(self, record: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Append a tuning step (e.g. :func:`tuning_step_record`)."""
        self._write("step", {**(record or {}), **fields})

    def end(self, status: str = "completed", **summary: Any) -> None:
        """Write the ``end`` record (``status``: completed, interrupted or failed) and close."""
        if status not in ("completed", "interrupted", "failed"):
            raise ValueError(f"status must be completed, interrupted or failed, got {status!r}")
        self._write("end", {"status": status, **summary}, sync=True)
        self.close()

    def close(self) -> None:
        """Close without an end record (idempotent); a reader then sees the run as stopped
        without an end."""
        self.closed = True
        self.writer.close()

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if not self.closed:
            if exc_type is None:
                self.end("completed")
            elif issubclass(exc_type, KeyboardInterrupt):
                self.end("interrupted")
            else:
                self.end("failed", error=f"{exc_type.__name__}: {exc}")


def tuning_step_record(row: Mapping[str, Any], diagnostics: Mapping[str, Any]) -> dict[str, Any]:
    """The progress record of a tuning step from a session's data row and diagnostics.

    :param row: A row of :meth:`accelrl.agents.bo.TuningSession.table` (``step``,
        ``setting.*``, ``result.*``, ``safe``, ``feasible``, ``prior_prediction``,
        ``suggest_s``).
    :param diagnostics: :meth:`~accelrl.agents.bo.TuningSession.diagnostics` after the step.
    :return: ``step``, ``setting`` (name -> SI), ``result`` (name -> value), ``safe``,
        ``feasible``, ``prior_prediction``, ``suggest_s``, ``best`` (``objective`` and
        ``setting`` of the best point so far, or ``None``) and ``diagnostics`` (the mode, the
        prior's use, fallback, correlation and weight, the trust length, paused/returning and
        why, the calibration).
    """
    setting = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("setting.")}
    result = {k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("result.")}
    diag = dict(diagnostics)
    best = diag.pop("best", None)
    return {
        "step": row.get("step"),
        "setting": setting,
        "result": result,
        "safe": row.get("safe"),
        "feasible": row.get("feasible"),
        "prior_prediction": row.get("prior_prediction"),
        "suggest_s": row.get("suggest_s"),
        "best": best,
        "diagnostics": diag,
    }


# --------------------------------------------------------------------------- screen frames
def _png(pixels: bytes, width: int, height: int, channels: int) -> bytes:
    """A PNG (8-bit grey or RGB, no interlace) of row-major ``pixels``."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    colour = {1: 0, 3: 2}[channels]
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[r * stride : (r + 1) * stride] for r in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def save_screen_frame(
    directory: str | Path,
    step: int,
    image: Any,
    extent_m: Sequence[float],
) -> dict[str, Any]:
    """Write a camera frame of a run as ``screens/step_NNNNNN.png`` (atomically: written to a
    temporary name, then renamed) and return the ``screen`` field for the step record.

    :param directory: The run folder.
    :param step: The step the frame belongs to (>= 0).
    :param image: ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) uint8 values, row 0 at the top
        (a numpy array or nested sequences).
    :param extent_m: ``[x_min, x_max, y_min, y_max]`` of the screen area shown [m].
    :return: ``{"file": "screens/step_NNNNNN.png", "extent_m": [...]}``.
    :raises ValueError: For a bad step, shape, value range or extent.
    """
    if int(step) < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    rows = image.tolist() if hasattr(image, "tolist") else image
    height = len(rows)
    width = len(rows[0]) if height else 0
    if not height or not width:
        raise ValueError("the frame is empty")
    channels = 3 if isinstance(rows[0][0], (list, tuple)) else 1
    flat: list[int] = []
    for r in rows:
        if len(r) != width:
            raise ValueError("the frame's rows differ in length")
        for px in r:
            values = px if channels == 3 else (px,)
            if len(values) != channels:
                raise ValueError(f"pixels need {channels} values")
            flat.extend(int(v) for v in values)
    if min(flat) < 0 or max(flat) > 255:
        raise ValueError("pixel values must be within 0..255 (uint8)")
    extent = [float(v) for v in extent_m]
    if len(extent) != 4 or not all(math.isfinite(v) for v in extent):
        raise ValueError(f"extent_m must be 4 finite values [m], got {list(extent_m)}")
    if extent[1] <= extent[0] or extent[3] <= extent[2]:
        raise ValueError(f"extent_m must be [x_min < x_max, y_min < y_max], got {extent}")
    rel = f"{SCREEN_DIR}/step_{int(step):06d}.png"
    path = Path(directory) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(_png(bytes(flat), width, height, channels))
    tmp.replace(path)
    return {"file": rel, "extent_m": extent}


# --------------------------------------------------------------------------- readers
@dataclass
class Chunk:
    """What a tail reader found since its last call.

    :param items: New records (JSON objects, or CSV rows as dicts).
    :param errors: Problems with lines of this chunk (``"line 17: ..."``), skipped.
    :param reset: The file was truncated, replaced or rewritten: ``items`` start from its
        beginning, and what was read before is void.
    :param missing: The file does not exist (or cannot be read now).
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reset: bool = False
    missing: bool = False


class _Tail:
    """Byte-offset bookkeeping shared by the tail readers."""

    def __init__(self, path: str | Path, max_bytes: int = 16 << 20) -> None:
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be >= 1024, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.offset = 0
        self.line_no = 0
        self._partial = b""
        self._ino: int | None = None
        self._head = b""  # the first bytes read (the header, for CSV), to notice rewrites

    @property
    def pending_bytes(self) -> int:
        """Bytes of a last line that has no newline yet (a torn or in-progress write)."""
        return len(self._partial)

    def _restart(self) -> None:
        self.offset = 0
        self.line_no = 0
        self._partial = b""
        self._head = b""

    def _rewritten(self, f: IO[bytes]) -> bool:
        """Whether the start of the file differs from what was read there before."""
        if not self._head:
            return False
        f.seek(0)
        return f.read(len(self._head)) != self._head

    def _lines(self) -> tuple[list[tuple[int, bytes]], bool, bool]:
        """New complete lines ``(line number, bytes)``, whether the file was reset, and
        whether it is missing."""
        try:
            st = os.stat(self.path)
        except OSError:
            return [], False, True
        reset = False
        if self._ino is not None and (st.st_ino != self._ino or st.st_size < self.offset):
            self._restart()
            reset = True
        self._ino = st.st_ino
        if st.st_size == self.offset and not reset:
            return [], False, False
        try:
            with open(self.path, "rb") as f:
                if st.st_size >= self.offset and self._rewritten(f):
                    self._restart()
                    reset = True
                f.seek(self.offset)
                data = f.read(min(max(st.st_size - self.offset, 0), self.max_bytes))
        except OSError:
            return [], reset, True
        self.offset += len(data)
        buffer = self._partial + data
        parts = buffer.split(b"\n")
        self._partial = parts.pop()
        out = []
        for part in parts:
            self.line_no += 1
            if self.line_no == 1:
                self._head = (part + b"\n")[:4096]
            out.append((self.line_no, part))
        return out, reset, False


class JsonlTail(_Tail):
    """Follows a JSON Lines file: each :meth:`read` returns the objects appended since the
    previous one.

    A line that is not a JSON object is reported in :attr:`Chunk.errors` and skipped; a last
    line without its newline is kept until the newline arrives. A file that shrinks or is
    replaced (new inode) is read again from its start (``Chunk.reset``).

    :param path: The file.
    :param max_bytes: Most bytes read per call (the rest comes with the next calls).

    >>> tail = JsonlTail("runs/deploy/run.jsonl")  # doctest: +SKIP
    >>> new = tail.read().items  # doctest: +SKIP
    """

    def read(self) -> Chunk:
        """The records appended since the last call (see the class documentation)."""
        lines, reset, missing = self._lines()
        chunk = Chunk(reset=reset, missing=missing)
        for number_, raw in lines:
            text = raw.strip()
            if not text:
                continue
            try:
                item = json.loads(text)
            except UnicodeDecodeError:
                chunk.errors.append(f"{self.path.name} line {number_}: not UTF-8")
                continue
            except json.JSONDecodeError as err:
                chunk.errors.append(f"{self.path.name} line {number_}: not JSON ({err.msg})")
                continue
            if not isinstance(item, dict):
                chunk.errors.append(
                    f"{self.path.name} line {number_}: a {type(item).__name__}, not an object"
                )
                continue
            chunk.items.append(item)
        return chunk


def _cell(text: str) -> Any:
    """A CSV cell: a float when it reads as one, ``True``/``False``, else the text."""
    if text == "":
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    try:
        return float(text)
    except ValueError:
        return text


class CsvTail(_Tail):
    """Follows a CSV file with a header line: each :meth:`read` returns the rows appended
    since the previous one, as dicts (cells converted by number where possible).

    A writer that rewrites the whole file with a new header (as Stable-Baselines3's CSV
    logger does when a new key appears) is noticed by the changed first bytes, and the file
    is read again from its start (``Chunk.reset``). Rows with the wrong number of cells are
    reported and skipped.

    :param path: The file.
    :param max_bytes: Most bytes read per call.
    """

    def __init__(self, path: str | Path, max_bytes: int = 16 << 20) -> None:
        super().__init__(path, max_bytes)
        self.columns: list[str] | None = None

    def _restart(self) -> None:
        super()._restart()
        self.columns = None

    def read(self) -> Chunk:
        """The rows appended since the last call (see the class documentation)."""
        lines, reset, missing = self._lines()
        chunk = Chunk(reset=reset, missing=missing)
        for number_, raw in lines:
            try:
                text = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                chunk.errors.append(f"{self.path.name} line {number_}: not UTF-8")
                continue
            if not text.strip():
                continue
            cells = next(csv.reader(io.StringIO(text)), [])
            if self.columns is None:
                self.columns = cells
                continue
            if len(cells) != len(self.columns):
                chunk.errors.append(
                    f"{self.path.name} line {number_}: {len(cells)} cells, header has "
                    f"{len(self.columns)}"
                )
                continue
            chunk.items.append({c: _cell(v) for c, v in zip(self.columns, cells, strict=True)})
        return chunk


T = TypeVar("T")


@dataclass
class Snapshot(Generic[T]):
    """What :meth:`FileSnapshot.read` found.

    :param value: The parsed document (``None`` when missing or unreadable).
    :param changed: The file changed (or appeared, or vanished) since the last call.
    :param error: Why it could not be read or parsed (``None`` when it was).
    :param missing: The file does not exist.
    """

    value: T | None
    changed: bool
    error: str | None = None
    missing: bool = False


class FileSnapshot(Generic[T]):
    """A whole small file, parsed again only when its size, modification time or inode
    changes.

    :param path: The file.
    :param parse: Turns the file's bytes into a value (raises on bad content).
    :param max_bytes: Larger files are refused with an error (default 64 MiB).
    """

    def __init__(
        self, path: str | Path, parse: Callable[[bytes], T], max_bytes: int = 64 << 20
    ) -> None:
        self.path = Path(path)
        self.parse = parse
        self.max_bytes = int(max_bytes)
        self._key: tuple[int, int, int] | None = None
        self._last: Snapshot[T] = Snapshot(None, False, None, True)

    def read(self) -> Snapshot[T]:
        """The current value (re-parsed only when the file changed)."""
        try:
            st = os.stat(self.path)
        except OSError:
            changed = not self._last.missing
            self._key = None
            self._last = Snapshot(None, False, None, True)
            return Snapshot(None, changed, None, True)
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if key == self._key:
            return Snapshot(self._last.value, False, self._last.error, False)
        self._key = key
        if st.st_size > self.max_bytes:
            self._last = Snapshot(None, False, f"{self.path.name}: {st.st_size} bytes, too big")
        else:
            try:
                value = self.parse(self.path.read_bytes())
                self._last = Snapshot(value, False)
            except Exception as err:  # any parse failure is shown, never raised
                self._last = Snapshot(None, False, f"{self.path.name}: {type(err).__name__}: {err}")
        return Snapshot(self._last.value, True, self._last.error, False)


def parse_json(data: bytes) -> Any:
    """A JSON document (``NaN``/``Infinity`` tokens accepted, as Python writes them)."""
    return json.loads(data.decode("utf-8"))


def parse_csv(data: bytes) -> list[dict[str, Any]]:
    """A CSV document with a header line, cells converted as by :class:`CsvTail`."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header is None:
        return []
    rows = []
    for n, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise ValueError(f"line {n}: {len(cells)} cells, header has {len(header)}")
        rows.append({c: _cell(v) for c, v in zip(header, cells, strict=True)})
    return rows


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All objects of a JSON Lines file and the problems with its lines (a torn last line
    is left out without a problem)."""
    tail = JsonlTail(path)
    items: list[dict[str, Any]] = []
    errors: list[str] = []
    while True:
        chunk = tail.read()
        if chunk.missing:
            return items, [f"{Path(path).name}: missing"]
        items += chunk.items
        errors += chunk.errors
        if not chunk.items and not chunk.errors:
            return items, errors


def first_record(path: str | Path, max_bytes: int = 1 << 16) -> dict[str, Any] | None:
    """The first line of a JSON Lines file as an object, or ``None`` (missing, empty, not
    yet complete, or not an object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(max_bytes)
    except OSError:
        return None
    line, newline, _ = head.partition(b"\n")
    if not newline:
        return None
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return item if isinstance(item, dict) else None


def iter_numbers(records: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    """``number(record[key])`` for each record (NaN where missing)."""
    return [number(r.get(key)) for r in records]
