"""One evaluation protocol for every optimiser: run, record, measure, save.

Protocol (the published ARES-EA evaluation; Kaiser, Xu, Eichler et al., Sci. Rep. 14, 2024):

1. Each trial runs in a single :class:`~accelrl.envs.TransverseTuningEnv` of the task
   (default ``accelrl/AresEATransverseTuning-v0``) in ``"direct"`` action mode with
   termination disabled, reset with ``seed=trial_seed(seed, trial.index)`` (``seed +
   trial.index``, as ``accelrl rollout``) and ``options={"trial": trial}``: the trial's
   incoming beam, misalignments and target, and the task's standard start settings.
2. The optimiser is reset with the :class:`~accelrl.agents.protocol.Problem` (actuator names
   and limits, start settings, target, ``max_delta`` = the delta-mode bound
   ``delta_fraction * max(|low|, |high|)``, the step budget and the same trial seed).
3. For ``max_steps`` steps the optimiser is asked for the next absolute settings given the
   latest :class:`~accelrl.agents.protocol.Observation` (the screen reading, float64); the
   answer is timed, checked (shape ``[K]``, finite), clipped to the limits and applied.
4. Every step is recorded (step 0 = after the reset): settings, true beam, reading, target,
   MAE of the true beam (``info["mae"]``), reward (the task's, ICML for ARES-EA), beam on
   screen, whether the answer was clipped, and the wall time of ``ask``.

An optimiser that raises, or answers NaN/inf or a wrong shape, fails *that trial*: the
error is recorded, the trial ends there (the machine keeps its last settings, so its metrics
come from the steps it ran) and the run goes on. Errors of the simulation itself propagate.

Trials are split into fixed chunks (``chunk_size``, set from the number of trials only) and
the chunks run in parallel through a :class:`concurrent.futures.Executor`: a local process
pool (default, one torch/BLAS thread per worker), in-process (``"serial"``), Dask
(``"dask"``: a local cluster, or the scheduler at ``dask_address``) or any executor you
pass. One optimiser instance serves the trials of one chunk, reset for each, so an optimiser
must take all of a trial's randomness from ``Problem.seed``; then every executor gives
identical records (timings aside).

On a SLURM cluster, start a ``dask_jobqueue.SLURMCluster`` (``[cluster]`` extra), scale it,
and pass ``dask_address=cluster.scheduler_address`` (or ``executor=client.get_executor()``);
the workers need accelrl installed and the optimiser factories importable.

>>> from accelrl.agents.evaluation import evaluate
>>> result = evaluate("nelder-mead", trials=None, executor="process")  # doctest: +SKIP
>>> result.summary_json()["nelder-mead"]["sigma_pos"]["median_best_mae_um"]  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import math
import os
import pickle
import platform
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from accelrl.agents.metrics import (
    SUBSETS,
    Summary,
    TrialMetrics,
    sigma_pos,
    summarise_subsets,
    trial_metrics,
)
from accelrl.agents.protocol import Observation, Optimiser, Problem
from accelrl.execution import ExecutorArg, executor_scope, git_state, package_versions
from accelrl.progress import progress_bar

if TYPE_CHECKING:
    from accelrl.envs import TransverseTuningEnv, Trial

#: Default task.
DEFAULT_ENV_ID = "accelrl/AresEATransverseTuning-v0"
#: Episode length of the published evaluation [steps].
DEFAULT_MAX_STEPS = 150
#: Beam parameter names, in the order of readings and targets.
BEAM_KEYS: tuple[str, ...] = ("mu_x", "sigma_x", "mu_y", "sigma_y")
#: Version of the files written by :meth:`EvaluationResult.save`.
FORMAT_VERSION = 1
#: Distributions whose versions every run records.
_VERSIONED = ("accelrl", "torch", "numpy", "cheetah-accelerator", "gymnasium", "pyarrow", "scipy")

OptimiserFactory = Callable[[], Optimiser]


def trial_seed(seed: int, index: int) -> int:
    """Seed of trial ``index`` in a run with base ``seed`` (environment reset and
    ``Problem.seed``): ``seed + index``, as ``accelrl rollout``."""
    return int(seed) + int(index)


# --------------------------------------------------------------------------- optimiser specs
@dataclass(frozen=True)
class SpecFactory:
    """Picklable factory of a registered optimiser spec (``"nelder-mead"``,
    ``"policy:PATH"``, ...), resolved with :func:`accelrl.agents.registry.make_optimiser`
    when called (in the worker)."""

    spec: str

    def __call__(self) -> Optimiser:
        from accelrl.agents.registry import make_optimiser

        return make_optimiser(self.spec)


@dataclass(frozen=True)
class _Entry:
    label: str  # key in the results (spec string, or the optimiser's name)
    factory: OptimiserFactory
    spec: str  # the spec string, or the factory's repr
    name: str  # optimiser.name


def _check_optimiser(obj: Any, origin: str) -> str:
    for attr in ("reset", "ask"):
        if not callable(getattr(obj, attr, None)):
            raise TypeError(f"{origin} returned {obj!r}, which has no {attr}() method")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{origin} returned {obj!r}, whose `name` is not a non-empty string")
    return name


def _factory_text(factory: Any) -> str:
    """``module.QualName`` of a class or function, else its repr."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(factory)


def _entries(optimisers: Sequence[str | OptimiserFactory] | Mapping[str, Any]) -> list[_Entry]:
    """Labels and factories; every factory is called once here to fail early and get names."""
    if isinstance(optimisers, str) or callable(optimisers):
        optimisers = [optimisers]
    items = (
        list(optimisers.items())
        if isinstance(optimisers, Mapping)
        else [(None, o) for o in optimisers]
    )
    if not items:
        raise ValueError("no optimiser to evaluate")
    out: list[_Entry] = []
    for label, spec in items:
        if isinstance(spec, str):
            factory: OptimiserFactory = SpecFactory(spec)
            text = spec
        elif callable(spec):
            factory, text = spec, _factory_text(spec)
        else:
            raise TypeError(
                f"an optimiser must be a spec string or a zero-argument factory, got {spec!r}"
            )
        try:
            probe = factory()
        except ImportError as err:
            if isinstance(spec, str) and "registry" in str(err):
                raise ImportError(
                    f"optimiser spec {spec!r} needs accelrl.agents.registry ({err})"
                ) from err
            raise
        name = _check_optimiser(probe, f"optimiser {text!r}")
        out.append(_Entry(label or (spec if isinstance(spec, str) else name), factory, text, name))
    labels = [e.label for e in out]
    for i, e in enumerate(out):  # same names: "x", "x#2", ...
        if labels.count(e.label) > 1:
            k = labels[:i].count(e.label) + 1
            if k > 1:
                out[i] = _Entry(f"{e.label}#{k}", e.factory, e.spec, e.name)
    return out


# --------------------------------------------------------------------------- worker side
def init_worker() -> None:
    """One torch and BLAS/OpenMP thread per worker process.

    The environment variables reach libraries loaded later (spawned workers); libraries
    already loaded (forked workers) are limited through threadpoolctl when it is installed
    (it comes with botorch).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - optional
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


#: Evaluation environments of this process, per thread (an executor may run tasks in
#: threads: a Dask worker with several threads, a ThreadPoolExecutor).
_ENVS = threading.local()


def evaluation_env(env_id: str, backend: str) -> TransverseTuningEnv:
    """This thread's evaluation environment of task ``env_id`` (``"direct"`` actions,
    termination disabled) on ``backend``; built once, every trial resets it fully."""
    cache: dict[tuple[str, str], TransverseTuningEnv] = getattr(_ENVS, "envs", None) or {}
    _ENVS.envs = cache
    key = (env_id, backend)
    if key not in cache:
        from accelrl.envs import TASKS, TransverseTuningEnv

        if env_id not in TASKS:
            raise ValueError(f"unknown environment {env_id!r}; registered: {sorted(TASKS)}")
        cache[key] = TransverseTuningEnv(
            TASKS[env_id](), backend=backend, action_mode="direct", terminate_on_target=False
        )
    return cache[key]


def _describe(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _settings_problem(value: Any, names: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return None, f"settings that are not numbers ({type(value).__name__}: {err})"
    if a.shape != (len(names),):
        return None, f"settings of shape {a.shape}, expected ({len(names)},) for {list(names)}"
    bad = ~np.isfinite(a)
    if bad.any():
        parts = ", ".join(f"{n}={a[i]}" for i, n in enumerate(names) if bad[i])
        return None, f"non-finite settings ({parts})"
    return a, None


def trial_problem(
    env: TransverseTuningEnv, info: Mapping[str, Any], max_steps: int, seed: int
) -> Problem:
    """The :class:`~accelrl.agents.protocol.Problem` of the trial ``env`` was just reset to.

    :param env: An evaluation environment (:func:`evaluation_env`).
    :param info: The ``info`` of the reset (start settings ``"magnets"``, ``"target"``).
    :param max_steps: Step budget of the trial.
    :param seed: The trial's seed (:func:`trial_seed`).
    """
    low, high = env.core.low, env.core.high
    return Problem(
        actuator_names=tuple(env.actuator_names),
        low=low.copy(),
        high=high.copy(),
        start=np.array(info["magnets"], dtype=np.float64),
        target=np.array(info["target"], dtype=np.float64),
        max_delta=env.task.delta_fraction * np.maximum(np.abs(low), np.abs(high)),
        max_steps=max_steps,
        seed=seed,
    )


def observation(info: Mapping[str, Any], target: np.ndarray, step: int) -> Observation:
    """What the optimiser sees before step ``step + 1``: the reading and settings of the
    environment's ``info`` (float64) and the trial's ``target`` [m] (a copy)."""
    return Observation(
        beam=np.array(info["reading"], dtype=np.float64),
        magnets=np.array(info["magnets"], dtype=np.float64),
        target=target.copy(),
        on_screen=bool(info["on_screen"]),
        step=step,
    )


def _run_trial(
    env: TransverseTuningEnv, optimiser: Optimiser, trial: Trial, max_steps: int, seed: int
) -> dict[str, Any]:
    """Run one trial; the per-step arrays cover the steps that ran (failures end early)."""
    start = time.perf_counter()
    names = env.actuator_names
    low, high = env.core.low, env.core.high
    k = len(names)
    n = max_steps + 1
    settings, beam, reading = np.empty((n, k)), np.empty((n, 4)), np.empty((n, 4))
    mae, reward, ask_time = np.empty(n), np.full(n, np.nan), np.full(n, np.nan)
    on_screen, clipped = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)

    def record(s: int, info: dict[str, Any]) -> None:
        settings[s], beam[s], reading[s] = info["magnets"], info["beam"], info["reading"]
        mae[s], on_screen[s] = info["mae"], info["on_screen"]

    s_seed = trial_seed(seed, trial.index)
    _, info = env.reset(seed=s_seed, options={"trial": trial})
    record(0, info)
    target = np.array(info["target"], dtype=np.float64)
    problem = trial_problem(env, info, max_steps, s_seed)
    error: str | None = None
    steps = 0
    t = time.perf_counter()
    try:
        optimiser.reset(problem)
    except Exception as err:  # an optimiser's failure ends its trial, not the run
        error = f"reset() raised {_describe(err)}"
    reset_time = time.perf_counter() - t
    for s in range(1, max_steps + 1) if error is None else ():
        obs = observation(info, target, s - 1)
        t = time.perf_counter()
        try:
            answer = optimiser.ask(obs)
        except Exception as err:
            error = f"ask() at step {s} raised {_describe(err)}"
            break
        elapsed = time.perf_counter() - t
        value, problem_text = _settings_problem(answer, names)
        if value is None:
            error = f"ask() at step {s} returned {problem_text}"
            break
        applied = np.minimum(np.maximum(value, low), high)
        _, r, _, _, info = env.step(applied)
        record(s, info)
        reward[s], ask_time[s], clipped[s] = r, elapsed, bool(np.any(applied != value))
        steps = s
    m = steps + 1
    return {
        "trial": int(trial.index),
        "seed": s_seed,
        "target": target,
        "settings": settings[:m],
        "beam": beam[:m],
        "reading": reading[:m],
        "mae": mae[:m],
        "reward": reward[:m],
        "on_screen": on_screen[:m],
        "clipped": clipped[:m],
        "ask_time_s": ask_time[:m],
        "error": error,
        "reset_time_s": reset_time,
        "wall_s": time.perf_counter() - start,
    }


def _run_chunk(
    factory: OptimiserFactory,
    trials: Sequence[Trial],
    max_steps: int,
    backend: str,
    seed: int,
    env_id: str,
) -> list[dict[str, Any]]:
    """Worker task: one optimiser instance, reset for each trial of the chunk."""
    env = evaluation_env(env_id, backend)
    optimiser = factory()
    return [_run_trial(env, optimiser, t, max_steps, seed) for t in trials]


# --------------------------------------------------------------------------- provenance
def _git() -> dict[str, Any]:
    """Commit of the accelrl checkout (and whether tracked files differ), if it is one."""
    state = git_state()
    if state is None:
        return {"commit": None, "dirty": None}
    commit, dirty = state
    return {"commit": commit or None, "dirty": dirty}


def _resolve_trials(
    trials: Sequence[Trial] | str | Path | None, limit: int | None = None
) -> tuple[list[Trial], dict]:
    from accelrl.envs.trials import DEFAULT_TRIALS, load_trials

    if trials is None or isinstance(trials, (str, Path)):
        path = Path(trials) if trials is not None else DEFAULT_TRIALS
        out = load_trials(path)
        source = {
            "source": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "default": trials is None,
        }
    else:
        out, source = list(trials), {"source": "in-memory", "sha256": None, "default": False}
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        out = out[:limit]
    if not out:
        raise ValueError("no trials to evaluate")
    idx = [int(t.index) for t in out]
    if len(set(idx)) != len(idx):
        raise ValueError("trial indices must be unique within one evaluation")
    source.update(n=len(out), limit=limit, indices=idx)
    return out, source


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
        :class:`~accelrl.agents.metrics.TrialMetrics` [m, steps], ``final_on_screen``,
        ``failed``/``error`` ("" when none), ``reset_time_s``, ``ask_time_mean_s``,
        ``ask_time_max_s``, ``wall_s`` and the trial ``seed``.
    :param summaries: ``{optimiser: {"all" | "sigma_pos": Summary}}`` (SI).
    :param config: Run configuration and provenance (JSON-serialisable).
    """

    records: pa.Table
    trials: pa.Table
    summaries: dict[str, dict[str, Summary]]
    config: dict[str, Any]
    _episodes: dict[tuple[str, int], dict[str, np.ndarray]] = field(
        default_factory=dict, repr=False
    )

    # ---------------------------------------------------------------- views
    @property
    def optimisers(self) -> list[str]:
        """Optimiser labels, in evaluation order."""
        return [o["label"] for o in self.config["optimisers"]]

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
        ``config.json``, ``trial_metrics.csv`` and ``summary.json`` into ``directory``."""
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        config = json.dumps(self.config, indent=2, allow_nan=False)
        summary = json.dumps(self.summary_json(), indent=2, allow_nan=False)
        meta = dict(self.records.schema.metadata or {})
        meta.update({b"accelrl.config": config.encode(), b"accelrl.summary": summary.encode()})
        pq.write_table(
            self.records.replace_schema_metadata(meta), d / "records.parquet", compression="zstd"
        )
        (d / "config.json").write_text(config + "\n")
        (d / "summary.json").write_text(summary + "\n")
        pcsv.write_csv(self.trials, d / "trial_metrics.csv")
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
        return cls(
            records, trials, _summaries(trials, [o["label"] for o in config["optimisers"]]), config
        )


# --------------------------------------------------------------------------- tables
def _unit_field(name: str, typ: pa.DataType, unit: str | None) -> pa.Field:
    return pa.field(name, typ, metadata={"unit": unit} if unit else None)


def _records_table(
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


def _trials_table(runs: list[tuple[_Entry, list[dict[str, Any]]]]) -> pa.Table:
    rows: dict[str, list[Any]] = {name: [] for name, _ in _TRIAL_TYPES}
    for entry, trials in runs:
        for r in trials:
            m = trial_metrics(r["mae"])
            ask = r["ask_time_s"][1:]
            values = {
                "optimiser": entry.label,
                "optimiser_name": entry.name,
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


def _summaries(trials: pa.Table, labels: Sequence[str]) -> dict[str, dict[str, Summary]]:
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


# --------------------------------------------------------------------------- entry points
def _chunks(trials: list[Trial], chunk_size: int | None) -> list[list[Trial]]:
    if chunk_size is None:
        chunk_size = max(1, math.ceil(len(trials) / 64))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [trials[i : i + chunk_size] for i in range(0, len(trials), chunk_size)]


def evaluate_many(
    optimisers: Sequence[str | OptimiserFactory] | Mapping[str, str | OptimiserFactory],
    trials: Sequence[Trial] | str | Path | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    backend: str = "fast",
    seed: int = 0,
    executor: ExecutorArg = None,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = True,
    *,
    env_id: str = DEFAULT_ENV_ID,
    chunk_size: int | None = None,
    limit: int | None = None,
) -> EvaluationResult:
    """Evaluate several optimisers on the same trials, as one comparative result.

    :param optimisers: Spec strings (``"nelder-mead"``, ``"policy:PATH"``, ... resolved by
        :func:`accelrl.agents.registry.make_optimiser` in each worker) and/or picklable
        zero-argument factories returning an :class:`~accelrl.agents.protocol.Optimiser`;
        or a mapping ``label -> spec or factory``. Labels default to the spec string, or the
        optimiser's ``name`` for factories (repeats get ``#2``, ``#3``). Each factory is
        called once up front, in this process, to fail early and read the name.
    :param trials: Trials, a trial-set YAML path, or ``None`` for the 300 published ARES-EA
        trials. Trial indices must be unique.
    :param max_steps: Steps per trial (default 150, as published).
    :param backend: ``"fast"`` (compiled map), ``"cheetah"`` or ``"cheetah-particles"``.
    :param seed: Base seed (>= 0); trial ``t`` uses :func:`trial_seed` ``(seed, t.index)``.
    :param executor: ``None``/``"process"`` (local process pool, default), ``"serial"``
        (in-process), ``"dask"`` (``dask.distributed``: a ``LocalCluster`` with ``workers``
        single-threaded workers, or the scheduler at ``dask_address``; needs the
        ``[cluster]`` extra) or any :class:`concurrent.futures.Executor` (not shut down;
        it must be able to import accelrl and pickle the factories).
    :param workers: Workers of the pool or local Dask cluster (default: CPU count).
    :param dask_address: Scheduler address, e.g. ``"tcp://10.0.0.1:8786"``; implies
        ``executor="dask"``.
    :param progress: Show a progress bar (rich, on stderr) over trials.
    :param env_id: Registered task (default ARES-EA).
    :param chunk_size: Trials per task (default ``ceil(N / 64)``); one optimiser instance
        serves a chunk. Fixed by the trial list, so results do not depend on the executor.
    :param limit: Evaluate only the first ``limit`` trials (the source stays recorded).
    :raises ValueError: For invalid arguments; errors of the simulation or of an optimiser
        factory propagate; errors of ``reset``/``ask`` fail only their trial.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    from accelrl.envs import TASKS
    from accelrl.physics import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if env_id not in TASKS:
        raise ValueError(f"unknown environment {env_id!r}; registered: {sorted(TASKS)}")
    spec = TASKS[env_id]()
    trial_list, trial_source = _resolve_trials(trials, limit)
    entries = _entries(optimisers)
    chunks = _chunks(trial_list, chunk_size)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    with executor_scope(executor, workers, dask_address, init_worker) as (pool, kind, n_workers):
        if kind == "process":
            for e in entries:
                try:
                    pickle.dumps(e.factory)
                except Exception as err:
                    raise TypeError(
                        f"optimiser {e.spec} cannot be pickled for a process pool ({err}); use "
                        "a spec string, a module-level class/function or functools.partial, "
                        "or executor='serial'"
                    ) from err
        args = (max_steps, backend, seed, env_id)
        jobs = [(i, j, e.factory, c) for i, e in enumerate(entries) for j, c in enumerate(chunks)]
        done: dict[tuple[int, int], list[dict[str, Any]]] = {}
        # Submit before the progress bar starts its thread (a fork-started pool forks here).
        futures = (
            {}
            if pool is None
            else {pool.submit(_run_chunk, f, c, *args): (i, j) for i, j, f, c in jobs}
        )
        with progress_bar(middle=["trials"], transient=True, enabled=progress) as bar:
            tasks = [bar.add_task(f"{e.label} ({kind})", total=len(trial_list)) for e in entries]
            try:
                if pool is None:
                    for i, j, f, c in jobs:
                        done[i, j] = _run_chunk(f, c, *args)
                        bar.advance(tasks[i], len(c))
                else:
                    for fut in cf.as_completed(futures):
                        i, j = futures[fut]
                        done[i, j] = fut.result()
                        bar.advance(tasks[i], len(chunks[j]))
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    wall = time.perf_counter() - t0
    runs = [(e, [r for j in range(len(chunks)) for r in done[i, j]]) for i, e in enumerate(entries)]
    actuators = [
        {
            "name": a.name,
            "element": a.element,
            "attribute": a.attribute,
            "unit": a.unit,
            "low": a.low,
            "high": a.high,
        }
        for a in spec.actuators
    ]
    low = np.array([a.low for a in spec.actuators])
    high = np.array([a.high for a in spec.actuators])
    config = {
        "format_version": FORMAT_VERSION,
        "env_id": env_id,
        "backend": backend,
        "max_steps": max_steps,
        "seed": seed,
        "trial_seed": "seed + trial.index",
        "optimisers": [{"label": e.label, "spec": e.spec, "name": e.name} for e in entries],
        "trials": trial_source,
        "actuators": actuators,
        "max_delta": (spec.delta_fraction * np.maximum(np.abs(low), np.abs(high))).tolist(),
        "start": list(spec.start),
        "screen": {"element": spec.screen.element, "half_extent_m": list(spec.screen.half_extent)},
        "executor": kind,
        "workers": n_workers,
        "chunk_size": len(chunks[0]),
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": wall,
        "versions": package_versions(_VERSIONED, missing=None),
        "git": _git(),
        "platform": platform.platform(),
    }
    records = _records_table([(e.label, r) for e, r in runs], actuators)
    table = _trials_table(runs)
    return EvaluationResult(records, table, _summaries(table, [e.label for e in entries]), config)


def evaluate(
    optimiser_factory: str | OptimiserFactory,
    trials: Sequence[Trial] | str | Path | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    backend: str = "fast",
    seed: int = 0,
    executor: ExecutorArg = None,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = True,
    *,
    env_id: str = DEFAULT_ENV_ID,
    chunk_size: int | None = None,
    limit: int | None = None,
    label: str | None = None,
) -> EvaluationResult:
    """Evaluate one optimiser on every trial (see the module docs for the protocol).

    :param optimiser_factory: A spec string (``"nelder-mead"``, ``"policy:PATH"``, ...) or a
        picklable zero-argument callable returning an
        :class:`~accelrl.agents.protocol.Optimiser`.
    :param label: Key of the optimiser in the result (default: the spec string, or the
        optimiser's ``name``).

    The other arguments are those of :func:`evaluate_many`.

    >>> class Hold:
    ...     name = "hold"
    ...     def reset(self, problem): self.start = problem.start
    ...     def ask(self, observation): return self.start
    >>> from accelrl.envs import load_trials
    >>> r = evaluate(Hold, load_trials()[:2], max_steps=3, executor="serial", progress=False)
    >>> r.records.num_rows
    8
    """
    optimisers = {label: optimiser_factory} if label is not None else [optimiser_factory]
    return evaluate_many(
        optimisers,
        trials,
        max_steps,
        backend,
        seed,
        executor,
        workers,
        dask_address,
        progress,
        env_id=env_id,
        chunk_size=chunk_size,
        limit=limit,
    )
