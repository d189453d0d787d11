"""A training run (APG or Stable-Baselines3), followed live.

Read as they grow:

* ``progress.jsonl`` (kind ``apg`` or ``sb3``, :class:`accelrl.runfiles.ProgressLog`):
  ``iteration`` records (the learning curve: loss, learning rate, gradient norm) and
  ``evaluation`` records (held-out evaluation summaries);
* ``logs/progress.csv``: Stable-Baselines3's CSV logger (rewritten whole when a new key
  appears; then read again);
* ``episodes.csv``: training episodes ``timesteps, return, length``.

Read when they change: ``evaluations.json`` (the evaluations of a finished SB3 run, used when
the progress file has none) and ``train_summary.json`` (the run finished).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from accelrl.dashboard.data.base import STALL_S, Follower, finite_or_nan
from accelrl.runfiles import (
    PROGRESS_FILE,
    CsvTail,
    FileSnapshot,
    JsonlTail,
    number,
    parse_json,
)

#: SB3 logger keys the page plots, when present: (key, label).
SB3_CURVES: tuple[tuple[str, str], ...] = (
    ("rollout/ep_rew_mean", "mean episode return"),
    ("train/actor_loss", "actor loss"),
    ("train/critic_loss", "critic loss"),
    ("train/loss", "loss"),
    ("train/value_loss", "value loss"),
    ("train/policy_gradient_loss", "policy-gradient loss"),
    ("train/ent_coef", "entropy coefficient"),
)
#: Columns of an evaluation row.
EVAL_KEYS: tuple[str, ...] = (
    "median_best_mae_um",
    "median_final_mae_um",
    "iqr_low_um",
    "iqr_high_um",
    "fraction_on_target",
    "median_steps_to_target",
)


def evaluation_row(record: dict[str, Any], x_key: str) -> dict[str, float]:
    """An evaluation summary as a row: ``x`` (iteration or timesteps) and :data:`EVAL_KEYS`."""
    iqr = record.get("iqr_best_mae_um")
    low, high = (iqr[0], iqr[1]) if isinstance(iqr, list) and len(iqr) == 2 else (None, None)
    row = {"x": number(record.get(x_key))}
    for key in EVAL_KEYS:
        row[key] = finite_or_nan(number(record.get(key)))
    if math.isnan(row["fraction_on_target"]):  # the evaluation protocol's name for it
        row["fraction_on_target"] = finite_or_nan(number(record.get("fraction_reached_target")))
    row["iqr_low_um"], row["iqr_high_um"] = finite_or_nan(number(low)), finite_or_nan(number(high))
    return row


class TrainingFollower(Follower):
    """Follows a training-run folder (see the module documentation).

    :param path: The run folder.
    :param min_interval_s: Least time between two reads of the files [s].
    """

    def __init__(self, path: Path, min_interval_s: float = 0.1) -> None:
        super().__init__(path, min_interval_s)
        self.progress_tail = JsonlTail(self.path / PROGRESS_FILE)
        self.sb3_tail = CsvTail(self.path / "logs" / "progress.csv")
        self.episode_tail = CsvTail(self.path / "episodes.csv")
        self.evaluations_file: FileSnapshot[Any] = FileSnapshot(
            self.path / "evaluations.json", parse_json
        )
        self.summary_file: FileSnapshot[Any] = FileSnapshot(
            self.path / "train_summary.json", parse_json
        )
        self.summary: dict[str, Any] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.iterations: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []
        self.live_evaluations = False
        self.sb3_rows: list[dict[str, Any]] = []
        self.episodes: list[dict[str, float]] = []

    @property
    def trainer(self) -> str:
        """``apg``, ``sb3`` or ``?``."""
        if self.start is not None:
            return str(self.start.get("kind", "?"))
        if self.sb3_rows or self.summary is not None or self.episodes:
            return "sb3"
        return "?"

    @property
    def x_key(self) -> str:
        """What the learning curves are plotted against: ``iteration`` or ``timesteps``."""
        return "iteration" if self.trainer == "apg" else "timesteps"

    @property
    def total(self) -> float:
        """Planned iterations (APG) or timesteps (SB3), NaN when unknown."""
        start = self.start or {}
        for key in ("iterations", "total_timesteps"):
            if key in start:
                return number(start[key])
        return math.nan

    @property
    def done(self) -> float:
        """Iterations or timesteps done so far."""
        if self.trainer == "apg":
            return number(self.iterations[-1]["iteration"]) + 1 if self.iterations else 0.0
        # SB3: the furthest of what its files say (the logger dumps only now and then)
        values = [number((self.summary or {}).get("timesteps")),
                  number((self.end or {}).get("timesteps"))]  # fmt: skip
        if self.sb3_rows:
            values.append(number(self.sb3_rows[-1].get("time/total_timesteps")))
        if self.episodes:
            values.append(self.episodes[-1]["timesteps"])
        if self.live_evaluations and self.evaluations:
            values.append(self.evaluations[-1]["x"])
        finite = [v for v in values if math.isfinite(v)]
        return max(finite) if finite else math.nan

    @property
    def status(self) -> str:
        """``waiting``, ``running``, ``stalled``, ``finished``, ``failed`` or ``interrupted``."""
        if self.end is not None:
            status = str(self.end.get("status", "completed"))
            return "finished" if status == "completed" else status
        if self.summary is not None:
            return "finished"
        if not (self.start or self.sb3_rows or self.episodes):
            return "waiting"
        return "stalled" if time.time() - self.last_change > STALL_S else "running"

    def _poll(self) -> None:
        new = False
        chunk = self.progress_tail.read()
        if chunk.reset:
            self.start, self.end, self.iterations = None, None, []
            if self.live_evaluations:
                self.evaluations, self.live_evaluations = [], False
            self.restart()
            self.problem(f"{PROGRESS_FILE} was truncated or replaced: read again from its start")
        for message in chunk.errors:
            self.problem(f"{message} (skipped)")
        for record in chunk.items:
            new = True
            self._add(record)
        sb3 = self.sb3_tail.read()
        if sb3.reset:  # SB3 rewrites its CSV when a new key appears
            self.sb3_rows = []
            self.restart()
        for message in sb3.errors:
            self.problem(f"logs/{message} (skipped)")
        if sb3.items:
            new = True
            self.sb3_rows += sb3.items
        episodes = self.episode_tail.read()
        if episodes.reset:
            self.episodes = []
            self.restart()
        for message in episodes.errors:
            self.problem(f"{message} (skipped)")
        for row in episodes.items:
            new = True
            self.episodes.append({k: number(row.get(k)) for k in ("timesteps", "return", "length")})
        evaluations = self.evaluations_file.read()
        if evaluations.changed:
            new = True
            if evaluations.error:
                self.problem(evaluations.error)
            elif isinstance(evaluations.value, list) and not self.live_evaluations:
                if self.evaluations:
                    self.restart()
                self.evaluations = [
                    evaluation_row(e, "timesteps") for e in evaluations.value if isinstance(e, dict)
                ]
        summary = self.summary_file.read()
        if summary.changed:
            new = True
            if summary.error:
                self.problem(summary.error)
            self.summary = summary.value if isinstance(summary.value, dict) else None
        if new:
            self.changed()

    def _add(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "start":
            self.start = record
        elif kind == "iteration":
            row = {"iteration": number(record.get("iteration", len(self.iterations)))}
            for key in ("loss", "learning_rate", "grad_norm", "wall_s", "timesteps"):
                row[key] = finite_or_nan(number(record.get(key)))
            self.iterations.append(row)
        elif kind == "evaluation":
            if not self.live_evaluations:
                if self.evaluations:
                    self.restart()
                self.evaluations, self.live_evaluations = [], True
            self.evaluations.append(evaluation_row(record, self.x_key))
        elif kind == "end":
            self.end = record
        elif kind == "step":
            self.problem(f"{PROGRESS_FILE}: a step record in a training run (ignored)")
