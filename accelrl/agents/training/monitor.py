"""Watching a training run: periodic held-out evaluation, episode records, progress, plot.

:func:`evaluate_policy` runs the current policy on held-out trials through the evaluation
protocol (:mod:`accelrl.agents.evaluation`, the vectorised path: one vector environment for
all trials) and summarises it with the protocol's metrics; :class:`TrainingMonitor` is the
SB3 callback that calls it every ``every`` timesteps and appends what it sees to the run's
live files as it happens (each evaluation to ``progress.jsonl``, each training episode to
``episodes.csv``); :func:`plot_learning_curve` draws the episode return and the evaluation
MAE against timesteps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from accelrl.agents.evaluation.metrics import TARGET_MAE
from accelrl.agents.policy import MLPPolicy, PolicyOptimiser
from accelrl.progress import progress_bar
from accelrl.runfiles import CsvWriter, ProgressLog

if TYPE_CHECKING:
    from accelrl.envs import Trial

__all__ = ["EPISODE_COLUMNS", "TrainingMonitor", "evaluate_policy", "plot_learning_curve"]

#: Columns of a run's ``episodes.csv``: the timestep at which a training episode ended, its
#: return (raw reward, before normalisation) and its length [steps].
EPISODE_COLUMNS: tuple[str, ...] = ("timesteps", "return", "length")

_log = logging.getLogger(__name__)


def evaluate_policy(
    policy: MLPPolicy,
    trials: Sequence[Trial],
    steps: int,
    seed: int = 0,
    backend: str = "fast",
    env_id: str | None = None,
) -> dict[str, Any]:
    """The evaluation summary of ``policy`` on ``trials`` (in this process).

    :param policy: The policy (delta actions).
    :param trials: Held-out trials.
    :param steps: Steps per trial.
    :param seed: Base seed of the trial resets.
    :param backend: Simulation backend.
    :param env_id: Task (default: the policy's).
    :return: The protocol's summary of all trials (``median_best_mae_um``,
        ``median_final_mae_um``, ``median_steps_to_target``, ... of
        :meth:`~accelrl.agents.evaluation.EvaluationResult.summary_json`), the
        ``sigma_pos`` subset under ``"sigma_pos"``, and ``n_trials``, ``steps``, ``wall_s``.
    """
    from accelrl.agents.evaluation import evaluate

    start = time.perf_counter()
    result = evaluate(
        lambda: PolicyOptimiser(policy),
        list(trials),
        max_steps=steps,
        backend=backend,
        seed=seed,
        executor="serial",
        progress=False,
        env_id=env_id or policy.meta.env_id,
        chunk_size=len(trials),
        label="policy",
    )
    summary = result.summary_json()["policy"]
    return {
        **summary["all"],
        "sigma_pos": summary["sigma_pos"],
        "n_trials": len(trials),
        "steps": steps,
        "wall_s": time.perf_counter() - start,
    }


class TrainingMonitor(BaseCallback):
    """Periodic evaluation, episode records, a rich progress bar and an optional time limit.

    :param evaluate: ``policy -> summary`` (the exported policy of the current model), e.g.
        :func:`evaluate_policy` with the held-out trials bound.
    :param export: ``model -> MLPPolicy``.
    :param every: Evaluation period [timesteps] (0: only at the end, by the caller).
    :param total: Timesteps of the run (for the progress bar).
    :param progress: Show a rich progress bar on stderr.
    :param time_limit_s: Stop training after this wall time [s].
    :param log: The run's live progress file (kind ``sb3``): every evaluation is appended to
        it (and fsync'ed) as soon as it is done.
    :param episodes_file: The run's live ``episodes.csv`` (columns :data:`EPISODE_COLUMNS`):
        every training episode is appended (flushed) when it ends.
    """

    def __init__(
        self,
        evaluate: Any,
        export: Any,
        every: int,
        total: int,
        progress: bool = True,
        time_limit_s: float | None = None,
        log: ProgressLog | None = None,
        episodes_file: CsvWriter | None = None,
    ) -> None:
        super().__init__()
        self.evaluate_fn, self.export_fn = evaluate, export
        self.every, self.total = every, total
        self.show_progress, self.time_limit_s = progress, time_limit_s
        self.log, self.episodes_file = log, episodes_file
        self.evaluations: list[dict[str, Any]] = []
        self.episodes: list[tuple[int, float, int]] = []
        self.eval_seconds = 0.0
        self.stopped_by_time_limit = False
        self._next_eval = every if every > 0 else None
        self._progress: Any = None
        self._task: Any = None
        self._last_draw = 0.0
        self._start = 0.0
        self._note = ""

    def run_evaluation(self) -> dict[str, Any]:
        start = time.perf_counter()
        summary = self.evaluate_fn(self.export_fn(self.model))
        summary = {"timesteps": int(self.model.num_timesteps), **summary}
        summary["train_wall_s"] = time.perf_counter() - self._start
        self.eval_seconds += time.perf_counter() - start
        self.evaluations.append(summary)
        if self.log is not None:
            self.log.evaluation(summary)
        if self.logger is not None:
            for key in ("median_best_mae_um", "median_final_mae_um", "median_steps_to_target"):
                if summary[key] is not None:
                    self.logger.record(f"eval/{key}", summary[key])
        best, final = summary["median_best_mae_um"], summary["median_final_mae_um"]
        self._note = f"eval median best {best:.1f} um" if best is not None else ""
        to_target = summary["median_steps_to_target"]
        to_target = "not reached" if to_target is None else f"{to_target:g}"
        line = (
            f"{summary['timesteps']:>10,d} timesteps  {summary['train_wall_s']:7.0f} s  "
            f"eval: median best MAE {best:.1f} um, final {final:.1f} um, "
            f"median steps to target {to_target}"
        )
        _log.info(line)
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
        return summary

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        if self.show_progress:
            self._progress = progress_bar(
                "[bold]training[/bold]",
                middle=["steps {task.fields[rate]}"],
                after=["{task.fields[note]}"],
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, rate="", note="")

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                record = (int(self.num_timesteps), float(episode["r"]), int(episode["l"]))
                self.episodes.append(record)
                if self.episodes_file is not None:
                    self.episodes_file.write(record)
        # The last step's evaluation is the caller's (after SB3's final update).
        due = self._next_eval is not None and self.num_timesteps >= self._next_eval
        if due and self.num_timesteps < self.total:
            self.run_evaluation()
            while self._next_eval <= self.num_timesteps:
                self._next_eval += self.every
        now = time.perf_counter()
        if self._progress is not None and now - self._last_draw > 0.25:
            self._last_draw = now
            rate = self.num_timesteps / max(now - self._start, 1e-9)
            self._progress.update(
                self._task, completed=self.num_timesteps, rate=f"{rate:,.0f}/s", note=self._note
            )
        if self.time_limit_s is not None and now - self._start > self.time_limit_s:
            self.stopped_by_time_limit = True
            return False
        return True

    def close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.num_timesteps, note=self._note)
            self._progress.stop()
            self._progress = None


def plot_learning_curve(
    episodes: list[tuple[int, float, int]],
    evaluations: list[dict[str, Any]],
    path: Path,
    title: str,
) -> Path:
    """PNG with the training episode return and the evaluation median MAE vs timesteps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if episodes:
        t = np.array([e[0] for e in episodes], dtype=float)
        r = np.array([e[1] for e in episodes], dtype=float)
        ax1.plot(t, r, ".", ms=2, alpha=0.2, color="tab:blue", label="episodes")
        # Mean return in (up to) 60 bins of equal timesteps (parallel envs end together).
        edges = np.linspace(t.min(), t.max() + 1, min(60, len(np.unique(t))) + 1)
        which = np.clip(np.digitize(t, edges) - 1, 0, len(edges) - 2)
        count = np.bincount(which, minlength=len(edges) - 1)
        total = np.bincount(which, weights=r, minlength=len(edges) - 1)
        used = count > 0
        centres = 0.5 * (edges[:-1] + edges[1:])
        ax1.plot(
            centres[used], total[used] / count[used], "-", color="tab:blue", label="binned mean"
        )
        ax1.legend(loc="lower right")
    ax1.set(xlabel="timesteps", ylabel="episode return (raw)", title="training")
    ax1.grid(alpha=0.3)
    if evaluations:
        t = [e["timesteps"] for e in evaluations]
        for key, label, style in (
            ("median_best_mae_um", "median best MAE", "o-"),
            ("median_final_mae_um", "median final MAE", "s--"),
        ):
            y = [e[key] if e[key] is not None else np.nan for e in evaluations]
            ax2.plot(t, y, style, ms=3, label=label)
        ax2.axhline(TARGET_MAE * 1e6, color="gray", lw=0.8, ls=":", label="20 um")
        ax2.set_yscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax2.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax2.yaxis.set_minor_formatter(NullFormatter())
        ax2.legend(loc="upper right")
        n, steps = evaluations[-1]["n_trials"], evaluations[-1]["steps"]
        ax2.set_title(f"evaluation ({n} held-out trials, {steps} steps)")
    ax2.set(xlabel="timesteps", ylabel="MAE [um]")
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path
