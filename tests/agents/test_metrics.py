"""Per-trial metrics and summaries (:mod:`accelrl.agents.evaluation.metrics`) on hand-made
sequences.

Definitions (Kaiser, Xu, Eichler et al., Sci. Rep. 14, 2024): best MAE = min over all steps
incl. step 0; final MAE = last; steps to target = first step with best-so-far < 20 um (NaN
if never); steps to convergence = smallest s with best[s] - best[-1] < 20 um. All values in m.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from accelrl.agents.evaluation.metrics import (
    CONVERGENCE_TOLERANCE,
    TARGET_MAE,
    best_so_far,
    quantile,
    quartiles,
    sigma_pos,
    summarise,
    summarise_subsets,
    trial_metrics,
)

UM = 1e-6


def test_thresholds_are_20_um():
    assert TARGET_MAE == pytest.approx(20e-6) and CONVERGENCE_TOLERANCE == pytest.approx(20e-6)


def test_hand_made_sequence():
    m = trial_metrics(np.array([500, 300, 10, 40, 12]) * UM)
    assert m.initial_mae == pytest.approx(500 * UM)
    assert m.best_mae == pytest.approx(10 * UM)
    assert m.final_mae == pytest.approx(12 * UM)
    assert m.best_step == 2
    assert m.steps_to_target == 2.0
    assert m.steps_to_convergence == 2
    assert m.steps == 4


def test_never_reached():
    m = trial_metrics(np.array([700, 650, 600, 590, 585]) * UM)
    assert math.isnan(m.steps_to_target)
    # best - final = 115, 65, 15, 5, 0 um: first below 20 um at step 2
    assert m.steps_to_convergence == 2
    assert m.best_mae == pytest.approx(585 * UM) and m.final_mae == pytest.approx(585 * UM)


def test_reached_immediately():
    m = trial_metrics(np.array([5, 50, 3]) * UM)
    assert m.steps_to_target == 0.0
    assert m.steps_to_convergence == 0  # best 5 -> 3 um: changes by < 20 um from the start
    assert m.best_mae == pytest.approx(3 * UM) and m.best_step == 2


def test_best_includes_the_start_and_final_can_be_worse():
    m = trial_metrics(np.array([100, 200, 300]) * UM)
    assert m.best_mae == pytest.approx(100 * UM) and m.best_step == 0
    assert m.final_mae == pytest.approx(300 * UM)
    assert m.steps_to_convergence == 0
    assert math.isnan(m.steps_to_target)


def test_target_uses_best_so_far_and_is_strict():
    # exactly 20 um is not "below 20 um"; the first step below it counts even if it worsens later
    m = trial_metrics(np.array([100e-6, 20e-6, 19.999e-6, 500e-6]))
    assert m.steps_to_target == 2.0
    m = trial_metrics(np.array([100e-6, 20e-6, 20e-6]))
    assert math.isnan(m.steps_to_target)


def test_convergence_is_on_the_best_so_far_not_the_current_mae():
    # current MAE oscillates wildly, the best-so-far settles at step 3
    mae = np.array([1000, 400, 2000, 100, 5000, 95, 3000]) * UM
    np.testing.assert_allclose(best_so_far(mae), np.array([1000, 400, 400, 100, 100, 95, 95]) * UM)
    assert trial_metrics(mae).steps_to_convergence == 3


def test_single_step_and_nan_entries():
    m = trial_metrics(np.array([30 * UM]))
    assert (m.steps, m.steps_to_convergence, m.best_mae) == (0, 0, pytest.approx(30 * UM))
    m = trial_metrics(np.array([100, np.nan, 10]) * UM)  # NaN entries are skipped by the minimum
    assert m.best_mae == pytest.approx(10 * UM) and m.steps_to_target == 2.0


@pytest.mark.parametrize("bad", [np.array([]), np.ones((2, 2)), np.array([np.nan, np.nan])])
def test_invalid_sequences(bad):
    with pytest.raises(ValueError, match="mae"):
        trial_metrics(bad)


def test_quantile_matches_numpy_on_finite_values():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 301):
        x = rng.lognormal(size=n)
        for q in (0.0, 0.25, 0.5, 0.75, 1.0):
            assert quantile(x, q) == pytest.approx(np.quantile(x, q), rel=1e-12)


def test_quantile_counts_nan_as_infinite():
    assert quantile(np.array([1.0, 2.0, np.nan]), 0.5) == 2.0
    assert quantile(np.array([1.0, np.nan]), 0.5) == math.inf
    assert quantile(np.array([np.nan, np.nan]), 0.5) == math.inf
    assert quantile(np.array([1.0, 2.0, 3.0, np.nan]), 0.25) == pytest.approx(1.75)
    assert quantile(np.array([1.0, 2.0, 3.0, np.nan]), 0.75) == math.inf
    assert math.isnan(quantile(np.array([]), 0.5))
    q = quartiles(np.array([4.0, np.nan, 2.0, np.nan, 8.0]))
    assert (q.q25, q.median, q.q75) == (4.0, 8.0, math.inf)
    with pytest.raises(ValueError):
        quantile(np.ones(3), 1.5)


def test_summarise_reports_fraction_reached_and_honest_medians():
    ms = [
        trial_metrics(np.array([100, 10]) * UM),  # reached at step 1
        trial_metrics(np.array([100, 50, 15]) * UM),  # reached at step 2
        trial_metrics(np.array([100, 90]) * UM),  # never
    ]
    s = summarise(ms)
    assert s.n == 3 and s.n_reached == 2
    assert s.fraction_reached == pytest.approx(2 / 3)
    assert s.steps_to_target.median == 2.0  # (1, 2, inf): the never-reached trial counts as inf
    assert s.steps_to_target.q75 == math.inf
    assert s.best_mae.median == pytest.approx(15 * UM)
    assert s.final_mae.median == pytest.approx(15 * UM)
    # never reached by most trials: the median is inf, not the median of the lucky one
    s = summarise(ms[:1] + ms[2:] * 2)
    assert s.steps_to_target.median == math.inf and s.fraction_reached == pytest.approx(1 / 3)
    d = s.as_dict()
    assert d["n"] == 3 and set(d["best_mae"]) == {"q25", "median", "q75"}


def test_subsets_sigma_pos():
    targets = np.array(
        [[0, 0, 0, 0], [0, 1e-4, 0, 0], [0, 0, 0, 1e-4], [1e-3, 2e-4, -1e-3, 1e-4]], dtype=float
    )
    np.testing.assert_array_equal(sigma_pos(targets), [False, False, False, True])
    ms = [trial_metrics(np.array([v]) * UM) for v in (400, 300, 200, 100)]
    s = summarise_subsets(ms, targets)
    assert set(s) == {"all", "sigma_pos"}
    assert s["all"].n == 4 and s["sigma_pos"].n == 1
    assert s["all"].best_mae.median == pytest.approx(250 * UM)
    assert s["sigma_pos"].best_mae.median == pytest.approx(100 * UM)
    with pytest.raises(ValueError, match="targets"):
        summarise_subsets(ms, targets[:3])


def test_empty_summary_is_nan_not_an_error():
    s = summarise([])
    assert s.n == 0 and math.isnan(s.best_mae.median) and math.isnan(s.fraction_reached)
