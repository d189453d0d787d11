"""The result of an evaluation: records, per-trial metrics, summaries and their files.

:class:`EvaluationResult` holds one row per optimiser, trial and step (``records``), one row
per optimiser and trial (``trials``, the metrics of :mod:`accelrl.agents.evaluation.metrics`)
and the summaries over all trials and the ``sigma_pos`` subset; :meth:`EvaluationResult.save`
writes ``records.parquet``, ``config.json``, ``trial_metrics.csv`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from accelrl.agents.evaluation.metrics import (
    SUBSETS,
    Summary,
    TrialMetrics,
    sigma_pos,
    summarise_subsets,
    trial_metrics,
)
from accelrl.names import TRANSVERSE

#: Beam parameter names, in the order of readings and targets.
BEAM_KEYS: tuple[str, ...] = TRANSVERSE
#: Version of the files written by :meth:`EvaluationResult.save`.
FORMAT_VERSION = 1
#: What an evaluation writes into its output folder (glob patterns): the result files, the
#: report and its figures, and the parts of a run in progress. ``--force`` removes these.
OUTPUT_FILES: tuple[str, ...] = (
    "records.parquet",
    "config.json",
    "trial_metrics.csv",
    "summary.json",
    "breakdown.json",
    "report.md",
    "*.png",
    "parts",
)


# --------------------------------------------------------------------------- result
def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _summary_entry(s: Summary, n_failed: int, ask_ms: float) -> dict[str, Any]:
    um = 1e6
    q = _finite_or_none
    return {
        "n_trials": s.n,
        "n_failed": n_failed,
        "median_best_mae_um": q(s.best_mae.median * um),
        "iqr_best_mae_um": [q(s.best_mae.q25 * um), q(s.best_mae.q75 * um)],
        "median_final_mae_um": q(s.final_mae.median * um),
        "iqr_final_mae_um": [q(s.final_mae.q25 * um), q(s.final_mae.q75 * um)],
        "median_steps_to_target": q(s.steps_to_target.median),
        "iqr_steps_to_target": [q(s.steps_to_target.q25), q(s.steps_to_target.q75)],
        "fraction_reached_target": q(s.fraction_reached),
        "median_steps_to_convergence": q(s.steps_to_convergence.median),
        "iqr_steps_to_convergence": [
            q(s.steps_to_convergence.q25),
            q(s.steps_to_convergence.q75),
        ],
        "median_ask_time_ms": q(ask_ms),
    }


@dataclass
class EvaluationResult:
    """Records, per-trial metrics, summaries and config of an evaluation (SI units).

    :param records: One row per optimiser, trial and step (step 0 = after the reset):
        ``optimiser, trial, step, setting_<ACTUATOR>..., beam_<p>, reading_<p>, target_<p>``
        (``p`` in mu_x, sigma_x, mu_y, sigma_y) [m], ``mae`` [m] (true beam), ``reward``
        (NaN at step 0), ``on_screen``, ``clipped`` (the answer was outside the limits),
        ``ask_time_s`` (wall time of the ``ask`` that produced the step's settings, NaN at 0).
        Units are in each field's metadata.
    :param trials: One row per optimiser and trial: target, ``sigma_pos``, the metrics of
        :class:`~accelrl.agents.evaluation.metrics.TrialMetrics` [m, steps], ``final_on_screen``,
        ``failed``/``error`` ("" when none), ``reset_time_s``, ``ask_time_mean_s``,
        ``ask_time_max_s``, ``wall_s`` and the trial ``seed``.
    :param summaries: ``{optimiser: {"all" | "sigma_pos": Summary}}`` (SI).
    :param config: Run configuration and provenance (JSON-serialisable); ``status`` is
        ``"partial"`` for the finished trials of an interrupted run (``trials_done`` counts
        them per optimiser), ``"complete"`` otherwise.
    :param model_optimum: Trial index -> model optimum [m]
        (:func:`~accelrl.agents.evaluation.classes.model_optimum`), for the ``reachable``
        class; ``None``: not computed (the breakdown leaves that grouping out).
    """

    records: pa.Table
    trials: pa.Table
    summaries: dict[str, dict[str, Summary]]
    config: dict[str, Any]
    model_optimum: dict[int, float] | None = None
    _optimum_source: tuple[list[Any], str, str] | None = field(default=None, repr=False)
    _episodes: dict[tuple[str, int], dict[str, np.ndarray]] = field(
        default_factory=dict, repr=False
    )

    # ---------------------------------------------------------------- views
    @property
    def optimisers(self) -> list[str]:
        """Optimiser labels, in evaluation order."""
        return [o["label"] for o in self.config["optimisers"]]

    @property
    def complete(self) -> bool:
        """Whether every trial ran (``False`` for the partial result of an interrupt)."""
        return self.config.get("status", "complete") == "complete"

    @property
    def actuator_names(self) -> list[str]:
        """Actuator names, in settings order."""
        return [a["name"] for a in self.config["actuators"]]

    def trial_table(self, optimiser: str) -> dict[str, np.ndarray]:
        """Per-trial columns of one optimiser as numpy arrays (trial order)."""
        self._check_label(optimiser)
        mask = np.asarray(self.trials["optimiser"].to_numpy(zero_copy_only=False)) == optimiser
        return {
            name: np.asarray(self.trials[name].to_numpy(zero_copy_only=False))[mask]
            for name in self.trials.column_names
        }

    def mae_matrix(self, optimiser: str) -> tuple[np.ndarray, np.ndarray]:
        """``(trial indices [N], MAE [N, max_steps + 1])`` [m] of one optimiser; a failed
        trial's last MAE is carried forward (the machine keeps its last settings)."""
        self._check_label(optimiser)
        opt = np.asarray(self.records["optimiser"].to_numpy(zero_copy_only=False))
        sel = opt == optimiser
        trial = self.records["trial"].to_numpy()[sel]
        step = self.records["step"].to_numpy()[sel]
        mae = self.records["mae"].to_numpy()[sel]
        order = [int(i) for i in self.config["trials"]["indices"]]
        row = {t: i for i, t in enumerate(order)}
        out = np.full((len(order), int(self.config["max_steps"]) + 1), np.nan)
        out[[row[int(t)] for t in trial], step] = mae
        for i in range(out.shape[0]):  # carry forward after a failure
            last = np.flatnonzero(np.isfinite(out[i]))
            if last.size and last[-1] < out.shape[1] - 1:
                out[i, last[-1] + 1 :] = out[i, last[-1]]
        return np.array(order), out

    def settings_matrix(self, optimiser: str) -> np.ndarray:
        """Settings ``[N, max_steps + 1, K]`` (SI) of one optimiser, trials in config order;
        a failed trial's last settings are carried forward (the machine keeps them)."""
        self._check_label(optimiser)
        opt = np.asarray(self.records["optimiser"].to_numpy(zero_copy_only=False))
        sel = opt == optimiser
        trial = self.records["trial"].to_numpy()[sel]
        step = self.records["step"].to_numpy()[sel]
        order = [int(i) for i in self.config["trials"]["indices"]]
        row = {t: i for i, t in enumerate(order)}
        names = self.actuator_names
        out = np.full((len(order), int(self.config["max_steps"]) + 1, len(names)), np.nan)
        rows = [row[int(t)] for t in trial]
        for k, name in enumerate(names):
            out[rows, step, k] = self.records[f"setting_{name}"].to_numpy()[sel]
        for i in range(out.shape[0]):
            last = np.flatnonzero(np.isfinite(out[i, :, 0]))
            if last.size and last[-1] < out.shape[1] - 1:
                out[i, last[-1] + 1 :] = out[i, last[-1]]
        return out

    def challenge_scores(self) -> dict[str, dict[str, float] | None]:
        """The RL4AA'25 challenge score of every optimiser
        (:func:`~accelrl.agents.evaluation.challenge.challenge_score`: ``score``,
        ``median_final_mae`` [m], ``median_steps_to_convergence``, ``median_magnet_change``,
        ``n``) over the trials it ran; ``None`` for a task whose actuators are not the
        challenge's five magnets, or an optimiser without a finished trial."""
        from accelrl.agents.evaluation.challenge import MAGNET_SCALE, challenge_score

        out: dict[str, dict[str, float] | None] = {}
        for label in self.optimisers:
            if len(self.actuator_names) != len(MAGNET_SCALE):
                out[label] = None
                continue
            _, mae = self.mae_matrix(label)
            settings = self.settings_matrix(label)
            ran = np.isfinite(mae[:, 0])  # all trials, unless the run is partial
            out[label] = challenge_score(mae[ran], settings[ran]).as_dict() if ran.any() else None
        return out

    def reachability_trials(self, trials: Sequence[Any], env_id: str, digest: str) -> None:
        """Give the trials (:class:`~accelrl.envs.Trial`) whose model optimum the
        breakdown solves when first asked (:func:`~accelrl.agents.evaluation.classes.
        trial_optimum`), unless :attr:`model_optimum` is already known."""
        self._optimum_source = (list(trials), env_id, digest)

    def breakdown(self) -> dict[str, Any]:
        """Results per target class (:mod:`~accelrl.agents.evaluation.classes`) and the
        RL4AA'25 score: ``{"classes": {label: {"group:class": {...}}}, "flagged": [lines],
        "rl4aa25_score": {label: {...}}, "trials": {"trial": [...], "size": [...],
        "position": [...], "reachable": [...], "model_optimum_m": [...]}, "definitions":
        {...}}``. Classes are over the trials that every optimiser ran (all of them, unless
        the result is the partial one of an interrupted run)."""
        from accelrl.agents.evaluation import classes as C

        if self.model_optimum is None and self._optimum_source is not None:
            self.model_optimum = C.trial_optimum(*self._optimum_source)
        full = {label: self.trial_table(label) for label in self.optimisers}
        # the trials every optimiser ran (all of them, unless the run is partial), in order
        common = [int(t) for t in self.config["trials"]["indices"]]
        for t in full.values():
            ran = {int(x) for x in t["trial"]}
            common = [i for i in common if i in ran]
        tables = {}
        for label, t in full.items():
            row = {int(x): k for k, x in enumerate(t["trial"])}
            take = np.array([row[i] for i in common], dtype=np.int64)
            tables[label] = {name: col[take] for name, col in t.items()}
        first = tables[self.optimisers[0]]
        targets = np.stack([first[f"target_{p}"] for p in BEAM_KEYS], axis=1).reshape(-1, 4)
        optimum = None
        if self.model_optimum is not None:
            optimum = np.array([self.model_optimum.get(int(t), np.nan) for t in first["trial"]])
        cls = C.trial_classes(targets, optimum)
        names = {o["label"]: o["name"] for o in self.config["optimisers"]}
        per = C.class_breakdown(tables, cls, names)
        trials: dict[str, list[Any]] = {"trial": [int(t) for t in first["trial"]]}
        trials.update({k: [str(x) for x in v] for k, v in cls.items()})
        if optimum is not None:
            trials["model_optimum_m"] = [C.finite_or_none(float(x)) for x in optimum]
        return {
            "definitions": {
                "small_size_m": C.SMALL_SIZE,
                "centred_m": C.CENTRED,
                "reachable_mae_m": C.REACHABLE_MAE,
                "reachability_starts": C.REACHABILITY_STARTS,
            },
            "classes": per,
            "flagged": C.flagged(per),
            "rl4aa25_score": self.challenge_scores(),
            "trials": trials,
        }

    def episode(self, optimiser: str, trial: int) -> dict[str, np.ndarray]:
        """All record columns of one optimiser's trial, by step."""
        key = (optimiser, int(trial))
        if key not in self._episodes:
            self._check_label(optimiser)
            opt = np.asarray(self.records["optimiser"].to_numpy(zero_copy_only=False))
            sel = (opt == optimiser) & (self.records["trial"].to_numpy() == int(trial))
            if not sel.any():
                raise KeyError(f"no records of trial {trial} for {optimiser!r}")
            self._episodes[key] = {
                name: np.asarray(self.records[name].to_numpy(zero_copy_only=False))[sel]
                for name in self.records.column_names
            }
        return self._episodes[key]

    def _check_label(self, optimiser: str) -> None:
        if optimiser not in self.optimisers:
            raise KeyError(f"unknown optimiser {optimiser!r}; evaluated: {self.optimisers}")

    def summary_json(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{optimiser: {"all" | "sigma_pos": {median_best_mae_um, median_final_mae_um,
        median_steps_to_target, median_steps_to_convergence, iqr_..., n_trials, n_failed,
        fraction_reached_target, median_ask_time_ms}}}``, MAE in um. Non-finite values
        (a median step count of a target that the median trial never reached) are ``None``.
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for label in self.optimisers:
            t = self.trial_table(label)
            masks = {"all": np.ones(len(t["trial"]), dtype=bool), "sigma_pos": t["sigma_pos"]}
            out[label] = {}
            for subset in SUBSETS:
                m = masks[subset].astype(bool)
                ask = t["ask_time_mean_s"][m]
                ask = ask[np.isfinite(ask)]
                ask_ms = float(np.median(ask) * 1e3) if ask.size else math.nan
                out[label][subset] = _summary_entry(
                    self.summaries[label][subset], int(t["failed"][m].sum()), ask_ms
                )
        return out

    # ---------------------------------------------------------------- files
    def save(self, directory: str | Path) -> Path:
        """Write ``records.parquet`` (config and summary in the file metadata),
        ``config.json``, ``trial_metrics.csv`` and ``summary.json`` into ``directory``, each
        atomically (a reader sees the old file or the new one)."""
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        from accelrl.runs import atomic_write, atomic_write_text

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        config = json.dumps(self.config, indent=2, allow_nan=False)
        summary = json.dumps(self.summary_json(), indent=2, allow_nan=False)
        meta = dict(self.records.schema.metadata or {})
        meta.update({b"accelrl.config": config.encode(), b"accelrl.summary": summary.encode()})
        records = self.records.replace_schema_metadata(meta)
        atomic_write(
            d / "records.parquet", lambda tmp: pq.write_table(records, tmp, compression="zstd")
        )
        atomic_write(d / "trial_metrics.csv", lambda tmp: pcsv.write_csv(self.trials, tmp))
        atomic_write_text(d / "summary.json", summary + "\n")
        breakdown = json.dumps(self.breakdown(), indent=2, allow_nan=False)
        atomic_write_text(d / "breakdown.json", breakdown + "\n")
        atomic_write_text(d / "config.json", config + "\n")  # last: the run's status
        return d

    @classmethod
    def load(cls, directory: str | Path) -> EvaluationResult:
        """Read a result written by :meth:`save` (summaries are recomputed from the metrics).

        >>> EvaluationResult.load("runs/eval")  # doctest: +SKIP
        """
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        d = Path(directory)
        records = pq.read_table(d / "records.parquet")
        records = records.replace_schema_metadata(
            {
                k: v
                for k, v in (records.schema.metadata or {}).items()
                if not k.startswith(b"accelrl.")
            }
        )
        config = json.loads((d / "config.json").read_text())
        types = {name: typ for name, typ in _TRIAL_TYPES}
        trials = pcsv.read_csv(
            d / "trial_metrics.csv",
            convert_options=pcsv.ConvertOptions(
                column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
        trials = trials.select([name for name, _ in _TRIAL_TYPES])
        optimum = None
        if (d / "breakdown.json").is_file():
            saved = json.loads((d / "breakdown.json").read_text()).get("trials", {})
            if "model_optimum_m" in saved:
                optimum = {
                    int(t): (math.nan if v is None else float(v))
                    for t, v in zip(saved["trial"], saved["model_optimum_m"], strict=True)
                }
        return cls(
            records,
            trials,
            summarise_trials(trials, [o["label"] for o in config["optimisers"]]),
            config,
            optimum,
        )


# --------------------------------------------------------------------------- tables
def _unit_field(name: str, typ: pa.DataType, unit: str | None) -> pa.Field:
    return pa.field(name, typ, metadata={"unit": unit} if unit else None)


def records_table(
    runs: list[tuple[str, list[dict[str, Any]]]], actuators: list[dict[str, Any]]
) -> pa.Table:
    cols: dict[str, list[np.ndarray]] = {}

    def add(name: str, value: np.ndarray) -> None:
        cols.setdefault(name, []).append(value)

    for label, trials in runs:
        for r in trials:
            n = len(r["mae"])
            add("optimiser", np.full(n, label, dtype=object))
            add("trial", np.full(n, r["trial"], dtype=np.int32))
            add("step", np.arange(n, dtype=np.int32))
            for i, a in enumerate(actuators):
                add(f"setting_{a['name']}", r["settings"][:, i])
            for i, p in enumerate(BEAM_KEYS):
                add(f"beam_{p}", r["beam"][:, i])
                add(f"reading_{p}", r["reading"][:, i])
                add(f"target_{p}", np.full(n, r["target"][i]))
            for key in ("mae", "reward", "on_screen", "clipped", "ask_time_s"):
                add(key, r[key])
    units = {f"setting_{a['name']}": a["unit"] for a in actuators}
    units.update({f"{w}_{p}": "m" for w in ("beam", "reading", "target") for p in BEAM_KEYS})
    units.update(mae="m", ask_time_s="s", reward="1")
    types = {
        "optimiser": pa.string(),
        "trial": pa.int32(),
        "step": pa.int32(),
        "on_screen": pa.bool_(),
        "clipped": pa.bool_(),
    }
    order = ["optimiser", "trial", "step", *[f"setting_{a['name']}" for a in actuators]]
    order += [f"beam_{p}" for p in BEAM_KEYS] + [f"reading_{p}" for p in BEAM_KEYS]
    order += [f"target_{p}" for p in BEAM_KEYS]
    order += ["mae", "reward", "on_screen", "clipped", "ask_time_s"]
    fields, arrays = [], []
    for name in order:
        typ = types.get(name, pa.float64())
        fields.append(_unit_field(name, typ, units.get(name)))
        arrays.append(pa.array(np.concatenate(cols[name]), type=typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


#: Columns and types of the per-trial table (``trial_metrics.csv``).
_TRIAL_TYPES: list[tuple[str, pa.DataType]] = [
    ("optimiser", pa.string()),
    ("optimiser_name", pa.string()),
    ("trial", pa.int32()),
    ("seed", pa.int64()),
    *[(f"target_{p}", pa.float64()) for p in BEAM_KEYS],
    ("sigma_pos", pa.bool_()),
    ("initial_mae", pa.float64()),
    ("best_mae", pa.float64()),
    ("final_mae", pa.float64()),
    ("best_step", pa.int32()),
    ("steps_to_target", pa.float64()),
    ("steps_to_convergence", pa.int32()),
    ("steps", pa.int32()),
    ("final_on_screen", pa.bool_()),
    ("failed", pa.bool_()),
    ("error", pa.string()),
    ("reset_time_s", pa.float64()),
    ("ask_time_mean_s", pa.float64()),
    ("ask_time_max_s", pa.float64()),
    ("wall_s", pa.float64()),
]
_TRIAL_UNITS = {
    **{f"target_{p}": "m" for p in BEAM_KEYS},
    "initial_mae": "m",
    "best_mae": "m",
    "final_mae": "m",
    "reset_time_s": "s",
    "ask_time_mean_s": "s",
    "ask_time_max_s": "s",
    "wall_s": "s",
}


def trials_table(runs: list[tuple[str, str, list[dict[str, Any]]]]) -> pa.Table:
    """One row per optimiser and trial from ``(label, optimiser name, trial records)``."""
    rows: dict[str, list[Any]] = {name: [] for name, _ in _TRIAL_TYPES}
    for label, name, trials in runs:
        for r in trials:
            m = trial_metrics(r["mae"])
            ask = r["ask_time_s"][1:]
            values = {
                "optimiser": label,
                "optimiser_name": name,
                "trial": r["trial"],
                "seed": r["seed"],
                **{f"target_{p}": float(r["target"][i]) for i, p in enumerate(BEAM_KEYS)},
                "sigma_pos": bool(sigma_pos(r["target"])[0]),
                "initial_mae": m.initial_mae,
                "best_mae": m.best_mae,
                "final_mae": m.final_mae,
                "best_step": m.best_step,
                "steps_to_target": m.steps_to_target,
                "steps_to_convergence": m.steps_to_convergence,
                "steps": m.steps,
                "final_on_screen": bool(r["on_screen"][-1]),
                "failed": r["error"] is not None,
                "error": r["error"] or "",
                "reset_time_s": r["reset_time_s"],
                "ask_time_mean_s": float(ask.mean()) if ask.size else math.nan,
                "ask_time_max_s": float(ask.max()) if ask.size else math.nan,
                "wall_s": r["wall_s"],
            }
            for name, value in values.items():
                rows[name].append(value)
    schema = pa.schema([_unit_field(n, t, _TRIAL_UNITS.get(n)) for n, t in _TRIAL_TYPES])
    return pa.Table.from_pydict(rows, schema=schema)


def summarise_trials(trials: pa.Table, labels: Sequence[str]) -> dict[str, dict[str, Summary]]:
    cols = {n: np.asarray(trials[n].to_numpy(zero_copy_only=False)) for n in trials.column_names}
    out = {}
    for label in labels:
        sel = np.flatnonzero(cols["optimiser"] == label)
        metrics = [
            TrialMetrics(
                initial_mae=float(cols["initial_mae"][i]),
                best_mae=float(cols["best_mae"][i]),
                final_mae=float(cols["final_mae"][i]),
                best_step=int(cols["best_step"][i]),
                steps_to_target=float(cols["steps_to_target"][i]),
                steps_to_convergence=int(cols["steps_to_convergence"][i]),
                steps=int(cols["steps"][i]),
            )
            for i in sel
        ]
        targets = np.stack([cols[f"target_{p}"][sel] for p in BEAM_KEYS], axis=1)
        out[label] = dict(summarise_subsets(metrics, targets))
    return out
