"""An evaluation run (:meth:`accelrl.agents.evaluation.EvaluationResult.save`), read when its
files appear or change.

Files: ``config.json`` (optimisers, trials, actuators, screen), ``summary.json`` (medians and
IQRs per optimiser), ``trial_metrics.csv`` (one row per optimiser and trial) and
``records.parquet`` (one row per optimiser, trial and step). An evaluation is written at its
end, so the page shows it complete; a half-written file is reported and read again when it
changes.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelrl.dashboard.data.base import Follower
from accelrl.runfiles import FileSnapshot, parse_csv, parse_json

BEAM: tuple[str, ...] = ("mu_x", "sigma_x", "mu_y", "sigma_y")
#: Smallest MAE drawn on log axes [um] (as the evaluation report).
FLOOR_UM = 0.1


def _parquet(data: bytes) -> dict[str, np.ndarray]:
    """The columns of a Parquet file as numpy arrays."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    return {
        name: np.asarray(table[name].to_numpy(zero_copy_only=False)) for name in table.column_names
    }


def _quantiles(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """25th, 50th and 75th percentile over axis 0, ignoring NaN (all-NaN columns: NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanquantile(values, [0.25, 0.5, 0.75], axis=0)
    return q[0], q[1], q[2]


@dataclass
class OptimiserCurves:
    """One optimiser of one evaluation.

    :param label: Its label.
    :param trials: Trial indices ``[N]``.
    :param sigma_pos: Trials whose target sizes are both > 0 ``[N]``.
    :param mae_um: MAE per trial and step ``[N, S + 1]`` [um] (a failed trial's last value
        carried forward).
    :param best_um: Best-so-far MAE ``[N, S + 1]`` [um].
    """

    label: str
    trials: np.ndarray
    sigma_pos: np.ndarray
    mae_um: np.ndarray
    best_um: np.ndarray

    def band(self, which: str, subset: str) -> dict[str, np.ndarray]:
        """``step``, ``q25``, ``median``, ``q75`` [um, floored at :data:`FLOOR_UM`] of
        ``which`` (``mae`` or ``best``) over ``subset`` (``all`` or ``sigma_pos``)."""
        values = self.mae_um if which == "mae" else self.best_um
        if subset == "sigma_pos":
            values = values[self.sigma_pos]
        steps = np.arange(values.shape[1], dtype=float)
        if values.shape[0] == 0:
            nan = np.full(steps.shape, np.nan)
            return {"step": steps, "q25": nan, "median": nan, "q75": nan}
        q25, q50, q75 = _quantiles(np.clip(values, FLOOR_UM, None))
        return {"step": steps, "q25": q25, "median": q50, "q75": q75}


class EvaluationFollower(Follower):
    """Follows an evaluation folder (see the module documentation).

    :param path: The evaluation folder.
    :param min_interval_s: Least time between two reads of the files [s].
    """

    def __init__(self, path: Path, min_interval_s: float = 0.5) -> None:
        super().__init__(path, min_interval_s)
        self.files: dict[str, FileSnapshot[Any]] = {
            "config": FileSnapshot(self.path / "config.json", parse_json),
            "summary": FileSnapshot(self.path / "summary.json", parse_json),
            "trials": FileSnapshot(self.path / "trial_metrics.csv", parse_csv),
            "records": FileSnapshot(self.path / "records.parquet", _parquet, 1 << 30),
        }
        self.docs: dict[str, Any] = {}
        self.curves: dict[str, OptimiserCurves] = {}

    # ------------------------------------------------------------------ views
    @property
    def config(self) -> dict[str, Any]:
        """``config.json`` (empty until readable)."""
        value = self.docs.get("config")
        return value if isinstance(value, dict) else {}

    @property
    def optimisers(self) -> list[str]:
        """Optimiser labels, in evaluation order."""
        labels = [o.get("label") for o in self.config.get("optimisers", []) if isinstance(o, dict)]
        return [str(x) for x in labels if x is not None] or list(self.curves)

    @property
    def actuators(self) -> list[dict[str, Any]]:
        """``name, unit, low, high`` of every actuator."""
        return [a for a in self.config.get("actuators", []) if isinstance(a, dict) and "name" in a]

    @property
    def half_extent_m(self) -> tuple[float, float] | None:
        """Half width and height of the screen [m], when the config names them."""
        half = (self.config.get("screen") or {}).get("half_extent_m")
        if isinstance(half, list) and len(half) == 2:
            return float(half[0]), float(half[1])
        return None

    @property
    def status(self) -> str:
        """``complete`` (records readable), ``partial`` (some files only) or ``waiting``."""
        if self.curves:
            return "complete"
        return "partial" if any(v is not None for v in self.docs.values()) else "waiting"

    def trial_rows(self, label: str) -> list[dict[str, Any]]:
        """Rows of ``trial_metrics.csv`` of one optimiser."""
        rows = self.docs.get("trials") or []
        return [r for r in rows if str(r.get("optimiser")) == label]

    def episode(self, label: str, trial: int) -> dict[str, np.ndarray] | None:
        """Every record column of one optimiser's trial, by step (``None`` if absent)."""
        records = self.docs.get("records")
        if not records or "optimiser" not in records:
            return None
        sel = (records["optimiser"].astype(str) == label) & (records["trial"] == int(trial))
        if not sel.any():
            return None
        order = np.argsort(records["step"][sel], kind="stable")
        return {k: v[sel][order] for k, v in records.items()}

    # ------------------------------------------------------------------ reading
    def _poll(self) -> None:
        changed = False
        for key, snap in self.files.items():
            s = snap.read()
            if not s.changed:
                continue
            changed = True
            if s.error:
                self.problem(f"{s.error} (read again when it changes)")
            self.docs[key] = s.value
        if changed:
            self._build()
            self.restart()
            self.changed()

    def _build(self) -> None:
        self.curves = {}
        records = self.docs.get("records")
        if not records:
            return
        needed = {"optimiser", "trial", "step", "mae"}
        if not needed <= set(records):
            self.problem(f"records.parquet lacks columns {sorted(needed - set(records))}")
            return
        labels = self.optimisers or list(dict.fromkeys(records["optimiser"].astype(str)))
        n_steps = int(records["step"].max()) + 1 if records["step"].size else 1
        max_steps = self.config.get("max_steps")
        if isinstance(max_steps, int):
            n_steps = max(n_steps, max_steps + 1)
        opt = records["optimiser"].astype(str)
        for label in labels:
            sel = opt == label
            trials = np.unique(records["trial"][sel])
            row_of = {int(t): i for i, t in enumerate(trials)}
            mae = np.full((len(trials), n_steps), np.nan)
            rows = [row_of[int(t)] for t in records["trial"][sel]]
            mae[rows, records["step"][sel].astype(int)] = records["mae"][sel] * 1e6
            for i in range(mae.shape[0]):  # a failed trial keeps its last settings
                last = np.flatnonzero(np.isfinite(mae[i]))
                if last.size and last[-1] < n_steps - 1:
                    mae[i, last[-1] + 1 :] = mae[i, last[-1]]
            with np.errstate(invalid="ignore"):
                best = np.fmin.accumulate(mae, axis=1)
            sigma_pos = np.ones(len(trials), dtype=bool)
            if "target_sigma_x" in records and "target_sigma_y" in records:
                first = {}
                for t, sx, sy in zip(
                    records["trial"][sel],
                    records["target_sigma_x"][sel],
                    records["target_sigma_y"][sel],
                    strict=True,
                ):
                    first.setdefault(int(t), bool(sx > 0 and sy > 0))
                sigma_pos = np.array([first[int(t)] for t in trials], dtype=bool)
            self.curves[label] = OptimiserCurves(label, trials, sigma_pos, mae, best)


def fmt_um(value: Any) -> str:
    """A MAE in um for tables (``-`` when missing)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(v):
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.0f}" if v >= 1000 else f"{v:.1f}"
