"""Tuning-problem validation: clear errors naming the field, the value and the range."""

from __future__ import annotations

import numpy as np
import pytest

from accelrl.agents.bo.problem import ProblemError, TuningProblem, ares_ea_problem, from_protocol
from accelrl.protocol import Problem


def _base(**over: object) -> dict:
    data = {
        "variables": [{"name": "Q1", "low": -72.0, "high": 72.0, "max_step": 7.2}],
        "objective": {"name": "mae", "log": True},
    }
    data.update(over)
    return data


def test_valid_problem_views() -> None:
    p = TuningProblem.create(_base(initial={"Q1": 10.0}))
    assert p.names == ("Q1",)
    np.testing.assert_array_equal(p.low, [-72.0])
    np.testing.assert_array_equal(p.max_step, [7.2])
    np.testing.assert_array_equal(p.initial_vector, [10.0])
    assert p.named(np.array([1.5])) == {"Q1": 1.5}


@pytest.mark.parametrize(
    ("variables", "needle"),
    [
        ([{"name": "Q1", "low": 5.0, "high": -5.0}], "high (-5.0) must be > low (5.0)"),
        ([{"name": "Q1", "low": 0.0, "high": 1.0, "max_step": -1.0}], "max_step must be"),
        ([{"name": "Q1", "low": float("nan"), "high": 1.0}], "low must be a finite"),
        (
            [{"name": "Q1", "low": 0.0, "high": 1.0}, {"name": "Q1", "low": 0.0, "high": 1.0}],
            "duplicate names ['Q1']",
        ),
    ],
)
def test_invalid_variables_name_field_and_value(variables: list, needle: str) -> None:
    with pytest.raises(ProblemError) as info:
        TuningProblem.create(_base(variables=variables))
    assert "variables" in str(info.value)
    assert needle in str(info.value)


def test_initial_outside_bounds_is_named() -> None:
    bounds = r"initial.Q1 = 99.0 is outside the bounds \[-72.0, 72.0\]"
    with pytest.raises(ProblemError, match=bounds):
        TuningProblem.create(_base(initial={"Q1": 99.0}))


def test_constraint_needs_a_bound_and_order() -> None:
    with pytest.raises(ProblemError, match="give lower, upper or both"):
        TuningProblem.create(_base(constraints=[{"name": "c"}]))
    with pytest.raises(ProblemError, match=r"upper \(0.0\) must be >= lower \(1.0\)"):
        TuningProblem.create(_base(constraints=[{"name": "c", "lower": 1.0, "upper": 0.0}]))


def test_unknown_field_rejected() -> None:
    with pytest.raises(ProblemError, match="colour"):
        TuningProblem.create(_base(colour="red"))


def test_setting_vector_names_missing_and_unknown() -> None:
    p = TuningProblem.create(_base())
    with pytest.raises(ProblemError, match=r"missing variables \['Q1'\], unknown \['Q9'\]"):
        p.vector({"Q9": 1.0})


def test_objective_transform() -> None:
    p = TuningProblem.create(_base())
    assert p.objective.transform(1.0) == 0.0
    assert np.isnan(p.objective.transform(float("nan")))
    assert p.objective.transform(0.0) == pytest.approx(np.log(p.objective.floor))


def test_ares_and_protocol_problems_agree() -> None:
    ares = ares_ea_problem()
    proto = Problem(
        actuator_names=ares.names,
        low=ares.low,
        high=ares.high,
        start=ares.initial_vector,
        target=np.zeros(4),
        max_delta=0.1 * np.maximum(np.abs(ares.low), np.abs(ares.high)),
        max_steps=10,
        seed=0,
    )
    p = from_protocol(proto)
    np.testing.assert_allclose(p.max_step, ares.max_step)
    np.testing.assert_array_equal(p.initial_vector, [10.0, -10.0, 0.0, 10.0, 0.0])
    assert p.observables == ("mu_x", "sigma_x", "mu_y", "sigma_y")
    assert from_protocol(proto, None).max_step.tolist() == [np.inf] * 5
