"""Figures of a tuning session: objective per step and model slices around the incumbent.

Both take a :class:`~accelrl.agents.bo.session.TuningSession` and write a PNG (matplotlib's
object API, no global state). Values are converted for display only: an objective named
``"mae"`` is shown in um.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from accelrl.agents.bo.session import TuningSession

__all__ = ["plot_objective", "plot_slices"]


def _display(name: str) -> tuple[float, str]:
    """Display factor and unit label of an objective."""
    return (1e6, f"{name} [um]") if name == "mae" else (1.0, name)


def plot_objective(session: TuningSession, path: str | Path) -> Path:
    """Objective per step, best so far, and the steps that violated a critical constraint.

    :param session: The session.
    :param path: PNG file to write.
    """
    from matplotlib.figure import Figure

    obj = session.problem.objective
    factor, label = _display(obj.name)
    rows = session.table()
    y = np.array([r[f"result.{obj.name}"] for r in rows], dtype=np.float64) * factor
    steps = np.arange(len(y))
    safe = np.array([r["safe"] for r in rows], dtype=bool)
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps, y, ".-", color="0.6", label="observed")
    finite = np.where(np.isfinite(y), y, np.inf if obj.minimise else -np.inf)
    best = np.minimum.accumulate(finite) if obj.minimise else np.maximum.accumulate(finite)
    ax.plot(steps, best, "-", color="C0", lw=2, label="best so far")
    if (~safe).any():
        ax.plot(steps[~safe], y[~safe], "x", color="C3", label="critical violation")
    if obj.log and np.any(np.isfinite(y) & (y > 0)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out


def plot_slices(session: TuningSession, path: str | Path, points: int = 101) -> Path | None:
    """1-D slices of the GP (mean +- 2 sd) and of the calibrated prior through the best
    setting, one panel per variable over its hard bounds. ``None`` before a model was fitted.

    :param session: The session.
    :param path: PNG file to write.
    :param points: Points per slice.
    """
    from matplotlib.figure import Figure

    fit, best = session._fit, session.best()
    if fit is None or best is None:
        return None
    p = session.problem
    obj = p.objective
    factor, label = _display(obj.name)
    low, high = p.low, p.high
    centre = (p.vector(best[0]) - low) / (high - low)
    sign = -1.0 if obj.minimise else 1.0

    def to_objective(v: np.ndarray) -> np.ndarray:
        raw = sign * v
        return (np.exp(raw) if obj.log else raw) * factor

    d = len(p.names)
    cols = min(d, 3)
    rows_n = math.ceil(d / cols)
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows_n), layout="constrained")
    data = session.table()
    X = np.array([[r[f"setting.{n}"] for n in p.names] for r in data])
    for i, name in enumerate(p.names):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        grid = np.linspace(0.0, 1.0, points)
        U = np.tile(centre, (points, 1))
        U[:, i] = grid
        with torch.no_grad():
            post = fit.model.posterior(torch.as_tensor(U))
            mean = post.mean.reshape(-1).numpy()
            sd = post.variance.clamp_min(0).sqrt().reshape(-1).numpy()
        x = low[i] + grid * (high[i] - low[i])
        ax.plot(x, to_objective(mean), color="C0", label="GP mean")
        ax.fill_between(
            x,
            to_objective(mean - 2 * sd),
            to_objective(mean + 2 * sd),
            color="C0",
            alpha=0.2,
            label="+- 2 sd",
        )
        if session.prior_mean is not None:
            with torch.no_grad():
                prior = session.prior_mean.raw(session.prior_mean.physical(torch.as_tensor(U)))
            raw = prior.numpy()
            ax.plot(
                x,
                (np.exp(raw) if obj.log else raw) * factor,
                "--",
                color="C2",
                label="calibrated prior",
            )
        near = (
            np.all(np.abs(np.delete((X - low) / (high - low) - centre, i, axis=1)) < 0.05, axis=1)
            if d > 1
            else np.ones(len(X), dtype=bool)
        )
        y = np.array([r[f"result.{obj.name}"] for r in data]) * factor
        ax.plot(X[near, i], y[near], "k.", ms=4, label="data near slice")
        ax.axvline(low[i] + centre[i] * (high[i] - low[i]), color="C1", lw=1)
        if obj.log:
            ax.set_yscale("log")
        unit = p.variables[i].unit
        ax.set_xlabel(f"{name} [{unit}]" if unit else name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    title = "model slices through the best setting"
    if fit.fallback:
        title += " (prior replaced by constant mean)"
    fig.suptitle(title)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
