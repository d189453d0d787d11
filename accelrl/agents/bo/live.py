"""The live progress file of a tuning session: one record per ingested step, as it happens.

:class:`SessionProgress` writes a session's ``progress.jsonl`` (kind ``tuning``, see
:mod:`accelrl.runfiles`): the ``start`` record (machine, variables with their limits and
units, objective, prior, acquisition, planned steps, initial setting) when it first sees the
session, then a ``step`` record (:func:`accelrl.runfiles.tuning_step_record`: setting,
result, best so far, the prior's calibration and fallback state, the trust region, ...) for
every row the session has ingested since, and the ``end`` record. Each record is flushed as
it is written, so ``accelrl dashboard`` shows the step at once and a crash loses nothing
already written.

It is called with the session, not from inside it: :class:`~accelrl.agents.bo.optimiser.
BOOptimiser` calls its ``observer`` after each step, and ``accelrl tune`` passes
:meth:`SessionProgress.update`, so the simulated and the machine path write the same file.

>>> progress = SessionProgress("runs/tune30", machine="sim:ares-ea", prior="physics",
...                            acquisition="logei", steps=75)  # doctest: +SKIP
>>> optimiser = BOOptimiser(observer=progress.update)  # doctest: +SKIP
>>> ...  # the session runs; each step appears in runs/tune30/progress.jsonl
>>> progress.end("completed", best_mae_m=1.2e-5)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelrl.runfiles import PROGRESS_FILE, ProgressLog, number, read_jsonl, tuning_step_record

if TYPE_CHECKING:
    from accelrl.agents.bo.session import TuningSession

__all__ = ["SessionProgress"]

_log = logging.getLogger(__name__)


def _start_fields(session: TuningSession) -> dict[str, Any]:
    """The problem part of the start record: variables, objective, initial setting (SI)."""
    p = session.problem
    return {
        "variables": [
            {"name": v.name, "low": v.low, "high": v.high, "max_step": v.max_step, "unit": v.unit}
            for v in p.variables
        ],
        "objective": p.objective.model_dump(),
        "constraints": [c.model_dump() for c in p.constraints],
        "initial": p.named(p.initial_vector),
    }


class SessionProgress:
    """Writes a tuning session's live ``progress.jsonl`` (see the module documentation).

    :param directory: The session folder.
    :param resume: Continue the progress file already there (``accelrl tune --resume``): a
        new ``start`` record is appended and the steps go on from the last one written
        (the resumed session's earlier rows are written only if the file lacks them).
    :param fsync_s: Longest time between fsyncs of step records [s] (each is flushed at once).
    :param meta: Further start-record fields: ``machine``, ``prior``, ``acquisition``,
        ``steps`` (planned), ``trial``, ``mode``, ...
    :raises FileExistsError: When the folder holds a progress file and not ``resume``
        (raised here, before the session starts).
    """

    def __init__(
        self,
        directory: str | Path,
        resume: bool = False,
        fsync_s: float = 2.0,
        **meta: Any,
    ) -> None:
        self.directory = Path(directory)
        self.resume = bool(resume)
        self.fsync_s = float(fsync_s)
        self.meta = dict(meta)
        path = self.directory / PROGRESS_FILE
        self.written = 0
        if path.exists():
            if not resume:
                raise FileExistsError(f"{path} exists: a new session needs a new folder")
            records, _ = read_jsonl(path)
            steps = [number(r.get("step")) for r in records if r.get("type") == "step"]
            self.written = int(max(steps)) + 1 if steps else 0
        self.log: ProgressLog | None = None
        self.failed: str | None = None

    def update(self, session: TuningSession) -> None:
        """Write the start record (the first time) and a step record for every row the
        session has ingested since the last call, with its diagnostics now.

        A failure to write (disk full, folder removed) is logged once and stops the live
        file; it never stops the session."""
        if self.failed is not None:
            return
        try:
            if self.log is None:
                self.log = ProgressLog(
                    self.directory, "tuning", fsync_s=self.fsync_s, append=self.resume,
                    **self.meta, **_start_fields(session),
                )  # fmt: skip
            rows = session.rows
            if self.written < len(rows):
                diagnostics = session.diagnostics()
                for row in rows[self.written :]:
                    self.log.step(tuning_step_record(row, diagnostics))
                self.written = len(rows)
        except OSError as err:
            self.failed = f"{type(err).__name__}: {err}"
            _log.warning("live progress file stopped: %s", self.failed)

    def end(self, status: str = "completed", **summary: Any) -> None:
        """Write the ``end`` record (``completed``, ``interrupted`` or ``failed``) and close;
        nothing when no step was ever written or the file is already closed."""
        if self.log is None or self.log.closed:
            return
        try:
            self.log.end(status, **summary)
        except OSError as err:
            _log.warning("live progress file: no end record (%s: %s)", type(err).__name__, err)

    def __enter__(self) -> SessionProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is None:
            self.end("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("interrupted")
        else:
            self.end("failed", error=f"{exc_type.__name__}: {exc}")
