"""Surrogate objective (mean minus k sigma) for BO and gradient tuning.

The surrogate is trained on a synthetic test-fixture table (see conftest.py for the
functions), not on simulation data.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from accelrl.surrogates.models import SurrogateError
from accelrl.surrogates.objective import ObjectiveConfig, SurrogateObjective

torch.set_num_threads(1)


def test_objective_terms_and_penalty(surrogate) -> None:
    cfg = ObjectiveConfig(target_energy=6e8, k_sigma=2.0)
    f = SurrogateObjective(surrogate, cfg)
    x = np.array([[10.0, 2e23, 5e-5], [8.0, 1.6e23, 4.2e-5]])
    t = f.evaluate(x)
    pred = surrogate.predict(x)
    e = pred["mean"][:, 0]
    p = pred["p_valid"]
    j_ok = (
        -np.abs(e / 6e8 - 1) - pred["mean"][:, 1] + 0.01 * pred["mean"][:, 2] / f.terms.charge_ref
    )
    np.testing.assert_allclose(t["objective"], p * j_ok + (1 - p) * -1.0, rtol=1e-9)
    np.testing.assert_allclose(t["penalised"], t["objective"] - 2.0 * t["sigma"], rtol=1e-12)
    assert np.all(t["sigma"] > 0)
    plain = SurrogateObjective(surrogate, cfg, penalised=False)
    np.testing.assert_allclose(
        plain(torch.as_tensor(x)).detach().numpy(), t["objective"], rtol=1e-12
    )


def test_fixed_inputs_and_gradient_ascent(surrogate) -> None:
    f = SurrogateObjective(
        surrogate,
        ObjectiveConfig(target_energy=6e8, k_sigma=1.0),
        tuned=["beam_delay"],
        fixed={"laser_energy": 10.0, "plasma_density": 2e23},
    )
    assert f.input_names == ["beam_delay"]
    x = torch.tensor([[4.1e-5]], dtype=torch.float64, requires_grad=True)
    start = float(f(x).detach())
    opt = torch.optim.Adam([x], lr=5e-7)
    for _ in range(60):
        opt.zero_grad()
        (-f(x)).sum().backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(4e-5, 6e-5)
    assert float(f(x).detach()) > start + 1e-3


def test_objective_errors(surrogate) -> None:
    with pytest.raises(ValueError, match="not surrogate inputs"):
        SurrogateObjective(surrogate, ObjectiveConfig(target_energy=1e9), tuned=["x"])
    with pytest.raises(ValueError, match="unknown or also tuned"):
        SurrogateObjective(
            surrogate, ObjectiveConfig(target_energy=1e9), fixed={"laser_energy": 9.0}
        )
    with pytest.raises(ValueError, match="target_energy"):
        ObjectiveConfig(target_energy=-1.0)
    f = SurrogateObjective(surrogate, ObjectiveConfig(target_energy=1e9))
    with pytest.raises(SurrogateError, match="NaN or inf"):
        f.evaluate([[np.nan, 2e23, 5e-5]])
    with pytest.raises(SurrogateError, match="3 columns"):
        f(torch.zeros(1, 2, dtype=torch.float64))


@pytest.mark.skipif(
    importlib.util.find_spec("accelrl.agents.bo") is None, reason="accelrl.agents.bo not present"
)
def test_bo_steps_with_surrogate_prior(surrogate) -> None:
    """A few BO steps (accelrl.agents.bo) on the penalised surrogate objective, with the
    plain-mean objective module as the GP prior mean."""
    from accelrl.agents.bo import TuningSession

    cfg = ObjectiveConfig(target_energy=6e8, k_sigma=1.0)
    black_box = SurrogateObjective(surrogate, cfg)
    prior = SurrogateObjective(surrogate, cfg, penalised=False)
    b = surrogate.bounds
    problem = {
        "variables": [
            {"name": n, "low": float(lo), "high": float(hi)}
            for n, (lo, hi) in zip(surrogate.input_names, b, strict=True)
        ],
        "objective": {"name": "objective", "minimise": False},
    }
    session = TuningSession(problem, prior=prior, config={"seed": 0, "budget_s": 5.0})
    values = []
    for _ in range(6):
        setting = session.suggest()
        x = [[setting[n] for n in surrogate.input_names]]
        value = float(black_box.evaluate(x)["penalised"][0])
        assert np.isfinite(value)
        session.ingest(setting, {"objective": value})
        values.append(value)
    best_setting, best = session.best()
    assert best == max(values)
    for n, (lo, hi) in zip(surrogate.input_names, b, strict=True):
        assert lo <= best_setting[n] <= hi
    assert best > values[0] or values[0] > -0.05  # improves on the start (or starts good)
