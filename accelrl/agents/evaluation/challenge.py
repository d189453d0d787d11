"""The RL4AA'25 challenge score of an optimiser (lower is better).

The score of the RL4AA'25 ARES-EA challenge (``RL4AA/rl4aa25-challenge``,
``src/eval/study.py``: ``Study.evaluate_challenge``), implemented literally:

.. code-block:: text

    score = 3 * 250 * median(final MAE [m])
          + 0.5 * median(steps to convergence at 40 um) / 150
          + 0.5 * median(sum of normalised magnet changes) / (5 * 150)

over the trials of a run, with, per trial (``mae[s]`` the MAE of the true beam after step
``s``, ``s = 0`` the state after the reset; ``settings[s]`` the magnet settings):

* **final MAE**: ``mae[-1]`` [m];
* **steps to convergence at 40 um** (:func:`challenge_steps_to_convergence`): with
  ``best[s] = min(mae[0:s+1])`` and ``d[s] = |best[s] - best[s-1]|`` for ``s >= 1``, the
  smallest ``s >= 1`` from which on every ``d`` is below 40 um; the last step index when
  there is none. It is replaced by **150** when the final MAE is not below the initial MAE
  ``mae[0]`` (an optimiser that ends no better than it started has not converged);
* **sum of normalised magnet changes** (:func:`normalised_magnet_change`):
  ``sum_s sum_k |settings[s, k] - settings[s-1, k]| / scale_k`` with ``scale = (30, 30,
  6.1782e-3, 30, 6.1782e-3)`` for ``(Q1 [1/m^2], Q2 [1/m^2], CV [rad], Q3 [1/m^2], CH
  [rad])``.

The constants (150 steps, the 40 um tolerance, the magnet scales) are the challenge's, also
for runs of another length: the score is comparable to the challenge's only for 150-step
episodes of ARES-EA.

>>> import numpy as np
>>> mae = np.array([[500e-6, 100e-6, 30e-6, 30e-6]])
>>> settings = np.zeros((1, 4, 5)); settings[0, 1, 0] = 3.0
>>> s = challenge_score(mae, settings)  # Q1 goes 0 -> 3 -> 0 1/m^2: 6 / 30 = 0.2
>>> s.median_steps_to_convergence, round(s.median_magnet_change, 12)
(3.0, 0.2)
>>> round(s.score, 9)  # 750 * 30e-6 + 0.5 * 3 / 150 + 0.5 * 0.2 / 750
0.032633333
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Weight of the median final MAE [1/m]: ``3 * 250``.
FINAL_MAE_WEIGHT = 3 * 250
#: Weight of the median steps to convergence (divided by :data:`CHALLENGE_STEPS`).
CONVERGENCE_WEIGHT = 0.5
#: Weight of the median normalised magnet change (divided by ``5 *`` :data:`CHALLENGE_STEPS`).
MAGNET_WEIGHT = 0.5
#: Episode length of the challenge [steps]; also the steps to convergence of a trial that
#: ends no better than it started.
CHALLENGE_STEPS = 150
#: Tolerance of the challenge's steps to convergence [m].
CHALLENGE_CONVERGENCE = 40e-6
#: Normalisation of the magnet changes: Q1, Q2 [1/m^2], CV [rad], Q3 [1/m^2], CH [rad].
MAGNET_SCALE: tuple[float, ...] = (30.0, 30.0, 6.1782e-3, 30.0, 6.1782e-3)


@dataclass(frozen=True)
class ChallengeScore:
    """The RL4AA'25 score and its parts.

    :param score: The score (lower is better).
    :param median_final_mae: Median final MAE [m].
    :param median_steps_to_convergence: Median challenge steps to convergence [steps].
    :param median_magnet_change: Median sum of normalised magnet changes [1].
    :param n: Number of trials.
    """

    score: float
    median_final_mae: float
    median_steps_to_convergence: float
    median_magnet_change: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """Plain dict (SI units)."""
        return asdict(self)


def challenge_steps_to_convergence(
    mae: np.ndarray, threshold: float = CHALLENGE_CONVERGENCE
) -> int:
    """Steps to convergence as the challenge counts them (see the module documentation).

    :param mae: MAE per step ``[steps + 1]`` [m], index 0 after the reset.
    :param threshold: Largest change of the best-so-far MAE per step that counts as
        converged [m] (default 40 um).
    :return: The smallest ``s >= 1`` from which every per-step change of the best-so-far
        MAE is below ``threshold``; ``len(mae) - 1`` when there is none.
    :raises ValueError: For fewer than two steps.

    >>> challenge_steps_to_convergence(np.array([900e-6, 500e-6, 100e-6, 90e-6, 90e-6]))
    3
    """
    mae = np.asarray(mae, dtype=np.float64).reshape(-1)
    if mae.size < 2:
        raise ValueError(f"need the MAE of at least two steps, got {mae.size}")
    d = np.abs(np.diff(np.fmin.accumulate(mae)))  # d[s - 1] = |best[s] - best[s - 1]|
    bad = np.flatnonzero(~(d < threshold))
    if bad.size == 0:
        return 1
    last = int(bad[-1]) + 1  # the last step whose change is not below the threshold
    return last + 1 if last + 1 <= mae.size - 1 else mae.size - 1


def normalised_magnet_change(
    settings: np.ndarray, scale: tuple[float, ...] | np.ndarray = MAGNET_SCALE
) -> float:
    """``sum_s sum_k |settings[s, k] - settings[s-1, k]| / scale[k]`` of one trial.

    :param settings: Settings per step ``[steps + 1, K]`` (SI: 1/m^2, rad).
    :param scale: Normalisation per actuator (default the challenge's, ARES-EA order).
    :raises ValueError: When ``K`` differs from the length of ``scale``.
    """
    s = np.asarray(settings, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != scale.size:
        raise ValueError(
            f"settings of shape {s.shape}; expected [steps + 1, {scale.size}] for the scales "
            f"{scale.tolist()}"
        )
    return float(np.sum(np.abs(np.diff(s / scale, axis=0))))


def challenge_score(
    mae: np.ndarray | list[np.ndarray],
    settings: np.ndarray | list[np.ndarray],
    scale: tuple[float, ...] | np.ndarray = MAGNET_SCALE,
) -> ChallengeScore:
    """The RL4AA'25 score of a set of trials (see the module documentation).

    :param mae: MAE per trial and step ``[N, steps + 1]`` [m] (or a list of ``[steps_i + 1]``).
    :param settings: Settings per trial and step ``[N, steps + 1, K]`` (or a list).
    :param scale: Magnet-change normalisation per actuator.
    :raises ValueError: For no trials or mismatched lengths.
    """
    maes = [np.asarray(m, dtype=np.float64).reshape(-1) for m in mae]
    sets = [np.asarray(s, dtype=np.float64) for s in settings]
    if not maes:
        raise ValueError("no trials to score")
    if len(maes) != len(sets):
        raise ValueError(f"{len(maes)} MAE sequences but {len(sets)} settings sequences")
    final = np.array([m[-1] for m in maes])
    steps = np.array(
        [challenge_steps_to_convergence(m) if m[-1] < m[0] else CHALLENGE_STEPS for m in maes],
        dtype=np.float64,
    )
    change = np.array([normalised_magnet_change(s, scale) for s in sets])
    mf, ms, mc = float(np.median(final)), float(np.median(steps)), float(np.median(change))
    score = (
        FINAL_MAE_WEIGHT * mf
        + CONVERGENCE_WEIGHT * ms / CHALLENGE_STEPS
        + MAGNET_WEIGHT * mc / (5 * CHALLENGE_STEPS)
    )
    return ChallengeScore(float(score), mf, ms, mc, len(maes))
