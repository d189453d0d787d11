"""Safety: hard bounds and max step hold whatever the data; returns, pauses, routes.

The property tests feed sessions arbitrary results (NaN, inf, duplicates, constant
objectives, critical violations) and arbitrary read-backs; every suggestion must lie within
the hard bounds and within the max step of the read-back, and no call may raise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bo_testlib import FAST, Bowl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelrl.agents.bo.guard import TrustRegionConfig, TuningGuard
from accelrl.agents.bo.problem import TuningProblem
from accelrl.agents.bo.session import SessionPaused, TuningSession

LOW, HIGH, STEP = np.array([-1.0, -8.0]), np.array([1.0, 8.0]), np.array([0.2, 1.0])
TOL = 1e-9

values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e-300, 1.0]),
)
settings_strategy = st.tuples(
    st.floats(min_value=-1.0, max_value=1.0), st.floats(min_value=-8.0, max_value=8.0)
)


def _check(x: dict[str, float], readback: np.ndarray) -> None:
    v = np.array([x["a"], x["b"]])
    assert np.all(np.isfinite(v))
    assert np.all(v >= LOW - TOL) and np.all(v <= HIGH + TOL), (v, readback)
    assert np.all(np.abs(v - readback) <= STEP + TOL), (v, readback)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.lists(st.tuples(settings_strategy, values, st.booleans()), min_size=0, max_size=6),
    duplicate=st.booleans(),
    constant=st.booleans(),
    use_prior=st.booleans(),
    acquisition=st.sampled_from(["logei", "ucb"]),
)
def test_suggestions_stay_within_bounds_and_max_step(
    toy_problem: TuningProblem,
    data: list,
    duplicate: bool,
    constant: bool,
    use_prior: bool,
    acquisition: str,
) -> None:
    session = TuningSession(
        toy_problem, Bowl() if use_prior else None, {**FAST, "acquisition": acquisition}
    )
    readback = toy_problem.initial_vector
    _check(session.suggest(), readback)
    for (a, b), f, ok in data:
        for _ in range(2 if duplicate else 1):
            session.ingest({"a": a, "b": b}, {"f": 0.5 if constant else f, "ok": float(ok)})
        readback = np.array([a, b])
        _check(session.suggest(), readback)
    session.diagnostics()


@settings(max_examples=40, deadline=None)
@given(
    x=st.tuples(values, values),
    readback=settings_strategy,
)
def test_guard_never_exceeds_bounds_or_step(x: tuple[float, float], readback: tuple) -> None:
    layer = TuningGuard(LOW, HIGH, STEP, np.zeros(2))
    rb = np.array(readback)
    v = layer.guard(np.array(x), rb)
    _check({"a": v[0], "b": v[1]}, rb)


def test_guard_replaces_nan_with_readback_and_bounds_win() -> None:
    layer = TuningGuard(LOW, HIGH, STEP, np.zeros(2))
    np.testing.assert_array_equal(layer.guard([math.nan, 100.0], [0.5, 7.5]), [0.5, 8.0])
    # a read-back outside the hard bounds: bounds are never widened
    assert np.all(layer.guard([5.0, 0.0], [3.0, 0.0]) <= HIGH)


def test_route_moves_within_max_step_and_end_at_goal() -> None:
    layer = TuningGuard(LOW, HIGH, STEP, np.zeros(2))
    route = layer.route(np.array([-1.0, -8.0]), np.array([1.0, 8.0]))
    assert len(route) == layer.moves_to(np.array([-1.0, -8.0]), np.array([1.0, 8.0])) == 16
    previous = np.array([1.0, 8.0])
    for x in route:
        assert np.all(np.abs(x - previous) <= STEP + TOL)
        previous = x
    np.testing.assert_allclose(route[-1], [-1.0, -8.0])


def test_trust_region_grows_shrinks_and_restarts() -> None:
    cfg = TrustRegionConfig(length=0.4, length_min=0.1, success_tolerance=2, failure_tolerance=2)
    layer = TuningGuard(LOW, HIGH, STEP, np.zeros(2), cfg)
    layer.record(True)
    layer.record(True)
    assert layer.length == pytest.approx(0.8)
    for _ in range(4):
        layer.record(False)
    assert layer.length == pytest.approx(0.2)
    layer.record(False)
    layer.record(False)  # 0.1 would be the minimum: restart
    assert layer.length == pytest.approx(0.1)
    layer.record(False)
    layer.record(False)
    assert layer.length == pytest.approx(0.4)
    with pytest.raises(ValueError, match="length_min <= length <= length_max"):
        TrustRegionConfig(length=0.05, length_min=0.1)


def _feed(session: TuningSession, a: float, b: float, ok: bool = True) -> None:
    session.ingest({"a": a, "b": b}, {"f": 1.0 + a * a, "ok": 1.0 if ok else 0.0})


def test_critical_violation_returns_to_last_safe_setting(toy_problem: TuningProblem) -> None:
    session = TuningSession(toy_problem, None, FAST)
    _feed(session, 0.9, 6.0)
    _feed(session, 0.7, 5.0, ok=False)  # beam lost
    d = session.diagnostics()
    assert d["returning"] and "ok=0.0" in d["reason"]
    x = session.suggest()
    assert session.diagnostics()["mode"] == "return-to-safe"
    assert (x["a"], x["b"]) == pytest.approx((0.9, 6.0))
    _feed(session, 0.9, 6.0)
    assert not session.diagnostics()["returning"]


def test_pause_mode_raises_until_resumed(toy_problem: TuningProblem) -> None:
    session = TuningSession(toy_problem, None, {**FAST, "on_critical": "pause"})
    _feed(session, 0.9, 6.0)
    _feed(session, 0.8, 5.5, ok=False)
    with pytest.raises(SessionPaused, match="critical constraint violated"):
        session.suggest()
    session.resume()
    x = session.suggest()
    assert (x["a"], x["b"]) == pytest.approx((0.9, 6.0))


def test_rollback_and_finish_routes(toy_problem: TuningProblem) -> None:
    session = TuningSession(toy_problem, None, FAST)
    _feed(session, 0.9, 6.0)
    _feed(session, 0.7, 5.0)
    _feed(session, 0.5, 4.0)  # the best (f = 1.25) so far... of these three
    _feed(session, 0.6, 3.0)
    best = session.best()
    assert best is not None and best[0] == {"a": 0.5, "b": 4.0}
    moves = session.finish()
    assert moves[-1] == pytest.approx({"a": 0.5, "b": 4.0})
    assert session.suggest() == pytest.approx(moves[0])
    back = session.rollback()
    assert back[-1] == pytest.approx({"a": 0.9, "b": 6.0})
    assert len(back) == 3  # b: 3 -> 6 at 1 per move
    readback = {"a": 0.6, "b": 3.0}
    for expected in back:  # the machine follows: each move is read back before the next
        x = session.suggest(readback=readback)
        assert x == pytest.approx(expected)
        readback = x
    assert session.pending == 0
