"""The ask/tell session: it optimises, reports, persists and resumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bo_testlib import FAST, Bowl, bowl_value

from accelrl.agents.bo.problem import ProblemError, TuningProblem
from accelrl.agents.bo.session import TuningSession


def _run(session: TuningSession, steps: int) -> list[float]:
    """Apply ``steps`` suggestions to the toy machine; return the observed objectives."""
    x = session.problem.initial_vector
    seen = []
    for _ in range(steps):
        f = bowl_value(x[0], x[1])
        session.ingest({"a": x[0], "b": x[1]}, {"f": f, "ok": 1.0})
        seen.append(f)
        s = session.suggest()
        x = np.array([s["a"], s["b"]])
    return seen


@pytest.mark.parametrize("acquisition", ["logei", "ucb"])
def test_constant_mean_session_improves(toy_problem: TuningProblem, acquisition: str) -> None:
    session = TuningSession(toy_problem, None, {**FAST, "acquisition": acquisition})
    seen = _run(session, 14)
    assert min(seen) < 0.5 * seen[0]  # start: f = 0.38 + 4 = 4.4


def test_prior_session_finds_the_minimum_quickly(toy_problem: TuningProblem) -> None:
    """With a correct prior the session walks straight to the minimum (max-step limited:
    b needs 8 moves of 1 from 6 to -2)."""
    session = TuningSession(toy_problem, Bowl(), FAST)
    seen = _run(session, 12)
    assert min(seen) < 0.05
    d = session.diagnostics()
    assert d["uses_prior"] and not d["prior_fallback"]
    assert d["prior_correlation"] > 0.5


def test_wrong_prior_falls_back(toy_problem: TuningProblem) -> None:
    """A prior whose minimum is elsewhere predicts badly; the session drops it."""
    session = TuningSession(toy_problem, Bowl({"a": -0.9, "b": 7.5}), FAST)
    _run(session, 10)
    d = session.diagnostics()
    assert d["prior_fallback"] and not d["uses_prior"]
    assert d["prior_correlation"] < d["correlation_threshold"] == 0.5


def test_nan_and_inf_results_are_recorded_not_fitted(toy_problem: TuningProblem) -> None:
    session = TuningSession(toy_problem, None, FAST)
    session.ingest({"a": 0.9, "b": 6.0}, {"f": math.nan, "ok": 1.0})
    session.ingest({"a": 0.8, "b": 5.0}, {"f": math.inf, "ok": 1.0})
    assert session.suggest() == {"a": 0.8, "b": 5.0}  # nothing to fit: measure where we are
    assert session.diagnostics()["mode"] == "measure-read-back"
    session.ingest({"a": 0.7, "b": 5.0}, {"f": 2.0, "ok": 1.0})
    session.suggest()
    assert session.diagnostics()["mode"] == "bo"
    assert len(session.table()) == 3


def test_bad_input_is_rejected_clearly(toy_problem: TuningProblem) -> None:
    session = TuningSession(toy_problem)
    with pytest.raises(ProblemError, match="no objective 'f'"):
        session.ingest({"a": 0.0, "b": 0.0}, {"g": 1.0})
    with pytest.raises(ProblemError, match=r"missing variables \['b'\]"):
        session.ingest({"a": 0.0}, {"f": 1.0})
    with pytest.raises(ValueError, match="budget_s"):
        TuningSession(toy_problem, None, {"budget_s": -1.0})


def test_save_load_gives_the_same_next_suggestion(toy_problem: TuningProblem, tmp_path) -> None:
    session = TuningSession(toy_problem, Bowl({"a": 0.1, "b": -1.0}), {**FAST, "seed": 7})
    _run(session, 5)
    session.ingest({"a": 0.3, "b": 1.0}, {"f": 0.4, "ok": 1.0})
    session.save(tmp_path / "s")
    for name in ("problem.json", "session.json", "data.csv", "model.npz", "manifest.json"):
        assert (tmp_path / "s" / name).is_file()
    with pytest.raises(ValueError, match="custom prior"):
        TuningSession.load(tmp_path / "s")
    restored = TuningSession.load(tmp_path / "s", prior=Bowl({"a": 0.1, "b": -1.0}))
    for saved, loaded in zip(session.table(), restored.table(), strict=True):
        assert saved.keys() == loaded.keys()
        for key, value in saved.items():
            assert value == loaded[key] or (value != value and loaded[key] != loaded[key]), key
    a, b = session.suggest(), restored.suggest()
    assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    assert restored.diagnostics()["observations"] == 6


def test_save_load_with_the_beamline_prior(tmp_path) -> None:
    """The built-in physics prior is rebuilt from the saved config, calibration included."""
    from accelrl.agents.bo.prior import BeamlinePrior
    from accelrl.agents.bo.problem import ares_ea_problem

    problem = ares_ea_problem()
    prior = BeamlinePrior([3e-4, 1e-4, -2e-4, 2e-4])
    session = TuningSession(problem, prior, {**FAST, "seed": 3})
    x = problem.initial_vector
    readings = [(1e-4, 3e-4, 2e-4, 1e-4), (2e-4, 2e-4, 1e-4, 2e-4), (0.0, 1e-4, 0.0, 3e-4)]
    for r in readings:
        result = dict(zip(("mu_x", "sigma_x", "mu_y", "sigma_y"), r, strict=True))
        result.update(
            mae=float(np.mean(np.abs(np.array(r) - [3e-4, 1e-4, -2e-4, 2e-4]))), on_screen=1.0
        )
        session.ingest(problem.named(x), result)
        s = session.suggest()
        x = problem.vector(s)
    session.save(tmp_path)
    restored = TuningSession.load(tmp_path)
    assert restored.suggest() == pytest.approx(session.suggest(), rel=1e-9, abs=1e-15)
    cal = restored.diagnostics()["calibration"]
    assert len(cal["incoming"]) == 11 and len(cal["misalignments"]) == 8


def test_modelled_constraint_steers_away() -> None:
    """A modelled constraint (g = a <= 0) keeps LogEI on the feasible side."""
    problem = TuningProblem.create(
        {
            "variables": [{"name": "a", "low": -1.0, "high": 1.0}],
            "objective": {"name": "f", "minimise": False},
            "constraints": [{"name": "g", "upper": 0.0, "modelled": True}],
            "initial": {"a": -0.5},
        }
    )
    session = TuningSession(problem, None, FAST)
    for a in (-0.9, -0.5, -0.1, 0.3, 0.7):
        session.ingest({"a": a}, {"f": a, "g": a})  # f grows to the right, g forbids a > 0
    x = session.suggest()["a"]
    assert x <= 0.15
    best = session.best()
    assert best is not None and best[0]["a"] == -0.1  # infeasible points are never "best"
