"""Per-trial tuning metrics and their summaries, as defined by the published protocol.

Definitions (Kaiser, Xu, Eichler et al., Sci. Rep. 14, 2024), for
one trial with the mean absolute error ``mae[s]`` of the true beam to the target after step
``s`` (``s = 0`` is the state after the reset, before the first action; SI units, m):

* **best MAE**: ``min(mae[0:])``, the start included;
* **final MAE**: ``mae[-1]``;
* **steps to target**: the first step ``s`` at which the best-so-far MAE
  ``best[s] = min(mae[0:s+1])`` is below :data:`TARGET_MAE` (20 um); NaN if never;
* **steps to convergence**: the first step after which the best-so-far MAE changes by less
  than :data:`CONVERGENCE_TOLERANCE` (20 um), i.e. the smallest ``s`` with
  ``best[s] - best[-1] < 20 um`` (0 when the start is already within 20 um of the best).

Summaries are the median and the interquartile range (25th-75th percentile, linear
interpolation) over all trials and over the ``sigma_pos`` subset, the trials whose target
sizes ``sigma_x`` and ``sigma_y`` are both > 0 (the 27 grid trials 0..26 of the published set
ask for a zero size, which no setting reaches).

**Never reached.** A trial that never reaches the target has ``steps_to_target = NaN``. In
summaries it counts as ``+inf`` ("later than any step"), not as missing: dropping those
trials would report the median over the easy trials only. The median is therefore ``inf``
when fewer than half of the trials reached the target, and :attr:`Summary.fraction_reached`
gives the share that did. Output writers show ``inf`` as "never" (Markdown) or ``null``
(JSON).

>>> import numpy as np
>>> m = trial_metrics(np.array([500e-6, 300e-6, 10e-6, 40e-6, 12e-6]))
>>> m.best_mae, m.final_mae, m.steps_to_target, m.steps_to_convergence
(1e-05, 1.2e-05, 2.0, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Target of "steps to target": best-so-far MAE below 20 um [m].
TARGET_MAE = 20e-6
#: Tolerance of "steps to convergence": best-so-far MAE within 20 um of its final value [m].
CONVERGENCE_TOLERANCE = 20e-6
#: The subsets every summary is given for.
SUBSETS: tuple[str, ...] = ("all", "sigma_pos")


@dataclass(frozen=True)
class TrialMetrics:
    """Metrics of one trial (SI units: m; steps are counts).

    :param initial_mae: MAE after the reset (step 0) [m].
    :param best_mae: Smallest MAE of the trial, step 0 included [m].
    :param final_mae: MAE after the last step [m].
    :param best_step: First step at which ``best_mae`` was reached.
    :param steps_to_target: First step with best-so-far MAE < :data:`TARGET_MAE`; NaN if never.
    :param steps_to_convergence: Smallest step ``s`` with ``best[s] - best[-1]`` <
        :data:`CONVERGENCE_TOLERANCE`.
    :param steps: Number of steps taken (``len(mae) - 1``).
    """

    initial_mae: float
    best_mae: float
    final_mae: float
    best_step: int
    steps_to_target: float
    steps_to_convergence: int
    steps: int


def best_so_far(mae: np.ndarray) -> np.ndarray:
    """Running minimum of an MAE sequence (NaN entries are skipped, as by ``np.fmin``)."""
    return np.fmin.accumulate(np.asarray(mae, dtype=np.float64))


def trial_metrics(
    mae: np.ndarray,
    target_mae: float = TARGET_MAE,
    convergence_tolerance: float = CONVERGENCE_TOLERANCE,
) -> TrialMetrics:
    """Metrics of one trial from its MAE per step.

    :param mae: MAE of the true beam to the target ``[steps + 1]`` [m]; index 0 is the state
        after the reset, before the first action.
    :param target_mae: Threshold of "steps to target" [m] (default 20 um).
    :param convergence_tolerance: Tolerance of "steps to convergence" [m] (default 20 um).
    :raises ValueError: For an empty or non-1-D sequence, or one that is NaN throughout.

    >>> trial_metrics(np.full(11, 700e-6)).steps_to_target
    nan
    """
    mae = np.asarray(mae, dtype=np.float64)
    if mae.ndim != 1 or mae.size == 0:
        raise ValueError(f"mae must be a non-empty 1-D sequence, got shape {mae.shape}")
    if np.isnan(mae).all():
        raise ValueError("mae is NaN at every step")
    best = best_so_far(mae)
    reached = np.flatnonzero(best < target_mae)
    converged = np.flatnonzero(best - best[-1] < convergence_tolerance)
    return TrialMetrics(
        initial_mae=float(mae[0]),
        best_mae=float(best[-1]),
        final_mae=float(mae[-1]),
        best_step=int(np.nanargmin(mae)),
        steps_to_target=float(reached[0]) if reached.size else math.nan,
        steps_to_convergence=int(converged[0]),
        steps=int(mae.size - 1),
    )


def sigma_pos(targets: np.ndarray) -> np.ndarray:
    """Mask ``[N]`` of the targets ``[N, 4]`` ``(mu_x, sigma_x, mu_y, sigma_y)`` whose sizes
    ``sigma_x`` and ``sigma_y`` are both > 0."""
    t = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
    return (t[:, 1] > 0) & (t[:, 3] > 0)


@dataclass(frozen=True)
class Quartiles:
    """25th, 50th and 75th percentile of a metric (``inf`` allowed, see the module docs)."""

    q25: float
    median: float
    q75: float

    @property
    def iqr(self) -> tuple[float, float]:
        """The interquartile range as ``(q25, q75)``."""
        return (self.q25, self.q75)


def quantile(values: np.ndarray, q: float) -> float:
    """The ``q``-quantile (``0 <= q <= 1``) with linear interpolation, NaN counted as ``+inf``.

    Equal to ``np.quantile(values, q)`` for finite values; an interpolation that puts any
    weight on an infinite value is ``inf`` (``np.quantile`` can answer NaN there). Empty
    input gives NaN.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return math.nan
    x = np.sort(np.where(np.isnan(x), np.inf, x))
    pos = q * (x.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    t = pos - lo
    if t == 0.0 or x[lo] == x[hi]:
        return float(x[lo])
    return float(x[lo] + (x[hi] - x[lo]) * t)


def quartiles(values: np.ndarray) -> Quartiles:
    """:class:`Quartiles` of ``values`` (NaN counted as ``+inf``; NaN for empty input)."""
    return Quartiles(quantile(values, 0.25), quantile(values, 0.5), quantile(values, 0.75))


@dataclass(frozen=True)
class Summary:
    """Summary of a set of trials (SI units: m; steps are counts).

    :param n: Number of trials.
    :param n_reached: Trials whose best-so-far MAE reached the target.
    :param best_mae: Quartiles of the best MAE [m].
    :param final_mae: Quartiles of the final MAE [m].
    :param steps_to_target: Quartiles of the steps to target (never reached = ``inf``).
    :param steps_to_convergence: Quartiles of the steps to convergence.
    """

    n: int
    n_reached: int
    best_mae: Quartiles
    final_mae: Quartiles
    steps_to_target: Quartiles
    steps_to_convergence: Quartiles

    @property
    def fraction_reached(self) -> float:
        """Share of the trials that reached the target (NaN for no trials)."""
        return self.n_reached / self.n if self.n else math.nan

    def as_dict(self) -> dict:
        """Plain nested dict (SI units), e.g. for JSON after converting non-finite values."""
        out = asdict(self)
        out["fraction_reached"] = self.fraction_reached
        return out


def summarise(metrics: Sequence[TrialMetrics]) -> Summary:
    """Median and IQR of every metric over ``metrics`` (see the module docs for NaN/inf)."""
    stt = np.array([m.steps_to_target for m in metrics], dtype=np.float64)
    return Summary(
        n=len(metrics),
        n_reached=int(np.isfinite(stt).sum()),
        best_mae=quartiles(np.array([m.best_mae for m in metrics])),
        final_mae=quartiles(np.array([m.final_mae for m in metrics])),
        steps_to_target=quartiles(stt),
        steps_to_convergence=quartiles(np.array([m.steps_to_convergence for m in metrics])),
    )


def summarise_subsets(
    metrics: Sequence[TrialMetrics], targets: np.ndarray
) -> Mapping[str, Summary]:
    """``{"all": Summary, "sigma_pos": Summary}`` for trials with targets ``[N, 4]`` [m].

    >>> ms = [trial_metrics(np.array([1e-3, 1e-5])), trial_metrics(np.array([1e-3, 5e-4]))]
    >>> s = summarise_subsets(ms, np.array([[0, 1e-4, 0, 1e-4], [0, 0.0, 0, 1e-4]]))
    >>> s["all"].n, s["sigma_pos"].n, s["sigma_pos"].best_mae.median
    (2, 1, 1e-05)
    """
    mask = sigma_pos(targets)
    if mask.size != len(metrics):
        raise ValueError(f"{len(metrics)} trials but {mask.size} targets")
    return {
        "all": summarise(metrics),
        "sigma_pos": summarise([m for m, keep in zip(metrics, mask, strict=True) if keep]),
    }
