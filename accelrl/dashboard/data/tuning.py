"""A BO tuning session, followed live.

Live: the session's ``progress.jsonl`` (kind ``tuning``: one ``step`` record per ingested
result, :func:`accelrl.runfiles.tuning_step_record`; a resumed session appends a new ``start``
record and goes on with the step numbers). Saved sessions (``accelrl tune``'s
``problem.json``, ``session.json``, ``data.csv``, ``summary.json``) are read too, and are
all there is for a session that was saved without a progress file. Each step becomes a row:
the objective (MAE in um), the best safe and feasible objective so far, every variable
(SI and as a fraction of its range), and the prior's prediction against the observed value
(its calibration); the latest diagnostics tell whether the prior is used or has fallen back.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from accelrl.dashboard.data.base import STALL_S, Follower, finite_or_nan
from accelrl.runfiles import (
    PROGRESS_FILE,
    FileSnapshot,
    JsonlTail,
    number,
    parse_csv,
    parse_json,
)


class TuningFollower(Follower):
    """Follows a tuning-session folder (see the module documentation).

    :param path: The session folder.
    :param min_interval_s: Least time between two reads of the files [s].
    """

    def __init__(self, path: Path, min_interval_s: float = 0.1) -> None:
        super().__init__(path, min_interval_s)
        self.tail = JsonlTail(self.path / PROGRESS_FILE)
        self.files: dict[str, FileSnapshot[Any]] = {
            "problem": FileSnapshot(self.path / "problem.json", parse_json),
            "session": FileSnapshot(self.path / "session.json", parse_json),
            "summary": FileSnapshot(self.path / "summary.json", parse_json),
            "data": FileSnapshot(self.path / "data.csv", parse_csv),
        }
        self.docs: dict[str, Any] = {}
        self._reset_state()

    def _reset_state(self) -> None:
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.diagnostics: dict[str, Any] = {}
        self.live = False  # rows come from progress.jsonl
        self._best: float | None = None

    # ------------------------------------------------------------------ problem
    @property
    def variables(self) -> list[dict[str, Any]]:
        """``name, low, high, max_step, unit`` of every variable."""
        for doc in ((self.start or {}), self.docs.get("problem") or {}):
            values = doc.get("variables")
            if isinstance(values, list) and values:
                return [v for v in values if isinstance(v, dict) and "name" in v]
        if self.rows:
            return [{"name": k[4:]} for k in self.rows[-1] if k.startswith("set_")]
        return []

    @property
    def objective(self) -> dict[str, Any]:
        """The objective: ``name``, ``minimise``, ``log``, ``floor`` (default MAE)."""
        for doc in ((self.start or {}), self.docs.get("problem") or {}):
            obj = doc.get("objective")
            if isinstance(obj, dict) and "name" in obj:
                return obj
        return {"name": "mae", "minimise": True, "log": True, "floor": 1e-9}

    @property
    def scale(self) -> tuple[float, str]:
        """Display scale and unit of the objective (MAE: um)."""
        return (1e6, "um") if self.objective.get("name") == "mae" else (1.0, "")

    def modelled(self, value: float) -> float:
        """The objective as the prior predicts it (natural log when the objective is
        logged, floored)."""
        obj = self.objective
        if not math.isfinite(value):
            return math.nan
        if obj.get("log"):
            floor = number(obj.get("floor"))
            value = max(value, floor if math.isfinite(floor) else 1e-300)
            return math.log(value) if value > 0 else math.nan
        return value

    @property
    def status(self) -> str:
        """``waiting``, ``running``, ``stalled``, ``finished`` (end record or saved session)
        or ``failed``/``interrupted`` (from the end record)."""
        if self.end is not None:
            status = str(self.end.get("status", "completed"))
            return "finished" if status == "completed" else status
        if self.live:
            return "stalled" if time.time() - self.last_change > STALL_S else "running"
        if self.docs.get("summary") is not None or self.docs.get("session") is not None:
            return "finished"
        return "waiting"

    @property
    def deploy_run(self) -> Path | None:
        """The controller run of a session on a machine config (``run/``), if any."""
        path = self.path / "run" / "run.jsonl"
        return path.parent if path.is_file() else None

    # ------------------------------------------------------------------ reading
    def _poll(self) -> None:
        new = False
        changed_docs = set()
        for key, snap in self.files.items():
            s = snap.read()
            if s.changed:
                new = True
                changed_docs.add(key)
                if s.error:
                    self.problem(s.error)
                self.docs[key] = s.value
        chunk = self.tail.read()
        if chunk.reset:
            self._reset_state()
            self.restart()
            self.problem(f"{PROGRESS_FILE} was truncated or replaced: read again from its start")
        for message in chunk.errors:
            self.problem(f"{message} (skipped)")
        for record in chunk.items:
            new = True
            self._add(record)
        if not self.live and changed_docs & {"data", "problem"}:
            self._from_table(self.docs.get("data") or [])
        diag = (self.docs.get("session") or {}).get("diagnostics")
        if not self.live and isinstance(diag, dict):
            self.diagnostics = diag
        if new:
            self.changed()

    def _add(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "start":
            if self.rows and not self.live:  # a saved table was shown: the live file wins
                self._reset_state()
                self.restart()
            self.start = record
            self.end = None  # a resumed session appends a new start: it runs again
            self.live = True
        elif kind == "step":
            if not self.live:
                self._reset_state()
                self.restart()
                self.live = True
            diag = record.get("diagnostics")
            if isinstance(diag, dict):
                self.diagnostics = {**diag, "best": record.get("best")}
            setting = record.get("setting") if isinstance(record.get("setting"), dict) else {}
            result = record.get("result") if isinstance(record.get("result"), dict) else {}
            self._row(
                number(record.get("step")),
                setting,
                result,
                record.get("safe"),
                record.get("feasible"),
                number(record.get("prior_prediction")),
                diag if isinstance(diag, dict) else {},
            )
        elif kind == "end":
            self.end = record
        elif kind in ("iteration", "evaluation"):
            self.problem(f"{PROGRESS_FILE}: a {kind} record in a tuning session (ignored)")

    def _from_table(self, table: list[dict[str, Any]]) -> None:
        """Rows of a saved session's ``data.csv`` (rebuilt when it changes)."""
        if self.rows:
            self.rows = []
            self._best = None
            self.restart()
        for r in table:
            setting = {k[8:]: v for k, v in r.items() if k.startswith("setting.")}
            result = {k[7:]: v for k, v in r.items() if k.startswith("result.")}
            self._row(
                number(r.get("step")),
                setting,
                result,
                r.get("safe"),
                r.get("feasible"),
                number(r.get("prior_prediction")),
            )

    def _row(
        self,
        step: float,
        setting: dict[str, Any],
        result: dict[str, Any],
        safe: Any,
        feasible: Any,
        prediction: float,
        diagnostics: dict[str, Any] | None = None,
    ) -> None:
        obj = self.objective
        scale, _ = self.scale
        value = number(result.get(obj.get("name", "mae")))
        ok = safe in (True, "True", 1.0) and feasible in (True, "True", 1.0)
        if ok and math.isfinite(value):
            minimise = bool(obj.get("minimise", True))
            if self._best is None or (value < self._best if minimise else value > self._best):
                self._best = value
        best = math.nan if self._best is None else self._best
        row: dict[str, Any] = {
            "step": step if math.isfinite(step) else float(len(self.rows)),
            "objective": finite_or_nan(value * scale),
            "best": finite_or_nan(best * scale),
            "safe": bool(ok),
            "observed_model": self.modelled(value),
            "prior_prediction": finite_or_nan(prediction),
        }
        diag = diagnostics or {}
        row["prior_correlation"] = finite_or_nan(number(diag.get("prior_correlation")))
        row["prior_weight"] = finite_or_nan(number(diag.get("prior_weight")))
        row["fallback"] = bool(diag.get("prior_fallback", False))
        for v in self.variables:
            name = str(v["name"])
            x = number(setting.get(name))
            low, high = number(v.get("low")), number(v.get("high"))
            row[f"set_{name}"] = finite_or_nan(x)
            row[f"norm_{name}"] = (
                finite_or_nan((x - low) / (high - low)) if high > low else math.nan
            )
        self.rows.append(row)
