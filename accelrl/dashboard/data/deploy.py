"""A deploy controller run (``run.jsonl`` of :mod:`accelrl.deploy.runlog`), followed live.

Each ``step`` record becomes a row in display units (beam errors in um, knobs in SI) with
the proposal (requested and safe setpoints), its size as a fraction of the knob's max step,
and the clipped knobs; clips, refusals, the abort, every rollback write and the end become
:class:`Event` rows. An optional ``screen`` field of a step (a frame in the run folder, see
:func:`accelrl.runfiles.save_screen_frame`) is kept as the latest frame.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelrl.dashboard.data.base import STALL_S, Follower, finite_or_nan, um
from accelrl.runfiles import FileSnapshot, JsonlTail, number, parse_json

RUN_FILE = "run.jsonl"
SUMMARY_FILE = "summary.json"
#: Beam observation names when the start record does not name them.
DEFAULT_BEAM = ("mu_x", "sigma_x", "mu_y", "sigma_y")


@dataclass(frozen=True)
class Event:
    """A safety-relevant event of a run.

    :param step: Step it belongs to (rollback writes: the abort's step).
    :param time: Wall-clock time [s since the epoch] (NaN when unknown).
    :param kind: ``start``, ``clip``, ``refused``, ``stopped``, ``target``, ``abort``,
        ``rollback``, ``end``.
    :param severity: ``info``, ``warning`` or ``error``.
    :param text: What happened, for people.
    """

    step: int
    time: float
    kind: str
    severity: str
    text: str


def _dict(record: dict[str, Any], key: str) -> dict[str, Any]:
    """``record[key]`` when it is a mapping, else empty (a damaged record shows gaps)."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def _int(value: Any, default: int) -> int:
    """``value`` as an integer, ``default`` when it is not a finite number."""
    v = number(value)
    return int(v) if math.isfinite(v) else default


def _fmt(value: Any, unit: str = "") -> str:
    v = number(value)
    text = f"{v:.5g}" if math.isfinite(v) else str(value)
    return f"{text} {unit}".rstrip()


class DeployFollower(Follower):
    """Follows a deploy run folder (see the module documentation).

    :param path: The run folder (holding ``run.jsonl``).
    :param min_interval_s: Least time between two reads of the files [s].
    """

    def __init__(self, path: Path, min_interval_s: float = 0.1) -> None:
        super().__init__(path, min_interval_s)
        self.tail = JsonlTail(self.path / RUN_FILE)
        self.summary_file: FileSnapshot[Any] = FileSnapshot(self.path / SUMMARY_FILE, parse_json)
        self._reset_state()

    def _reset_state(self) -> None:
        self.start: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.rollbacks: list[dict[str, Any]] = []
        self.events: list[Event] = []
        self.abort: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.screen: dict[str, Any] | None = None
        self.last_step: dict[str, Any] | None = None
        self.clips = 0
        self.writes = 0
        self.last_record_time = math.nan

    # ------------------------------------------------------------------ names
    @property
    def knob_names(self) -> list[str]:
        """Knobs, in the run's order."""
        if self.start and self.start.get("knob_names"):
            return [str(n) for n in self.start["knob_names"]]
        if self.last_step and isinstance(self.last_step.get("knobs"), dict):
            return list(self.last_step["knobs"])
        return []

    @property
    def beam_names(self) -> list[str]:
        """Observed beam parameters, in the run's order."""
        if self.start and self.start.get("observation_names"):
            return [str(n) for n in self.start["observation_names"]]
        return list(DEFAULT_BEAM)

    @property
    def limits(self) -> dict[str, dict[str, Any]]:
        """Knob -> ``low``, ``high``, ``max_step``, ``tolerance``, ``unit`` (SI)."""
        limits = (self.start or {}).get("limits")
        return limits if isinstance(limits, dict) else {}

    @property
    def mode(self) -> str:
        """``shadow``, ``confirm``, ``auto`` (or ``?`` before the start record)."""
        return str((self.start or {}).get("mode", "?"))

    @property
    def thresholds_um(self) -> list[float]:
        """Target-reached thresholds [um], in beam order (empty when unknown)."""
        values = (self.start or {}).get("thresholds") or []
        return [um(number(v)) for v in values] if isinstance(values, list) else []

    @property
    def status(self) -> str:
        """``waiting`` (no record yet), ``running``, ``stalled`` (no record for a while and no
        end), ``rolling back`` (aborted, ramp not logged yet), ``aborted`` or ``finished``."""
        if self.end is not None:
            return "aborted" if self.abort is not None else "finished"
        if self.start is None and not self.rows:
            return "waiting"
        if self.abort is not None:
            return "rolling back"
        if time.time() - self.last_change > STALL_S:
            return "stalled"
        return "running"

    # ------------------------------------------------------------------ reading
    def _poll(self) -> None:
        chunk = self.tail.read()
        if chunk.reset:
            self._reset_state()
            self.restart()
            self.problem(f"{RUN_FILE} was truncated or replaced: read again from its start")
        if chunk.missing:
            if self.start is not None:
                self.problem(f"{RUN_FILE} is gone")
            return
        for message in chunk.errors:
            self.problem(f"{message} (skipped)")
        for record in chunk.items:
            self._add(record)
        summary = self.summary_file.read()
        if summary.changed and summary.error:
            self.problem(summary.error)
        if chunk.items or summary.changed:
            self.changed()

    def _add(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        t = number(record.get("time"))
        if math.isfinite(t):
            self.last_record_time = t
        if kind == "start":
            self.start = record
            source = record.get("source", "?")
            self.events.append(
                Event(
                    -1,
                    t,
                    "start",
                    "info",
                    f"run started: {record.get('mode', '?')} mode on {record.get('machine', '?')}"
                    f" ({record.get('transport', '?')}), source {source}",
                )
            )
        elif kind == "step":
            self._add_step(record, t)
        elif kind == "rollback":
            self._add_rollback(record, t)
        elif kind == "end":
            self._add_end(record, t)
        else:
            self.problem(f"{RUN_FILE}: unknown record type {kind!r} (ignored)")

    def _add_step(self, record: dict[str, Any], t: float) -> None:
        step = _int(record.get("step"), -1)
        self.last_step = record
        limits = self.limits
        knobs, safe = _dict(record, "knobs"), _dict(record, "safe_setpoints")
        req, error = _dict(record, "requested"), _dict(record, "error")
        decision = str(record.get("decision", ""))
        row: dict[str, Any] = {"step": step, "time": t, "decision": decision}
        errs = []
        for name in self.beam_names:
            e = number(error.get(name))
            errs.append(abs(e))
            row[f"err_{name}"] = finite_or_nan(um(e))
        row["mae_um"] = finite_or_nan(um(sum(errs) / len(errs))) if errs else math.nan
        clips = record.get("clips") if isinstance(record.get("clips"), list) else []
        clipped = {str(c.get("knob")) for c in clips if isinstance(c, dict)}
        for k in self.knob_names:
            value, proposal = number(knobs.get(k)), number(safe.get(k))
            row[f"knob_{k}"] = finite_or_nan(value)
            row[f"safe_{k}"] = finite_or_nan(proposal)
            row[f"req_{k}"] = finite_or_nan(number(req.get(k)))
            max_step = number(limits.get(k, {}).get("max_step"))
            row[f"frac_{k}"] = (
                finite_or_nan(abs(proposal - value) / max_step) if max_step > 0 else math.nan
            )
            row[f"clip_{k}"] = row[f"safe_{k}"] if k in clipped else math.nan
        self.rows.append(row)
        if isinstance(record.get("writes"), dict) and record["writes"]:
            self.writes += 1
        for c in clips:
            if not isinstance(c, dict):
                continue
            self.clips += 1
            unit = limits.get(str(c.get("knob")), {}).get("unit", "")
            self.events.append(
                Event(
                    step,
                    t,
                    "clip",
                    "warning",
                    f"{c.get('knob')} clipped by {c.get('rule')}: requested "
                    f"{_fmt(c.get('requested'), unit)} -> applied {_fmt(c.get('applied'), unit)}",
                )
            )
        if decision == "refused":
            self.events.append(Event(step, t, "refused", "warning", "operator refused the write"))
        elif decision == "stopped":
            self.events.append(Event(step, t, "stopped", "info", "operator stopped the run"))
        elif decision == "target_reached":
            self.events.append(Event(step, t, "target", "info", "target reached"))
        elif decision == "abort":
            abort = _dict(record, "abort")
            self.abort = {
                "step": step,
                "reason": str(abort.get("reason", "unknown")),
                "detail": str(abort.get("detail", "")),
                "intended": record.get("intended"),
            }
            self.events.append(
                Event(
                    step,
                    t,
                    "abort",
                    "error",
                    f"ABORT: {self.abort['reason']}: {self.abort['detail']}",
                )
            )
        screen = record.get("screen")
        if isinstance(screen, dict) and isinstance(screen.get("file"), str):
            self.screen = {**screen, "step": step}

    def _add_rollback(self, record: dict[str, Any], t: float) -> None:
        setpoints = _dict(record, "setpoints")
        ok = bool(record.get("ok"))
        index = _int(record.get("index"), len(self.rollbacks))
        row: dict[str, Any] = {"index": index, "ok": ok, "time": t}
        for k in self.knob_names:
            row[f"set_{k}"] = finite_or_nan(number(setpoints.get(k)))
        self.rollbacks.append(row)
        step = self.abort["step"] if self.abort else (self.rows[-1]["step"] if self.rows else -1)
        changes = ", ".join(
            f"{k} {_fmt(v, self.limits.get(k, {}).get('unit', ''))}" for k, v in setpoints.items()
        )
        attempt = _int(record.get("attempt"), 0)
        text = f"rollback write {index + 1}{f' (retry {attempt})' if attempt else ''}: "
        text += f"{changes} ok" if ok else f"FAILED: {record.get('error', '')}"
        self.events.append(Event(step, t, "rollback", "warning" if ok else "error", text))

    def _add_end(self, record: dict[str, Any], t: float) -> None:
        self.end = record
        step = self.rows[-1]["step"] if self.rows else -1
        reason = record.get("reason", "?")
        self.events.append(
            Event(step, t, "end", "error" if reason == "abort" else "info", f"run ended: {reason}")
        )
        rollback = record.get("rollback")
        if isinstance(rollback, dict):
            complete = bool(rollback.get("complete"))
            detail = rollback.get("detail") or ""
            self.events.append(
                Event(
                    step,
                    t,
                    "rollback",
                    "info" if complete else "error",
                    f"rollback {'complete' if complete else 'INCOMPLETE'} after "
                    f"{rollback.get('writes', 0)} writes"
                    + ("" if rollback.get("verified", True) else " (not all verified)")
                    + (f": {detail}" if detail else ""),
                )
            )

    # ------------------------------------------------------------------ views
    def rollback_positions(self) -> list[float]:
        """x positions of the rollback writes: spread between the abort's step and the next."""
        x0 = self.abort["step"] if self.abort else (self.rows[-1]["step"] if self.rows else 0)
        n = len(self.rollbacks)
        return [x0 + (i + 1) / (n + 1) for i in range(n)]
